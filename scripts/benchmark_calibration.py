"""Calibration benchmark: are the posteriors fieldflow reports honest? Prints JSON.

A thin wrapper over ``fieldflow.inference.calibration_benchmark.calibration_benchmark`` (see
there): the score tests of the raw, curvature-adjusted and score-compressed flow and of P(k)
on independent simulations at the calibration theta, the FoM and coverage of every posterior,
and pass/fail of the calibrated ones (68% in [0.62, 0.74], 95% in [0.91, 0.98], eigenvalues
in [0.7, 1.4])::

    python scripts/benchmark_calibration.py RUN DATA --num 64 --n-test 200 --n-fid-eval 100
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("--num", type=int, default=64, help="held-out maps per calibration theta")
    p.add_argument("--n-test", type=int, default=200, help="test maps across the prior")
    p.add_argument(
        "--n-fid-eval",
        type=int,
        default=100,
        help="fiducial maps evaluated (fresh simulations, one map each)",
    )
    p.add_argument("--grid", type=int, default=40, help="grid cells per axis")
    p.add_argument(
        "--n-select", type=int, default=200, help="validation maps that choose the default"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sims-cache",
        type=Path,
        default=None,
        help="folder keeping the held-out simulations for the next run on the same data set",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON file (default RUN/...)")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from fieldflow.inference.calibration_benchmark import calibration_benchmark
    from fieldflow.io import to_jsonable, write_json

    out = calibration_benchmark(
        args.run_dir,
        args.data_dir,
        num=args.num,
        n_test=args.n_test,
        n_fid_eval=args.n_fid_eval,
        grid_size=args.grid,
        n_select=args.n_select,
        seed=args.seed,
        sims_cache=args.sims_cache,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(json.dumps(to_jsonable(out), indent=2))
    path = write_json(args.out or Path(args.run_dir) / "benchmark_calibration.json", out)
    print(f"wrote {path}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
