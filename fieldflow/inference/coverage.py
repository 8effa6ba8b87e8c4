"""Calibration and size of a set of grid posteriors against the true theta of their maps.

For posteriors p_1..M of maps simulated at theta_1..M:

* FoM_m = 1 / area(HPD_0.68 of p_m); its mean, median and standard deviation over maps;
* the coverage of the q HPD region, c_q = (1/M) sum_m [theta_m in HPD_q(p_m)], which for a
  calibrated posterior is q within the binomial error sqrt(q (1 - q) / M);
* the mean bias over the posterior standard deviation, (1/M) sum_m (mu_m - theta_m) / sigma_m,
  per parameter (0 for an unbiased posterior, well below 1 for a useful one);
* against reference posteriors of the same maps (``posterior_agreement``), the shift of each
  mean in reference standard deviations, |mu_m - mu_ref,m| / sigma_ref,m, and the ratio of the
  standard deviations, sigma_m / sigma_ref,m.

A region that reaches the boundary of the grid (the prior box) is cut by the prior: its
FoM reflects the prior, not the data (``hpd_touches_edge``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fieldflow.inference.posterior import GridPosterior, contains, hpd_threshold

__all__ = [
    "COVERAGE_MASSES",
    "coverage_summary",
    "hpd_touches_edge",
    "fraction_touching_edge",
    "mean_shift_and_std_ratio",
    "posterior_agreement",
]

COVERAGE_MASSES: tuple[float, float] = (0.68, 0.95)


def coverage_summary(
    posteriors: Sequence[GridPosterior],
    theta_true=None,
    masses: Sequence[float] = COVERAGE_MASSES,
) -> dict:
    """FoM statistics of ``posteriors`` and, given their maps' ``theta_true`` (M, 2), coverage.

    Returns ``fom_mean``, ``fom_median``, ``fom_std`` (population std) and ``n_maps``; with
    ``theta_true`` also ``coverage_<100 q>`` for each mass q (default ``coverage_68``,
    ``coverage_95``: the fraction of maps whose true theta lies in the HPD region of that
    mass, ``contains``) and ``mean_bias_over_std`` [Omega_m, sigma_8], the mean over maps
    of (posterior mean - truth) / posterior std.
    """
    posteriors = list(posteriors)
    if not posteriors:
        raise ValueError("coverage_summary needs at least one posterior")
    fom = np.array([p.fom for p in posteriors])
    out = {
        "fom_mean": float(fom.mean()),
        "fom_median": float(np.median(fom)),
        "fom_std": float(fom.std()),
        "n_maps": len(posteriors),
    }
    if theta_true is None:
        return out
    truth = np.asarray(theta_true, np.float64)
    if truth.shape != (len(posteriors), 2):
        raise ValueError(
            f"theta_true must have shape ({len(posteriors)}, 2), one row per posterior, "
            f"got {truth.shape}"
        )
    for m in masses:
        hit = [contains(p, t, m) for p, t in zip(posteriors, truth, strict=True)]
        out[f"coverage_{round(m * 100)}"] = float(np.mean(hit))
    bias = np.array([(p.mean - t) / p.std for p, t in zip(posteriors, truth, strict=True)])
    out["mean_bias_over_std"] = bias.mean(axis=0).tolist()
    return out


def hpd_touches_edge(posterior: GridPosterior, mass: float = 0.68) -> bool:
    """Whether the ``mass`` HPD region includes a cell on the boundary of the grid.

    Such a region is cut by the prior box, so its area (and FoM) is set partly by the prior;
    typical of a posterior piled against the boundary (e.g. an emulator extrapolating).
    """
    if mass in posterior.masses:
        level = posterior.levels[posterior.masses.index(mass)]
    else:
        level = hpd_threshold(posterior.post, mass)
    inside = posterior.post >= level
    return bool(inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any())


def fraction_touching_edge(posteriors: Sequence[GridPosterior], mass: float = 0.68) -> float:
    """Fraction of ``posteriors`` whose ``mass`` HPD region reaches the grid's boundary."""
    return float(np.mean([hpd_touches_edge(p, mass) for p in posteriors]))


def mean_shift_and_std_ratio(mean, std, ref_mean, ref_std) -> tuple[np.ndarray, np.ndarray]:
    """|mu - mu_ref| / sigma_ref and sigma / sigma_ref, elementwise (float64)."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    ref_mean, ref_std = np.asarray(ref_mean, np.float64), np.asarray(ref_std, np.float64)
    if not np.all(ref_std > 0):
        raise ValueError("reference standard deviations must be > 0")
    return np.abs(mean - ref_mean) / ref_std, std / ref_std


def posterior_agreement(mean, std, ref_mean, ref_std) -> dict:
    """Per-map agreement of posteriors (means and standard deviations, (M, 2)) with reference
    posteriors of the same maps: shift = |mu - mu_ref| / sigma_ref and ratio = sigma / sigma_ref
    per parameter.

    Returns ``theta_mean_shift_sigma_median`` and ``_max`` (over maps and parameters),
    ``maps_means_within_0.2_sigma`` (the fraction of maps whose shifts are both <= 0.2),
    ``theta_std_ratio_range`` [min, max] and ``maps_stds_within_10pct`` (|ratio - 1| <= 0.1
    for both parameters).
    """
    shapes = {np.shape(a) for a in (mean, std, ref_mean, ref_std)}
    if len(shapes) != 1 or len(np.shape(mean)) != 2 or len(mean) == 0:
        raise ValueError(f"means and stds must share one shape (M >= 1, P), got {shapes}")
    shift, ratio = mean_shift_and_std_ratio(mean, std, ref_mean, ref_std)
    return {
        "theta_mean_shift_sigma_median": float(np.median(shift)),
        "theta_mean_shift_sigma_max": float(shift.max()),
        "maps_means_within_0.2_sigma": float(np.mean(np.all(shift <= 0.2, axis=1))),
        "theta_std_ratio_range": [float(ratio.min()), float(ratio.max())],
        "maps_stds_within_10pct": float(np.mean(np.all(np.abs(ratio - 1) <= 0.1, axis=1))),
    }
