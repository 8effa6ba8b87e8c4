"""``fieldflow generate``: simulate a data set of maps (sharded .npz, resumable).

Draws theta over the prior box (``--omega-m-range``, ``--sigma8-range``; default
[0.2, 0.5] x [0.5, 1.1], inside the simulators' [0.1, 0.6] x [0.4, 1.4]; the trained range of
the flows trained on the data set), simulates GRF, lognormal or N-body (particle-mesh) maps and
writes sharded ``.npz`` files, a ``manifest.json`` and, with ``--n-fiducial``, a
``fiducial/`` set at the fiducial theta; the same command again resumes an interrupted run.

``--worker I --workers N`` (one process per machine, a shared directory) writes only shard
j with j % N == I, byte-identical to a one-process run; whichever worker (or plain rerun)
finds every shard present verifies the whole set against the manifest. Each worker writes
``summary_worker<I>.json``; the summary says whether the set is complete.
"""

from __future__ import annotations

from pathlib import Path

from data_gen.cosmology import add_prior_box_arguments
from fieldflow.commands import subparser
from fieldflow.io import write_json

HELP = "simulate a data set of maps (sharded .npz, resumable)"
EXAMPLES = [
    "fieldflow generate data/ln32 --simulator lognormal --n-sims 2048 --n 32 --box 128 "
    "--n-fiducial 256",
    "fieldflow generate data/nb32 --simulator nbody --n-sims 2048 --n 32 --box 128 --n-mesh 64 "
    "--n-fiducial 128 --omega-m-range 0.1 0.5 --sigma8-range 0.5 1.3",
]


def add_parser(subparsers):
    p = subparser(subparsers, "generate", HELP, EXAMPLES, __doc__)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--simulator", choices=("grf", "lognormal", "nbody"), default="lognormal")
    p.add_argument("--n-sims", type=int, default=512)
    p.add_argument("--n-fiducial", type=int, default=0, help="extra simulations at the fiducial θ")
    p.add_argument("--n", type=int, default=32, help="pixels per side")
    p.add_argument("--box", type=float, default=128.0, help="side of the map in h^-1 Mpc")
    p.add_argument("--slab", type=float, default=None, help="grf/lognormal: slab (box/4)")
    p.add_argument("--nonlinear", action="store_true", help="grf/lognormal: halofit P(k)")
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--design", choices=("sobol", "lhs"), default="sobol", help="θ design")
    p.add_argument(
        "--n-mesh",
        type=int,
        default=None,
        help="nbody: particles (and PM cells) per side; default 2 N, i.e. (2N)^3 / 4 / N^2 = "
        "2 N particles per pixel with 4 slabs (the manifest records particles_per_pixel)",
    )
    p.add_argument("--n-steps", type=int, default=10, help="nbody: PM steps")
    p.add_argument("--a-init", type=float, default=0.1, help="nbody: 2LPT scale factor")
    p.add_argument("--n-slabs", type=int, default=4, help="nbody: slabs per simulation")
    add_prior_box_arguments(p)
    p.add_argument("--worker", type=int, default=0, help="this worker's index (0..N-1)")
    p.add_argument("--workers", type=int, default=1, help="N: workers sharing the data set")
    return p


def run(args) -> dict:
    from data_gen.dataset import check_worker, generate_dataset, generate_options, verify_dataset

    check_worker(args.worker, args.workers)
    kw = generate_options(args.simulator, vars(args))
    cfg = generate_dataset(
        args.out_dir, args.simulator, args.n_sims, progress=not args.no_progress, **kw
    )
    status = verify_dataset(args.out_dir, read=False)
    summary = {"command": "generate", "out_dir": str(args.out_dir), "config": cfg}
    name = "summary.json"
    if args.workers > 1:
        summary.update(worker=args.worker, workers=args.workers, complete=status["complete"])
        summary["missing_shards"] = len(status["missing"])
        name = f"summary_worker{args.worker}.json"
    write_json(Path(args.out_dir) / name, summary)
    if status["complete"]:
        print(f"wrote {cfg['n_sims']} {cfg['simulator']} simulations to {args.out_dir}")
    else:
        print(
            f"worker {args.worker}/{args.workers}: wrote its shards to {args.out_dir}; "
            f"{len(status['missing'])} of {status['n_shards']} shards are still to come"
        )
    return summary
