"""Lognormal fields delta = exp(g - sigma_g^2 / 2) - 1 with target P_2D, and their exact density.

Gaussian spectrum on the grid (periodic, exact for the discrete field): with
xi_delta(r) = irfft2(P_pix)(r) the grid correlation function of the target spectrum,

    xi_g(r) = ln(1 + xi_delta(r)),    P_g,pix(k) = Re rfft2(xi_g)(k),

so that Cov(delta_i, delta_j) = exp(Cov(g_i, g_j)) - 1 reproduces xi_delta exactly.
Negative P_g (rare; the target is not always lognormal-realisable) are floored at
1e-6 x the largest P_g of the map, and sigma_g^2 = (1/N^2) sum_k P_g,pix(k) is the pixel
variance of the floored g, so <delta> = 0 exactly. With no flooring, the measured P(k) of
the fields equals P_2D on the grid in expectation.

Exact density by the change of variables g = ln(1 + delta) + sigma_g^2 / 2,
d g / d delta = 1 / (1 + delta) pixel by pixel:

    log p(delta) = log p_G(g) - sum_pixels ln(1 + delta).

Support: delta > -1. A map with any pixel <= -1 has log-density -inf (returned, never NaN;
its gradient is 0).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from data_gen.cosmology import check_grid
from data_gen.gaussian import (
    _check_broadcast,
    gaussian_field,
    gaussian_log_density,
    prepare_theta,
)
from data_gen.power import DEFAULT_BOX, DEFAULT_N, pixel_power_grid
from data_gen.validation import check_maps

__all__ = [
    "lognormal",
    "lognormal_log_likelihood",
    "lognormal_gaussian_power",
    "lognormal_log_density",
]

_PG_FLOOR = 1e-6


def lognormal_gaussian_power(ppix: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """P_g,pix of the Gaussian field and sigma_g^2 from the target pixel spectrum P_pix.

    ppix (..., N, N//2+1) -> (P_g,pix same shape, sigma_g^2 (...)). xi_delta is clipped at
    -1 + 1e-6 before the logarithm.
    """
    from data_gen.fourier import rfft_multiplicity

    n = ppix.shape[-2]
    xi = jnp.fft.irfft2(ppix, s=(n, n))
    xi_g = jnp.log1p(jnp.maximum(xi, -1.0 + 1e-6))
    pg = jnp.real(jnp.fft.rfft2(xi_g))
    floor = _PG_FLOOR * jnp.max(pg, axis=(-2, -1), keepdims=True)
    pg = jnp.maximum(pg, floor)
    w = jnp.asarray(rfft_multiplicity(n), jnp.float32)
    var = jnp.sum(w * pg, axis=(-2, -1)) / n**2
    return pg, var


def lognormal_log_density(x: jnp.ndarray, pg: jnp.ndarray, var: jnp.ndarray) -> jnp.ndarray:
    """log p(delta) = log p_G(ln(1 + delta) + var/2) - sum ln(1 + delta); -inf off support."""
    valid = jnp.all(x > -1.0, axis=(-2, -1))
    xs = jnp.where(x > -1.0, x, 0.0)
    lx = jnp.log1p(xs)
    g = lx + 0.5 * var[..., None, None]
    logp = gaussian_log_density(g, pg) - jnp.sum(lx, axis=(-2, -1))
    return jnp.where(valid, logp, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("n", "box", "slab", "nonlinear"))
def _lognormal_keys(keys, theta, n, box, slab, nonlinear):
    pg, var = lognormal_gaussian_power(pixel_power_grid(theta, n, box, slab, nonlinear))
    g = jax.vmap(gaussian_field)(keys, pg)
    return jnp.expm1(g - 0.5 * var[:, None, None]).astype(jnp.float32)


def lognormal(
    key: jax.Array,
    theta,
    n: int = DEFAULT_N,
    box: float = DEFAULT_BOX,
    slab: float | None = None,
    nonlinear: bool = False,
) -> jnp.ndarray:
    """B lognormal fields with target spectrum P_2D(k; theta): float32 (B, N, N), all > -1.

    Same key convention as ``grf``: map i depends only on ``jax.random.split(key, B)[i]``.
    """
    n, box = check_grid(n, box)
    theta = prepare_theta(theta)
    keys = jax.random.split(key, theta.shape[0])
    return _lognormal_keys(keys, theta, n, box, slab, bool(nonlinear))


@functools.partial(jax.jit, static_argnames=("box", "slab", "nonlinear"))
def _lognormal_logl(x, theta, box, slab, nonlinear):
    pg, var = lognormal_gaussian_power(pixel_power_grid(theta, x.shape[-1], box, slab, nonlinear))
    return lognormal_log_density(x, pg, var)


def lognormal_log_likelihood(
    x,
    theta,
    box: float = DEFAULT_BOX,
    slab: float | None = None,
    nonlinear: bool = False,
) -> jnp.ndarray:
    """Exact log p(x | theta) in nats under the lognormal model; shape (B,).

    x (B, N, N) (or (N, N)); theta (2,) or (B, 2); a batch of 1 on either side broadcasts.
    Maps with a pixel <= -1 get -inf. Jit-able; differentiable in x and theta.
    """
    x = jnp.asarray(check_maps(x, name="x")[0])
    theta = prepare_theta(theta)
    _check_broadcast(x, theta)
    _, box = check_grid(x.shape[-1], box)
    return _lognormal_logl(x, theta, box, slab, bool(nonlinear))
