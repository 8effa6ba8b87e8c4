r"""The Wiener filter: the posterior mean (and MAP) of a Gaussian field.

    s_WF = (C^-1 + W)^-1 M^T N^-1 d,     W = M^T N^-1 M,

with the units of :mod:`fieldflow.denoise.observation`. It is solved for x with
s = C^{1/2} x, C^{1/2} = F^-1 diag(sqrt(S_k)/N) F,

    (I + C^{1/2} W C^{1/2}) x = C^{1/2} M^T N^-1 d,

a symmetric positive-definite system with eigenvalues >= 1 that stays valid
when S_k = 0 (such a mode is set to zero), by preconditioned conjugate gradients
with the Fourier-diagonal preconditioner (1 + wbar S_k / N^2)^-1, wbar =
mean(M / sigma_n^2) (exact when the mask is empty and the noise white). The
reported residual is ||b - A x|| / ||b|| of this system. Without a mask and with
white noise the filter is diagonal in Fourier space,

    s_WF,k = S_k / (S_k + N^2 sigma_n^2) d_k.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fieldflow.denoise.observation import (
    check_data,
    check_mask,
    check_noise,
    check_power,
    fourier_apply,
    noise_weights,
)

__all__ = ["WienerResult", "wiener_filter", "wiener_filter_fourier"]


class WienerResult(NamedTuple):
    """Result of :func:`wiener_filter`.

    field: s_WF, same shape as ``d``.
    iterations: CG iterations per map, (B,) int32 (0 for the Fourier closed form).
    residual: relative residual ||b - A x|| / ||b|| per map, (B,), recomputed at the end.
    converged: (B,) bool, the CG recursion reached ``tol`` (True for the closed form).
    """

    field: jnp.ndarray
    iterations: jnp.ndarray
    residual: jnp.ndarray
    converged: jnp.ndarray


@jax.jit
def _wiener_closed(d, s, v):
    n = d.shape[-1]
    return fourier_apply(d, s / (s + n * n * v))


@jax.jit
def _wiener_cg(d, w, s, tol, max_iter):
    """Batched PCG on (I + C^1/2 W C^1/2) x = C^1/2 W d; returns s, iters, residual, conv."""
    n = d.shape[-1]
    sqrt_s = jnp.sqrt(s) / n
    wbar = jnp.mean(w, axis=(-2, -1))[:, None, None]
    precond = 1.0 / (1.0 + wbar * s / (n * n))

    def a_op(x):
        return x + fourier_apply(w * fourier_apply(x, sqrt_s), sqrt_s)

    def pre(r):
        return fourier_apply(r, precond)

    def dot(a, b):
        return jnp.sum(a * b, axis=(-2, -1))

    b = fourier_apply(w * d, sqrt_s)
    bnorm = jnp.sqrt(dot(b, b))
    x = jnp.zeros_like(b)
    r = b
    z = pre(r)
    p = z
    rz = dot(r, z)
    active = jnp.sqrt(dot(r, r)) > tol * bnorm
    iters = jnp.zeros(b.shape[0], jnp.int32)

    def cond_fn(state):
        *_, it, active, _ = state
        return jnp.any(active) & (it < max_iter)

    def body_fn(state):
        x, r, p, rz, it, active, iters = state
        ap = a_op(p)
        pap = dot(p, ap)
        alpha = jnp.where(active, rz / jnp.where(active, pap, 1.0), 0.0)[:, None, None]
        x = x + alpha * p
        r = r - alpha * ap
        z = pre(r)
        rz_new = dot(r, z)
        beta = jnp.where(active, rz_new / jnp.where(active, rz, 1.0), 0.0)[:, None, None]
        p = jnp.where(active[:, None, None], z + beta * p, p)
        iters = iters + active.astype(jnp.int32)
        still = active & (jnp.sqrt(dot(r, r)) > tol * bnorm)
        return x, r, p, jnp.where(active, rz_new, rz), it + 1, still, iters

    x, r, p, rz, it, active, iters = jax.lax.while_loop(
        cond_fn, body_fn, (x, r, p, rz, jnp.int32(0), active, iters)
    )
    res = b - a_op(x)
    resid = jnp.sqrt(dot(res, res)) / jnp.where(bnorm > 0, bnorm, 1.0)
    return fourier_apply(x, sqrt_s), iters, resid, ~active


def wiener_filter_fourier(d, noise_var: float, signal_power_half) -> jnp.ndarray:
    """Closed-form Wiener filter without a mask and with white noise:

        s_WF,k = S_k / (S_k + N^2 sigma_n^2) d_k.

    Args: ``d`` (B, N, N) or (N, N); ``noise_var`` a positive scalar; S_k as in
    :func:`wiener_filter`. Returns the filtered maps, same shape as ``d``.
    """
    d_b, single = check_data(d)
    n = d_b.shape[-1]
    if np.ndim(noise_var) != 0:
        raise ValueError("wiener_filter_fourier needs a scalar (white) noise_var")
    v = float(check_noise(noise_var, d_b.shape))
    s = check_power(signal_power_half, n)
    out = _wiener_closed(d_b, s, np.float32(v))
    return out[0] if single else out


def wiener_filter(
    d,
    mask,
    noise_var,
    signal_power_half,
    *,
    tol: float = 1e-6,
    max_iter: int = 500,
    method: str = "auto",
) -> WienerResult:
    """Wiener filter s_WF = (C^-1 + M^T N^-1 M)^-1 M^T N^-1 d (module docstring).

    Args:
        d: data (B, N, N) or (N, N); masked pixels are ignored whatever their value.
        mask: 0/1 (N, N) or (B, N, N), 1 = observed; None = everything observed.
        noise_var: noise variance sigma_n^2 > 0 per pixel (same units as d^2): a
            scalar, (N, N) or (B, N, N).
        signal_power_half: S_k = <|FFT[s](k)|^2> = N^4 P(k) / L^2 on the rfft2 half
            plane, (N, N//2+1) (:func:`~fieldflow.denoise.signal_power_from_pk`).
        tol: relative residual ||b - A x|| / ||b|| at which CG stops.
        max_iter: most CG iterations.
        method: "cg", "fourier" (closed form; needs no mask and scalar noise) or
            "auto" (closed form when possible, else CG).

    Returns:
        :class:`WienerResult` with per-map iterations, residual and convergence.

    Raises:
        ValueError: wrong shapes, a mask that is not 0/1 or hides a whole map,
            noise_var <= 0, negative or non-finite S.
    """
    d_b, single = check_data(d)
    b, n = d_b.shape[0], d_b.shape[-1]
    m = check_mask(mask, d_b.shape)
    v = check_noise(noise_var, d_b.shape)
    s = check_power(signal_power_half, n)
    if method not in ("auto", "cg", "fourier"):
        raise ValueError(f"method must be 'auto', 'cg' or 'fourier', got {method!r}")
    if not tol > 0 or int(max_iter) < 1:
        raise ValueError("tol must be > 0 and max_iter >= 1")
    closed_ok = bool(np.all(m == 1)) and v.ndim == 0
    if method == "fourier" and not closed_ok:
        raise ValueError("method='fourier' needs no mask (all observed) and a scalar noise_var")
    if method == "fourier" or (method == "auto" and closed_ok):
        field = _wiener_closed(d_b, s, v)
        # the closed form is exact; its residual in the CG system is only round-off
        res = np.zeros(b, np.float32)
        out = WienerResult(field, np.zeros(b, np.int32), res, np.ones(b, bool))
    else:
        w = noise_weights(m, v, d_b.shape)
        out = WienerResult(*_wiener_cg(d_b, w, s, np.float32(tol), np.int32(max_iter)))
    if single:
        out = out._replace(field=out.field[0])
    return out
