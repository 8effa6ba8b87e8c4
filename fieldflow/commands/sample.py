"""``fieldflow sample``: draw mock fields at given (Ωm, σ8) to .npz and PNG.

Runs the trained flow backwards on white noise, x = f^-1(z | θ) with z ~ N(0, I). Writes
``samples.npz`` (``maps``, ``theta``, ``seed``), ``samples.png`` (up to 8 maps) and
``summary.json`` into OUT_DIR.
"""

from __future__ import annotations

import time
from pathlib import Path

from fieldflow.commands import subparser

HELP = "draw mock fields at given (Ωm, σ8) to .npz and PNG"
EXAMPLES = ["fieldflow sample runs/trenf out/samples --theta 0.3 0.8 --num 8"]


def add_parser(subparsers):
    p = subparser(subparsers, "sample", HELP, EXAMPLES, __doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--theta", type=float, nargs=2, metavar=("OMEGA_M", "SIGMA_8"))
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args) -> dict:
    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    from fieldflow.checkpoint import load
    from fieldflow.io import save_npz, write_json
    from fieldflow.plots import plot_maps

    model = load(args.run_dir)
    key = jax.random.key(args.seed)
    cond = None
    if model.cond_dim:
        if args.theta is None:
            raise ValueError("--theta OMEGA_M SIGMA_8 is required for a conditional model")
        cond = np.tile(np.asarray(args.theta, np.float32), (args.num, 1))
    t0 = time.perf_counter()
    maps = model.sample(key, cond) if cond is not None else model.sample(key, num=args.num)
    maps = np.asarray(jax.block_until_ready(maps))
    elapsed = time.perf_counter() - t0
    out = Path(args.out_dir)
    save_npz(
        out / "samples.npz",
        maps=maps,
        theta=np.zeros((args.num, 0)) if cond is None else cond,
        seed=args.seed,
    )
    fig = plot_maps(maps[: min(8, args.num)])
    fig.savefig(out / "samples.png", dpi=110)
    plt.close(fig)
    summary = {
        "command": "sample",
        "num": args.num,
        "theta": args.theta,
        "seed": args.seed,
        "seconds_incl_compile": elapsed,
        "files": ["samples.npz", "samples.png"],
    }
    write_json(out / "summary.json", summary)
    print(f"wrote {args.num} samples to {out / 'samples.npz'} and {out / 'samples.png'}")
    return summary
