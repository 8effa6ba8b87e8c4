"""Sample quality of a generative model: flow samples at theta against simulations at theta.

For samples s_1..S and held-out simulations y_1..Y at the same theta, per statistic f
(binned P(k), one-point PDF, cumulative peak counts; from :mod:`fieldflow.metrics`):

    ratio_b   = <f_b(s)> / <f_b(y)>                      (power spectrum, per k bin)
    dev_b     = (<f_b(s)> - <f_b(y)>) / sigma_b(y)        (in units of the simulations' scatter)
    z_b       = (<f_b(s)> - <f_b(y)>) / sqrt(sigma_b(s)^2 / S + sigma_b(y)^2 / Y)

with sigma_b(y) the standard deviation of f_b over single simulations. The acceptance tests
of the project: |ratio_b - 1| < 5% in every k bin whose centre lies below the Nyquist
frequency, and |dev_b| <= 1 (within the simulations' scatter) for the PDF and peak counts.

The 5% test is only meaningful when the statistical error of the ratio,
ratio_err_b ~ ratio_b sqrt(cv_b(s)^2 / S + cv_b(y)^2 / Y) (cv = scatter / mean of one map),
is well below 5%: lognormal 32^2 maps have cv ~ 0.4-0.8 in every bin (their P(k) are strongly
correlated across k), so S = Y = 256 gives ratio_err ~ 4-6% and about 2000 of each are
needed for ~2%. ``passed_within_noise`` allows 2 ratio_err on top of the tolerance.

Also: simulations at theta never seen in training (:func:`held_out_sims`), the samples' P(k)
against the exact expected spectrum (:func:`theory_check`), the comparison at several theta
(:func:`default_thetas`, :func:`sample_quality_benchmark`), and the posteriors of one map
under the flow, the power-spectrum likelihood and the exact lognormal likelihood
(:func:`map_posteriors`). The figures are in :mod:`fieldflow.plots.samples`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fieldflow.io import to_jsonable

__all__ = [
    "sample_quality",
    "sample_maps",
    "held_out_sims",
    "theory_check",
    "default_thetas",
    "sample_quality_benchmark",
    "map_posteriors",
]

DEFAULT_PEAK_THRESHOLDS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def _compare(fs: np.ndarray, fy: np.ndarray) -> dict:
    """Mean, scatter and deviations of a statistic (S, K) of samples vs (Y, K) of sims."""
    ms, my = fs.mean(axis=0), fy.mean(axis=0)
    ss = fs.std(axis=0, ddof=1) if len(fs) > 1 else np.zeros_like(ms)
    sy = fy.std(axis=0, ddof=1) if len(fy) > 1 else np.zeros_like(my)
    se = np.sqrt(ss**2 / len(fs) + sy**2 / len(fy))
    diff = ms - my
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = np.where(sy > 0, diff / sy, np.where(diff == 0, 0.0, np.inf))
        z = np.where(se > 0, diff / se, np.where(diff == 0, 0.0, np.inf))
    return {
        "samples_mean": ms,
        "samples_std": ss,
        "sims_mean": my,
        "sims_std": sy,
        "dev_over_scatter": dev,
        "z": z,
    }


def sample_quality(
    samples,
    sims,
    box: float,
    *,
    pdf_edges=None,
    n_pdf_bins: int = 30,
    peak_thresholds: Sequence[float] = DEFAULT_PEAK_THRESHOLDS,
    pk_tolerance: float = 0.05,
    spread_tolerance: float = 0.2,
    runaway_factor: float = 2.0,
) -> dict:
    """Compare samples (S, N, N) with simulations (Y, N, N) at the same theta.

    Args:
        samples, sims: maps of the same size (ValueError otherwise, or for NaN).
        box: side of the maps in h^-1 Mpc (fixes the k bins).
        pdf_edges: PDF bin edges; default ``n_pdf_bins`` equal bins between the 0.1 and
            99.9 percentiles of the simulations' pixels.
        peak_thresholds: heights nu (in units of each map's std) for N(> nu).
        pk_tolerance: the allowed |ratio - 1| of the power spectra.
        spread_tolerance: the allowed |std(log P_samples) / std(log P_sims) - 1| per k bin
            (the map-to-map scatter of the power, not only its mean).
        runaway_factor: a sample "runs away" when a pixel's |value| exceeds this factor
            times the largest |pixel| of the simulations.

    Returns:
        A JSON-able dict with sections ``power_spectrum`` (k, ratio, ratio_err, below
        Nyquist mask, max deviation, the log-power spread ratio and its max deviation, pass
        flags), ``pdf`` and ``peaks`` (means, scatters, deviations, pass flags), ``pixels``
        (mean, std, skewness of both sets; the largest |pixel| of each and the number of
        runaway samples) and ``passed`` (all of them).
    """
    from fieldflow import fourier, metrics
    from fieldflow.validation import check_maps

    s, _ = check_maps(np.asarray(samples), name="samples")
    y, _ = check_maps(np.asarray(sims), name="sims")
    n = s.shape[-1]
    if y.shape[-1] != n:
        raise ValueError(
            f"sims must hold {n} x {n} maps like the samples, got {y.shape[-1]} x {y.shape[-1]}"
        )
    edges = fourier.k_bin_edges(n, box)
    k = fourier.k_bin_centers(edges)
    below = fourier.bins_below_nyquist(n, box)

    ps = np.asarray(metrics.power_spectrum(s, box), np.float64)
    py = np.asarray(metrics.power_spectrum(y, box), np.float64)
    pk = _compare(ps, py)
    ratio = pk["samples_mean"] / pk["sims_mean"]
    ratio_err = ratio * np.sqrt(
        (pk["samples_std"] / pk["samples_mean"]) ** 2 / len(ps)
        + (pk["sims_std"] / pk["sims_mean"]) ** 2 / len(py)
    )
    max_dev = float(np.max(np.abs(ratio[below] - 1))) if below.any() else float("nan")
    max_err = float(np.max(ratio_err[below])) if below.any() else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.std(np.log(ps), axis=0, ddof=1) / np.std(np.log(py), axis=0, ddof=1)
    max_spread_dev = float(np.max(np.abs(spread[below] - 1))) if below.any() else float("nan")
    pk.update(
        log_spread_ratio=spread,
        max_abs_log_spread_dev_below_nyquist=max_spread_dev,
        spread_tolerance=spread_tolerance,
        spread_passed=bool(max_spread_dev <= spread_tolerance),
    )
    pk.update(
        k=k,
        ratio=ratio,
        ratio_err=ratio_err,
        below_nyquist=below,
        max_abs_ratio_dev_below_nyquist=max_dev,
        max_ratio_err_below_nyquist=max_err,
        tolerance=pk_tolerance,
        passed=bool(max_dev < pk_tolerance),
        passed_within_noise=bool(
            np.all(np.abs(ratio[below] - 1) <= pk_tolerance + 2 * ratio_err[below])
        ),
    )

    if pdf_edges is None:
        lo, hi = np.percentile(y, [0.1, 99.9])
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        pdf_edges = np.linspace(lo, hi, int(n_pdf_bins) + 1)
    pdf_edges = np.asarray(pdf_edges, np.float64)
    fs = np.asarray(metrics.one_point_pdf(s, pdf_edges), np.float64)
    fy = np.asarray(metrics.one_point_pdf(y, pdf_edges), np.float64)
    pdf = _compare(fs, fy)
    pdf.update(
        edges=pdf_edges,
        max_abs_dev_over_scatter=float(np.max(np.abs(pdf["dev_over_scatter"]))),
        passed=bool(np.all(np.abs(pdf["dev_over_scatter"]) <= 1.0)),
    )

    thr = np.asarray(peak_thresholds, np.float64)
    cs = np.asarray(metrics.peak_counts(s, thr), np.float64)
    cy = np.asarray(metrics.peak_counts(y, thr), np.float64)
    peaks = _compare(cs, cy)
    peaks.update(
        thresholds=thr,
        max_abs_dev_over_scatter=float(np.max(np.abs(peaks["dev_over_scatter"]))),
        passed=bool(np.all(np.abs(peaks["dev_over_scatter"]) <= 1.0)),
    )

    def moments(x):
        v = x.reshape(len(x), -1).astype(np.float64)
        m, sd = v.mean(axis=1), v.std(axis=1)
        sk = ((v - m[:, None]) ** 3).mean(axis=1) / np.where(sd > 0, sd, 1.0) ** 3
        return {"mean": float(m.mean()), "std": float(sd.mean()), "skewness": float(sk.mean())}

    largest = float(np.max(np.abs(y)))
    sample_largest = np.max(np.abs(s.reshape(len(s), -1)), axis=1)
    runaway = int(np.sum(sample_largest > runaway_factor * largest))
    pixels = {"samples": moments(s), "sims": moments(y)}
    pixels.update(
        max_abs_sims=largest,
        max_abs_samples=float(sample_largest.max()),
        runaway_factor=runaway_factor,
        n_runaway_samples=runaway,
    )
    return {
        "n_samples": int(len(s)),
        "n_sims": int(len(y)),
        "n": int(n),
        "box": float(box),
        "power_spectrum": to_jsonable(pk),
        "pdf": to_jsonable(pdf),
        "peaks": to_jsonable(peaks),
        "pixels": pixels,
        "passed": bool(pk["passed"] and pk["spread_passed"] and pdf["passed"] and peaks["passed"])
        and runaway == 0,
    }


def sample_maps(
    model, theta, num: int, key=None, batch: int = 64, temperature: float | None = None
) -> np.ndarray:
    """``num`` maps from ``model`` at one theta (2,), drawn ``batch`` at a time: (num, N, N).

    Batch b uses ``jax.random.fold_in(key, b)``; the last batch is padded to a fixed size so
    the sampler compiles once. ``temperature``: see ``FlowModel.sample``.
    """
    import jax

    key = jax.random.key(0) if key is None else key
    theta = np.asarray(theta, np.float32).reshape(1, 2)
    batch = max(1, min(int(batch), int(num)))
    cond = np.repeat(theta, batch, axis=0)
    out = [
        np.asarray(model.sample(jax.random.fold_in(key, b), cond, temperature=temperature))
        for b in range(-(-int(num) // batch))
    ]
    return np.concatenate(out)[: int(num)]


def held_out_sims(
    cfg: dict,
    splits: dict,
    theta: np.ndarray,
    num: int,
    seed: int,
    batch: int = 64,
    cache: dict | None = None,
) -> tuple[np.ndarray, str]:
    """``num`` simulations at theta never used in training, and where they come from.

    The data set's ``fiducial/`` maps (when theta is the fiducial theta), topped up with
    fresh simulations of the data set's configuration ``cfg`` (its manifest) with seeds
    outside the data set, simulated ``batch`` at a time (one compilation). A ``cache``
    (a dict or a :class:`~fieldflow.sims_cache.SimulationCache`) keyed by (theta, num, seed)
    returns maps simulated before and keeps new ones; the key of fresh maps only at the
    fiducial theta (``splits`` without ``fiducial``) ends with a 1.
    """
    import data_gen

    theta = np.asarray(theta, np.float64)
    at_fiducial = bool(np.allclose(theta, data_gen.FIDUCIAL_THETA))
    fiducial = splits["fiducial"][0] if at_fiducial and "fiducial" in splits else None
    key = (*np.round(theta, 6).tolist(), int(num), int(seed))
    if at_fiducial and fiducial is None:
        key = (*key, 1)
    if cache is not None and key in cache:
        return cache[key]
    maps, source = _simulate_held_out(cfg, fiducial, theta, int(num), seed, batch)
    if cache is not None:
        cache[key] = (maps, source)
    return maps, source


def _simulate_held_out(cfg, fiducial, theta, num, seed, batch) -> tuple[np.ndarray, str]:
    """The first ``num`` of the ``fiducial`` maps (None: none), topped up with simulations."""
    from data_gen.dataset import sim_seeds, simulate

    parts, maps = [], []
    if fiducial is not None:
        fid = fiducial[:num]
        maps.append(fid)
        parts.append(f"{len(fid)} maps of the data set's fiducial/ set")
    need = num - sum(len(m) for m in maps)
    if need > 0:
        per = int(cfg.get("maps_per_sim", 1))
        n_sims = -(-need // per)
        seeds = sim_seeds(int(cfg.get("seed", 0)) + 1000 + seed, 7, 0, n_sims)
        th = np.tile(np.asarray(theta).astype(np.float32), (batch, 1))
        for i in range(0, n_sims, batch):
            s = np.resize(seeds[i : i + batch], batch)
            maps.append(simulate(cfg, s, th)[: min(batch, n_sims - i) * per])
        parts.append(f"{n_sims} new {cfg['simulator']} simulations ({n_sims * per} maps)")
    return np.concatenate(maps)[:num], "; ".join(parts)


def theory_check(cfg: dict, theta: np.ndarray, stats: dict) -> dict | None:
    """Samples' and simulations' mean P(k) over the exact expected spectrum.

    For GRF and lognormal data sets (``cfg`` their manifest; None for others): per k bin
    <P_s(k)> / P_theory(k) with its standard error sigma_s(k) / sqrt(S) / P_theory(k), the
    same for the simulations, and max |<P_s> / P_theory - 1| below the Nyquist frequency.
    """
    if cfg["simulator"] not in ("grf", "lognormal"):
        return None
    import data_gen

    expected = np.asarray(
        data_gen.power_2d_binned(
            np.asarray(theta)[None],
            cfg["n"],
            cfg["box"],
            cfg.get("slab"),
            bool(cfg.get("nonlinear", False)),
        )
    )[0]
    pk = stats["power_spectrum"]
    below = np.asarray(pk["below_nyquist"])
    s_ratio = np.asarray(pk["samples_mean"]) / expected
    s_err = np.asarray(pk["samples_std"]) / np.sqrt(stats["n_samples"]) / expected
    return {
        "expected_pk": expected.tolist(),
        "samples_over_theory": s_ratio.tolist(),
        "samples_over_theory_err": s_err.tolist(),
        "sims_over_theory": (np.asarray(pk["sims_mean"]) / expected).tolist(),
        "max_abs_samples_dev_below_nyquist": float(np.abs(s_ratio[below] - 1).max()),
    }


def _box_of(model) -> dict:
    """The model's trained range as an emulator's ``theta_low`` / ``theta_high``."""
    from fieldflow.inference import model_theta_box

    low, high = model_theta_box(model)
    return {"theta_low": low, "theta_high": high}


def default_thetas(cfg: dict | None = None) -> list[tuple[str, tuple[float, float]]]:
    """``(kind, theta)`` at which to test samples: the fiducial theta, four "interior" points
    at 1/4 and 3/4 of the prior box on each axis and two "edge" corners at 1/10 and 9/10
    (the box of the data set's configuration ``cfg``, ``data_gen.theta_box``)."""
    from data_gen import FIDUCIAL_THETA
    from data_gen.dataset import theta_box

    om_range, s8_range = theta_box(cfg)

    def at(fo: float, fs: float) -> tuple[float, float]:
        om = om_range[0] + fo * (om_range[1] - om_range[0])
        s8 = s8_range[0] + fs * (s8_range[1] - s8_range[0])
        return round(om, 4), round(s8, 4)

    thetas = [("fiducial", tuple(float(t) for t in FIDUCIAL_THETA))]
    thetas += [("interior", at(fo, fs)) for fo in (0.25, 0.75) for fs in (0.25, 0.75)]
    thetas += [("edge", at(0.1, 0.1)), ("edge", at(0.9, 0.9))]
    return thetas


def sample_quality_benchmark(
    model,
    cfg: dict,
    splits: dict,
    thetas,
    num: int,
    seed: int = 0,
    log=None,
    sims_cache: dict | None = None,
    n_samples: int | None = None,
    temperature=None,
) -> dict:
    """:func:`sample_quality` of ``n_samples`` (default ``num``) samples against ``num``
    :func:`held_out_sims` at each ``(kind, theta)`` of ``thetas`` (e.g.
    :func:`default_thetas`): one row per theta with the P(k) ratios, the maximal deviations,
    pass flags and seconds; ``log(line)`` is called with a one-line summary of each. Returns
    ``{"results": rows, "all_passed", "all_passed_except_edge"}``. A dict passed as
    ``sims_cache`` keeps the simulations per theta, so several models are compared on the same
    maps without simulating them again. More samples than simulations (samples are cheap)
    tighten the search for runaway samples and the samples' side of every statistic.
    ``temperature``, a :class:`~fieldflow.sampling_temperature.SamplingTemperature` (or any
    callable of theta (1, 2) giving T (1,)), draws tempered mocks; each row records its T.
    """
    import time

    import jax

    n_samples = num if n_samples is None else int(n_samples)
    if num < 2 or n_samples < 2:
        raise ValueError(f"num and n_samples must be at least 2, got {num}, {n_samples}")
    rows = []
    for i, (kind, theta) in enumerate(thetas):
        t0 = time.perf_counter()
        theta = np.asarray(theta, np.float64)
        sims, source = held_out_sims(cfg, splits, theta, num, seed, cache=sims_cache)
        t = None if temperature is None else float(np.asarray(temperature(theta[None]))[0])
        samples = sample_maps(model, theta, n_samples, jax.random.key(seed + i), temperature=t)
        stats = sample_quality(samples, sims, float(cfg["box"]))
        theory = theory_check(cfg, theta, stats)
        pk = stats["power_spectrum"]
        row = {
            "kind": kind,
            "theta": theta.tolist(),
            "n_samples": len(samples),
            "temperature": 1.0 if t is None else t,
            "n_simulations": len(sims),
            "simulations": source,
            "pk_ratio": np.round(pk["ratio"], 4).tolist(),
            "pk_ratio_err": np.round(pk["ratio_err"], 4).tolist(),
            "pk_max_abs_ratio_dev_below_nyquist": pk["max_abs_ratio_dev_below_nyquist"],
            "pk_max_ratio_err_below_nyquist": pk["max_ratio_err_below_nyquist"],
            "pk_passed": pk["passed"],
            "pk_passed_within_noise": pk["passed_within_noise"],
            "pk_max_abs_log_spread_dev_below_nyquist": pk["max_abs_log_spread_dev_below_nyquist"],
            "n_runaway_samples": stats["pixels"]["n_runaway_samples"],
            "max_abs_pixel_samples_over_sims": stats["pixels"]["max_abs_samples"]
            / stats["pixels"]["max_abs_sims"],
            "pdf_max_abs_dev_over_scatter": stats["pdf"]["max_abs_dev_over_scatter"],
            "peaks_max_abs_dev_over_scatter": stats["peaks"]["max_abs_dev_over_scatter"],
            "passed": stats["passed"],
            "seconds": time.perf_counter() - t0,
        }
        if theory is not None:
            row["pk_max_abs_samples_over_theory_dev"] = theory["max_abs_samples_dev_below_nyquist"]
        rows.append(row)
        if log is not None:
            log(
                f"theta {theta.tolist()} ({kind}): P(k) max |ratio - 1| "
                f"{row['pk_max_abs_ratio_dev_below_nyquist']:.3f} "
                f"(+- {row['pk_max_ratio_err_below_nyquist']:.3f}), PDF "
                f"{row['pdf_max_abs_dev_over_scatter']:.2f}, peaks "
                f"{row['peaks_max_abs_dev_over_scatter']:.2f} scatter, log P spread "
                f"{row['pk_max_abs_log_spread_dev_below_nyquist']:.2f}, "
                f"{row['n_runaway_samples']} runaway"
            )
    return {
        "results": rows,
        "all_passed": all(r["passed"] for r in rows),
        "all_passed_except_edge": all(r["passed"] for r in rows if r["kind"] != "edge"),
    }


def map_posteriors(model, cfg: dict, splits: dict, x, grid, cov_maps=None) -> tuple[dict, list]:
    """Posteriors of one map ``x`` on ``grid``: ``({label: GridPosterior}, notes)``.

    'TRENF' (the flow), 'P(k)' (the Gaussian power-spectrum likelihood: emulated mean from
    the training split, covariance from the fiducial maps ``cov_maps`` when given) and, for
    lognormal data sets, 'exact'. ``notes`` says why a posterior is missing.
    """
    from fieldflow import inference as inf

    box = float(cfg["box"])
    posts = {"TRENF": inf.flow_posterior(model, x, grid)}
    notes = []
    if cov_maps is not None:
        try:
            ps = inf.PowerSpectrumLikelihood.fit(*splits["train"], cov_maps, box, **_box_of(model))
            posts["P(k)"] = ps.posterior(x, grid)
        except ValueError as err:
            notes.append(f"no power-spectrum posterior: {err}")
    else:
        notes.append("no power-spectrum posterior: the data set has no fiducial/ set")
    if cfg["simulator"] == "lognormal":
        posts["exact"] = inf.exact_lognormal_posterior(
            x, grid, box=box, slab=cfg.get("slab"), nonlinear=bool(cfg.get("nonlinear", False))
        )
    return posts, notes


def _likelihoods(model, cfg: dict, splits: dict, cov_maps=None) -> tuple[dict, list]:
    """The likelihoods to diagnose, ``{label: (fn of (map, theta) pairs, grid fn, pairwise)}``:
    the flow, the P(k) likelihood (when ``cov_maps`` allow a covariance) and, for lognormal
    data, the exact one (whose grid function shares each theta's spectrum across maps)."""
    import functools

    from data_gen import lognormal_log_likelihood
    from fieldflow import inference as inf

    flow = inf.flow_log_like_fn(model)
    fns, notes = {"TRENF": (flow, flow, False)}, []
    box = float(cfg["box"])
    if cov_maps is not None:
        try:
            ps = inf.PowerSpectrumLikelihood.fit(
                *splits["train"], cov_maps, box, **_box_of(model)
            ).log_like_fn()
            fns["P(k)"] = (ps, ps, False)
        except ValueError as err:
            notes.append(f"no power-spectrum diagnostics: {err}")
    else:
        notes.append("no power-spectrum diagnostics: no fiducial maps for its covariance")
    if cfg["simulator"] == "lognormal":
        kw = {"box": box, "slab": cfg.get("slab"), "nonlinear": bool(cfg.get("nonlinear", False))}
        pairs = functools.partial(lognormal_log_likelihood, **kw)
        fns["exact"] = (pairs, inf.lognormal_log_like_fn(**kw), True)
    return fns, notes


def calibration_diagnostics(
    model, cfg: dict, splits: dict, theta, sims, grid, n_coverage: int = 100, cov_maps=None
) -> tuple[dict, dict]:
    """Is each likelihood honest? ``(summary, coverage curves)`` for the flow, the P(k)
    likelihood and (lognormal) the exact likelihood.

    The score test at ``theta`` on the held-out simulations ``sims`` (drawn there), and the
    coverage of the HPD regions over the first ``n_coverage`` test maps (theta spread over the
    prior) on ``grid``: ``fieldflow.inference.score_test`` and ``coverage_curve``.
    """
    import warnings

    from fieldflow import inference as inf

    fns, notes = _likelihoods(model, cfg, splits, cov_maps)
    test_maps, test_theta = (a[:n_coverage] for a in splits["test"])
    grid = inf.clip_grid(grid, *inf.model_theta_box(model))
    out, curves = {"notes": notes}, {}
    for name, (fn, grid_fn, pairwise) in fns.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s, h = inf.score_and_hessian(fn, sims, theta)
            test = inf.score_test(s, h)
            ll = inf.grid_log_likelihood(grid_fn, test_maps, grid, per_map=True, pairwise=pairwise)
            posts = inf.posteriors_from_loglike(ll, grid)
            curves[name] = inf.coverage_curve(posts, test_theta)
        out[name] = {
            "score_test": test,
            "coverage": inf.coverage_summary(posts, test_theta),
            "coverage_curve": curves[name],
            "warnings": sorted({str(w.message) for w in caught}),
        }
    return out, curves
