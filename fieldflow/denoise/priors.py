"""Exact log-priors as ``log_prior(s, cond)`` callables for the MAP estimators: the Gaussian
density of a power spectrum and the lognormal density of the simulator."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fieldflow import fourier
from fieldflow.denoise.observation import check_power

__all__ = ["gaussian_log_prior", "lognormal_log_prior"]


def gaussian_log_prior(signal_power_half) -> Callable:
    """The exact Gaussian log-density log N(s; 0, C) as a ``log_prior(s, cond=None)`` callable.

        log p(s) = -1/2 sum_k |FFT[s]_k|^2 / S_k - 1/2 sum_k log(2 pi S_k / N^2),

    sums over all N^2 full-plane modes (half plane weighted by
    ``fourier.rfft_multiplicity``). Needs S_k > 0 on every mode. ``cond`` is ignored.
    """
    s = np.asarray(signal_power_half, dtype=np.float64)
    n = s.shape[0]
    check_power(s, n)
    if np.any(s <= 0):
        raise ValueError("gaussian_log_prior needs S_k > 0 on every mode (set k0_power > 0)")
    w = fourier.rfft_multiplicity(n)
    inv = jnp.asarray(w / s, dtype=jnp.float32)
    const = float(-0.5 * np.sum(w * np.log(2 * np.pi * s / n**2)))

    @jax.jit
    def _lp(x):
        fx = jnp.fft.rfft2(x)
        quad = jnp.sum((jnp.real(fx) ** 2 + jnp.imag(fx) ** 2) * inv, axis=(-2, -1))
        return -0.5 * quad + const

    def log_prior(x, cond=None):
        return _lp(x)

    return log_prior


def lognormal_log_prior(theta, box: float, *, jacobian: bool = True, **kwargs) -> Callable:
    """Exact lognormal log-density as a ``log_prior(s, cond)`` callable (for the benchmark).

    Wraps ``data_gen.lognormal_log_likelihood(x, theta, box)``,

        log p(delta) = log p_G(g) - sum_x log(1 + delta),   g = log(1 + delta) + sigma_g^2 / 2;

    ``cond`` (when given) replaces ``theta``, so ``fit_theta`` works too. Use with
    ``flow_map(..., parametrization="log1p")`` to keep delta > -1.

    Note: the Jacobian term rewards delta -> -1 (the mode of a lognormal pixel is
    exp(-3 sigma_g^2 / 2) - 1 < 0, below its mean 0), so the MAP in delta is biased
    low where the data are weak (masked pixels sink towards the mode). With
    ``jacobian=False`` the callable returns log p_G(g) only: maximising it is the MAP
    of the Gaussian field g (the "latent" MAP), then mapped to delta.
    """
    from data_gen import lognormal_log_likelihood

    theta0 = jnp.asarray(theta, dtype=jnp.float32)

    def log_prior(s, cond=None):
        th = theta0 if cond is None else cond
        if th.ndim == 1:
            th = jnp.broadcast_to(th, (s.shape[0], th.shape[0]))
        logp = lognormal_log_likelihood(s, th, box, **kwargs)
        if not jacobian:
            logp = logp + jnp.sum(jnp.log1p(jnp.maximum(s, -1.0 + 1e-7)), axis=(-2, -1))
        return logp

    return log_prior
