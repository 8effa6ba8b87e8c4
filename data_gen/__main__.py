"""Command line: ``python -m data_gen OUT_DIR --simulator lognormal --n-sims 1024 ...``.

Draws theta over the prior (Sobol or Latin hypercube), simulates, writes sharded .npz
files and ``OUT_DIR/fiducial`` at FIDUCIAL_THETA; re-running the same command resumes.
``--worker I --workers N`` writes only shard j with j % N == I (see ``data_gen.dataset``).
"""

from __future__ import annotations

import argparse
import sys

from data_gen.cosmology import add_prior_box_arguments
from data_gen.dataset import SIMULATORS, generate_dataset, generate_options, verify_dataset
from data_gen.power import DEFAULT_BOX, DEFAULT_N


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_gen", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", help="output directory (created; resumed if it exists)")
    p.add_argument("--simulator", choices=SIMULATORS, default="lognormal")
    p.add_argument("--n-sims", type=int, default=1024, help="simulations over the prior")
    p.add_argument("--n-fiducial", type=int, default=0, help="simulations at the fiducial theta")
    p.add_argument("--n", type=int, default=DEFAULT_N, help="map pixels per side")
    p.add_argument("--box", type=float, default=DEFAULT_BOX, help="box side in h^-1 Mpc")
    p.add_argument(
        "--slab", type=float, default=None, help="slab thickness (grf/lognormal; default box/4)"
    )
    p.add_argument("--nonlinear", action="store_true", help="halofit P(k) (grf/lognormal)")
    p.add_argument("--shard-size", type=int, default=64, help="simulations per shard")
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument("--design", choices=("sobol", "lhs"), default="sobol")
    p.add_argument(
        "--n-mesh", type=int, default=None, help="nbody: particles/mesh per side (default 2 n)"
    )
    p.add_argument("--n-steps", type=int, default=10, help="nbody: KDK steps")
    p.add_argument("--a-init", type=float, default=0.1, help="nbody: 2LPT scale factor")
    p.add_argument("--n-slabs", type=int, default=4, help="nbody: slabs per simulation")
    add_prior_box_arguments(p)
    p.add_argument("--worker", type=int, default=0, help="this worker's index (0..N-1)")
    p.add_argument("--workers", type=int, default=1, help="N: workers sharing the data set")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    kw = generate_options(a.simulator, vars(a))
    try:
        cfg = generate_dataset(a.out_dir, a.simulator, a.n_sims, progress=not a.no_progress, **kw)
        status = verify_dataset(a.out_dir, read=False)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if status["complete"]:
        print(f"done: {cfg['n_sims']} {cfg['simulator']} simulations in {a.out_dir}")
    else:
        print(f"worker {a.worker}/{a.workers} done; {len(status['missing'])} shards to come")
    return 0


if __name__ == "__main__":
    sys.exit(main())
