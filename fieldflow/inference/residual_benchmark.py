"""Which residual model makes the score-compressed likelihood honest? Many maps per theta.

The score test of a heavy-tailed summary is set by its rare far maps, so 64-128 maps per
theta can show eigenvalues near 1 that several hundred maps do not (on 32^2 N-body maps a
Gaussian residual model gave 0.61-1.47 on 128 maps per theta and 0.73-3.49 on 768).
:func:`residual_model_benchmark` fits the score-compressed likelihood of a run once per
residual model (``tails``: 'flow' (the default), 'gaussian', 'student'), from one
computation of the training and fiducial maps' scores, and on ``num`` independent maps at
each calibration theta reports the score-test eigenvalues (with 90% bootstrap intervals) and
the coverage of the 68% / 95% regions, and the coverage over the test split.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from fieldflow.inference.calibration_benchmark import (
    EIGENVALUE_RANGE,
    _one_test,
    _phase,
)
from fieldflow.inference.selection import COVERAGE_RANGES, one_map_per_simulation
from fieldflow.inference.summary import SCORE_CORR_DEGREE

__all__ = ["RESIDUAL_MODELS", "residual_model_benchmark"]

RESIDUAL_MODELS = ("flow", "gaussian", "student")


def _coverage(posteriors, theta) -> dict:
    """Coverage and FoM of grid posteriors of maps simulated at ``theta`` (M, 2)."""
    from fieldflow.inference.coverage import coverage_summary

    stats = coverage_summary(posteriors, theta)
    keep = ("n_maps", "coverage_68", "coverage_95", "fom_mean", "fom_median")
    return {k: stats[k] for k in keep}


def _score_test_of_vectors(log_like, vectors, theta) -> dict:
    from fieldflow import inference

    return inference.score_test(*inference.data_vector_score_and_hessian(log_like, vectors, theta))


def residual_model_benchmark(
    run_dir,
    data_dir,
    *,
    num: int = 512,
    seed: int = 0,
    tails: Sequence[str] = RESIDUAL_MODELS,
    n_test: int = 200,
    grid_size: int = 40,
    corr_degree: int = SCORE_CORR_DEGREE,
    sims_cache=None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """The benchmark of the module docstring for ``run_dir`` on ``data_dir``: ``num`` maps
    per calibration theta (fresh simulations of ``seed``, the data set's fiducial maps first
    at the fiducial theta; ``sims_cache`` keeps them), ``n_test`` test maps, a grid of
    ``grid_size``^2 cells, residual correlations of degree ``corr_degree`` in theta (that of
    ``score_compressed_likelihood`` by default). Returns a JSON-ready dict."""
    import numpy as np

    from fieldflow import inference
    from fieldflow.sims_cache import open_cache
    from fieldflow.workflows import calibration_simulations, load_run_and_data

    t_start = time.perf_counter()
    timings: dict = {}
    cfg, model, splits = load_run_and_data(run_dir, data_dir, seed=0)
    low, high = inference.model_theta_box(model)
    grid = inference.theta_grid(grid_size, grid_size, *inference.model_theta_range(model))
    with _phase("simulations", timings, log):
        sims, sources = calibration_simulations(
            cfg, splits, None, num, seed, open_cache(sims_cache, cfg)
        )
    with _phase("summaries", timings, log):
        summary = inference.flow_score_summary(model)
        train = summary(splits["train"][0])
        fid = summary(splits["fiducial"][0])
        test_maps, test_theta = one_map_per_simulation(
            *splits["test"], n_test, int(cfg.get("maps_per_sim", 1))
        )
        test_vectors = summary(test_maps)
        sim_vectors = [(theta, summary(maps)) for theta, maps in sims]
    results = {}
    for kind in tails:
        with _phase(f"{kind}", timings, log):
            like = inference.SummaryLikelihood.fit_summaries(
                summary, train, splits["train"][1], fid, covariance="emulated", tails=kind,
                corr_degree=corr_degree, theta_low=low, theta_high=high,
            )  # fmt: skip
            fn = like.log_like_fn()
            rows = []
            for theta, d in sim_vectors:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    row = _one_test(theta, _score_test_of_vectors, fn, d, theta)
                posteriors = like.posterior_of_data_vectors(d, grid)
                row.update(_coverage(posteriors, np.tile(theta, (len(d), 1))))
                rows.append(row)
            eigs = [e for row in rows for e in row.get("eigenvalues") or []]
            results[kind] = {
                "fit_report": like.fit_report.get("residual_model"),
                "score_tests": rows,
                "eigenvalue_range": [min(eigs), max(eigs)] if eigs else None,
                "eigenvalues_in_range": bool(eigs)
                and all(EIGENVALUE_RANGE[0] <= e <= EIGENVALUE_RANGE[1] for e in eigs),
                "coverage_68_range_per_theta": [
                    min(r["coverage_68"] for r in rows),
                    max(r["coverage_68"] for r in rows),
                ],
                "test": _coverage(like.posterior_of_data_vectors(test_vectors, grid), test_theta),
            }
    timings["total_s"] = time.perf_counter() - t_start
    return {
        "run_dir": str(Path(run_dir)),
        "data_dir": str(Path(data_dir)),
        "maps_per_theta": num,
        "maps": sources,
        "corr_degree": int(corr_degree),
        "eigenvalue_range_wanted": list(EIGENVALUE_RANGE),
        "coverage_ranges_wanted": {k: list(v) for k, v in COVERAGE_RANGES.items()},
        "residual_models": results,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
