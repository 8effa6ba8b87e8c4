"""Periodic Gaussian random fields with the slab spectrum P_2D(k; theta), and their exact density.

Conventions (``data_gen.fourier``): X = rfft2(x) is the unnormalised DFT and the pixel
spectrum is P_pix(k) = P_2D(|k|) N^2 / L^2, so that the field covariance is diagonal in
Fourier space, C = F^-1 diag(P_pix) F, and a pixel has variance (1/N^2) sum_k P_pix(k).

Sampling: x = irfft2( rfft2(w) sqrt(P_pix) ) with w ~ N(0, I) white noise on the grid.
The field is band-limited to the grid (no pixel window, no aliasing), so
``data_gen.fourier.power_spectrum`` of the fields scatters around ``power_2d_binned``.

The k = 0 mode has the finite variance P_2D(0) of the mean of a slab of thickness L_z
(the integral over k_z in ``data_gen.power``), so the density is proper.

Exact log-density, sum over all N^2 modes (rfft2 half plane weighted by
``rfft_multiplicity``, which counts Hermitian pairs correctly):

    log p(x) = -1/2 sum_k [ |X_k|^2 / (N^2 P_pix(k)) + log P_pix(k) ] - (N^2 / 2) log(2 pi).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from data_gen.cosmology import check_grid, check_theta
from data_gen.power import DEFAULT_BOX, DEFAULT_N, pixel_power_grid
from data_gen.validation import check_maps, is_concrete

__all__ = ["grf", "grf_log_likelihood", "gaussian_field", "gaussian_log_density"]


def gaussian_field(key: jax.Array, ppix: jnp.ndarray) -> jnp.ndarray:
    """One field x = irfft2(rfft2(w) sqrt(P_pix)), w ~ N(0, I); ppix (N, N//2+1) -> (N, N)."""
    n = ppix.shape[-2]
    w = jax.random.normal(key, (n, n), dtype=jnp.float32)
    return jnp.fft.irfft2(jnp.fft.rfft2(w) * jnp.sqrt(ppix), s=(n, n)).astype(jnp.float32)


def gaussian_log_density(x: jnp.ndarray, ppix: jnp.ndarray) -> jnp.ndarray:
    """log N(x; 0, C) for C = F^-1 diag(P_pix) F; x (..., N, N), ppix broadcastable -> (...)."""
    from data_gen.fourier import rfft_multiplicity

    n = x.shape[-1]
    w = jnp.asarray(rfft_multiplicity(n), jnp.float32)
    xk = jnp.fft.rfft2(x)
    power = jnp.real(xk) ** 2 + jnp.imag(xk) ** 2
    quad = jnp.sum(w * power / ppix, axis=(-2, -1)) / n**2
    logdet = jnp.sum(w * jnp.log(ppix), axis=(-2, -1))
    return -0.5 * (quad + logdet + n**2 * np.log(2 * np.pi))


def prepare_theta(theta) -> jnp.ndarray:
    """theta (2,) or (B, 2) -> float32 (B, 2); range-checked when concrete (ValueError)."""
    if not is_concrete(theta):
        return jnp.atleast_2d(theta).astype(jnp.float32)
    return jnp.asarray(check_theta(theta))


@functools.partial(jax.jit, static_argnames=("n", "box", "slab", "nonlinear"))
def _grf_keys(keys, theta, n, box, slab, nonlinear):
    ppix = pixel_power_grid(theta, n, box, slab, nonlinear)
    return jax.vmap(gaussian_field)(keys, ppix)


def grf(
    key: jax.Array,
    theta,
    n: int = DEFAULT_N,
    box: float = DEFAULT_BOX,
    slab: float | None = None,
    nonlinear: bool = False,
) -> jnp.ndarray:
    """B periodic Gaussian random fields with spectrum P_2D(k; theta): float32 (B, N, N).

    theta (2,) or (B, 2) = (Omega_m, sigma8); key a single ``jax.random`` key, split into one
    key per map (map i depends only on ``split(key, B)[i]``). ``slab`` defaults to box / 4.
    """
    n, box = check_grid(n, box)
    theta = prepare_theta(theta)
    keys = jax.random.split(key, theta.shape[0])
    return _grf_keys(keys, theta, n, box, slab, bool(nonlinear))


@functools.partial(jax.jit, static_argnames=("box", "slab", "nonlinear"))
def _grf_logl(x, theta, box, slab, nonlinear):
    ppix = pixel_power_grid(theta, x.shape[-1], box, slab, nonlinear)
    return gaussian_log_density(x, ppix)


def grf_log_likelihood(
    x,
    theta,
    box: float = DEFAULT_BOX,
    slab: float | None = None,
    nonlinear: bool = False,
) -> jnp.ndarray:
    """Exact log p(x | theta) in nats of fields under the GRF model; shape (B,).

    x (B, N, N); theta (2,) or (B, 2); a batch of 1 on either side broadcasts (one map on
    many theta, or many maps at one theta). Jit-able, differentiable in x and theta.
    """
    x = jnp.asarray(check_maps(x, name="x")[0])
    theta = prepare_theta(theta)
    _check_broadcast(x, theta)
    _, box = check_grid(x.shape[-1], box)
    return _grf_logl(x, theta, box, slab, bool(nonlinear))


def _check_broadcast(x, theta) -> None:
    bx, bt = x.shape[0], theta.shape[0]
    if bx != bt and bx != 1 and bt != 1:
        raise ValueError(f"x has batch {bx} but theta has batch {bt}: they must match or be 1")
