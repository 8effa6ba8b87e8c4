"""``fieldflow denoise``: reconstruct masked, noisy maps with the Wiener filter and a flow
(or exact) MAP.

Input: an .npz with ``maps`` (B, N, N) or ``map`` (N, N), optionally ``theta`` and ``box``.
True maps become a synthetic observation (a survey mask, ``--masked-fraction``, and white
noise, ``--noise-fraction`` of the maps' pixel std or ``--noise-sigma``); ``--observed``
maps are the data themselves; ``--mask-file`` holds ``mask`` (N, N) (1 = observed) and
optionally ``noise_var``. The Wiener filter's signal power comes from ``--pk-file`` (``pk``
binned on fieldflow.fourier.k_bin_edges, or ``pk_half`` on the rfft2 half plane) or from
theta through data_gen's P_2D (the first map's theta).

Priors of the MAP: ``flow`` is the data-space MAP argmax_s [-|d - M s|^2_N / 2 +
log p_flow(s | theta)]; ``flow-latent`` the latent MAP s = f^-1(z_hat), z_hat = argmax_z
[-|d - M f^-1(z)|^2_N / 2 - |z|^2 / 2]; ``lognormal`` / ``lognormal-latent`` the exact
lognormal prior in delta / of g = log(1 + delta); ``gaussian`` the Wiener filter's Gaussian.

Writes to --out: observation.npz, wiener.npz, map.npz (with a prior), summary.json
(settings, convergence, r(k), residual P(k), pixel MSE inside / outside the mask) and
denoise.png (the first map).
"""

from __future__ import annotations

from pathlib import Path

from fieldflow.commands import subparser

HELP = "reconstruct masked, noisy maps: Wiener filter and flow (or exact) MAP"
EXAMPLES = [
    "fieldflow denoise data/lognormal/shard_00000.npz --out out/denoise --model runs/trenf "
    "--prior flow-latent --index 0 --masked-fraction 0.2 --noise-fraction 1.0 --steps 100",
    "fieldflow denoise data/lognormal/shard_00000.npz --out out/denoise_exact --index 0 1 "
    "--prior lognormal-latent --steps 100 --no-plot",
]


def add_parser(subparsers):
    p = subparser(subparsers, "denoise", HELP, EXAMPLES, __doc__)
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
    r.add_argument("--model", type=Path, help="trained flow run directory")
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
    return p


def _select(maps, theta, index):
    """The maps (and theta rows) of ``index`` (None: all)."""
    if not index:
        return maps, theta
    bad = [i for i in index if not -len(maps) <= i < len(maps)]
    if bad:
        raise ValueError(f"--index {bad[0]} is out of range for {len(maps)} maps")
    return maps[index], None if theta is None else theta[index]


def run(args) -> dict:
    import numpy as np

    from fieldflow.denoise import reconstruct as rc
    from fieldflow.io import read_maps, save_npz, to_jsonable, write_json

    maps, file_theta, extra = read_maps(args.maps)
    maps, file_theta = _select(maps, file_theta, args.index)
    b, n = maps.shape[0], maps.shape[-1]
    box = float(args.box or extra.get("box") or 256.0)
    if args.theta is not None:
        theta = np.tile(np.asarray(args.theta, np.float32), (b, 1))
    elif file_theta is not None:
        theta = np.broadcast_to(file_theta, (b, 2)).astype(np.float32)
    else:
        theta = None
    truth, data, mask, noise_var = rc.prepare_observation(
        maps,
        observed=args.observed,
        mask_file=args.mask_file,
        masked_fraction=args.masked_fraction,
        mask_seed=args.mask_seed,
        noise_sigma=args.noise_sigma,
        noise_fraction=args.noise_fraction,
        noise_seed=args.noise_seed,
    )
    prior = args.prior or ("flow" if args.model is not None else "none")
    if prior in ("flow", "flow-latent") and args.model is None:
        raise ValueError(f"--prior {prior} needs --model RUN_DIR")
    s_half = rc.wiener_signal_power(n, box, pk_file=args.pk_file, theta=theta)
    model = None
    if prior in ("flow", "flow-latent"):
        from fieldflow.checkpoint import load

        if not args.model.is_dir():
            raise FileNotFoundError(f"model directory {args.model} does not exist")
        model = load(args.model)
    rec = rc.reconstruct(
        data,
        mask,
        noise_var,
        s_half,
        prior=prior,
        model=model,
        theta=theta,
        box=box,
        steps=args.steps,
        gtol=args.gtol,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        fit_theta=args.fit_theta,
        cg_tol=args.cg_tol,
        cg_max_iter=args.cg_max_iter,
    )

    out = Path(args.out)
    wf, res = rec.wiener, rec.map
    save_npz(out / "observation.npz", data=data, mask=mask, noise_var=noise_var)
    save_npz(
        out / "wiener.npz",
        field=np.asarray(wf.field),
        iterations=np.asarray(wf.iterations),
        residual=np.asarray(wf.residual),
    )
    if res is not None:
        fitted = {} if res.theta is None else {"theta": np.asarray(res.theta)}
        save_npz(out / "map.npz", field=np.asarray(res.field), **fitted)
    summary = to_jsonable(
        {
            "command": "denoise",
            "input": str(args.maps),
            **rc.reconstruction_summary(
                rec, truth, mask, noise_var, box=box, theta=theta, prior=prior
            ),
        }
    )
    write_json(out / "summary.json", summary)
    if not args.no_plot:
        import matplotlib.pyplot as plt

        from fieldflow.plots import plot_denoising

        fig = plot_denoising(
            truth[0] if truth is not None else np.asarray(wf.field[0]),
            data[0],
            mask,
            np.asarray(wf.field[0]),
            None if res is None else np.asarray(res.field[0]),
            box=box,
            path=out / "denoise.png",
            labels=("Wiener", f"MAP ({prior})"),
            title=None if truth is not None else "no truth: top-left panel is the Wiener filter",
        )
        plt.close(fig)
    written = ["wiener.npz"] + (["map.npz"] if res is not None else []) + ["summary.json"]
    print(f"wrote {out}/: " + ", ".join(written + ([] if args.no_plot else ["denoise.png"])))
    return summary
