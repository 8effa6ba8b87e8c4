"""Are the posteriors fieldflow reports honest? The calibration benchmark of a trained run.

For a run and its data set (:func:`calibration_benchmark`):

1. the calibration of ``fieldflow calibrate`` (curvature adjustment from ``num`` held-out
   maps at the fiducial theta and four interior points; the score-compressed likelihood from
   the training and fiducial maps);
2. the score test of every posterior at each of those theta on *independent* simulations
   (another seed): raw flow, curvature-adjusted flow, score-compressed flow and P(k)
   (eigenvalues of F^-1 C with their bootstrap intervals; 1 = honest, > 1 overconfident),
   and for lognormal data the exact likelihood, which shows how far a correct likelihood's
   eigenvalues scatter on this many maps;
3. :func:`~fieldflow.inference.fom_comparison` with the same calibration simulations: FoM
   and the coverage of the 68% and 95% regions over ``n_test`` test maps across the prior
   (one per simulation) and ``n_fid_eval`` maps at the fiducial theta from as many fresh
   simulations (one slab of each: independent draws; the data set's fiducial maps all go to
   the covariances, as in ``fieldflow calibrate``);
4. the posterior ``fieldflow infer`` reports by default, chosen as ``fieldflow calibrate``
   chooses it (:class:`~fieldflow.inference.PosteriorSelection`: by coverage on
   ``n_select`` maps of the validation split, which the test and fiducial maps of step 3
   never see);
5. the reference for the fiducial coverage: the score-compressed and P(k) likelihoods'
   own posteriors on 1000 summaries drawn from them at the fiducial theta (what an exactly
   right likelihood of that summary covers there: below nominal when posteriors reach the
   prior's edge along the Omega_m - sigma_8 degeneracy, with means pulled inwards);
6. checks of the calibrated posteriors and of the default one: 68% coverage in
   [0.62, 0.74], 95% in [0.91, 0.98], eigenvalues in [0.7, 1.4] (and, weaker, their 90%
   intervals meeting that range); for lognormal data FoM >= 0.9 x the exact likelihood's.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from fieldflow.inference.selection import COVERAGE_RANGES

__all__ = ["COVERAGE_RANGES", "EIGENVALUE_RANGE", "calibration_benchmark", "calibration_checks"]

EIGENVALUE_RANGE = (0.7, 1.4)
CALIBRATED = ("flow_score_compressed", "flow_adjusted")
# the names of fom_comparison's results for the posterior kinds of `fieldflow infer`
RESULT_NAMES = {"raw": "flow", "adjusted": "flow_adjusted", "score": "flow_score_compressed"}


@contextlib.contextmanager
def _phase(name: str, timings: dict, log: Callable[[str], None] | None) -> Iterator[None]:
    """Time a phase into ``timings[name + "_s"]``; tell ``log`` when it starts and ends."""
    if log is not None:
        log(f"{name} ...")
    t0 = time.perf_counter()
    yield
    timings[f"{name}_s"] = time.perf_counter() - t0
    if log is not None:
        log(f"{name}: {timings[f'{name}_s']:.0f} s")


def _score_tests(like_fns: dict, adjustment, sims, grid) -> dict:
    """Score tests of each likelihood (and the adjusted flow) at each theta of ``sims``."""
    from fieldflow import inference

    out: dict = {name: [] for name in (*like_fns, "flow_adjusted")}
    for theta, maps in sims:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, fn in like_fns.items():
                out[name].append(_one_test(theta, _score_test_of, fn, maps, theta))
            flow = like_fns["flow"]
            adjusted = inference.adjusted_score_test
            out["flow_adjusted"].append(
                _one_test(theta, adjusted, flow, maps, theta, grid, adjustment)
            )
    return out


def _score_test_of(log_like, maps, theta) -> dict:
    from fieldflow import inference

    return inference.score_test(*inference.score_and_hessian(log_like, maps, theta))


def _one_test(theta, test, *args) -> dict:
    """``test(*args)``, a score test at ``theta``; one that cannot be computed (e.g.
    non-finite scores of one likelihood on some maps) is recorded as ``{"error": ...}``
    instead of ending the benchmark."""
    try:
        return {"theta": list(theta), **test(*args)}
    except ValueError as err:
        return {"theta": list(theta), "error": str(err)}


def calibration_checks(fom: dict, tests: dict, methods=CALIBRATED) -> dict:
    """Pass/fail of each of ``methods``: coverage per split, eigenvalues in range."""
    checks = {}
    lo_e, hi_e = EIGENVALUE_RANGE
    for method in methods:
        for split in ("test", "fiducial"):
            stats = fom["results"].get(split, {}).get(method)
            if stats is None:
                continue
            for key, (lo, hi) in COVERAGE_RANGES.items():
                checks[f"{method}_{key}_{split}_in_range"] = bool(lo <= stats[key] <= hi)
        eigs = [e for t in tests.get(method, ()) for e in (t.get("eigenvalues") or [])]
        checks[f"{method}_eigenvalues_in_range"] = bool(eigs) and all(
            lo_e <= e <= hi_e for e in eigs
        )
        # the weaker reading on this many maps: every 90% bootstrap interval meets the range
        rows = [t["eigenvalue_interval"] for t in tests.get(method, ()) if t.get("eigenvalues")]
        rows = [r for r in rows if r["low"] is not None]
        spans = [s for i in rows for s in zip(i["low"], i["high"], strict=True)]
        checks[f"{method}_eigenvalue_intervals_meet_range"] = bool(spans) and all(
            lo <= hi_e and hi >= lo_e for lo, hi in spans
        )
        test = fom["results"].get("test", {})
        if f"{method}_over_exact_fom_mean" in test:
            checks[f"{method}_fom_ge_0.9_exact"] = test[f"{method}_over_exact_fom_mean"] >= 0.9
    return checks


def _exact_log_like(cfg: dict):
    """The exact lognormal log-likelihood of (map, theta) pairs, ``fn(x (B, N, N), theta
    (B, 2)) -> (B,)``, for the score test."""
    import jax

    from fieldflow import inference

    pairwise = inference.lognormal_log_like_fn(
        float(cfg["box"]), cfg.get("slab"), bool(cfg.get("nonlinear", False))
    )
    return jax.vmap(lambda x, t: pairwise(x[None], t[None])[0, 0])


def calibration_benchmark(
    run_dir,
    data_dir,
    *,
    num: int = 64,
    n_test: int = 200,
    n_fid_eval: int = 100,
    grid_size: int = 40,
    n_select: int = 200,
    seed: int = 0,
    sims_cache=None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """The calibration benchmark of ``run_dir`` on ``data_dir`` (see the module docstring).

    ``num`` held-out maps per calibration theta; ``n_test`` test maps across the prior and
    ``n_fid_eval`` fiducial maps (fresh simulations, one map each) for coverage;
    ``n_select`` validation maps to choose the default posterior by; ``grid_size`` grid
    cells per axis; ``sims_cache`` a folder (:class:`~fieldflow.sims_cache.SimulationCache`)
    that keeps the held-out simulations for the next benchmark of a run on the same data
    set; ``log(line)`` hears when each phase starts and how long it took. Returns a
    JSON-ready dict with the score tests, the FoM
    comparison, the checks and the timings.
    """
    import jax

    import data_gen
    from fieldflow import inference
    from fieldflow.sims_cache import open_cache
    from fieldflow.workflows import (
        calibration_simulations,
        independent_fiducial_maps,
        load_run_and_data,
    )

    t_start = time.perf_counter()
    cfg, model, splits = load_run_and_data(run_dir, data_dir, seed=seed)
    low, high = inference.model_theta_box(model)
    grid = inference.theta_grid(grid_size, grid_size, *inference.model_theta_range(model))
    timings = {}
    cache = open_cache(sims_cache, cfg)
    with _phase("simulations", timings, log):
        sims, sources = calibration_simulations(cfg, splits, None, num, seed + 1, cache)
        # independent maps at the same theta: fresh simulations only (another seed)
        no_fiducial = {k: v for k, v in splits.items() if k != "fiducial"}
        check, _ = calibration_simulations(cfg, no_fiducial, None, num, seed + 2, cache)
        fid_eval = independent_fiducial_maps(cfg, n_fid_eval, seed + 3, cache)

    with _phase("calibration", timings, log):
        flow_fn = inference.flow_log_like_fn(model)
        fp = {"model": inference.model_fingerprint(model), "data": inference.fingerprint(cfg)}
        adjustment = inference.estimate_adjustment(flow_fn, sims, low, high, fp, chunk=32)
        fid_maps = splits["fiducial"][0]  # all of them, as in `fieldflow calibrate`
        score_like = inference.score_compressed_likelihood(
            model,
            *splits["train"],
            fid_maps,
            theta_low=low,
            theta_high=high,
        )
        ps = inference.PowerSpectrumLikelihood.fit(
            *splits["train"],
            fid_maps,
            float(cfg["box"]),
            degree=3,
            theta_low=low,
            theta_high=high,
        )

    with _phase("score_tests", timings, log):
        fns = {
            "flow": flow_fn,
            "flow_score_compressed": score_like.log_like_fn(),
            "power_spectrum": ps.log_like_fn(),
        }
        if cfg.get("simulator") == "lognormal":
            fns["exact"] = _exact_log_like(cfg)  # the yardstick: how a correct likelihood scores
        tests = _score_tests(fns, adjustment, check, grid)

    with _phase("fom", timings, log):
        fom = inference.fom_comparison(
            model,
            splits,
            cfg,
            grid,
            n_test=n_test,
            adjustments={"flow": adjustment},
            fiducial_eval_maps=fid_eval,
        )
        timings.update({f"fom_{k}": v for k, v in fom.pop("timings_s").items()})

    with _phase("reference", timings, log):
        reference = {
            name: like.reference_coverage(jax.random.key(seed), data_gen.FIDUCIAL_THETA, 1000, grid)
            for name, like in (("flow_score_compressed", score_like), ("power_spectrum", ps))
        }

    # what `fieldflow infer` reports by default after `fieldflow calibrate`
    with _phase("selection", timings, log):
        selection = inference.PosteriorSelection.on_validation(
            model,
            splits,
            cfg,
            n_select,
            grid,
            fp,
            adjustment=adjustment,
            score_likelihood=score_like,
        )
        if selection is None:
            raise ValueError(f"{data_dir} has no validation maps to choose the default posterior")
        default = RESULT_NAMES[selection.chosen]
    timings["total_s"] = time.perf_counter() - t_start
    return {
        **{k: cfg.get(k) for k in ("simulator", "n", "box", "n_mesh", "particles_per_pixel")},
        "run_dir": str(Path(run_dir)),
        "data_dir": str(Path(data_dir)),
        "default_posterior": default,
        "selection": selection.to_json(),
        "raw_predicted_coverage_68": adjustment.raw_predicted_coverage(0.68),
        "calibration_theta": [list(t) for t, _ in sims],
        "calibration_maps": sources,
        "maps_per_theta": num,
        "score_tests_before": list(adjustment.tests),
        "score_tests_independent_maps": tests,
        "eigenvalues_independent_maps": {
            name: [t.get("eigenvalues") for t in rows] for name, rows in tests.items()
        },
        "fom_comparison": fom,
        "fiducial_reference_coverage": reference,
        "checks": calibration_checks(fom, tests, tuple(dict.fromkeys((default, *CALIBRATED)))),
        "fiducial_theta": list(data_gen.FIDUCIAL_THETA),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
