"""Cosmological inference on a grid: posteriors p(theta | x), figures of merit, baselines.

For maps x_1 .. x_M that are independent given theta = (Omega_m, sigma_8),

    log p(theta | x_1..M) = sum_m log p(x_m | theta) + log p(theta) - log Z,

evaluated on a regular grid of cells tiling the prior box (flat prior by default) and
normalised so that the probability masses of the cells, P_ij, sum to one. From it:

* moments: mean mu = sum_ij P_ij theta_ij, covariance C = sum_ij P_ij (theta_ij - mu)(...)^T,
  standard deviations sqrt(diag C) and correlation C_01 / sqrt(C_00 C_11);
* highest-density regions: HPD_q = {cells with P_ij >= t_q}, t_q the largest threshold whose
  region holds mass >= q (q = 0.68 and 0.95);
* the figure of merit FoM = 1 / area(HPD_0.68) in Omega_m x sigma_8 units. The area is
  counted in cells, the last cell entering the region fractionally so that the region holds
  exactly q: area = (n_q + (q - Q_{n_q}) / P_(n_q+1)) dOm ds8, with P_(i) the cell masses in
  decreasing order and Q_n their partial sums. For a 2D Gaussian this tends to
  pi (-2 ln(1 - q)) sigma_1 sigma_2 sqrt(1 - rho^2) (= pi 2.28 ... for q = 0.68).

Three likelihoods share this machinery (``log_like_fn(x (B, N, N), theta (B, 2)) -> (B,)``):

* a normalizing flow: ``flow_log_like_fn(model)`` (jitted once on the split model);
* the exact lognormal likelihood of ``data_gen`` (``lognormal_log_like_fn``), the optimum
  any method can reach on lognormal maps;
* ``PowerSpectrumLikelihood``: a Gaussian likelihood of the binned P(k) with an emulated
  mean P(k; theta) and a Hartlap-corrected covariance from fiducial simulations.

``grid_log_likelihood`` evaluates any of them on (maps x theta-chunk) batches of a fixed size
(the last chunk padded), so a jitted likelihood compiles once for the whole grid.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_gen.cosmology import OMEGA_M_RANGE, SIGMA8_RANGE

__all__ = [
    "OMEGA_M_RANGE",
    "SIGMA8_RANGE",
    "MASSES",
    "ThetaGrid",
    "theta_grid",
    "clip_grid",
    "check_maps",
    "grid_log_likelihood",
    "GridPosterior",
    "posterior_from_loglike",
    "posteriors_from_loglike",
    "hpd_threshold",
    "hpd_area",
    "figure_of_merit",
    "contains",
    "credible_mass_at",
    "flow_log_like_fn",
    "flow_posterior",
    "grad_log_prob_theta",
    "grad_log_like_theta",
    "lognormal_log_like_fn",
    "exact_lognormal_posterior",
    "PowerSpectrumLikelihood",
    "hartlap_factor",
]

MASSES: tuple[float, float] = (0.68, 0.95)
_RANGE_TOL = 1e-6


# ------------------------------------------------------------------------------ grids
@dataclasses.dataclass(frozen=True, eq=False)
class ThetaGrid:
    """A regular (Omega_m, sigma_8) grid of ``n_om x n_s8`` cells tiling a box.

    ``om[i]`` and ``s8[j]`` are the cell centres; every cell has area ``d_om * d_s8``.
    Arrays over the grid are indexed ``[i, j]`` (Omega_m first).
    """

    om: np.ndarray
    s8: np.ndarray
    om_range: tuple[float, float]
    s8_range: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.om), len(self.s8))

    @property
    def size(self) -> int:
        return len(self.om) * len(self.s8)

    @property
    def d_om(self) -> float:
        return (self.om_range[1] - self.om_range[0]) / len(self.om)

    @property
    def d_s8(self) -> float:
        return (self.s8_range[1] - self.s8_range[0]) / len(self.s8)

    @property
    def cell_area(self) -> float:
        """dOm * ds8, the area of one cell."""
        return self.d_om * self.d_s8

    @property
    def points(self) -> np.ndarray:
        """All cell centres, float32 (n_om * n_s8, 2), Omega_m varying slowest."""
        om, s8 = np.meshgrid(self.om, self.s8, indexing="ij")
        return np.stack([om.ravel(), s8.ravel()], axis=-1).astype(np.float32)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(om_lo, om_hi, s8_lo, s8_hi) of the box, for ``imshow``."""
        return (*self.om_range, *self.s8_range)

    def to_dict(self) -> dict:
        """JSON-able description."""
        return {
            "n_om": len(self.om),
            "n_s8": len(self.s8),
            "om_range": list(self.om_range),
            "s8_range": list(self.s8_range),
            "cell_area": self.cell_area,
        }


def _check_range(name: str, r) -> tuple[float, float]:
    lo, hi = (float(v) for v in r)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"{name} must be (low, high) with low < high, got {tuple(r)}")
    return lo, hi


def theta_grid(
    n_om: int = 100,
    n_s8: int = 100,
    om_range: Sequence[float] = OMEGA_M_RANGE,
    s8_range: Sequence[float] = SIGMA8_RANGE,
) -> ThetaGrid:
    """A grid of ``n_om x n_s8`` equal cells tiling ``om_range x s8_range``.

    Cell centres om_i = lo + (i + 1/2) (hi - lo) / n_om (likewise for sigma_8), so the
    points never sit on the prior boundary and the cells tile the prior box exactly.
    """
    for name, v in (("n_om", n_om), ("n_s8", n_s8)):
        if isinstance(v, bool) or int(v) != v or v < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
    om_range = _check_range("om_range", om_range)
    s8_range = _check_range("s8_range", s8_range)

    def centres(r, n):
        return (r[0] + (np.arange(n) + 0.5) * (r[1] - r[0]) / n).astype(np.float64)

    return ThetaGrid(centres(om_range, int(n_om)), centres(s8_range, int(n_s8)), om_range, s8_range)


def clip_grid(
    grid: ThetaGrid,
    low: Sequence[float],
    high: Sequence[float],
    what: str = "the trained range of the model",
) -> ThetaGrid:
    """The grid itself if it lies in [low, high]; otherwise a warning and a clipped grid.

    The clipped grid has the same number of cells over the intersection of the grid's box
    with [low, high] (so its cell size shrinks). ValueError if they do not overlap.
    """
    low = [float(v) for v in low]
    high = [float(v) for v in high]
    ranges = [grid.om_range, grid.s8_range]
    new = []
    clipped = []
    for j, (name, (lo, hi)) in enumerate(zip(("Omega_m", "sigma_8"), ranges, strict=True)):
        tol = _RANGE_TOL * (high[j] - low[j])
        nlo = lo if lo >= low[j] - tol else low[j]
        nhi = hi if hi <= high[j] + tol else high[j]
        if nhi <= nlo:
            raise ValueError(
                f"the theta grid's {name} range [{lo:g}, {hi:g}] does not overlap "
                f"{what} [{low[j]:g}, {high[j]:g}]"
            )
        if (nlo, nhi) != (lo, hi):
            clipped.append(f"{name} [{lo:g}, {hi:g}] -> [{nlo:g}, {nhi:g}]")
        new.append((nlo, nhi))
    if not clipped:
        return grid
    warnings.warn(
        f"theta grid extends outside {what} (Omega_m [{low[0]:g}, {high[0]:g}], "
        f"sigma_8 [{low[1]:g}, {high[1]:g}]); clipped to it: " + "; ".join(clipped)
        + f" (same {grid.shape[0]} x {grid.shape[1]} cells)",
        UserWarning,
        stacklevel=2,
    )
    return theta_grid(grid.shape[0], grid.shape[1], new[0], new[1])


def check_maps(maps, n: int | None = None, name: str = "maps") -> np.ndarray:
    """Validate one map (N, N) or a stack (M, N, N); return float32 (M, N, N).

    ValueError for a wrong number of dimensions, non-square maps, a size other than ``n``,
    an empty stack, or NaN / inf pixels.
    """
    x = np.asarray(maps)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (N, N) or (M, N, N), got {np.shape(maps)}")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} must hold square N x N maps, got shape {x.shape}")
    if n is not None and x.shape[-1] != int(n):
        raise ValueError(
            f"{name} must hold {int(n)} x {int(n)} maps (the model's size), got "
            f"{x.shape[-2]} x {x.shape[-1]}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ValueError(f"{name} must be a real array, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.all(np.isfinite(x), axis=(1, 2))).ravel()
        raise ValueError(f"{name} contain NaN or inf values (map(s) {bad[:5].tolist()})")
    return x


# ---------------------------------------------------------------- grid evaluation
def grid_log_likelihood(
    log_like_fn: Callable,
    maps,
    grid: ThetaGrid,
    *,
    chunk: int = 4096,
    per_map: bool = False,
    pairwise: bool = False,
    n: int | None = None,
) -> np.ndarray:
    """log p(x_m | theta_ij) on the grid, summed over the maps unless ``per_map``.

    Args:
        log_like_fn: ``fn(x (B, N, N), theta (B, 2)) -> (B,)`` log-likelihoods of pairs; or,
            with ``pairwise=True``, ``fn(x (m, N, N), theta (t, 2)) -> (m, t)`` of all pairs.
        maps: one map (N, N) or M independent maps (M, N, N).
        grid: the theta grid.
        chunk: number of (map, theta) pairs per call. Maps are taken ``m = min(M, chunk)``
            at a time and theta ``chunk // m`` at a time; the last chunks are padded
            (repeating the last map / theta) so every call has the same shapes and a
            jitted ``fn`` compiles once.
        per_map: return (M, n_om, n_s8) instead of the sum over maps (n_om, n_s8).
        pairwise: see ``log_like_fn``.
        n: required map size (ValueError otherwise).

    Returns:
        float64 log-likelihoods (n_om, n_s8) or (M, n_om, n_s8). NaN results are
        replaced by -inf with a warning.
    """
    x = check_maps(maps, n)
    if isinstance(chunk, bool) or int(chunk) < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    theta = grid.points
    n_maps, n_theta = x.shape[0], theta.shape[0]
    m_c = min(n_maps, int(chunk))
    t_c = min(n_theta, max(1, int(chunk) // m_c))
    pending = []
    for m0, t0 in itertools.product(range(0, n_maps, m_c), range(0, n_theta, t_c)):
        mi = np.minimum(np.arange(m0, m0 + m_c), n_maps - 1)
        ti = np.minimum(np.arange(t0, t0 + t_c), n_theta - 1)
        xc, tc = x[mi], theta[ti]
        if pairwise:
            res = log_like_fn(xc, tc)
        else:
            res = log_like_fn(np.repeat(xc, t_c, axis=0), np.tile(tc, (m_c, 1)))
        pending.append((m0, t0, res))  # results fetched after dispatch: overlap host and device
    out = np.empty((n_maps, n_theta), np.float64)
    for m0, t0, res in pending:
        res = np.asarray(res, np.float64).reshape(m_c, t_c)
        km, kt = min(m_c, n_maps - m0), min(t_c, n_theta - t0)
        out[m0 : m0 + km, t0 : t0 + kt] = res[:km, :kt]
    if np.isnan(out).any():
        warnings.warn(
            f"{int(np.isnan(out).sum())} NaN log-likelihoods on the grid set to -inf",
            RuntimeWarning,
            stacklevel=2,
        )
        out = np.where(np.isnan(out), -np.inf, out)
    out = out.reshape(n_maps, *grid.shape)
    return out if per_map else out.sum(axis=0)


# --------------------------------------------------------------------- posteriors
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

    ``post`` holds cell probabilities (normalised to sum 1 here).
    """
    if not 0.0 < mass < 1.0:
        raise ValueError(f"mass must be in (0, 1), got {mass}")
    p = np.sort(np.asarray(post, np.float64).ravel())[::-1]
    p = p / p.sum()
    k = int(np.searchsorted(np.cumsum(p), mass))
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


def figure_of_merit(post: np.ndarray | GridPosterior, grid: ThetaGrid | None = None,
                    mass: float = 0.68) -> float:
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
        (1 - a) * (1 - b) * p[i, j] + a * (1 - b) * p[i + 1, j]
        + (1 - a) * b * p[i, j + 1] + a * b * p[i + 1, j + 1]
    )


def contains(posterior: GridPosterior, theta_true, mass: float = 0.68) -> bool:
    """Whether ``theta_true`` lies in the ``mass`` HPD region (bilinear interpolation).

    A theta outside the grid box is never contained.
    """
    g = posterior.grid
    t = np.asarray(theta_true, np.float64).ravel()
    if not (g.om_range[0] <= t[0] <= g.om_range[1] and g.s8_range[0] <= t[1] <= g.s8_range[1]):
        return False
    level = posterior.levels[posterior.masses.index(mass)] if mass in posterior.masses else (
        hpd_threshold(posterior.post, mass))
    return _interp_post(posterior, t) >= level


def credible_mass_at(posterior: GridPosterior, theta_true) -> float:
    """Mass of the smallest HPD region containing ``theta_true``: sum of P_ij > P(theta_true).

    Uniform on [0, 1] over data sets for a calibrated posterior; the coverage at mass q is
    the fraction of maps with a value below q.
    """
    p_true = _interp_post(posterior, theta_true)
    return float(posterior.post[posterior.post > p_true].sum())


# ------------------------------------------------------------------------- flows
def _flow_method(model) -> str:
    return "_log_prob" if hasattr(model, "_log_prob") else "log_prob"


# Full float32 matrix products: on GPUs jax defaults to TF32 (10-bit mantissa), which moves
# log p of a 32^2 map by ~0.03 nats between batch sizes and spoils theta gradients.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _flow_log_prob(graphdef, method: str, state, x, theta):
    with jax.default_matmul_precision("highest"):
        return getattr(_merge(graphdef, state), method)(x, theta)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _flow_value_and_grad(graphdef, method: str, state, x, theta):
    def total(theta):
        lp = getattr(_merge(graphdef, state), method)(x, theta)
        return jnp.sum(lp), lp

    with jax.default_matmul_precision("highest"):
        (_, lp), grad = jax.value_and_grad(total, has_aux=True)(theta)
    return lp, grad


def _merge(graphdef, state):
    from flax import nnx

    return nnx.merge(graphdef, state)


def flow_log_like_fn(model) -> Callable:
    """``fn(x (B, N, N), theta (B, 2)) -> log p(x | theta) (B,)`` of a flow, jitted once.

    The model is split (``nnx.split``) once and its pure log-density jitted with the
    state as an argument (one compilation per model structure and batch shape, shared by
    every call). The trained range of theta is *not* checked here (``flow_posterior``
    does it).
    """
    from flax import nnx

    graphdef, state = nnx.split(model)
    method = _flow_method(model)

    def log_like(x, theta):
        return _flow_log_prob(graphdef, method, state, jnp.asarray(x, jnp.float32),
                              jnp.asarray(theta, jnp.float32))

    return log_like


def _model_range(model) -> tuple[list[float], list[float]]:
    if int(getattr(model, "cond_dim", 0)) != 2:
        raise ValueError("posteriors need a conditional model with cond = (Omega_m, sigma_8)")
    return list(model.cond_low), list(model.cond_high)


def flow_posterior(
    model,
    maps,
    grid: ThetaGrid | None = None,
    *,
    per_map: bool = False,
    log_prior=None,
    chunk: int = 4096,
    masses: Sequence[float] = MASSES,
) -> GridPosterior | list[GridPosterior]:
    """Posterior of (Omega_m, sigma_8) under a trained conditional flow.

    ``maps`` (N, N) or (M, N, N) must match the model's size (ValueError otherwise, for
    NaN, and for values outside the support x > -1 - c of a model with a log transform).
    A grid reaching outside the model's trained range warns and is clipped to it
    (the returned posterior carries the clipped grid). With ``per_map`` one posterior per
    map is returned, otherwise the joint posterior of the independent maps.
    """
    low, high = _model_range(model)
    if hasattr(model, "check_support"):
        model.check_support(np.asarray(maps), "maps")
    grid = theta_grid(om_range=low, s8_range=high) if grid is None else grid
    grid = clip_grid(grid, low, high)
    ll = grid_log_likelihood(
        flow_log_like_fn(model), maps, grid, chunk=chunk, per_map=per_map, n=model.shape[0]
    )
    if per_map:
        return posteriors_from_loglike(ll, grid, log_prior, masses)
    return posterior_from_loglike(ll, grid, log_prior, masses)


def grad_log_prob_theta(model, with_value: bool = False) -> Callable:
    """Jitted ``fn(x (B, N, N), theta (B, 2)) -> d log p(x_b | theta_b) / d theta_b (B, 2)``.

    Each map's log-density depends only on its own theta, so the gradient of the sum is
    the per-map gradient. ``with_value=True`` returns ``(log p (B,), grad (B, 2))``. For
    gradient-based samplers (HMC, NUTS) on theta; the trained range is not checked.
    """
    from flax import nnx

    graphdef, state = nnx.split(model)
    method = _flow_method(model)

    def fn(x, theta):
        lp, g = _flow_value_and_grad(graphdef, method, state, jnp.asarray(x, jnp.float32),
                                     jnp.asarray(theta, jnp.float32))
        return (lp, g) if with_value else g

    return fn


def grad_log_like_theta(log_like_fn: Callable) -> Callable:
    """Jitted gradient in theta of any jax-traceable ``log_like_fn(x, theta) -> (B,)``."""
    return jax.jit(jax.grad(lambda x, theta: jnp.sum(log_like_fn(x, theta)), argnums=1))


# --------------------------------------------------------------- exact lognormal
@functools.partial(jax.jit, static_argnames=("box", "slab", "nonlinear"))
def _lognormal_pairwise(x, theta, box, slab, nonlinear):
    from data_gen import pixel_power_grid
    from data_gen.lognormal import lognormal_gaussian_power, lognormal_log_density

    # the spectrum depends on theta only: computed once per theta, used for every map
    pg, var = lognormal_gaussian_power(pixel_power_grid(theta, x.shape[-1], box, slab, nonlinear))
    return lognormal_log_density(x[:, None], pg, var)  # (m, t)


def lognormal_log_like_fn(
    box: float, slab: float | None = None, nonlinear: bool = False
) -> Callable:
    """Pairwise exact lognormal log-likelihood ``fn(x (m, N, N), theta (t, 2)) -> (m, t)``.

    log p(delta | theta) = log p_G(ln(1 + delta) + sigma_g^2 / 2 | P_g(theta))
    - sum_pixels ln(1 + delta) (``data_gen.lognormal``); use with
    ``grid_log_likelihood(..., pairwise=True)``. theta is not range-checked.
    """
    from data_gen.cosmology import check_grid
    from data_gen.power import _resolve_slab

    _, box = check_grid(4, box)
    slab = _resolve_slab(box, slab)

    def fn(x, theta):
        return _lognormal_pairwise(
            jnp.asarray(x, jnp.float32), jnp.asarray(theta, jnp.float32), box, slab,
            bool(nonlinear))

    return fn


def exact_lognormal_posterior(
    maps,
    grid: ThetaGrid | None = None,
    *,
    box: float,
    slab: float | None = None,
    nonlinear: bool = False,
    per_map: bool = False,
    log_prior=None,
    chunk: int = 4096,
    masses: Sequence[float] = MASSES,
) -> GridPosterior | list[GridPosterior]:
    """The exact grid posterior of lognormal maps (the best any method can do).

    The grid is clipped (with a warning) to the simulators' range
    Omega_m in [0.2, 0.5], sigma_8 in [0.5, 1.1].
    """
    grid = theta_grid() if grid is None else grid
    grid = clip_grid(
        grid, (OMEGA_M_RANGE[0], SIGMA8_RANGE[0]), (OMEGA_M_RANGE[1], SIGMA8_RANGE[1]),
        what="the simulators' range")
    ll = grid_log_likelihood(
        lognormal_log_like_fn(box, slab, nonlinear), maps, grid, chunk=chunk,
        per_map=per_map, pairwise=True)
    if per_map:
        return posteriors_from_loglike(ll, grid, log_prior, masses)
    return posterior_from_loglike(ll, grid, log_prior, masses)


# ------------------------------------------------------ power-spectrum likelihood
def hartlap_factor(n_sims: int, n_bins: int) -> float:
    """Hartlap et al. (2007) de-biasing of an inverse sample covariance,

        C^-1 ~ (n_s - n_b - 2) / (n_s - 1) * C_hat^-1,

    for n_s simulations and n_b data points; ValueError unless n_s > n_b + 2.
    """
    n_sims, n_bins = int(n_sims), int(n_bins)
    if n_sims <= n_bins + 2:
        raise ValueError(
            f"the covariance of {n_bins} power-spectrum bins needs more than {n_bins + 2} "
            f"fiducial simulations, got {n_sims}"
        )
    return (n_sims - n_bins - 2) / (n_sims - 1)


def _poly_features(u: np.ndarray, degree: int) -> np.ndarray:
    """Monomials u0^a u1^b with a + b <= degree, (T, n_terms)."""
    cols = [u[:, 0] ** a * u[:, 1] ** b for a in range(degree + 1) for b in range(degree + 1 - a)]
    return np.stack(cols, axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class PowerSpectrumLikelihood:
    """Gaussian likelihood of the binned power spectrum of a map,

        log L(theta) = -1/2 (d - mu(theta))^T Psi (d - mu(theta)) + 1/2 log det(Psi / 2 pi),

    d = P(k_b) of the map (``fieldflow.metrics.power_spectrum``, bins up to ``k_max``),
    Psi = h C_hat^-1 with C_hat the sample covariance of d over fiducial simulations and h
    the Hartlap factor. The mean is an emulator fitted to simulations across the prior:

        mu_b(theta) = exp(sum_c a_bc phi_c(u)),   u = 2 (theta - lo) / (hi - lo) - 1,

    phi_c the monomials of total degree <= ``degree`` (default 3: 10 terms). The
    coefficients are the maximum-likelihood fit of a Gamma model with log link (iteratively
    reweighted least squares), i.e. mu is fitted to <P> itself, not to <log P>, which would
    be biased low by the scatter of a bin with few modes. ``fit_report`` records the
    emulator's relative deviation from the fiducial simulations' mean P(k) in units of its
    standard error.
    """

    box: float
    n: int
    edges: np.ndarray
    coef: np.ndarray
    degree: int
    theta_low: np.ndarray
    theta_high: np.ndarray
    cov: np.ndarray
    precision: np.ndarray
    hartlap: float
    n_fiducial: int
    fit_report: dict

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    @property
    def k(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @classmethod
    def fit(
        cls,
        train_maps,
        train_theta,
        fiducial_maps,
        box: float,
        k_max: float | None = None,
        degree: int = 3,
        fiducial_theta: Sequence[float] = (0.3, 0.8),
        theta_low: Sequence[float] = (OMEGA_M_RANGE[0], SIGMA8_RANGE[0]),
        theta_high: Sequence[float] = (OMEGA_M_RANGE[1], SIGMA8_RANGE[1]),
        n_iter: int = 20,
    ) -> PowerSpectrumLikelihood:
        """Emulate mu(theta) from (train_maps, train_theta) and C from fiducial_maps.

        k_max (h/Mpc) drops the bins whose centre lies above it (default: all bins up to
        the Nyquist frequency). ValueError when the fiducial simulations do not outnumber
        the bins by at least 3 (Hartlap), or when there are fewer training maps than
        emulator terms.
        """
        from fieldflow import fourier, metrics

        train_maps = check_maps(train_maps, name="train_maps")
        n = train_maps.shape[-1]
        fiducial_maps = check_maps(fiducial_maps, n, name="fiducial_maps")
        theta = np.asarray(train_theta, np.float64)
        if theta.shape != (train_maps.shape[0], 2):
            raise ValueError(
                f"train_theta must have shape ({train_maps.shape[0]}, 2), got {theta.shape}")
        edges = fourier.k_bin_edges(n, box)
        if k_max is not None:
            centres = fourier.k_bin_centers(edges)
            keep = int(np.sum(centres <= float(k_max)))
            if keep < 1:
                raise ValueError(f"k_max = {k_max} h/Mpc leaves no bin (first at {centres[0]:.4g})")
            edges = edges[: keep + 1]
        n_b = len(edges) - 1
        h = hartlap_factor(fiducial_maps.shape[0], n_b)
        degree = int(degree)
        low, high = np.asarray(theta_low, np.float64), np.asarray(theta_high, np.float64)
        phi = _poly_features(2 * (theta - low) / (high - low) - 1, degree)
        if phi.shape[0] < 2 * phi.shape[1]:
            raise ValueError(f"{phi.shape[0]} training maps are too few for a degree-{degree} "
                             f"emulator ({phi.shape[1]} terms per bin)")
        pk = np.asarray(metrics.power_spectrum(train_maps, box, edges), np.float64)
        pk_fid = np.asarray(metrics.power_spectrum(fiducial_maps, box, edges), np.float64)
        if np.any(pk <= 0):
            raise ValueError("a training map has an empty (zero-power) bin")
        # Gamma GLM with log link by IRLS: z = eta + (y - mu) / mu, unit weights
        coef = np.linalg.lstsq(phi, np.log(pk), rcond=None)[0]
        for _ in range(int(n_iter)):
            eta = phi @ coef
            z = eta + pk / np.exp(eta) - 1.0
            new = np.linalg.lstsq(phi, z, rcond=None)[0]
            done = np.max(np.abs(new - coef)) < 1e-10
            coef = new
            if done:
                break
        cov = np.cov(pk_fid, rowvar=False).reshape(n_b, n_b)
        precision = h * np.linalg.inv(cov)
        precision = 0.5 * (precision + precision.T)
        fid_mean = pk_fid.mean(axis=0)
        se = pk_fid.std(axis=0, ddof=1) / np.sqrt(pk_fid.shape[0])
        u_fid = 2 * (np.asarray(fiducial_theta, np.float64) - low) / (high - low) - 1
        emu_fid = np.exp(_poly_features(u_fid[None], degree) @ coef)[0]
        resid = np.exp(phi @ coef)
        report = {
            "emulator": f"exp(polynomial of degree {degree} in theta), Gamma-GLM fit",
            "n_train": int(train_maps.shape[0]),
            "n_fiducial": int(fiducial_maps.shape[0]),
            "n_bins": n_b,
            "hartlap": h,
            "fiducial_rel_dev": (emu_fid / fid_mean - 1).tolist(),
            "fiducial_dev_over_stderr": ((emu_fid - fid_mean) / se).tolist(),
            "train_mean_ratio": (pk / resid).mean(axis=0).tolist(),
        }
        return cls(box=float(box), n=n, edges=np.asarray(edges, np.float64), coef=coef,
                   degree=degree, theta_low=low, theta_high=high, cov=cov,
                   precision=precision, hartlap=h, n_fiducial=int(fiducial_maps.shape[0]),
                   fit_report=report)

    # ------------------------------------------------------------------ evaluation
    def mean(self, theta) -> np.ndarray:
        """Emulated mean P(k_b; theta), (T, n_bins) for theta (T, 2) or (2,)."""
        t = np.atleast_2d(np.asarray(theta, np.float64))
        u = 2 * (t - self.theta_low) / (self.theta_high - self.theta_low) - 1
        return np.exp(_poly_features(u, self.degree) @ self.coef)

    def data_vector(self, maps) -> np.ndarray:
        """Binned P(k) of the maps, (M, n_bins)."""
        from fieldflow import metrics

        x = check_maps(maps, self.n)
        return np.asarray(metrics.power_spectrum(x, self.box, self.edges), np.float64)

    def _norm(self) -> float:
        sign, logdet = np.linalg.slogdet(self.precision / (2 * np.pi))
        return 0.5 * logdet

    def _loglike(self, d: np.ndarray, mu: np.ndarray) -> np.ndarray:
        r = d - mu
        return -0.5 * np.einsum("...i,ij,...j->...", r, self.precision, r) + self._norm()

    def __call__(self, maps, theta) -> np.ndarray:
        """log L of (map_b, theta_b) pairs, (B,); a single map or theta broadcasts."""
        d = self.data_vector(maps)
        mu = self.mean(theta)
        if d.shape[0] != mu.shape[0] and 1 not in (d.shape[0], mu.shape[0]):
            raise ValueError(f"{d.shape[0]} maps and {mu.shape[0]} theta do not broadcast")
        return self._loglike(d, mu)

    def pairwise(self, maps, theta) -> np.ndarray:
        """log L of every (map, theta) pair, (M, T)."""
        d = self.data_vector(maps)
        mu = self.mean(theta)
        return self._loglike(d[:, None, :], mu[None, :, :])

    def posterior(
        self,
        maps,
        grid: ThetaGrid | None = None,
        *,
        per_map: bool = False,
        log_prior=None,
        masses: Sequence[float] = MASSES,
    ) -> GridPosterior | list[GridPosterior]:
        """Grid posterior of the maps under the power-spectrum likelihood.

        The grid is clipped (with a warning) to the emulator's range.
        """
        grid = theta_grid() if grid is None else grid
        grid = clip_grid(grid, self.theta_low, self.theta_high, what="the emulator's range")
        ll = grid_log_likelihood(self.pairwise, maps, grid, chunk=1 << 16, per_map=per_map,
                                 pairwise=True, n=self.n)
        if per_map:
            return posteriors_from_loglike(ll, grid, log_prior, masses)
        return posterior_from_loglike(ll, grid, log_prior, masses)
