"""``fieldflow sample``: draw mock fields at given (Ωm, σ8) to .npz and PNG.

Runs the trained flow backwards on white noise, x = f^-1(T z | θ) with z ~ N(0, I). T = 1
(the default) gives the flow's own samples, draws from its density p(x | θ). A
maximum-likelihood flow is a little wider than its data, and on N-body maps its samples'
power comes out too high in every k bin; ``--fit-temperature DATA_DIR`` fits a sampling
temperature T(θ) on the data set's training maps (their band power below the Nyquist
frequency, matched at their own θ; ``fieldflow.sampling_temperature``), writes it to
``OUT_DIR/sampling_temperature.json`` and uses it; ``--temperature FILE`` uses such a file
again, ``--temperature T`` a number. Tempered mocks are calibrated on the simulations'
power, not drawn from p(x | θ): check them on fresh simulations with
``scripts/benchmark_samples.py RUN DATA --temperature FILE``.

Writes ``samples.npz`` (``maps``, ``theta``, ``seed``, ``temperature``), ``samples.png``
(up to 8 maps) and ``summary.json`` into OUT_DIR.
"""

from __future__ import annotations

import time
from pathlib import Path

from fieldflow.commands import subparser

HELP = "draw mock fields at given (Ωm, σ8) to .npz and PNG"
EXAMPLES = [
    "fieldflow sample runs/trenf out/samples --theta 0.3 0.8 --num 8",
    "fieldflow sample runs/trenf out/samples --theta 0.3 0.8 --fit-temperature data/ln32",
]


def add_parser(subparsers):
    p = subparser(subparsers, "sample", HELP, EXAMPLES, __doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--theta", type=float, nargs=2, metavar=("OMEGA_M", "SIGMA_8"))
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--temperature",
        default=None,
        metavar="T_OR_FILE",
        help="latent temperature: a number, or a sampling_temperature.json written by "
        "--fit-temperature (default 1: the flow's own samples)",
    )
    p.add_argument(
        "--fit-temperature",
        type=Path,
        default=None,
        metavar="DATA_DIR",
        help="fit T(theta) on this data set's training maps (the run's data set) and use it",
    )
    p.add_argument(
        "--fit-maps",
        type=int,
        default=None,
        help="training maps the fit uses (default: all; 6552 take ~25 s for a 32^2 flow)",
    )
    p.add_argument("--fit-degree", type=int, default=1, help="degree of ln T in theta")
    return p


def _fit(args, model, cfg: dict, splits: dict):
    """Fit the sampling temperature on ``--fit-maps`` training maps and save it."""
    import numpy as np

    from fieldflow.sampling_temperature import TEMPERATURE_FILE, fit_sampling_temperature

    if args.fit_maps is not None and args.fit_maps < 32:
        raise ValueError(f"--fit-maps must be at least 32, got {args.fit_maps}")
    maps, theta = splits["train"]
    keep = np.random.default_rng(args.seed).permutation(len(maps))[: args.fit_maps]
    fitted = fit_sampling_temperature(
        model,
        maps[keep],
        theta[keep],
        float(cfg["box"]),
        degree=args.fit_degree,
        progress=not args.no_progress,
    )
    fitted.save(Path(args.out_dir) / TEMPERATURE_FILE)
    return fitted


def run(args) -> dict:
    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    from fieldflow.checkpoint import load
    from fieldflow.io import save_npz, write_json
    from fieldflow.plots import plot_maps
    from fieldflow.sampling_temperature import temperature_at
    from fieldflow.workflows import load_run_and_data

    if args.fit_temperature is not None and args.temperature is not None:
        raise ValueError("give --temperature or --fit-temperature, not both")
    if args.fit_temperature is not None:
        cfg, model, splits = load_run_and_data(args.run_dir, args.fit_temperature)
    else:
        model = load(args.run_dir)
    key = jax.random.key(args.seed)
    cond = None
    if model.cond_dim:
        if args.theta is None:
            raise ValueError("--theta OMEGA_M SIGMA_8 is required for a conditional model")
        cond = np.tile(np.asarray(args.theta, np.float32), (args.num, 1))
    if args.fit_temperature is not None:
        fitted = _fit(args, model, cfg, splits)
        temperature, source = float(fitted(cond[:1])[0]), f"fitted on {args.fit_temperature}"
    else:
        theta = None if cond is None else cond[0]
        temperature, source = temperature_at(args.temperature, theta)
    t0 = time.perf_counter()
    if cond is not None:
        maps = model.sample(key, cond, temperature=temperature)
    else:
        maps = model.sample(key, num=args.num, temperature=temperature)
    maps = np.asarray(jax.block_until_ready(maps))
    elapsed = time.perf_counter() - t0
    out = Path(args.out_dir)
    save_npz(
        out / "samples.npz",
        maps=maps,
        theta=np.zeros((args.num, 0)) if cond is None else cond,
        seed=args.seed,
        temperature=temperature,
    )
    fig = plot_maps(maps[: min(8, args.num)])
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)
    summary = {
        "command": "sample",
        "num": args.num,
        "theta": args.theta,
        "seed": args.seed,
        "temperature": temperature,
        "temperature_from": source,
        "seconds_incl_compile": elapsed,
        "files": ["samples.npz", "samples.png"]
        + (["sampling_temperature.json"] if args.fit_temperature is not None else []),
    }
    if args.fit_temperature is not None:
        summary["temperature_fit"] = {
            "coefficients": fitted.coefficients,
            "degree": fitted.degree,
            **(fitted.fit_diagnostics or {}),
        }
    write_json(out / "summary.json", summary)
    print(
        f"wrote {args.num} samples (temperature {temperature:.4g}) to {out / 'samples.npz'} "
        f"and {out / 'samples.png'}"
    )
    return summary
