"""``fieldflow benchmark``: speed of log_prob, sample and a training step (JSON).

For each map size N: maps per second of TRENF's jitted ``log_prob``, ``sample`` and one
training step, and of the bare rfft2 + irfft2 pair on the same batch (the floor of one
layer); see ``fieldflow.benchmarks``. Prints JSON; with ``--out-dir`` also writes it to
``summary.json`` there.
"""

from __future__ import annotations

import json
from pathlib import Path

from fieldflow.commands import subparser

HELP = "speed of log_prob, sample and a training step (JSON)"
EXAMPLES = ["fieldflow benchmark --sizes 64 128"]


def add_parser(subparsers):
    p = subparser(subparsers, "benchmark", HELP, EXAMPLES, __doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="MLP widths")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (at least)")
    p.add_argument("--out-dir", type=Path, default=None)
    return p


def run(args) -> dict:
    from fieldflow.benchmarks import speed_benchmark
    from fieldflow.io import write_json

    result = speed_benchmark(
        sizes=args.sizes,
        batch=args.batch,
        n_layers=args.layers,
        hidden=tuple(args.hidden),
        repeats=args.repeats,
    )
    print(json.dumps(result, indent=2))
    if args.out_dir is not None:
        write_json(Path(args.out_dir) / "summary.json", result)
    return result
