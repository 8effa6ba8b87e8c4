"""Figure-of-merit benchmark: TRENF posterior vs power spectrum vs exact likelihood; prints JSON.

A thin wrapper over ``fieldflow.inference.fom_comparison`` (see there for the methods, the
statistics and the pass criteria). The data set is generated, resumed or reused with
``fieldflow.workflows.ensure_dataset`` and the model trained or reused with
``fieldflow.workflows.ensure_run`` (``--run`` points at a trained run)::

    python scripts/benchmark_fom.py                                  # lognormal 32^2 (~15 min)
    python scripts/benchmark_fom.py --run out/bench_fom/lognormal_n32/run
    python scripts/benchmark_fom.py --simulator nbody --n-sims 512 --n-fiducial 64
    python scripts/benchmark_fom.py --calibrate 128   # + curvature-adjusted flow and P(k)
    python scripts/benchmark_fom.py --n-sims 256 --n-fiducial 64 --steps 200 --n-test 20 \\
        --grid 24 --workdir /tmp/fom_smoke                           # smoke test (~2 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULTS = {
    "lognormal": {"n_sims": 2048, "n_fiducial": 256},
    "nbody": {"n_sims": 512, "n_fiducial": 64},  # x 4 slabs: 2048 and 256 maps
}
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
    ("--n-test", int, 100, "test maps for FoM and coverage"),
    ("--n-fid-eval", int, 64, "fiducial maps held out of the covariance for the fiducial FoM"),
    ("--grid", int, 50, "grid cells per axis over the prior"),
    ("--chunk", int, 4096, "(map, theta) pairs per flow call"),
    ("--seed", int, 0, "data, split and training seed"),
    ("--out", Path, None, "JSON file (default in the workdir)"),
    ("--calibrate", int, 0, "held-out maps per theta (5 theta) to curvature-adjust flow and P(k)"),
]
TRAIN_KEYS = ("steps_done", "best_step", "val_nll_per_pixel", "test_nll_per_pixel")
TRAIN_KEYS += ("exact_test_nll_per_pixel", "gap_nats_per_pixel", "n_params", "reused")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--simulator", choices=("lognormal", "nbody", "grf"), default="lognormal")
    for flag, kind, default, help_text in OPTIONS:
        p.add_argument(flag, type=kind, default=default, help=help_text)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="TRENF MLP widths")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    from fieldflow import inference
    from fieldflow import workflows as wf
    from fieldflow.io import to_jsonable, write_json
    from fieldflow.train import TrainConfig

    base = args.workdir / f"{args.simulator}_n{args.n}"
    data_dir = args.data or base / "data"
    d = DEFAULTS.get(args.simulator, DEFAULTS["lognormal"])
    n_fid = d["n_fiducial"] if args.n_fiducial is None else args.n_fiducial
    kw = dict(n=args.n, box=args.box, seed=args.seed, n_fiducial=n_fid)
    if args.simulator == "nbody":
        kw.update(n_mesh=args.n_mesh, n_steps=args.pm_steps, n_slabs=args.n_slabs)
    t0 = time.perf_counter()
    n_sims = args.n_sims or d["n_sims"]
    wf.ensure_dataset(data_dir, args.simulator, n_sims, progress=not args.no_progress, **kw)
    t_data = time.perf_counter() - t0
    run_dir = args.run or base / f"run_s{args.steps}_l{args.layers}"
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, patience=None,
        warmup_steps=min(100, args.steps // 10), eval_every=max(args.steps // 20, 1),
        checkpoint_every=max(args.steps // 4, 1), seed=args.seed,
    )  # fmt: skip
    model_kwargs = {"n_layers": args.layers, "hidden": tuple(args.hidden)}
    train_summary, t_train = wf.ensure_run(
        data_dir, run_dir, model_kwargs=model_kwargs, config=config,
        progress=not args.no_progress, seed=args.seed,
    )  # fmt: skip
    cfg, model, splits = wf.load_run_and_data(run_dir, data_dir, seed=args.seed)
    grid = inference.theta_grid(args.grid, args.grid)
    sims = None
    if args.calibrate:
        sims, _ = wf.calibration_simulations(cfg, splits, None, args.calibrate, args.seed + 1)
    try:
        res = inference.fom_comparison(
            model, splits, cfg, grid, n_test=args.n_test, n_fid_eval=args.n_fid_eval,
            chunk=args.chunk, calibration_sims=sims,
        )  # fmt: skip
    except ValueError as err:
        raise SystemExit(f"{data_dir}: {err}") from None
    timings = {"data_s": t_data, "train_s": t_train, **res.pop("timings_s")}
    timings["total_s"] = time.perf_counter() - t_start
    head = ("n_train_maps", "n_fiducial_cov", "n_fiducial_eval", "grid", "fom_definition")
    out = {
        **{k: cfg.get(k) for k in ("simulator", "n", "box", "slab")},
        **{"data_dir": str(data_dir), "run_dir": str(run_dir)},
        **{k: res.pop(k) for k in head},
        "train": {k: train_summary[k] for k in TRAIN_KEYS if k in train_summary},
        **res,  # power_spectrum_likelihood, results, checks
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    print(json.dumps(to_jsonable(out), indent=2))
    path = write_json(args.out or base / f"fom_{run_dir.name}_g{args.grid}.json", out)
    print(f"wrote {path}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
