"""The figure-of-merit comparison of a trained flow with the power spectrum and the exact
likelihood, on test maps and held-out fiducial maps.

For each map, the grid posterior of (Omega_m, sigma_8) under

* the flow (as ``flow_posterior``), and curvature-adjusted when given an adjustment,
* the Gaussian power-spectrum likelihood (``PowerSpectrumLikelihood``: mean emulated from the
  training split, Hartlap-corrected covariance from fiducial simulations not evaluated on),
* the score-compressed flow likelihood (``score_compressed_likelihood``: the flow's score at
  the fiducial theta, its mean and a theta-dependent covariance emulated over the prior),
* for lognormal maps, the exact likelihood, the best any method can do,

summarised by :func:`fieldflow.inference.coverage.coverage_summary` (FoM = 1 / area of the 68%
HPD region, coverage of the true theta by the 68% and 95% regions, bias); for lognormal maps
also the flow's posteriors against the exact ones map by map (``flow_vs_exact_per_map``,
:func:`fieldflow.inference.coverage.posterior_agreement`). Checks (on the
test split): FoM(flow) > FoM(P(k)) in mean and median, |coverage_68 - 0.68| within two
binomial sigma sqrt(0.68 * 0.32 / M), and for lognormal maps mean FoM(flow) >= 0.9 mean
FoM(exact).
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from fieldflow.inference.adjusted import (
    adjusted_posteriors,
    adjusted_score_test,
    estimate_adjustment,
)
from fieldflow.inference.calibration import coverage_curve
from fieldflow.inference.coverage import (
    coverage_summary,
    fraction_touching_edge,
    posterior_agreement,
)
from fieldflow.inference.grid import ThetaGrid, clip_grid
from fieldflow.inference.likelihoods import (
    exact_lognormal_posterior,
    flow_log_like_fn,
    grid_log_likelihood,
    model_theta_box,
)
from fieldflow.inference.posterior import posteriors_from_loglike
from fieldflow.inference.power_spectrum import PowerSpectrumLikelihood
from fieldflow.inference.selection import one_map_per_simulation
from fieldflow.inference.summary import score_compressed_likelihood

__all__ = ["FOM_DEFINITION", "split_fiducial", "fom_comparison"]

FOM_DEFINITION = "1 / area of the 68% HPD region on the grid (Omega_m x sigma_8)"


def split_fiducial(n_maps: int, n_eval: int, maps_per_sim: int = 1) -> tuple[slice, slice]:
    """Slices (covariance, evaluation) of ``n_maps`` fiducial maps.

    The last maps are held out for evaluation: ``n_eval`` rounded up to whole simulations of
    ``maps_per_sim`` maps (slabs of one simulation are correlated), at most half of them.
    """
    per_sim = max(int(maps_per_sim), 1)
    n_fe = min(int(np.ceil(n_eval / per_sim)) * per_sim, n_maps // 2 // per_sim * per_sim)
    return slice(0, n_maps - n_fe), slice(n_maps - n_fe, n_maps)


def _adjusted(log_like, maps, grid, raw, adjustment, truth, chunk) -> tuple[list, dict]:
    """Curvature-adjusted posteriors from the raw per-map log-likelihoods, and their stats."""
    posts = adjusted_posteriors(log_like, maps, grid, adjustment, raw_loglike=raw, chunk=chunk)
    stats = coverage_summary(posts, truth)
    stats["frac_hpd68_touching_prior_edge"] = fraction_touching_edge(posts)
    stats["coverage_curve"] = coverage_curve(posts, truth)
    return posts, stats


def _compare(
    model, ps, maps, truth, grid, manifest, chunk, timings, name, adjustments=None, summaries=None
) -> dict:
    """Flow, P(k) and (lognormal) exact posteriors of ``maps``, their statistics and ratios;
    with ``adjustments`` ({'flow': ..., 'power_spectrum': ...}) also the curvature-adjusted
    flow and P(k) posteriors; with ``summaries`` ({name: SummaryLikelihood}) the posteriors
    of those summary likelihoods and their FoM ratio to P(k)."""
    sim, box = manifest["simulator"], float(manifest["box"])
    adjustments = adjustments or {}
    res: dict = {}
    t0 = time.perf_counter()
    grid = clip_grid(grid, *model_theta_box(model))
    if hasattr(model, "check_support"):
        model.check_support(np.asarray(maps), "maps")
    flow_ll = flow_log_like_fn(model)
    raw = grid_log_likelihood(flow_ll, maps, grid, per_map=True, chunk=chunk, n=model.shape[0])
    flow = posteriors_from_loglike(raw, grid)
    timings[f"flow_{name}_s"] = time.perf_counter() - t0
    res["flow"] = coverage_summary(flow, truth)
    res["flow"]["coverage_curve"] = coverage_curve(flow, truth)
    ps_posts = ps.posterior(maps, grid, per_map=True)
    res["power_spectrum"] = coverage_summary(ps_posts, truth)
    res["power_spectrum"]["coverage_curve"] = coverage_curve(ps_posts, truth)
    if "flow" in adjustments:
        t0 = time.perf_counter()
        adj, res["flow_adjusted"] = _adjusted(
            flow_ll, maps, grid, raw, adjustments["flow"], truth, chunk
        )
        timings[f"flow_adjusted_{name}_s"] = time.perf_counter() - t0
        res["flow_adjusted_over_ps_fom_mean"] = (
            res["flow_adjusted"]["fom_mean"] / res["power_spectrum"]["fom_mean"]
        )
        res["flow_adjusted_over_ps_fom_median"] = (
            res["flow_adjusted"]["fom_median"] / res["power_spectrum"]["fom_median"]
        )
    if "power_spectrum" in adjustments:
        ps_ll = ps.log_like_fn()
        ps_raw = grid_log_likelihood(ps_ll, maps, grid, per_map=True, chunk=chunk)
        _, res["power_spectrum_adjusted"] = _adjusted(
            ps_ll, maps, grid, ps_raw, adjustments["power_spectrum"], truth, chunk
        )
        if "flow_adjusted" in res:
            res["flow_adjusted_over_ps_adjusted_fom_mean"] = (
                res["flow_adjusted"]["fom_mean"] / res["power_spectrum_adjusted"]["fom_mean"]
            )
            res["flow_adjusted_over_ps_adjusted_fom_median"] = (
                res["flow_adjusted"]["fom_median"] / res["power_spectrum_adjusted"]["fom_median"]
            )
    for key, like in (summaries or {}).items():
        t0 = time.perf_counter()
        posts = like.posterior(maps, grid, per_map=True)
        timings[f"{key}_{name}_s"] = time.perf_counter() - t0
        res[key] = coverage_summary(posts, truth)
        res[key]["coverage_curve"] = coverage_curve(posts, truth)
        res[key]["frac_hpd68_touching_prior_edge"] = fraction_touching_edge(posts)
        for stat in ("mean", "median"):
            res[f"{key}_over_ps_fom_{stat}"] = (
                res[key][f"fom_{stat}"] / res["power_spectrum"][f"fom_{stat}"]
            )
    if sim == "lognormal":
        t0 = time.perf_counter()
        exact = exact_lognormal_posterior(
            maps,
            grid,
            box=box,
            slab=manifest.get("slab"),
            nonlinear=bool(manifest.get("nonlinear", False)),
            per_map=True,
        )
        timings[f"exact_{name}_s"] = time.perf_counter() - t0
        res["exact"] = coverage_summary(exact, truth)
        res["exact"]["coverage_curve"] = coverage_curve(exact, truth)
        res["exact"]["frac_hpd68_touching_prior_edge"] = fraction_touching_edge(exact)
        ratio = np.array([f.fom / e.fom for f, e in zip(flow, exact, strict=True)])
        for key in [k for k, v in res.items() if k.startswith("flow") and isinstance(v, dict)]:
            res[f"{key}_over_exact_fom_mean"] = res[key]["fom_mean"] / res["exact"]["fom_mean"]
        res["flow_over_exact_fom_median_per_map"] = float(np.median(ratio))
        res["flow_vs_exact_per_map"] = posterior_agreement(
            [f.mean for f in flow],
            [f.std for f in flow],
            [e.mean for e in exact],
            [e.std for e in exact],
        )
    # a P(k) posterior piled against the prior boundary can be tiny (emulator
    # extrapolation): the mean FoM is then dominated by a few maps, the median is robust
    res["power_spectrum"]["frac_hpd68_touching_prior_edge"] = fraction_touching_edge(ps_posts)
    res["flow"]["frac_hpd68_touching_prior_edge"] = fraction_touching_edge(flow)
    res["flow_over_ps_fom_mean"] = res["flow"]["fom_mean"] / res["power_spectrum"]["fom_mean"]
    res["flow_over_ps_fom_median"] = res["flow"]["fom_median"] / res["power_spectrum"]["fom_median"]
    return res


def _checks(test: dict, lognormal: bool) -> dict:
    """The pass criteria on the test split's results."""
    sig = float(np.sqrt(0.68 * 0.32 / test["flow"]["n_maps"]))
    checks = {
        "flow_fom_gt_ps": test["flow_over_ps_fom_mean"] > 1.0,
        "flow_fom_gt_ps_median": test["flow_over_ps_fom_median"] > 1.0,
        "coverage_68_within_2sigma": abs(test["flow"]["coverage_68"] - 0.68) <= 2 * sig,
        "coverage_binomial_sigma": sig,
    }
    if lognormal:
        checks["flow_fom_ge_0.9_exact"] = test["flow_over_exact_fom_mean"] >= 0.9
    return checks


def _emulator_report(ps: PowerSpectrumLikelihood, test_theta, manifest: dict) -> dict:
    """The P(k) likelihood's size and its emulator's accuracy.

    For lognormal maps also the relative error of the emulated mean against the exact
    expected binned spectrum (``data_gen.power_2d_binned``) at up to 50 test theta.
    """
    import data_gen

    report = {}
    if manifest["simulator"] == "lognormal":
        th = np.asarray(test_theta[:50], np.float64)
        expected = np.asarray(
            data_gen.power_2d_binned(
                th, manifest["n"], float(manifest["box"]), manifest.get("slab")
            )
        )
        rel = ps.mean(th) / expected - 1
        report = {
            "emulator_max_abs_rel_error_test_theta": float(np.abs(rel).max()),
            "emulator_rms_rel_error_test_theta": float(np.sqrt((rel**2).mean())),
        }
    report.update(
        n_bins=ps.n_bins,
        hartlap=ps.hartlap,
        n_fiducial_cov=ps.n_fiducial,
        emulator=ps.fit_report["emulator"],
        emulator_max_abs_rel_dev_at_fiducial=float(np.abs(ps.fit_report["fiducial_rel_dev"]).max()),
        emulator_max_abs_dev_over_stderr_at_fiducial=float(
            np.abs(ps.fit_report["fiducial_dev_over_stderr"]).max()
        ),
    )
    return report


def fom_comparison(
    model,
    splits: dict,
    manifest: dict,
    grid: ThetaGrid,
    *,
    n_test: int = 100,
    n_fid_eval: int = 64,
    chunk: int = 4096,
    adjustments: dict | None = None,
    calibration_sims: list | None = None,
    score_compressed: bool = True,
    fiducial_eval_maps: np.ndarray | None = None,
) -> dict:
    """Compare the posteriors of a flow with the P(k) and exact likelihoods (see module doc).

    Args:
        model: a trained conditional flow on (Omega_m, sigma_8).
        splits: ``fieldflow.data.load_dataset``'s dict; needs 'train', 'test' and 'fiducial'.
        manifest: the data set's manifest (simulator, n, box, slab, maps_per_sim, ...).
        grid: the theta grid of every posterior.
        n_test: test maps evaluated (one per simulation first: the slabs of one
            simulation are correlated; a warning when there are fewer).
        n_fid_eval: fiducial maps held out of the covariance and evaluated
            (``split_fiducial``).
        chunk: (map, theta) pairs per flow call.
        adjustments: optional curvature adjustments (``estimate_adjustment``) of the flow
            and / or the P(k) likelihood, {'flow': ..., 'power_spectrum': ...}: their
            adjusted posteriors are reported beside the raw ones.
        calibration_sims: instead of ``adjustments``, held-out maps at a few theta,
            ``[(theta, maps)]`` (``workflows.calibration_simulations``), from which the
            adjustments of the flow and of the P(k) likelihood are estimated here; their score
            tests before (at each theta) and after adjustment (on the evaluated fiducial maps)
            are reported under ``calibration``.
        score_compressed: also the score-compressed flow likelihood
            (``flow_score_compressed``: the flow's score at the fiducial theta, its mean and
            theta-dependent covariance emulated from the training split;
            ``score_compressed_likelihood``).
        fiducial_eval_maps: maps at the fiducial theta from simulations outside the data
            set, one per simulation (``workflows.independent_fiducial_maps``): evaluated in
            place of a held-out part of the fiducial split, whose maps then all go to the
            covariances, as in ``fieldflow calibrate`` (``n_fid_eval`` is then unused).

    Returns:
        a JSON-able dict: ``n_train_maps``, ``n_fiducial_cov``, ``n_fiducial_eval``, ``grid``,
        ``fom_definition``, ``power_spectrum_likelihood`` (``_emulator_report``), ``results``
        ({'test', 'fiducial'} -> {'flow', 'power_spectrum'[, 'exact']} statistics and FoM
        ratios), ``checks`` and ``timings_s`` (P(k) fit and each method's evaluation).
        ValueError when the data set has no fiducial set.
    """
    import data_gen

    if "fiducial" not in splits:
        raise ValueError("the data set has no fiducial/ set: generate it with n_fiducial > 0")
    test_maps, test_theta = splits["test"]
    if len(test_maps) < n_test:
        warnings.warn(f"only {len(test_maps)} test maps (asked for {n_test})", stacklevel=2)
    maps_per_sim = int(manifest.get("maps_per_sim", 1))
    test_maps, test_theta = one_map_per_simulation(test_maps, test_theta, n_test, maps_per_sim)
    fid_maps = splits["fiducial"][0]
    if fiducial_eval_maps is None:
        cov_part, eval_part = split_fiducial(len(fid_maps), n_fid_eval, maps_per_sim)
        fid_cov, fid_eval = fid_maps[cov_part], fid_maps[eval_part]
    else:
        fid_cov, fid_eval = fid_maps, np.asarray(fiducial_eval_maps)
    fid_theta = np.asarray(data_gen.FIDUCIAL_THETA, np.float64)

    t0 = time.perf_counter()
    low, high = model_theta_box(model)  # the trained range: the prior of every posterior
    ps = PowerSpectrumLikelihood.fit(
        *splits["train"],
        fid_cov,
        float(manifest["box"]),
        fiducial_theta=data_gen.FIDUCIAL_THETA,
        theta_low=low,
        theta_high=high,
    )
    timings = {"ps_fit_s": time.perf_counter() - t0}
    summaries = {}
    if score_compressed:
        t0 = time.perf_counter()
        summaries["flow_score_compressed"] = score_compressed_likelihood(
            model,
            *splits["train"],
            fid_cov,
            fiducial_theta=fid_theta,
            theta_low=low,
            theta_high=high,
        )
        timings["score_compressed_fit_s"] = time.perf_counter() - t0
    calibration = None
    if calibration_sims:
        t0 = time.perf_counter()
        adjustments, calibration = _calibrate(model, ps, calibration_sims, fid_eval, grid, chunk)
        timings["calibration_s"] = time.perf_counter() - t0
    eval_sets = {"test": (test_maps, test_theta), "fiducial": (fid_eval, None)}
    results: dict = {}
    for name, (maps, theta) in eval_sets.items():
        if len(maps) == 0:
            continue
        truth = theta if theta is not None else np.tile(fid_theta, (len(maps), 1))
        results[name] = _compare(
            model, ps, maps, truth, grid, manifest, chunk, timings, name, adjustments, summaries
        )
    lognormal = manifest["simulator"] == "lognormal"
    out = {
        "n_train_maps": int(len(splits["train"][0])),
        "n_fiducial_cov": int(len(fid_cov)),
        "n_fiducial_eval": int(len(fid_eval)),
        "grid": grid.to_dict(),
        "fom_definition": FOM_DEFINITION,
        "power_spectrum_likelihood": _emulator_report(ps, splits["test"][1], manifest),
        "summary_likelihoods": {k: v.fit_report for k, v in summaries.items()},
        "results": results,
        "checks": _checks(results["test"], lognormal),
        "timings_s": timings,
    }
    if calibration is not None:
        out["calibration"] = calibration
    return out


def _calibrate(model, ps, sims, fid_eval, grid, chunk) -> tuple[dict, dict]:
    """Curvature adjustments of the flow and the P(k) likelihood from ``sims``, with their
    score tests before (at each calibration theta) and after (on ``fid_eval``)."""
    import data_gen

    low, high = model_theta_box(model)
    fns = {"flow": flow_log_like_fn(model), "power_spectrum": ps.log_like_fn()}
    adjustments, report = {}, {}
    for name, fn in fns.items():
        adj = estimate_adjustment(fn, sims, low, high, {"model": name}, chunk=32)
        adjustments[name] = adj
        report[name] = {"before": list(adj.tests)}
        if len(fid_eval) > 3:
            report[name]["after_at_fiducial"] = adjusted_score_test(
                fn, fid_eval, data_gen.FIDUCIAL_THETA, grid, adj, chunk=chunk
            )
    report["n_maps_per_theta"] = [len(m) for _, m in sims]
    return adjustments, report
