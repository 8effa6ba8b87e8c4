"""Denoising benchmark: flow MAPs against the Wiener filter (and the exact MAPs); prints JSON.

Test maps: the held-out ``test`` split of the data set (the simulations ``train_run``
never saw; theta varies from map to map over the prior range), the first ``--n-maps``.
Observation: one 20% survey mask (``make_mask``) and white noise whose variance is the
pixel variance of each map (S/N = 1 per pixel). Estimators (none splices Wiener large
scales into another):

- ``wiener``: (S^-1 + M^T N^-1 M)^-1 M^T N^-1 d, per map with the signal power S_k at the
  map's theta: lognormal, the exact P_2D(k; theta) of the simulator
  (``data_gen.pixel_power_grid``); nbody, an emulator: log P(k) of the training maps,
  per k bin, fitted by least squares with a quadratic in (Omega_m, sigma_8), piecewise
  constant over the modes of each bin (and the variance of the map mean at k = 0);
- ``flow_map`` ("data-space MAP", the issue's definition):
  argmax_s [-1/2 |d - M s|^2_N + log p_flow(s | theta)], L-BFGS from the Wiener filter;
- ``flow_latent_map`` ("latent MAP"): argmax_z [-1/2 |d - M f^-1(z)|^2_N - 1/2 |z|^2],
  s = f^-1(z | theta), L-BFGS from z = f(Wiener) (the prior without log|det df/ds|);
- lognormal only, the exact lognormal prior: ``exact_map`` (data-space MAP in delta,
  with the -sum log(1 + delta) Jacobian) and ``exact_latent_map`` (MAP of the Gaussian
  g = log(1 + delta), ``jacobian=False``).

Per estimator: the mean over maps of r(k) against the truth, residual power, pixel MSE
(all / observed / masked pixels), the fraction of maps at the gradient tolerance. Targets
(per flow estimator): r(k) above Wiener's on the upper half of the k bins; never below
it by more than 0.01; total MSE below Wiener's; lognormal: within 2% of the exact MAP of
the same kind (relative MSE difference and relative r(k) difference in every bin).

    python scripts/benchmark_denoise.py                        # lognormal 32^2 (~5 min)
    python scripts/benchmark_denoise.py --simulator nbody      # generates 256 PM sims
    python scripts/benchmark_denoise.py --simulator nbody --data DIR --run RUN --n-maps 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

ESTIMATORS = {
    "wiener": "Wiener filter (S^-1 + M^T N^-1 M)^-1 M^T N^-1 d with S at the map's theta",
    "flow_map": "data-space MAP: argmax_s [-|d - M s|^2_N / 2 + log p_flow(s | theta)]",
    "flow_latent_map": "latent MAP: s = f^-1(z_hat), z_hat = argmax_z "
    "[-|d - M f^-1(z)|^2_N / 2 - |z|^2 / 2] (no log-determinant)",
    "exact_map": "data-space MAP under the exact lognormal prior log p(delta | theta)",
    "exact_latent_map": "MAP of g = log(1 + delta) under its exact Gaussian prior, mapped to delta",
}


def per_map_metrics(truth, field, mask, box) -> dict:
    from fieldflow.denoise import denoising_metrics

    return denoising_metrics(truth, field, mask, box)


def summarise(met, seconds, res=None) -> dict:
    n = len(met["mse_all"])
    out = {
        "k": np.asarray(met["k"]).tolist(),
        "r_k": np.mean(met["r_k"], axis=0).tolist(),
        "residual_pk": np.mean(met["residual_pk"], axis=0).tolist(),
        "truth_pk": np.mean(met["truth_pk"], axis=0).tolist(),
        "mse_all": float(np.mean(met["mse_all"])),
        "mse_observed": float(np.mean(met["mse_observed"])),
        "mse_masked": float(np.mean(met["mse_masked"])),
        "mse_all_stderr": float(np.std(met["mse_all"]) / np.sqrt(n)),
        "seconds": round(seconds, 2),
    }
    if res is not None:
        out.update(
            fraction_converged=float(np.mean(np.asarray(res.converged))),
            stopped=res.stopped,
            iterations=res.iterations,
            grad_norm_max=float(np.max(np.asarray(res.grad_norm))),
        )
    return out


def versus_wiener(met, ref) -> dict:
    """Targets of an estimator against the Wiener filter (per-map differences, then means)."""
    dr = np.asarray(met["r_k"]) - np.asarray(ref["r_k"])  # (B, n_bins)
    mean, err = dr.mean(0), dr.std(0) / np.sqrt(len(dr))
    upper = np.arange(len(mean)) >= len(mean) // 2
    k = np.asarray(met["k"])
    mse_ratio = float(np.mean(met["mse_all"]) / np.mean(ref["mse_all"]))
    return {
        "upper_half_k_from": float(k[upper][0]),
        "r_k_difference": mean.tolist(),
        "r_k_difference_stderr": err.tolist(),
        "r_k_above_on_upper_half": bool(np.all(mean[upper] > 0)),
        "r_k_min_difference": float(mean.min()),
        "r_k_min_difference_at_k": float(k[np.argmin(mean)]),
        "r_k_never_below_by_0.01": bool(mean.min() >= -0.01),
        "mse_ratio": mse_ratio,
        "mse_lower": mse_ratio < 1.0,
        "all_targets_met": bool(np.all(mean[upper] > 0) and mean.min() >= -0.01)
        and mse_ratio < 1.0,
    }


def versus_exact(flow: dict, exact: dict, tol: float = 0.02) -> dict:
    rf, re = np.asarray(flow["r_k"]), np.asarray(exact["r_k"])
    rel_r = np.abs(rf - re) / np.maximum(np.abs(re), 1e-3)
    dm = flow["mse_all"] / exact["mse_all"] - 1.0
    return {
        "mse_relative_difference": float(dm),
        "r_k_max_abs_difference": float(np.max(np.abs(rf - re))),
        "r_k_max_relative_difference": float(np.max(rel_r)),
        "within_2_percent": bool(abs(dm) <= tol and np.all(rel_r <= tol)),
    }


def nbody_emulator(maps, theta, n, box):
    """Quadratic-in-theta fit of log P(k) per bin over the training maps -> S_k(theta)."""
    from fieldflow import fourier
    from fieldflow.denoise import signal_power_from_pk

    pk = np.asarray(fourier.power_spectrum(maps, box))  # (B, n_bins)

    def design(th):
        th = np.atleast_2d(np.asarray(th, np.float64))
        om, s8 = th[:, 0], th[:, 1]
        return np.stack([np.ones_like(om), om, s8, om * s8, om**2, s8**2], axis=1)

    coef, *_ = np.linalg.lstsq(design(theta), np.log(np.maximum(pk, 1e-30)), rcond=None)
    k0 = box**2 * float(np.mean(np.mean(maps, axis=(1, 2)) ** 2))  # P(0) = L^2 <mean^2>

    def signal(th):
        p = np.exp(design(th) @ coef)[0]
        return signal_power_from_pk(p, n, box, k0_power=k0)

    resid = np.log(np.maximum(pk, 1e-30)) - design(theta) @ coef
    return signal, float(np.sqrt(np.mean(resid**2)))


def comparison_figure(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in results.items():
        a.plot(r["k"], r["r_k"], "o-", ms=3, label=name)
        b.loglog(r["k"], r["residual_pk"], "o-", ms=3, label=name)
    b.loglog(r["k"], r["truth_pk"], "k--", label="truth")
    a.set_xlabel(r"$k$ [$h$/Mpc]")
    a.set_ylabel(r"mean $r(k)$")
    b.set_xlabel(r"$k$ [$h$/Mpc]")
    b.set_ylabel(r"mean $P_{s-\hat s}(k)$")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--simulator", choices=("lognormal", "nbody"), default="lognormal")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark_denoise"))
    p.add_argument("--data", type=Path, help="data set directory (default: generated in --out)")
    p.add_argument("--run", type=Path, help="trained run directory (default: trained in --out)")
    p.add_argument("--n", type=int, default=32, help="map side when generating")
    p.add_argument("--box", type=float, default=128.0, help="box side when generating")
    p.add_argument("--n-sims", type=int, help="simulations (default 2048 lognormal, 256 nbody)")
    p.add_argument("--n-mesh", type=int, default=32, help="PM mesh when generating nbody")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--n-maps", type=int, default=64)
    p.add_argument("--steps", type=int, default=1000, help="most L-BFGS steps of each MAP")
    p.add_argument("--gtol", type=float, default=1e-4)
    p.add_argument("--mask-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from data_gen.dataset import generate_dataset
    from data_gen.power import pixel_power_grid
    from fieldflow.checkpoint import load
    from fieldflow.cli import train_run
    from fieldflow.data import load_dataset, load_manifest
    from fieldflow.denoise import (
        flow_latent_map,
        flow_map,
        lognormal_log_prior,
        plot_denoising,
        wiener_filter,
    )
    from fieldflow.masks import make_mask
    from fieldflow.train import TrainConfig

    if args.n_maps < 1 or args.steps < 0:
        raise ValueError("--n-maps must be >= 1 and --steps >= 0")
    out = args.out / args.simulator
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    data_dir = args.data or out / "data"
    if not (data_dir / "manifest.json").exists():
        if args.data is not None:
            raise ValueError(f"{data_dir} is not a data set (no manifest.json)")
        if args.simulator == "lognormal":
            kw = {"n": args.n, "box": args.box}
            n_sims = args.n_sims or 2048
        else:
            kw = {"n": args.n, "box": args.box, "n_mesh": args.n_mesh}
            n_sims = args.n_sims or 256
        generate_dataset(data_dir, args.simulator, n_sims, progress=False, seed=args.seed, **kw)
    cfg = load_manifest(data_dir)
    if cfg["simulator"] != args.simulator:
        raise ValueError(f"{data_dir} holds {cfg['simulator']} maps, not {args.simulator}")
    box, n = float(cfg["box"]), int(cfg["n"])

    run_dir = args.run or out / "run"
    train_summary = None
    if not (run_dir / "model.json").exists():
        if args.run is not None:
            raise ValueError(f"{run_dir} is not a trained run (no model.json)")
        config = TrainConfig(
            steps=args.train_steps, eval_every=250, patience=None, learning_rate=3e-3
        )
        train_summary = train_run(
            data_dir,
            run_dir,
            "trenf",
            {"n_layers": 5, "hidden": (64, 64)},
            config,
            progress=False,
            seed=0,
        )
    model = load(run_dir)
    t_train = time.perf_counter() - t_start

    splits = load_dataset(data_dir, seed=0)  # the split train_run used: test is held out
    test_maps, test_theta = splits["test"]
    if len(test_maps) < args.n_maps:
        raise ValueError(f"{data_dir} has only {len(test_maps)} test maps (--n-maps)")
    truth = np.asarray(test_maps[: args.n_maps], np.float32)
    theta = np.asarray(test_theta[: args.n_maps], np.float32)
    b = len(truth)

    if args.simulator == "lognormal":
        signal = n**2 * np.asarray(pixel_power_grid(theta, n, box, cfg.get("slab")))
        signal_source = "exact P_2D(k; theta) of the lognormal simulator, per map"
        emu_rms = None
    else:
        emulate, emu_rms = nbody_emulator(*splits["train"], n, box)
        signal = np.stack([emulate(t) for t in theta])
        signal_source = (
            "emulated: log P(k) of the training maps fitted per k bin by a quadratic in "
            f"theta (rms scatter of one map's log P(k) about the fit {emu_rms:.3f}, mostly "
            "sample variance), per map"
        )

    mask = np.asarray(make_mask(jax.random.key(args.seed), n, args.mask_fraction))
    noise_var = np.var(truth, axis=(1, 2)).astype(np.float32)  # S/N = 1 per pixel, per map
    noise = np.broadcast_to(noise_var[:, None, None], truth.shape).astype(np.float32)
    rng = np.random.default_rng(args.seed + 1)
    d = (mask * (truth + np.sqrt(noise) * rng.standard_normal(truth.shape))).astype(np.float32)

    fields, mets, results = {}, {}, {}

    def record(name, field, seconds, res=None):
        fields[name] = np.asarray(field)
        mets[name] = per_map_metrics(truth, fields[name], mask, box)
        results[name] = summarise(mets[name], seconds, res)
        print(
            f"[benchmark_denoise] {name}: {results[name]['mse_all']:.4f} MSE, {seconds:.1f} s",
            file=sys.stderr,
        )

    t0 = time.perf_counter()
    wf = np.stack(
        [
            np.asarray(wiener_filter(d[i], mask, noise_var[i], signal[i], tol=1e-6).field)
            for i in range(b)
        ]
    )
    record("wiener", wf, time.perf_counter() - t0)

    kw = {"init": wf, "steps": args.steps, "gtol": args.gtol}
    t0 = time.perf_counter()
    res = flow_map(model.log_prob, d, mask, noise, cond=theta, **kw)
    record("flow_map", res.field, time.perf_counter() - t0, res)
    t0 = time.perf_counter()
    res = flow_latent_map(model, d, mask, noise, cond=theta, **kw)
    record("flow_latent_map", res.field, time.perf_counter() - t0, res)
    if args.simulator == "lognormal":
        for name, jac in (("exact_map", True), ("exact_latent_map", False)):
            prior = lognormal_log_prior(theta, box, jacobian=jac)
            t0 = time.perf_counter()
            res = flow_map(prior, d, mask, noise, parametrization="log1p", **kw)
            record(name, res.field, time.perf_counter() - t0, res)

    report = {
        "simulator": args.simulator,
        "command": "python scripts/benchmark_denoise.py " + " ".join(argv or sys.argv[1:]),
        "n": n,
        "box": box,
        "n_maps": b,
        "theta_range": [theta.min(0).tolist(), theta.max(0).tolist()],
        "mask_fraction": float(1 - mask.mean()),
        "noise": "white, variance = the pixel variance of each map",
        "signal_to_noise_per_pixel": float(np.mean(np.sqrt(np.var(truth, (1, 2)) / noise_var))),
        "wiener_signal": signal_source,
        "data": str(data_dir),
        "run": str(run_dir),
        "train_summary": None
        if train_summary is None
        else {
            k: train_summary.get(k)
            for k in (
                "steps_done",
                "wall_time_s",
                "val_nll_per_pixel",
                "test_nll_per_pixel",
                "gap_nats_per_pixel",
            )
        },
        "optimiser": f"L-BFGS, at most {args.steps} steps, gtol {args.gtol}, from the Wiener "
        "filter; no Wiener large scales spliced in",
        "estimators": {k: v for k, v in ESTIMATORS.items() if k in results},
        "methods": results,
        "targets": {},
        "seconds_total": None,
    }
    tg = report["targets"]
    for name in results:
        if name != "wiener":
            tg[f"{name}_vs_wiener"] = versus_wiener(mets[name], mets["wiener"])
    if args.simulator == "lognormal":
        tg["flow_map_vs_exact_map"] = versus_exact(results["flow_map"], results["exact_map"])
        tg["flow_latent_map_vs_exact_latent_map"] = versus_exact(
            results["flow_latent_map"], results["exact_latent_map"]
        )
    report["seconds_total"] = round(time.perf_counter() - t_start, 1)
    report["seconds_data_and_training"] = round(t_train, 1)

    comparison_figure(results, out / "r_k_residual.png")
    for name in ("flow_map", "flow_latent_map"):
        plot_denoising(
            truth[0],
            d[0],
            mask,
            wf[0],
            fields[name][0],
            box=box,
            path=out / f"example_{name}.png",
            labels=("Wiener", name),
            title=f"theta = {theta[0].round(3).tolist()}",
        )
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        print(f"benchmark_denoise: error: {err}", file=sys.stderr)
        sys.exit(2)
