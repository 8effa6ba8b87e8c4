#!/usr/bin/env python
"""Reconstruct masked, noisy maps with the Wiener filter and a flow (or exact) MAP.

Examples:
    # truth maps -> synthetic observation (20% mask, noise at half the pixel std),
    # Wiener filter from the P(k) at theta, MAP under a trained flow
    python scripts/denoise.py data/lognormal_test.npz --out out/denoise \\
        --model runs/trenf --theta 0.3 0.8 --box 256 --masked-fraction 0.2 --noise-fraction 0.5

    # exact lognormal prior instead of a flow (the benchmark's reference); "lognormal"
    # is the MAP in delta, "lognormal-latent" the MAP of the Gaussian field g = log(1+delta)
    python scripts/denoise.py data/lognormal_test.npz --out out/denoise_exact --prior lognormal

    # the file already holds observations; mask and noise from a file
    python scripts/denoise.py obs.npz --observed --mask-file survey.npz --out out/real

Inputs: an .npz with ``maps`` (B, N, N) or ``map`` (N, N), optionally ``theta`` (B, 2)
or (2,) and ``box``. A mask file holds ``mask`` (N, N) (1 = observed) and optionally
``noise_var`` (scalar or (N, N)). The signal power for the Wiener filter comes from
``--pk-file`` (``pk`` binned on fieldflow.fourier.k_bin_edges, or ``pk_half`` on the
rfft2 half plane, in (h^-1 Mpc)^2) or else from theta through data_gen's P_2D (the
first map's theta: one spectrum per run).

Outputs in --out: wiener.npz, map.npz (when a prior is used), observation.npz,
summary.json (settings, convergence, r(k), residual P(k), pixel MSE inside/outside the
mask), denoise.png (the first map).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("maps", type=Path, help=".npz with 'maps' (B, N, N) or 'map' (N, N)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--index", type=int, nargs="*", help="which maps of the file (default all)")
    p.add_argument("--box", type=float, help="box side in h^-1 Mpc (default: file or 256)")
    p.add_argument(
        "--theta",
        type=float,
        nargs=2,
        metavar=("OMEGA_M", "SIGMA_8"),
        help="cosmology (default: the file's theta)",
    )
    p.add_argument(
        "--observed",
        action="store_true",
        help="the file holds observations d, not true maps (no truth metrics)",
    )
    g = p.add_argument_group("observation")
    g.add_argument("--mask-file", type=Path, help=".npz with 'mask' and optionally 'noise_var'")
    g.add_argument("--masked-fraction", type=float, default=0.2)
    g.add_argument("--mask-seed", type=int, default=0)
    g.add_argument("--noise-sigma", type=float, help="noise standard deviation per pixel")
    g.add_argument(
        "--noise-fraction",
        type=float,
        default=0.5,
        help="noise std in units of the maps' pixel std (if no --noise-sigma)",
    )
    g.add_argument("--noise-seed", type=int, default=1)
    r = p.add_argument_group("reconstruction")
    r.add_argument("--pk-file", type=Path, help=".npz with 'pk' (binned) or 'pk_half'")
    r.add_argument("--model", type=Path, help="trained flow run directory (fieldflow.load)")
    r.add_argument(
        "--prior",
        choices=["flow", "flow-latent", "lognormal", "lognormal-latent", "gaussian", "none"],
        help="MAP prior (default: flow with --model, else none); 'flow-latent' is the MAP of"
        " the flow's latent z (s = f^-1(z), prior N(0, I)): see fieldflow.denoise",
    )
    r.add_argument("--steps", type=int, default=1000)
    r.add_argument("--gtol", type=float, default=1e-4)
    r.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    r.add_argument("--learning-rate", type=float, default=1e-2)
    r.add_argument("--fit-theta", action="store_true", help="also maximise over theta")
    r.add_argument("--cg-tol", type=float, default=1e-6)
    r.add_argument("--cg-max-iter", type=int, default=1000)
    r.add_argument("--no-plot", action="store_true")
    return p.parse_args(argv)


def fail(msg: str) -> None:
    print(f"fieldflow denoise: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def load_maps(path: Path, index):
    if not path.exists():
        fail(f"map file {path} does not exist")
    with np.load(path) as f:
        if "maps" in f:
            maps = np.asarray(f["maps"], np.float32)
        elif "map" in f:
            maps = np.asarray(f["map"], np.float32)[None]
        else:
            fail(f"{path} has neither 'maps' nor 'map' (keys: {sorted(f.files)})")
        theta = np.asarray(f["theta"], np.float32) if "theta" in f else None
        box = float(f["box"]) if "box" in f else None
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        fail(f"maps must be (B, N, N) square, got {maps.shape}")
    if index:
        maps = maps[index]
        if theta is not None and theta.ndim == 2:
            theta = theta[index]
    return maps, theta, box


def load_model(path: Path):
    import fieldflow

    loader = getattr(fieldflow, "load", None)
    if loader is None:
        try:
            from fieldflow.checkpoint import load as loader
        except ImportError:
            fail("this fieldflow has no model loader (fieldflow.load); train a model first")
    if not path.exists():
        fail(f"model directory {path} does not exist")
    return loader(path)


def signal_power(args, n, box, theta):
    from fieldflow import denoise as dn

    if args.pk_file is not None:
        with np.load(args.pk_file) as f:
            if "pk_half" in f:
                return dn.signal_power_from_pk(np.asarray(f["pk_half"]), n, box)
            if "pk" in f:
                return dn.signal_power_from_pk(np.asarray(f["pk"]).ravel(), n, box)
        fail(f"{args.pk_file} has neither 'pk' nor 'pk_half'")
    if theta is None:
        fail("need --theta (or theta in the map file) or --pk-file for the Wiener filter")
    try:
        from data_gen import power_2d_grid
    except ImportError:
        fail("data_gen is not available: give the signal power with --pk-file")
    pk_half = np.asarray(power_2d_grid(np.asarray(theta[0]), n, box))[0]
    return dn.signal_power_from_pk(pk_half, n, box)


def main(argv=None) -> int:
    args = parse_args(argv)
    from fieldflow import denoise as dn
    from fieldflow.masks import make_mask

    maps, file_theta, file_box = load_maps(args.maps, args.index)
    b, n = maps.shape[0], maps.shape[-1]
    box = args.box or file_box or 256.0
    if args.theta is not None:
        theta = np.tile(np.asarray(args.theta, np.float32), (b, 1))
    elif file_theta is not None:
        theta = np.broadcast_to(np.atleast_2d(file_theta), (b, 2)).astype(np.float32)
    else:
        theta = None

    # ---- observation
    noise_var = None
    if args.mask_file is not None:
        with np.load(args.mask_file) as f:
            if "mask" not in f:
                fail(f"{args.mask_file} has no 'mask'")
            mask = np.asarray(f["mask"], np.float32)
            if "noise_var" in f:
                noise_var = np.asarray(f["noise_var"], np.float32)
    else:
        import jax

        try:
            mask = np.asarray(make_mask(jax.random.key(args.mask_seed), n, args.masked_fraction))
        except ValueError as err:
            fail(str(err))
    if noise_var is None:
        sigma = args.noise_sigma
        if sigma is None:
            sigma = args.noise_fraction * float(maps.std())
        noise_var = np.float32(sigma**2)
    if args.observed:
        truth, data = None, maps
    else:
        truth = maps
        rng = np.random.default_rng(args.noise_seed)
        data = (mask * (maps + np.sqrt(noise_var) * rng.standard_normal(maps.shape))).astype(
            np.float32
        )

    # ---- prior
    prior = args.prior or ("flow" if args.model is not None else "none")
    if prior == "flow" and args.model is None:
        fail("--prior flow needs --model")
    s_half = signal_power(args, n, box, theta)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.time()
        wf = dn.wiener_filter(
            data, mask, noise_var, s_half, tol=args.cg_tol, max_iter=args.cg_max_iter
        )
        t_wf = time.time() - t0
        result = None
        if prior != "none":
            kwargs = {}
            cond = None
            if prior in ("flow", "flow-latent"):
                if args.model is None:
                    fail(f"--prior {prior} needs --model RUN_DIR")
                model = load_model(args.model)
                log_prior = model.log_prob
                if getattr(model, "cond_dim", 0):
                    if theta is None:
                        fail("the flow is conditional: give --theta")
                    cond = theta
            elif prior.startswith("lognormal"):
                if theta is None:
                    fail("the lognormal prior needs --theta")
                log_prior = dn.lognormal_log_prior(theta, box, jacobian=prior == "lognormal")
                cond = theta if args.fit_theta else None
                kwargs["parametrization"] = "log1p"
            else:
                log_prior = dn.gaussian_log_prior(s_half)
            if args.fit_theta:
                if cond is None:
                    fail("--fit-theta needs a conditional prior and a starting theta")
                if prior.startswith("lognormal"):
                    from data_gen import OMEGA_M_RANGE, SIGMA8_RANGE

                    kwargs["theta_bounds"] = (
                        (OMEGA_M_RANGE[0], SIGMA8_RANGE[0]),
                        (OMEGA_M_RANGE[1], SIGMA8_RANGE[1]),
                    )
            t0 = time.time()
            if prior == "flow-latent":
                result = dn.flow_latent_map(
                    model,
                    data,
                    mask,
                    noise_var,
                    cond=cond,
                    init=wf.field,
                    steps=args.steps,
                    gtol=args.gtol,
                )
            else:
                result = dn.flow_map(
                    log_prior,
                    data,
                    mask,
                    noise_var,
                    init=wf.field,
                    cond=cond,
                    steps=args.steps,
                    gtol=args.gtol,
                    optimizer=args.optimizer,
                    learning_rate=args.learning_rate,
                    fit_theta=args.fit_theta,
                    **kwargs,
                )
            t_map = time.time() - t0
    except ValueError as err:
        fail(str(err))

    # ---- outputs
    np.savez(args.out / "observation.npz", data=data, mask=mask, noise_var=noise_var)
    np.savez(
        args.out / "wiener.npz",
        field=np.asarray(wf.field),
        iterations=np.asarray(wf.iterations),
        residual=np.asarray(wf.residual),
    )
    summary = {
        "input": str(args.maps),
        "n_maps": b,
        "n": n,
        "box": box,
        "theta": None if theta is None else theta.tolist(),
        "masked_fraction": float(1.0 - mask.mean()),
        "noise_var": np.asarray(noise_var).mean().item(),
        "prior": prior,
        "wiener": {
            "iterations": np.asarray(wf.iterations).tolist(),
            "residual": np.asarray(wf.residual).tolist(),
            "converged": np.asarray(wf.converged).tolist(),
            "seconds": t_wf,
        },
    }
    if result is not None:
        np.savez(
            args.out / "map.npz",
            field=np.asarray(result.field),
            **({} if result.theta is None else {"theta": np.asarray(result.theta)}),
        )
        summary["map"] = {
            "iterations": result.iterations,
            "stopped": result.stopped,
            "grad_norm": np.asarray(result.grad_norm).tolist(),
            "converged": np.asarray(result.converged).tolist(),
            "objective_nats": np.asarray(result.objective).tolist(),
            "seconds": t_map,
            "theta": None if result.theta is None else np.asarray(result.theta).tolist(),
        }
    if truth is not None:
        summary["metrics"] = {"wiener": dn.denoising_metrics(truth, wf.field, mask, box)}
        if result is not None:
            summary["metrics"]["map"] = dn.denoising_metrics(truth, result.field, mask, box)
    (args.out / "summary.json").write_text(dn.metrics_to_json(summary))
    if not args.no_plot:
        dn.plot_denoising(
            truth[0] if truth is not None else np.asarray(wf.field[0]),
            data[0],
            mask,
            np.asarray(wf.field[0]),
            None if result is None else np.asarray(result.field[0]),
            box=box,
            path=args.out / "denoise.png",
            labels=("Wiener", f"MAP ({prior})"),
            title=None if truth is not None else "no truth: top-left panel is the Wiener filter",
        )
    print(
        f"wrote {args.out}/: wiener.npz"
        + (", map.npz" if result is not None else "")
        + ", summary.json"
        + ("" if args.no_plot else ", denoise.png")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
