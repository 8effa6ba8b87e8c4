"""Residual-model benchmark: is the score-compressed likelihood honest on many maps per theta?
Prints JSON.

A thin wrapper over ``fieldflow.inference.residual_benchmark.residual_model_benchmark`` (see
there): the score-compressed likelihood of a run with each residual model ('flow', the
default, 'gaussian', 'student'), its score-test eigenvalues and per-theta coverage on NUM
independent maps at each calibration theta, and its coverage over the test split::

    python scripts/benchmark_residual_models.py RUN DATA --num 512 --sims-cache SIMS
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from fieldflow.inference.residual_benchmark import RESIDUAL_MODELS
    from fieldflow.inference.summary import SCORE_CORR_DEGREE

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("--num", type=int, default=512, help="independent maps per calibration theta")
    p.add_argument("--seed", type=int, default=0, help="seed of their simulations")
    p.add_argument("--tails", nargs="+", choices=RESIDUAL_MODELS, default=list(RESIDUAL_MODELS))
    p.add_argument("--n-test", type=int, default=200, help="test maps across the prior")
    p.add_argument("--grid", type=int, default=40, help="grid cells per axis")
    p.add_argument(
        "--corr-degree",
        type=int,
        default=SCORE_CORR_DEGREE,
        help="degree in theta of the residuals' correlations (default: the likelihood's)",
    )
    p.add_argument("--sims-cache", type=Path, default=None, help="folder keeping the simulations")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default RUN/...)")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from fieldflow.inference.residual_benchmark import residual_model_benchmark
    from fieldflow.io import to_jsonable, write_json

    out = residual_model_benchmark(
        args.run_dir,
        args.data_dir,
        num=args.num,
        seed=args.seed,
        tails=args.tails,
        n_test=args.n_test,
        grid_size=args.grid,
        corr_degree=args.corr_degree,
        sims_cache=args.sims_cache,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(json.dumps(to_jsonable(out), indent=2))
    path = write_json(args.out or Path(args.run_dir) / "benchmark_residual_models.json", out)
    print(f"wrote {path}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
