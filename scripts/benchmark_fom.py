"""Figure-of-merit benchmark: TRENF posterior vs power spectrum vs exact likelihood; prints JSON.

A thin wrapper over ``fieldflow.campaign.fom_benchmark``: the data set generated, resumed or
reused, the model trained or reused (``--run`` points at a trained run), then
``fieldflow.inference.fom_comparison`` (see there for the methods, the statistics and the
pass criteria)::

    python scripts/benchmark_fom.py                                  # lognormal 32^2 (~15 min)
    python scripts/benchmark_fom.py --run out/bench_fom/lognormal_n32/run
    python scripts/benchmark_fom.py --simulator nbody --n-sims 512 --n-fiducial 64
    python scripts/benchmark_fom.py --calibrate 128   # + curvature-adjusted flow and P(k)
    python scripts/benchmark_fom.py --log-offset 0    # a TRENF of ln(1 + x): exact class
    python scripts/benchmark_fom.py --independent-fiducial   # fiducial maps: fresh sims
    python scripts/benchmark_fom.py --n-sims 256 --n-fiducial 64 --steps 200 --n-test 20 \\
        --grid 24 --workdir /tmp/fom_smoke                           # smoke test (~2 min)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OPTIONS = [  # (flag, type, default, help)
    ("--workdir", Path, Path("out/bench_fom"), "default: out/bench_fom"),
    ("--data", Path, None, "data set (default WORKDIR/<simulator>_n<N>/data), made if incomplete"),
    ("--run", Path, None, "a trained run to reuse"),
    ("--n-sims", int, None, "lognormal 2048, nbody 512"),
    ("--n-fiducial", int, None, "lognormal 256, nbody 64"),
    ("--n", int, 32, "pixels per side"),
    ("--box", float, 128.0, "h^-1 Mpc"),
    ("--n-mesh", int, None, "nbody: particles per side (N)"),
    ("--pm-steps", int, 10, "nbody: PM steps"),
    ("--n-slabs", int, 4, "nbody: slabs (maps) per simulation"),
    ("--steps", int, 3000, "training steps"),
    ("--batch-size", int, 32, "training batch"),
    ("--lr", float, 2e-3, "learning rate"),
    ("--layers", int, 5, "TRENF layers"),
    ("--log-offset", float, None, "a TRENF of log(1 + C + x); 0: lognormal maps' class"),
    ("--n-test", int, 100, "test maps for FoM and coverage"),
    ("--n-fid-eval", int, 64, "fiducial maps held out of the covariance for the fiducial FoM"),
    ("--grid", int, 50, "grid cells per axis over the prior"),
    ("--chunk", int, 4096, "(map, theta) pairs per flow call"),
    ("--seed", int, 0, "data, split and training seed"),
    ("--out", Path, None, "JSON file (default in the workdir)"),
    ("--calibrate", int, 0, "held-out maps per theta (5 theta) to curvature-adjust flow and P(k)"),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--simulator", choices=("lognormal", "nbody", "grf"), default="lognormal")
    for flag, kind, default, help_text in OPTIONS:
        p.add_argument(flag, type=kind, default=default, help=help_text)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="TRENF MLP widths")
    p.add_argument(
        "--independent-fiducial",
        action="store_true",
        help="evaluate N_FID_EVAL fresh fiducial simulations, one map each (independent draws)",
    )
    p.add_argument("--sims-cache", type=Path, default=None, help="keep fresh simulations here")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from fieldflow.campaign import fom_benchmark
    from fieldflow.io import to_jsonable, write_json

    kw = {k: v for k, v in vars(args).items() if k not in ("simulator", "out", "no_progress")}
    try:
        out = fom_benchmark(args.simulator, **kw, progress=not args.no_progress)
    except ValueError as err:
        raise SystemExit(f"{args.data or args.workdir}: {err}") from None
    print(json.dumps(to_jsonable(out), indent=2))
    base = args.workdir / f"{args.simulator}_n{args.n}"
    run_name = Path(out["run_dir"]).name
    path = write_json(args.out or base / f"fom_{run_name}_g{args.grid}.json", out)
    print(f"wrote {path}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
