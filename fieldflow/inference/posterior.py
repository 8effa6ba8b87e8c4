"""Normalised posteriors on a theta grid and their summaries: moments, HPD regions, FoM.

For maps x_1 .. x_M that are independent given theta = (Omega_m, sigma_8),

    log p(theta | x_1..M) = sum_m log p(x_m | theta) + log p(theta) - log Z,

evaluated at the cell centres of a ``ThetaGrid`` (flat prior by default) and normalised so
that the cell probabilities P_ij sum to one. From it:

* moments: mean mu = sum_ij P_ij theta_ij, covariance C = sum_ij P_ij (theta_ij - mu)(...)^T,
  standard deviations sqrt(diag C) and correlation C_01 / sqrt(C_00 C_11);
* highest-density regions: HPD_q = {cells with P_ij >= t_q}, t_q the largest threshold whose
  region holds mass >= q (q = 0.68 and 0.95);
* the figure of merit FoM = 1 / area(HPD_0.68) in Omega_m x sigma_8 units. The area is
  counted in cells, the last cell entering the region fractionally so that the region holds
  exactly q: area = (n_q + (q - Q_{n_q}) / P_(n_q+1)) dOm ds8, with P_(i) the cell masses in
  decreasing order and Q_n their partial sums. For a 2D Gaussian this tends to
  pi (-2 ln(1 - q)) sigma_1 sigma_2 sqrt(1 - rho^2) (= pi 2.28 ... for q = 0.68).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fieldflow.inference.grid import ThetaGrid

__all__ = [
    "MASSES",
    "GridPosterior",
    "posterior_from_loglike",
    "posteriors_from_loglike",
    "hpd_threshold",
    "hpd_area",
    "figure_of_merit",
    "contains",
    "credible_mass_at",
]

MASSES: tuple[float, float] = (0.68, 0.95)


@dataclasses.dataclass(frozen=True, eq=False)
class GridPosterior:
    """A normalised posterior on a ``ThetaGrid`` and its summaries.

    Attributes:
        grid: the grid.
        log_post: log of the cell probabilities, (n_om, n_s8); logsumexp = 0.
        post: cell probabilities P_ij (sum 1).
        mean: posterior mean (Omega_m, sigma_8).
        cov: posterior covariance (2, 2).
        std: sqrt(diag cov).
        corr: correlation coefficient of Omega_m and sigma_8.
        map_theta: the cell centre with the highest posterior.
        masses: credible masses of the HPD regions (default 0.68, 0.95).
        levels: the cell-probability threshold t_q of each HPD region.
        areas: area of each HPD region (Omega_m x sigma_8 units).
        fom: 1 / area of the 68% region (the first mass).
    """

    grid: ThetaGrid
    log_post: np.ndarray
    post: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    std: np.ndarray
    corr: float
    map_theta: np.ndarray
    masses: tuple[float, ...]
    levels: tuple[float, ...]
    areas: tuple[float, ...]
    fom: float

    def density(self) -> np.ndarray:
        """Posterior density P_ij / (dOm ds8), (n_om, n_s8)."""
        return self.post / self.grid.cell_area

    def summary(self) -> dict:
        """JSON-able summary (no arrays over the grid)."""
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "corr": float(self.corr),
            "map": self.map_theta.tolist(),
            "hpd_areas": {f"{m:g}": float(a) for m, a in zip(self.masses, self.areas, strict=True)},
            "fom": float(self.fom),
        }


def hpd_threshold(post: np.ndarray, mass: float) -> float:
    """Cell probability t such that {P_ij >= t} is the smallest region holding >= ``mass``.

    ``post`` holds cell probabilities (their masses are normalised to sum 1 here); t is one
    of its values, so the comparison ``post >= t`` is exact (a flat posterior's region is
    the whole grid).
    """
    if not 0.0 < mass < 1.0:
        raise ValueError(f"mass must be in (0, 1), got {mass}")
    p = np.sort(np.asarray(post, np.float64).ravel())[::-1]
    k = int(np.searchsorted(np.cumsum(p / p.sum()), mass))
    return float(p[min(k, p.size - 1)])


def hpd_area(post: np.ndarray, mass: float, cell_area: float) -> float:
    """Area of the ``mass`` HPD region: (n + (mass - Q_n) / P_(n+1)) * cell_area.

    Cells enter in decreasing order of probability P_(1) >= P_(2) >= ...; n is the number
    whose partial sum Q_n is still below ``mass`` and the next cell counts by the fraction
    of it needed to reach ``mass`` exactly (a continuous, less grid-dependent estimate than
    a whole-cell count).
    """
    if not 0.0 < mass < 1.0:
        raise ValueError(f"mass must be in (0, 1), got {mass}")
    p = np.sort(np.asarray(post, np.float64).ravel())[::-1]
    p = p / p.sum()
    q = np.cumsum(p)
    k = int(np.searchsorted(q, mass))
    if k >= p.size:
        return float(p.size * cell_area)
    below = q[k - 1] if k > 0 else 0.0
    frac = (mass - below) / p[k] if p[k] > 0 else 1.0
    return float((k + min(max(frac, 0.0), 1.0)) * cell_area)


def _log_prior_on(grid: ThetaGrid, log_prior) -> np.ndarray:
    if log_prior is None:
        return np.zeros(grid.shape)
    if callable(log_prior):
        lp = np.asarray(log_prior(grid.points), np.float64).reshape(grid.shape)
    else:
        lp = np.asarray(log_prior, np.float64)
        if lp.shape != grid.shape:
            raise ValueError(f"log_prior must have the grid's shape {grid.shape}, got {lp.shape}")
    if np.isnan(lp).any():
        raise ValueError("log_prior contains NaN")
    return lp


def posterior_from_loglike(
    loglike: np.ndarray,
    grid: ThetaGrid,
    log_prior=None,
    masses: Sequence[float] = MASSES,
) -> GridPosterior:
    """Normalise log p(x | theta) + log p(theta) on the grid and summarise it.

    Args:
        loglike: (n_om, n_s8) log-likelihood (any additive constant).
        grid: the grid it was evaluated on.
        log_prior: None (flat over the grid box), an (n_om, n_s8) array, or a callable
            ``f(theta (T, 2)) -> (T,)``; -inf excludes cells.
        masses: credible masses of the HPD regions; the first defines the FoM.
    """
    ll = np.asarray(loglike, np.float64)
    if ll.shape != grid.shape:
        raise ValueError(f"loglike must have the grid's shape {grid.shape}, got {ll.shape}")
    lp = np.where(np.isnan(ll), -np.inf, ll) + _log_prior_on(grid, log_prior)
    top = np.max(lp)
    if not np.isfinite(top):
        raise ValueError("the log-posterior is -inf (or +inf) everywhere on the grid")
    w = np.exp(lp - top)
    total = w.sum()
    post = w / total
    with np.errstate(divide="ignore"):
        log_post = lp - top - np.log(total)
    pts = grid.points.astype(np.float64).reshape(*grid.shape, 2)
    mean = np.einsum("ij,ijk->k", post, pts)
    d = pts - mean
    cov = np.einsum("ij,ijk,ijl->kl", post, d, d)
    std = np.sqrt(np.maximum(np.diag(cov), 0.0))
    corr = float(cov[0, 1] / (std[0] * std[1])) if std[0] > 0 and std[1] > 0 else 0.0
    masses = tuple(float(m) for m in masses)
    levels = tuple(hpd_threshold(post, m) for m in masses)
    areas = tuple(hpd_area(post, m, grid.cell_area) for m in masses)
    i, j = np.unravel_index(np.argmax(post), grid.shape)
    return GridPosterior(
        grid=grid,
        log_post=log_post,
        post=post,
        mean=mean,
        cov=cov,
        std=std,
        corr=corr,
        map_theta=np.array([grid.om[i], grid.s8[j]]),
        masses=masses,
        levels=levels,
        areas=areas,
        fom=1.0 / areas[0],
    )


def posteriors_from_loglike(
    loglikes: np.ndarray, grid: ThetaGrid, log_prior=None, masses: Sequence[float] = MASSES
) -> list[GridPosterior]:
    """One posterior per map from per-map log-likelihoods (M, n_om, n_s8)."""
    return [posterior_from_loglike(ll, grid, log_prior, masses) for ll in np.asarray(loglikes)]


def figure_of_merit(
    post: np.ndarray | GridPosterior, grid: ThetaGrid | None = None, mass: float = 0.68
) -> float:
    """FoM = 1 / area of the ``mass`` HPD region (Omega_m x sigma_8 units)."""
    if isinstance(post, GridPosterior):
        grid, post = post.grid, post.post
    if grid is None:
        raise ValueError("grid is required when post is an array")
    return 1.0 / hpd_area(post, mass, grid.cell_area)


def _interp_post(posterior: GridPosterior, theta) -> float:
    """Bilinear interpolation of the cell probabilities at theta (clamped to the centres)."""
    g = posterior.grid
    t = np.asarray(theta, np.float64).ravel()
    if t.shape != (2,):
        raise ValueError(f"theta must be (Omega_m, sigma_8), got shape {np.shape(theta)}")

    def locate(x, centres):
        pos = np.clip((x - centres[0]) / (centres[1] - centres[0]), 0.0, len(centres) - 1.0)
        i = min(int(np.floor(pos)), len(centres) - 2)
        return i, pos - i

    i, a = locate(t[0], g.om)
    j, b = locate(t[1], g.s8)
    p = posterior.post
    return float(
        (1 - a) * (1 - b) * p[i, j]
        + a * (1 - b) * p[i + 1, j]
        + (1 - a) * b * p[i, j + 1]
        + a * b * p[i + 1, j + 1]
    )


def contains(posterior: GridPosterior, theta_true, mass: float = 0.68) -> bool:
    """Whether ``theta_true`` lies in the ``mass`` HPD region (bilinear interpolation).

    A theta outside the grid box is never contained.
    """
    g = posterior.grid
    t = np.asarray(theta_true, np.float64).ravel()
    if not (g.om_range[0] <= t[0] <= g.om_range[1] and g.s8_range[0] <= t[1] <= g.s8_range[1]):
        return False
    level = (
        posterior.levels[posterior.masses.index(mass)]
        if mass in posterior.masses
        else (hpd_threshold(posterior.post, mass))
    )
    return _interp_post(posterior, t) >= level


def credible_mass_at(posterior: GridPosterior, theta_true) -> float:
    """Mass of the smallest HPD region containing ``theta_true``: sum of P_ij > P(theta_true).

    Uniform on [0, 1] over data sets for a calibrated posterior; the coverage at mass q is
    the fraction of maps with a value below q.
    """
    p_true = _interp_post(posterior, theta_true)
    return float(posterior.post[posterior.post > p_true].sum())
