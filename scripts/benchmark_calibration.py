"""Calibration benchmark: are the posteriors fieldflow reports honest? Prints JSON.

For a trained run and its data set:

1. the calibration of ``fieldflow calibrate`` (curvature adjustment from ``--num`` held-out
   maps at the fiducial theta and four interior points; the score-compressed likelihood from
   the training and fiducial maps);
2. the score test of every posterior at each of those theta on *independent* simulations
   (another seed): raw flow, curvature-adjusted flow, score-compressed flow and P(k)
   (eigenvalues of F^-1 C; 1 = honest, > 1 overconfident);
3. ``fom_comparison`` with the same calibration simulations: FoM and the coverage of the 68% and
   95% regions over ``--n-test`` test maps across the prior and ``--n-fid-eval`` fiducial maps;
4. checks for the calibrated posteriors (``fieldflow infer`` reports the score-compressed one
   by default): 68% coverage in [0.62, 0.74], 95% in [0.91, 0.98], eigenvalues in [0.7, 1.4].

    python scripts/benchmark_calibration.py RUN DATA --num 64 --n-test 200 --n-fid-eval 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

COVERAGE_RANGES = {"coverage_68": (0.62, 0.74), "coverage_95": (0.91, 0.98)}
EIGENVALUE_RANGE = (0.7, 1.4)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("--num", type=int, default=64, help="held-out maps per calibration theta")
    p.add_argument("--n-test", type=int, default=200, help="test maps across the prior")
    p.add_argument("--n-fid-eval", type=int, default=100, help="fiducial maps evaluated")
    p.add_argument("--grid", type=int, default=40, help="grid cells per axis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON file (default RUN/...)")
    return p


def _eigenvalues(test: dict) -> list | None:
    return test.get("eigenvalues")


def score_tests_after(model, like_fns: dict, adjustment, sims, grid) -> dict:
    """Score tests of each likelihood at each theta of ``sims`` (independent maps)."""
    from fieldflow import inference

    out: dict = {name: [] for name in (*like_fns, "flow_adjusted")}
    for theta, maps in sims:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, fn in like_fns.items():
                s, h = inference.score_and_hessian(fn, maps, theta)
                out[name].append({"theta": list(theta), **inference.score_test(s, h)})
            adj = inference.adjusted_score_test(like_fns["flow"], maps, theta, grid, adjustment)
            out["flow_adjusted"].append({"theta": list(theta), **adj})
    return out


def _checks(fom: dict, tests: dict) -> dict:
    checks = {}
    lo_e, hi_e = EIGENVALUE_RANGE
    for method in ("flow_score_compressed", "flow_adjusted"):
        for split in ("test", "fiducial"):
            stats = fom["results"].get(split, {}).get(method)
            if stats is None:
                continue
            for key, (lo, hi) in COVERAGE_RANGES.items():
                checks[f"{method}_{key}_{split}_in_range"] = bool(lo <= stats[key] <= hi)
        eigs = [e for t in tests[method] for e in (_eigenvalues(t) or [])]
        checks[f"{method}_eigenvalues_in_range"] = bool(eigs) and all(
            lo_e <= e <= hi_e for e in eigs
        )
    return checks


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    import data_gen
    from fieldflow import inference
    from fieldflow.io import to_jsonable, write_json
    from fieldflow.workflows import calibration_simulations, load_run_and_data

    cfg, model, splits = load_run_and_data(args.run_dir, args.data_dir, seed=args.seed)
    (om_lo, om_hi), (s8_lo, s8_hi) = inference.model_theta_range(model)
    grid = inference.theta_grid(args.grid, args.grid, (om_lo, om_hi), (s8_lo, s8_hi))
    timings = {}
    t0 = time.perf_counter()
    sims, sources = calibration_simulations(cfg, splits, None, args.num, args.seed + 1)
    # independent maps at the same theta: fresh simulations only (another seed)
    no_fiducial = {k: v for k, v in splits.items() if k != "fiducial"}
    check, _ = calibration_simulations(cfg, no_fiducial, None, args.num, args.seed + 2)
    timings["simulations_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    flow_fn = inference.flow_log_like_fn(model)
    fp = {"model": inference.model_fingerprint(model), "data": inference.fingerprint(cfg)}
    adjustment = inference.estimate_adjustment(
        flow_fn, sims, (om_lo, s8_lo), (om_hi, s8_hi), fp, chunk=32
    )
    fid_maps = splits["fiducial"][0]
    cov_part, _ = inference.benchmark.split_fiducial(
        len(fid_maps), args.n_fid_eval, int(cfg.get("maps_per_sim", 1))
    )
    score_like = inference.SummaryLikelihood.fit(
        inference.flow_score_summary(model),
        *splits["train"],
        fid_maps[cov_part],
        theta_low=(om_lo, s8_lo),
        theta_high=(om_hi, s8_hi),
    )
    ps = inference.PowerSpectrumLikelihood.fit(
        *splits["train"], fid_maps[cov_part], float(cfg["box"]), degree=3
    )
    timings["calibration_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fns = {
        "flow": flow_fn,
        "flow_score_compressed": score_like.log_like_fn(),
        "power_spectrum": ps.log_like_fn(),
    }
    tests = score_tests_after(model, fns, adjustment, check, grid)
    timings["score_tests_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fom = inference.fom_comparison(
        model,
        splits,
        cfg,
        grid,
        n_test=args.n_test,
        n_fid_eval=args.n_fid_eval,
        adjustments={"flow": adjustment},
    )
    timings.update({f"fom_{k}": v for k, v in fom.pop("timings_s").items()})
    timings["fom_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    out = {
        **{k: cfg.get(k) for k in ("simulator", "n", "box", "n_mesh", "particles_per_pixel")},
        "run_dir": str(args.run_dir),
        "data_dir": str(args.data_dir),
        "default_posterior": "flow_score_compressed",
        "calibration_theta": [list(t) for t, _ in sims],
        "calibration_maps": sources,
        "maps_per_theta": args.num,
        "score_tests_before": list(adjustment.tests),
        "score_tests_independent_maps": tests,
        "eigenvalues_independent_maps": {
            name: [_eigenvalues(t) for t in rows] for name, rows in tests.items()
        },
        "fom_comparison": fom,
        "checks": _checks(fom, tests),
        "fiducial_theta": list(data_gen.FIDUCIAL_THETA),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    print(json.dumps(to_jsonable(out), indent=2))
    path = write_json(args.out or Path(args.run_dir) / "benchmark_calibration.json", out)
    print(f"wrote {path}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
