"""Likelihoods of maps on a theta grid: the grid loop, a normalizing flow, exact lognormal.

Every likelihood is a function ``log_like_fn(x (B, N, N), theta (B, 2)) -> (B,)`` of
(map, theta) pairs, or a pairwise one ``fn(x (m, N, N), theta (t, 2)) -> (m, t)``.
:func:`grid_log_likelihood` evaluates any of them on (maps x theta-chunk) batches of a fixed
size (the last chunk padded), so a jitted likelihood compiles once for the whole grid, and
:func:`grid_posterior` turns the result into posteriors. Two likelihoods live here:

* a normalizing flow, log p(x | theta) = log N(z(x; theta); 0, I) + log |det dz/dx|
  (``flow_log_like_fn``, jitted once on the split model; ``flow_posterior``);
* the exact likelihood of lognormal maps (``data_gen.lognormal``),
  log p(delta | theta) = log p_G(ln(1 + delta) + sigma_g^2 / 2 | P_g(theta))
  - sum_pixels ln(1 + delta), the optimum any method can reach on such maps
  (``lognormal_log_like_fn``, ``exact_lognormal_posterior``).

The Gaussian likelihood of the binned P(k) is in :mod:`fieldflow.inference.power_spectrum`.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_gen.cosmology import SUPPORTED_OMEGA_M_RANGE, SUPPORTED_SIGMA8_RANGE
from fieldflow.inference.grid import ThetaGrid, clip_grid, theta_grid
from fieldflow.inference.posterior import (
    MASSES,
    GridPosterior,
    posterior_from_loglike,
    posteriors_from_loglike,
)
from fieldflow.models.base import jitted_method
from fieldflow.validation import check_maps

__all__ = [
    "grid_log_likelihood",
    "grid_posterior",
    "FlowLogLike",
    "flow_log_like_fn",
    "flow_posterior",
    "grad_log_prob_theta",
    "model_theta_range",
    "model_theta_box",
    "lognormal_log_like_fn",
    "exact_lognormal_posterior",
]


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
    points: np.ndarray | None = None,
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
        n: required map side (ValueError otherwise), e.g. a model's.
        points: optional (M, n_om * n_s8, 2) theta at which each map's likelihood is taken
            instead of the cell centres (cell ij of map m is evaluated at ``points[m, ij]``;
            e.g. the warped points of a curvature-adjusted likelihood). Not with ``pairwise``.

    Returns:
        float64 log-likelihoods (n_om, n_s8) or (M, n_om, n_s8). NaN results are
        replaced by -inf with a warning.
    """
    name = "maps" if n is None else f"maps (of {int(n)} x {int(n)} pixels)"
    x, _ = check_maps(np.asarray(maps), n, name)
    if isinstance(chunk, bool) or int(chunk) < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    theta = grid.points
    n_maps, n_theta = x.shape[0], theta.shape[0]
    if points is not None:
        points = np.asarray(points, np.float32)
        if pairwise or points.shape != (n_maps, n_theta, 2):
            raise ValueError(
                f"points must be ({n_maps}, {n_theta}, 2) and not pairwise, got {points.shape}"
            )
    m_c = min(n_maps, int(chunk))
    t_c = min(n_theta, max(1, int(chunk) // m_c))
    pending = []
    for m0, t0 in itertools.product(range(0, n_maps, m_c), range(0, n_theta, t_c)):
        mi = np.minimum(np.arange(m0, m0 + m_c), n_maps - 1)
        ti = np.minimum(np.arange(t0, t0 + t_c), n_theta - 1)
        xc, tc = x[mi], theta[ti]
        if pairwise:
            res = log_like_fn(xc, tc)
        elif points is not None:
            res = log_like_fn(np.repeat(xc, t_c, axis=0), points[mi][:, ti].reshape(-1, 2))
        else:
            res = log_like_fn(np.repeat(xc, t_c, axis=0), np.tile(tc, (m_c, 1)))
        pending.append((m0, t0, res))  # results fetched after dispatch: overlap host and device
    out = np.empty((n_maps, n_theta), np.float64)
    for m0, t0, res in pending:
        res = np.asarray(res, np.float64).reshape(m_c, t_c)
        km, kt = min(m_c, n_maps - m0), min(t_c, n_theta - t0)
        out[m0 : m0 + km, t0 : t0 + kt] = res[:km, :kt]
    out = nan_to_minus_inf(out).reshape(n_maps, *grid.shape)
    return out if per_map else out.sum(axis=0)


def nan_to_minus_inf(log_like: np.ndarray) -> np.ndarray:
    """``log_like`` with NaN replaced by -inf (zero posterior mass), warning how many."""
    n_nan = int(np.isnan(log_like).sum())
    if n_nan:
        warnings.warn(
            f"{n_nan} NaN log-likelihoods on the grid set to -inf", RuntimeWarning, stacklevel=3
        )
    return np.where(np.isnan(log_like), -np.inf, log_like)


def grid_posterior(
    log_like_fn: Callable,
    maps,
    grid: ThetaGrid,
    *,
    per_map: bool = False,
    log_prior=None,
    masses: Sequence[float] = MASSES,
    chunk: int = 4096,
    pairwise: bool = False,
    n: int | None = None,
) -> GridPosterior | list[GridPosterior]:
    """Posterior(s) of ``maps`` on ``grid`` under any likelihood (see ``grid_log_likelihood``).

    With ``per_map`` one posterior per map, otherwise the joint posterior of the independent
    maps; ``log_prior`` and ``masses`` as in ``posterior_from_loglike``.
    """
    ll = grid_log_likelihood(
        log_like_fn, maps, grid, chunk=chunk, per_map=per_map, pairwise=pairwise, n=n
    )
    if per_map:
        return posteriors_from_loglike(ll, grid, log_prior, masses)
    return posterior_from_loglike(ll, grid, log_prior, masses)


# ------------------------------------------------------------------------- flows
def _flow_method(model) -> str:
    return "_log_prob" if hasattr(model, "_log_prob") else "log_prob"


# Full float32 matrix products: on GPUs jax defaults to TF32 (10-bit mantissa), which moves
# log p of a 32^2 map by ~0.03 nats between batch sizes and spoils theta gradients.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _flow_value_and_grad(graphdef, method: str, state, x, theta):
    def total(theta):
        lp = getattr(nnx.merge(graphdef, state), method)(x, theta)
        return jnp.sum(lp), lp

    with jax.default_matmul_precision("highest"):
        (_, lp), grad = jax.value_and_grad(total, has_aux=True)(theta)
    return lp, grad


@jax.tree_util.register_pytree_node_class
class FlowLogLike:
    """``fn(x (B, N, N), theta (B, 2)) -> log p(x | theta) (B,)`` of a split flow.

    A pytree whose leaves are the model's state and whose static part is its structure, so a
    function jitted with it as an *argument* (e.g. the score and Hessian of
    :func:`~fieldflow.inference.calibration.score_and_hessian`) compiles once per model
    structure and input shape, without the weights baked in as constants.
    """

    def __init__(self, graphdef, method: str, state):
        self.graphdef, self.method, self.state = graphdef, method, state

    def __call__(self, x, theta):
        x = jnp.asarray(x, jnp.float32)
        theta = jnp.asarray(theta, jnp.float32)
        return jitted_method(self.graphdef, self.method, "highest", self.state, x, theta)

    def rolled(self) -> FlowLogLike:
        """The same log-likelihood with the model's inner loops rolled (``unroll=False``),
        for models that have the option (the multiscale flow): same values, and its
        second derivatives in theta compile in about half the time (on a 3-level 32^2 flow
        minutes less), while runs after compilation stay fast. Other models: ``self``."""
        copy = nnx.merge(self.graphdef, self.state)
        if not getattr(copy, "unroll", False):
            return self
        for _, module in nnx.iter_modules(copy):
            if hasattr(module, "unroll"):
                module.unroll = False
        return FlowLogLike(nnx.split(copy)[0], self.method, self.state)

    def tree_flatten(self):
        return (self.state,), (self.graphdef, self.method)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], children[0])


def flow_log_like_fn(model) -> FlowLogLike:
    """``fn(x (B, N, N), theta (B, 2)) -> log p(x | theta) (B,)`` of a flow, jitted once.

    The model is split (``nnx.split``) once and its pure log-density jitted with the
    state as an argument (one compilation per model structure and batch shape, shared by
    every call). The trained range of theta is *not* checked here (``flow_posterior``
    does it).
    """
    graphdef, state = nnx.split(model)
    return FlowLogLike(graphdef, _flow_method(model), state)


def grad_log_prob_theta(model, with_value: bool = False) -> Callable:
    """Jitted ``fn(x (B, N, N), theta (B, 2)) -> d log p(x_b | theta_b) / d theta_b (B, 2)``.

    Each map's log-density depends only on its own theta, so the gradient of the sum is
    the per-map gradient. ``with_value=True`` returns ``(log p (B,), grad (B, 2))``. For
    gradient-based samplers (HMC, NUTS) on theta; the trained range is not checked.
    """
    graphdef, state = nnx.split(model)
    method = _flow_method(model)

    def fn(x, theta):
        x = jnp.asarray(x, jnp.float32)
        lp, g = _flow_value_and_grad(graphdef, method, state, x, jnp.asarray(theta, jnp.float32))
        return (lp, g) if with_value else g

    return fn


def model_theta_range(model) -> tuple[tuple[float, float], tuple[float, float]]:
    """(Omega_m range, sigma_8 range) a conditional model was trained on.

    ValueError unless the model is conditioned on the two parameters (Omega_m, sigma_8).
    """
    if int(getattr(model, "cond_dim", 0)) != 2:
        raise ValueError("posteriors need a conditional model with cond = (Omega_m, sigma_8)")
    low, high = model.cond_low, model.cond_high
    return (float(low[0]), float(high[0])), (float(low[1]), float(high[1]))


def model_theta_box(model) -> tuple[tuple[float, float], tuple[float, float]]:
    """The corners (low, high) of the box a conditional model was trained on, each
    (Omega_m, sigma_8): :func:`model_theta_range` read the other way."""
    om_range, s8_range = model_theta_range(model)
    return (om_range[0], s8_range[0]), (om_range[1], s8_range[1])


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
    The default grid is 100 x 100 cells over the model's trained range; a grid reaching
    outside it warns and is clipped to it (the returned posterior carries the clipped
    grid). With ``per_map`` one posterior per map is returned, otherwise the joint
    posterior of the independent maps.
    """
    om_range, s8_range = model_theta_range(model)
    if hasattr(model, "check_support"):
        model.check_support(np.asarray(maps), "maps")
    grid = theta_grid(om_range=om_range, s8_range=s8_range) if grid is None else grid
    grid = clip_grid(grid, *model_theta_box(model))
    return grid_posterior(
        flow_log_like_fn(model),
        maps,
        grid,
        per_map=per_map,
        log_prior=log_prior,
        masses=masses,
        chunk=chunk,
        n=model.shape[0],
    )


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
    from data_gen.power import resolve_slab

    _, box = check_grid(4, box)
    slab = resolve_slab(box, slab)

    def fn(x, theta):
        x = jnp.asarray(x, jnp.float32)
        return _lognormal_pairwise(x, jnp.asarray(theta, jnp.float32), box, slab, bool(nonlinear))

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

    The grid (default: the default prior box) is clipped, with a warning, to the simulators'
    supported range Omega_m in [0.1, 0.6], sigma_8 in [0.4, 1.4].
    """
    grid = theta_grid() if grid is None else grid
    grid = clip_grid(
        grid,
        (SUPPORTED_OMEGA_M_RANGE[0], SUPPORTED_SIGMA8_RANGE[0]),
        (SUPPORTED_OMEGA_M_RANGE[1], SUPPORTED_SIGMA8_RANGE[1]),
        what="the simulators' range",
    )
    return grid_posterior(
        lognormal_log_like_fn(box, slab, nonlinear),
        maps,
        grid,
        per_map=per_map,
        log_prior=log_prior,
        masses=masses,
        chunk=chunk,
        pairwise=True,
    )
