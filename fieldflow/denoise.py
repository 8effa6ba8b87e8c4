r"""Reconstruction of a masked, noisy map: Wiener filter and flow MAP.

Observation model, on periodic N x N maps (pixel index x):

    d = M s + n,    n ~ N(0, N),   N = diag(sigma_n^2(x)),

with M the binary mask (1 = observed, 0 = hole) and sigma_n^2 > 0 white or
pixel-dependent. Masked pixels carry no information: only W = M^T N^-1 M =
diag(M / sigma_n^2) enters.

Fourier units. With the unnormalised FFT s_k = sum_x s(x) exp(-i k.x) (numpy's
``fft2``), a statistically homogeneous Gaussian field has

    < s_k s_k'^* > = S_k  delta_kk',    S_k = <|FFT[s](k)|^2> = N^4 P(k) / L^2,

where P(k) is the power spectrum in (h^-1 Mpc)^2 in the convention of
:mod:`fieldflow.fourier` (P = L^2 |FFT|^2 / N^4). The pixel covariance is
C = F^-1 diag(S) F^-dagger, whose eigenvalues are S_k / N^2: white noise of
pixel variance sigma^2 has S_k = N^2 sigma^2. ``signal_power_half`` is S_k on the
rfft2 half plane, shape (N, N//2+1), in these units (see
:func:`signal_power_from_pk`).

Wiener filter (the posterior mean, and MAP, for a Gaussian s):

    s_WF = (C^-1 + W)^-1 M^T N^-1 d.

It is solved for x with s = C^{1/2} x, C^{1/2} = F^-1 diag(sqrt(S_k)/N) F,

    (I + C^{1/2} W C^{1/2}) x = C^{1/2} M^T N^-1 d,

a symmetric positive-definite system with eigenvalues >= 1 that stays valid
when S_k = 0 (such a mode is set to zero), by preconditioned conjugate gradients
with the Fourier-diagonal preconditioner (1 + wbar S_k / N^2)^-1, wbar =
mean(M / sigma_n^2) (exact when the mask is empty and the noise white). The
reported residual is ||b - A x|| / ||b|| of this system. Without a mask and with
white noise the filter is diagonal in Fourier space,

    s_WF,k = S_k / (S_k + N^2 sigma_n^2) d_k.

Flow MAP (Rouhiainen & Muenchmeyer, arXiv:2211.15161):

    s_MAP = argmax_s  [ -1/2 (d - M s)^T N^-1 (d - M s) + log p(s | theta) ]

with any log-prior callable ``log_prior(s, cond) -> (B,)`` in nats (e.g.
``model.log_prob`` of a trained flow, :func:`gaussian_log_prior`, or the exact
lognormal density), by L-BFGS or Adam (optax) from the Wiener filter, inside one
jitted ``lax.while_loop``. For a Gaussian prior with covariance C the MAP is the
Wiener filter. This is the "data-space MAP" (:func:`flow_map`).

Latent MAP (:func:`flow_latent_map`): with s = f^-1(z | theta) and z ~ N(0, I),

    z_MAP = argmax_z  [ -1/2 (d - M s(z))^T N^-1 (d - M s(z)) - 1/2 |z|^2 ],

returned as s(z_MAP). It drops the log-determinant of f from the prior. For a
lognormal field and a flow whose first layer is ~log(1 + delta) it is the analogue of
the exact MAP of the Gaussian g = log(1 + delta) (``lognormal_log_prior(...,
jacobian=False)``), which beats the Wiener filter, whereas the data-space MAP, like
the exact MAP in delta, is pulled towards the mode of the one-point PDF (delta -> -1
in the masked, noisy pixels) and loses to it. For a Gaussian flow both are the
Wiener filter.
"""

from __future__ import annotations

import functools
import json
import math
import weakref
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fieldflow import fourier, metrics

__all__ = [
    "WienerResult",
    "MAPResult",
    "signal_power_from_pk",
    "sample_gaussian_field",
    "gaussian_log_prior",
    "wiener_filter",
    "wiener_filter_fourier",
    "flow_map",
    "flow_latent_map",
    "lognormal_log_prior",
    "denoising_metrics",
    "metrics_to_json",
    "plot_denoising",
]

_LOG_2PI = math.log(2.0 * math.pi)


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


class MAPResult(NamedTuple):
    """Result of :func:`flow_map`.

    field: s_MAP, same shape as ``d``.
    iterations: optimiser steps taken (shared by the batch, which is optimised jointly).
    grad_norm: per map ||d objective / d s|| / ||M^T N^-1 d||, (B,); with the "log1p"
        parametrization the gradient is d/du = (1 + s) d/ds.
    converged: (B,) bool, grad_norm <= gtol (and the theta gradient small, if fitted).
    objective: per map log-likelihood + log-prior in nats at the solution, (B,).
    theta: fitted conditions (B, P) when ``fit_theta=True``, else None.
    stopped: why the loop ended: "gtol" (every map converged), "stalled" (no decrease
        of the objective for ``patience`` steps: the float32 floor, or a kink of the
        prior such as the knots of a rational-quadratic spline, whose log-derivative
        makes log p only piecewise smooth) or "max_steps".
    """

    field: jnp.ndarray
    iterations: int
    grad_norm: jnp.ndarray
    converged: jnp.ndarray
    objective: jnp.ndarray
    theta: jnp.ndarray | None = None
    stopped: str = "gtol"


# ------------------------------------------------------------------------ validation
# Checks run on the host (numpy) on concrete inputs, so that a call compiles only
# its jitted solver, not a string of small eager operations.
def _as_batch(d, name="d") -> tuple[np.ndarray, bool]:
    d = np.asarray(d)
    if d.ndim not in (2, 3) or d.shape[-1] != d.shape[-2] or d.shape[-1] < 2:
        raise ValueError(f"{name} must have shape (B, N, N) or (N, N), got {tuple(d.shape)}")
    if d.ndim == 3 and d.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one map")
    if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
        raise ValueError(f"{name} must be a real array, got dtype {d.dtype}")
    d = d.astype(np.float32)
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{name} contains NaN or inf values")
    single = d.ndim == 2
    return (d[None] if single else d), single


def _check_mask(mask, shape) -> np.ndarray:
    """(B, N, N) or (N, N) binary float32 mask, 1 = observed; None = all observed."""
    b, n = shape[0], shape[-1]
    if mask is None:
        return np.ones((n, n), np.float32)
    m = np.asarray(mask)
    if m.shape not in ((n, n), (b, n, n)):
        raise ValueError(f"mask must have shape ({n}, {n}) or ({b}, {n}, {n}), got {m.shape}")
    if m.dtype == bool:
        m = m.astype(np.float32)
    if not np.all((m == 0) | (m == 1)):
        raise ValueError("mask must contain only 0 (masked) and 1 (observed)")
    flat = m.reshape(-1, n * n)
    if np.any(flat.sum(axis=1) == 0):
        raise ValueError("the mask hides every pixel of a map: nothing is observed")
    return m.astype(np.float32)


def _check_noise(noise_var, shape) -> np.ndarray:
    b, n = shape[0], shape[-1]
    v = np.asarray(noise_var, dtype=np.float64)
    if v.shape not in ((), (n, n), (b, n, n)):
        raise ValueError(
            f"noise_var must be a scalar or have shape ({n}, {n}) or ({b}, {n}, {n}), got {v.shape}"
        )
    if not np.all(np.isfinite(v)):
        raise ValueError("noise_var must be finite")
    if not np.all(v > 0):
        raise ValueError(f"noise_var must be > 0 everywhere, got min {v.min():g}")
    return v.astype(np.float32)


def _check_power(signal_power_half, n) -> np.ndarray:
    s = np.asarray(signal_power_half, dtype=np.float64)
    if s.shape != (n, n // 2 + 1):
        raise ValueError(
            f"signal_power_half must be S_k on the rfft2 half plane, shape ({n}, {n // 2 + 1}), "
            f"got {s.shape}"
        )
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("signal_power_half must be finite and >= 0")
    return s.astype(np.float32)


# ---------------------------------------------------------------- Fourier helpers
def _fourier_apply(x, h_half):
    """F^-1 diag(h) F x for real (..., N, N) x and a real half-plane filter h."""
    n = x.shape[-1]
    return jnp.fft.irfft2(jnp.fft.rfft2(x) * h_half, s=(n, n))


def signal_power_from_pk(pk, n: int, box: float, *, edges=None, k0_power: float | None = None):
    """Per-mode signal variance S_k = N^4 P(|k|) / L^2 on the rfft2 half plane.

    From P(k) = L^2 <|FFT[s](k)|^2> / N^4 (:mod:`fieldflow.fourier`). A field drawn
    with :func:`sample_gaussian_field` from this S has ``fourier.power_spectrum`` = P.

    Args:
        pk: the power spectrum in (h^-1 Mpc)^2, either
            * a callable P(k) of |k| in h/Mpc (evaluated on ``fourier.kmag_half``);
            * a 1D array of binned values on ``edges`` (default
              ``fourier.k_bin_edges(n, box)``), assigned piecewise-constant to the
              modes of each bin; modes beyond the last edge (the corners past
              Nyquist) take the last bin's value;
            * an (N, N//2+1) array of P on the half plane.
        n: map side N.
        box: side L in h^-1 Mpc.
        edges: bin edges for a binned ``pk``.
        k0_power: P at k = 0 (the variance of the map mean, times L^2). Default: the
            value of a half-plane ``pk``; 0 for a callable or binned ``pk`` (a
            mean-zero field, whose mean the Wiener filter then sets to zero). Give a
            positive value to let the mean float (needed by :func:`gaussian_log_prior`).

    Returns:
        float32 numpy array (N, N//2+1), >= 0.
    """
    n = int(n)
    box = float(box)
    k = fourier.kmag_half(n, box)
    if callable(pk):
        with np.errstate(divide="ignore", invalid="ignore"):
            k_safe = np.where(k > 0, k, 1.0)
            p = np.asarray(pk(k_safe), dtype=np.float64)
        if p.shape != k.shape:
            p = np.broadcast_to(p, k.shape).astype(np.float64)
    else:
        arr = np.asarray(pk, dtype=np.float64)
        if arr.shape == k.shape:
            p = arr.copy()
        elif arr.ndim == 1:
            e = fourier.k_bin_edges(n, box) if edges is None else np.asarray(edges, np.float64)
            if len(arr) != len(e) - 1:
                raise ValueError(f"binned pk has {len(arr)} values but {len(e) - 1} bins")
            idx = np.clip(np.digitize(k, e) - 1, 0, len(arr) - 1)
            p = arr[idx]
        else:
            raise ValueError(
                f"pk must be callable, 1D binned, or shape {k.shape}; got shape {arr.shape}"
            )
    p = np.array(p, dtype=np.float64)
    if k0_power is not None:
        p[0, 0] = float(k0_power)
    elif callable(pk) or np.ndim(pk) == 1:
        p[0, 0] = 0.0
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("P(k) must be finite and >= 0 on every mode")
    return (n**4 * p / box**2).astype(np.float32)


def sample_gaussian_field(key: jax.Array, signal_power_half, batch: int = 1) -> jnp.ndarray:
    """Draw (batch, N, N) Gaussian fields with <|FFT[s]_k|^2> = S_k: s = C^{1/2} w, w white."""
    s = np.asarray(signal_power_half, dtype=np.float32)
    return _sample(key, _check_power(s, s.shape[0]), int(batch))


@functools.partial(jax.jit, static_argnames=("batch",))
def _sample(key, s, batch):
    n = s.shape[0]
    w = jax.random.normal(key, (batch, n, n), dtype=jnp.float32)
    return _fourier_apply(w, jnp.sqrt(s) / n)


def gaussian_log_prior(signal_power_half) -> Callable:
    """The exact Gaussian log-density log N(s; 0, C) as a ``log_prior(s, cond=None)`` callable.

        log p(s) = -1/2 sum_k |FFT[s]_k|^2 / S_k - 1/2 sum_k log(2 pi S_k / N^2),

    sums over all N^2 full-plane modes (half plane weighted by
    ``fourier.rfft_multiplicity``). Needs S_k > 0 on every mode. ``cond`` is ignored.
    """
    s = np.asarray(signal_power_half, dtype=np.float64)
    n = s.shape[0]
    _check_power(s, n)
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


# ------------------------------------------------------------------------- Wiener
@jax.jit
def _wiener_closed(d, s, v):
    n = d.shape[-1]
    return _fourier_apply(d, s / (s + n * n * v))


@jax.jit
def _wiener_cg(d, w, s, tol, max_iter):
    """Batched PCG on (I + C^1/2 W C^1/2) x = C^1/2 W d; returns s, iters, residual, conv."""
    n = d.shape[-1]
    sqrt_s = jnp.sqrt(s) / n
    wbar = jnp.mean(w, axis=(-2, -1))[:, None, None]
    precond = 1.0 / (1.0 + wbar * s / (n * n))

    def a_op(x):
        return x + _fourier_apply(w * _fourier_apply(x, sqrt_s), sqrt_s)

    def pre(r):
        return _fourier_apply(r, precond)

    def dot(a, b):
        return jnp.sum(a * b, axis=(-2, -1))

    b = _fourier_apply(w * d, sqrt_s)
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
    return _fourier_apply(x, sqrt_s), iters, resid, ~active


def wiener_filter_fourier(d, noise_var: float, signal_power_half) -> jnp.ndarray:
    """Closed-form Wiener filter without a mask and with white noise:

        s_WF,k = S_k / (S_k + N^2 sigma_n^2) d_k.

    Args: ``d`` (B, N, N) or (N, N); ``noise_var`` a positive scalar; S_k as in
    :func:`wiener_filter`. Returns the filtered maps, same shape as ``d``.
    """
    d_b, single = _as_batch(d)
    n = d_b.shape[-1]
    if np.ndim(noise_var) != 0:
        raise ValueError("wiener_filter_fourier needs a scalar (white) noise_var")
    v = float(_check_noise(noise_var, d_b.shape))
    s = _check_power(signal_power_half, n)
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
            plane, (N, N//2+1) (:func:`signal_power_from_pk`).
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
    d_b, single = _as_batch(d)
    b, n = d_b.shape[0], d_b.shape[-1]
    m = _check_mask(mask, d_b.shape)
    v = _check_noise(noise_var, d_b.shape)
    s = _check_power(signal_power_half, n)
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
        w = np.ascontiguousarray(np.broadcast_to(m / v, d_b.shape), dtype=np.float32)
        out = WienerResult(*_wiener_cg(d_b, w, s, np.float32(tol), np.int32(max_iter)))
    if single:
        out = out._replace(field=out.field[0])
    return out


# ----------------------------------------------------------------------- flow MAP
def _pure_log_prior(log_prior):
    """Split an nnx-module method into (pure fn(state, s, cond), state, cache key).

    The key identifies the module object, the method and the structure of its
    state; the parameter values travel as an argument, so a cached solver stays
    correct after the module is trained further. A plain callable becomes
    fn(None, s, cond), cached by identity as ``jax.jit`` does: arrays it closes
    over are constants of the compiled solver.
    """
    owner = getattr(log_prior, "__self__", None)
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        nnx = None
    if nnx is not None and isinstance(owner, nnx.Module):
        graphdef, state = nnx.split(owner)
        name = log_prior.__func__.__name__

        def fn(state, s, cond):
            return getattr(nnx.merge(graphdef, state), name)(s, cond)

        key = (id(owner), name, jax.tree.structure(state))
        return fn, state, (key, weakref.ref(owner))

    def fn(_, s, cond):
        return log_prior(s, cond)

    try:
        hash(log_prior)
    except TypeError:
        return fn, None, None
    # like jax.jit, a plain function is cached by identity (arrays it closes over are
    # treated as constants); the strong reference keeps its id from being reused
    return fn, None, (("callable", log_prior), lambda: log_prior)


_SOLVER_CACHE: dict = {}


def _build_solver(fn, optimizer, learning_rate, parametrization, fit_theta, lo, hi, patience):
    """A jitted function running the whole MAP optimisation in one lax.while_loop."""
    if optimizer == "lbfgs":
        opt = optax.lbfgs(memory_size=20)
    else:
        opt = optax.adam(learning_rate)

    def to_s(u):
        return jnp.expm1(u) if parametrization == "log1p" else u

    lo = None if lo is None else jnp.asarray(lo, jnp.float32)
    hi = None if hi is None else jnp.asarray(hi, jnp.float32)

    def theta_of(t):
        return lo + (hi - lo) * jax.nn.sigmoid(t)

    def per_map(params, state, d, w, cond):
        s = to_s(params["u"])
        c = theta_of(params["t"]) if fit_theta else cond
        loglike = -0.5 * jnp.sum(w * (d - s) ** 2, axis=(-2, -1))
        return loglike + fn(state, s, c)

    @jax.jit
    def solve(params, state, d, w, cond, steps, gtol, gtol_theta):
        def loss(p):
            return -jnp.sum(per_map(p, state, d, w, cond))

        scale = jnp.sqrt(jnp.sum((w * d) ** 2, axis=(-2, -1)))
        scale = jnp.where(scale > 0, scale, 1.0)

        if optimizer == "lbfgs":
            vg = optax.value_and_grad_from_state(loss)
        else:
            vg = jax.value_and_grad(loss)

        def measure(p, g):
            # the gradient in the optimised variable: d/ds for "identity", d/du =
            # (1 + s) d/ds for "log1p" (well defined as s -> -1)
            gs = g["u"]
            gnorm = jnp.sqrt(jnp.sum(gs**2, axis=(-2, -1))) / scale
            ok = gnorm <= gtol
            if fit_theta:
                n_pix = d.shape[-1] * d.shape[-2]
                ok = ok & (jnp.max(jnp.abs(g["t"]), axis=-1) / n_pix <= gtol_theta)
            return gnorm, ok

        opt_state = opt.init(params)
        value, grad = jax.value_and_grad(loss)(params)
        gnorm, ok = measure(params, grad)

        def cond_fn(c):
            _, _, it, _, ok, _, since = c
            return (it < steps) & ~jnp.all(ok) & (since < patience)

        def body_fn(c):
            params, opt_state, it, gnorm, ok, best, since = c
            if optimizer == "lbfgs":
                value, grad = vg(params, state=opt_state)
                updates, opt_state = opt.update(
                    grad, opt_state, params, value=value, grad=grad, value_fn=loss
                )
            else:
                value, grad = vg(params)
                updates, opt_state = opt.update(grad, opt_state, params)
            params = optax.apply_updates(params, updates)
            if optimizer == "lbfgs":
                value, grad = vg(params, state=opt_state)
            else:
                value, grad = vg(params)
            gnorm, ok = measure(params, grad)
            improved = value < best - 1e-7 * jnp.abs(best)
            since = jnp.where(improved, 0, since + 1)
            return params, opt_state, it + 1, gnorm, ok, jnp.minimum(value, best), since

        init = (params, opt_state, jnp.int32(0), gnorm, ok, value, jnp.int32(0))
        params, _, it, gnorm, ok, _, since = jax.lax.while_loop(cond_fn, body_fn, init)
        obj = per_map(params, state, d, w, cond)
        theta = theta_of(params["t"]) if fit_theta else None
        return to_s(params["u"]), it, gnorm, ok, obj, theta, since >= patience

    return solve


def _domain_floor(model) -> float | None:
    """A field value just inside the domain x > -1 - c of a model with a log transform."""
    c = getattr(model, "log_offset", None)
    return None if c is None else -1.0 - c + 1e-2 * (1.0 + c)


def _start_field(init, d_b, m, v, signal_power_half) -> np.ndarray:
    """Where a MAP starts: ``init`` (one map broadcasts over the batch), else the Wiener
    filter when a signal power is given, else the masked data M d."""
    if init is None:
        if signal_power_half is not None:
            return np.asarray(wiener_filter(d_b, m, v, signal_power_half).field)
        return m * d_b
    s0, _ = _as_batch(init, "init")
    if s0.shape[0] == 1 and d_b.shape[0] > 1:
        s0 = np.broadcast_to(s0, d_b.shape)
    if s0.shape != d_b.shape:
        raise ValueError(f"init must have the shape of d, got {s0.shape} vs {d_b.shape}")
    return s0


def flow_map(
    log_prior: Callable,
    d,
    mask,
    noise_var,
    *,
    init=None,
    cond=None,
    signal_power_half=None,
    steps: int = 1000,
    gtol: float = 1e-4,
    optimizer: str = "lbfgs",
    learning_rate: float = 1e-2,
    fit_theta: bool = False,
    theta_bounds=None,
    gtol_theta: float = 1e-4,
    parametrization: str | None = None,
    patience: int = 25,
) -> MAPResult:
    """MAP field argmax_s [-1/2 (d - M s)^T N^-1 (d - M s) + log_prior(s, cond)].

    The objective is in nats; the B maps are optimised jointly (their objectives
    add, their gradients are independent) in one jitted ``lax.while_loop``, so the
    optimiser step compiles once per call; a method of a flax NNX module (e.g.
    ``model.log_prob``) is split into graph and state so repeated calls with the
    same model and shapes reuse the compiled solver.

    Args:
        log_prior: ``log_prior(s, cond) -> (B,)`` nats for s (B, N, N): a flow's
            ``log_prob``, :func:`gaussian_log_prior`, :func:`lognormal_log_prior`, ...
        d, mask, noise_var: the data, as in :func:`wiener_filter`.
        init: starting field (same shape as d). Default: the Wiener filter when
            ``signal_power_half`` is given, else the masked data M d.
        cond: conditions theta (B, P) passed to ``log_prior`` (None if unconditional);
            with ``fit_theta`` the starting point of theta.
        signal_power_half: S_k for the Wiener-filter start (see :func:`wiener_filter`).
        steps: most optimiser steps.
        gtol: stop when every map has ||grad_s|| <= gtol ||M^T N^-1 d|| (the CG
            residual of the Gaussian case). The float32 floor is ~1e-5: below it the
            line search stalls and ``patience`` ends the run with converged=False.
        optimizer: "lbfgs" (optax L-BFGS with zoom line search) or "adam".
        learning_rate: Adam's step size (ignored by L-BFGS).
        fit_theta: also maximise over theta, as theta = lo + (hi - lo) sigmoid(t).
            Caution: the joint maximum of p(d | s) p(s | theta) is degenerate for a
            parameter that sets the amplitude of the field (sigma_8): s -> 0 with
            the amplitude -> 0 drives log p(s | theta) to +infinity, so the fit runs
            to the lower bound. It is well posed for parameters that leave the
            normalisation unchanged (e.g. a mean); use the marginal posterior for theta.
        theta_bounds: (lo, hi) sequences for fit_theta; default the model's
            ``cond_low``/``cond_high`` when ``log_prior`` is a model method.
        gtol_theta: with fit_theta, also require max |d objective / d t| / N^2 <=
            gtol_theta (nats per pixel per unit of the logit t; the float32 floor is
            ~1e-5).
        parametrization: "identity" optimises s; "log1p" optimises u = log(1 + s),
            keeping s > -1 (for the lognormal prior; the argmax is the same). Default:
            "log1p" for a flow with a log transform (``log_offset``), whose density
            vanishes below -1 - c, else "identity".
        patience: stop after this many steps without a decrease of the objective
            (a stalled line search at the float32 floor).

    Returns:
        :class:`MAPResult`.
    """
    d_b, single = _as_batch(d)
    b = d_b.shape[0]
    m = _check_mask(mask, d_b.shape)
    v = _check_noise(noise_var, d_b.shape)
    if not callable(log_prior):
        raise ValueError("log_prior must be a callable log_prior(s, cond) -> (B,)")
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    if parametrization is None:
        owner = getattr(log_prior, "__self__", None)
        parametrization = "identity" if _domain_floor(owner) is None else "log1p"
    if parametrization not in ("identity", "log1p"):
        raise ValueError(f"parametrization must be 'identity' or 'log1p', got {parametrization!r}")
    if int(steps) < 0 or not gtol > 0 or int(patience) < 1:
        raise ValueError("need steps >= 0, gtol > 0 and patience >= 1")
    w = np.ascontiguousarray(np.broadcast_to(m / v, d_b.shape), dtype=np.float32)

    s0 = _start_field(init, d_b, m, v, signal_power_half)
    if parametrization == "log1p":
        u0 = np.log1p(np.maximum(s0, -1.0 + 1e-3))
    else:
        u0 = s0
    params = {"u": jnp.asarray(u0, dtype=jnp.float32)}

    if cond is not None:
        cond = np.asarray(cond, dtype=np.float32)
        if cond.ndim == 1:
            cond = np.broadcast_to(cond, (b, cond.shape[0]))
        if cond.ndim != 2 or cond.shape[0] != b:
            raise ValueError(f"cond must have shape ({b}, P), got {tuple(cond.shape)}")
        owner = getattr(log_prior, "__self__", None)
        low, high = getattr(owner, "cond_low", None), getattr(owner, "cond_high", None)
        if low is not None and high is not None and len(low) == cond.shape[1]:
            # inside the jitted solver the model cannot refuse a traced condition
            from fieldflow.validation import check_cond_range

            check_cond_range(cond, low, high)

    lo = hi = None
    if fit_theta:
        if cond is None:
            raise ValueError("fit_theta needs a starting cond (B, P)")
        if theta_bounds is None:
            owner = getattr(log_prior, "__self__", None)
            lo, hi = getattr(owner, "cond_low", None), getattr(owner, "cond_high", None)
            if lo is None or hi is None:
                raise ValueError("fit_theta needs theta_bounds=(lo, hi)")
        else:
            lo, hi = theta_bounds
        lo = tuple(float(x) for x in np.ravel(lo))
        hi = tuple(float(x) for x in np.ravel(hi))
        if (
            len(lo) != cond.shape[1]
            or len(hi) != cond.shape[1]
            or not np.all(np.array(hi) > np.array(lo))
        ):
            raise ValueError(f"theta_bounds must give lo < hi for each of {cond.shape[1]} params")
        frac = (cond - np.asarray(lo)) / (np.asarray(hi) - np.asarray(lo))
        frac = np.clip(frac, 1e-3, 1 - 1e-3)
        params["t"] = jnp.asarray(np.log(frac) - np.log1p(-frac), dtype=jnp.float32)

    fn, state, cache = _pure_log_prior(log_prior)
    static = (
        optimizer,
        float(learning_rate),
        parametrization,
        bool(fit_theta),
        lo,
        hi,
        int(patience),
    )
    solve = None
    if cache is not None:
        key, ref = cache
        hit = _SOLVER_CACHE.get((key, static))
        if hit is not None and hit[0]() is ref() and ref() is not None:
            solve = hit[1]
    if solve is None:
        solve = _build_solver(fn, *static)
        if cache is not None:
            if len(_SOLVER_CACHE) >= 16:
                _SOLVER_CACHE.pop(next(iter(_SOLVER_CACHE)))
            _SOLVER_CACHE[(key, static)] = (ref, solve)

    field, it, gnorm, ok, obj, theta, stalled = solve(
        params, state, d_b, w, cond, np.int32(steps), np.float32(gtol), np.float32(gtol_theta)
    )
    if single:
        field = field[0]
    if bool(np.all(np.asarray(ok))):
        stopped = "gtol"
    else:
        stopped = "stalled" if bool(stalled) else "max_steps"
    return MAPResult(field, int(it), gnorm, ok, obj, theta, stopped)


def _latent_parts(model):
    """(pure inverse fn(state, z, cond), forward callable, state, cache key) of a flow.

    An NNX flow with a pure ``_inverse`` (every fieldflow model) is split into graph and
    state, so the compiled solver is cached per model structure and stays valid after
    further training. Anything else with ``forward``/``inverse`` methods, or a pair
    ``(forward, inverse)`` of callables, is traced as it is and cached by identity.
    """
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        nnx = None
    if isinstance(model, tuple):
        if len(model) != 2 or not all(callable(f) for f in model):
            raise ValueError("model must be a flow or a pair (forward, inverse) of callables")
        forward, inverse = model
    elif callable(getattr(model, "forward", None)) and callable(getattr(model, "inverse", None)):
        forward, inverse = model.forward, model.inverse
    else:
        raise ValueError(
            "flow_latent_map needs a flow with forward(x, cond) -> (z, logdet) and "
            "inverse(z, cond) -> x, or a pair (forward, inverse) of callables"
        )
    if nnx is not None and isinstance(model, nnx.Module) and hasattr(model, "_inverse"):
        graphdef, state = nnx.split(model)

        def inv(state, z, cond):
            return nnx.merge(graphdef, state)._inverse(z, cond)

        key = ("module", id(model), jax.tree.structure(state))
        return inv, forward, state, (key, weakref.ref(model))

    def inv(_, z, cond):
        return inverse(z, cond)

    try:
        hash(inverse)
    except TypeError:
        return inv, forward, None, None
    return inv, forward, None, (("callable", inverse), lambda: inverse)


def _build_latent_solver(inv, patience: int):
    """Jitted L-BFGS on z of  -[-1/2 |d - M f^-1(z)|^2_N - 1/2 |z|^2]  in one while_loop."""
    opt = optax.lbfgs(memory_size=20)

    def per_map(z, state, d, w, cond):
        s = inv(state, z, cond)
        return -0.5 * jnp.sum(w * (d - s) ** 2, axis=(-2, -1)) - 0.5 * jnp.sum(z * z, axis=(-2, -1))

    @jax.jit
    def solve(z0, state, d, w, cond, steps, gtol):
        def loss(z):
            return -jnp.sum(per_map(z, state, d, w, cond))

        scale = jnp.sqrt(jnp.sum((w * d) ** 2, axis=(-2, -1)))
        scale = jnp.where(scale > 0, scale, 1.0)
        vg = optax.value_and_grad_from_state(loss)

        def measure(g):
            return jnp.sqrt(jnp.sum(g * g, axis=(-2, -1))) / scale

        value, grad = jax.value_and_grad(loss)(z0)
        gnorm = measure(grad)

        def cond_fn(c):
            _, _, it, gnorm, _, since = c
            return (it < steps) & jnp.any(gnorm > gtol) & (since < patience)

        def body_fn(c):
            z, opt_state, it, _, best, since = c
            value, grad = vg(z, state=opt_state)
            updates, opt_state = opt.update(
                grad, opt_state, z, value=value, grad=grad, value_fn=loss
            )
            z = optax.apply_updates(z, updates)
            value, grad = vg(z, state=opt_state)  # cached by the line search: free
            improved = value < best - 1e-7 * jnp.abs(best)
            since = jnp.where(improved, 0, since + 1)
            return z, opt_state, it + 1, measure(grad), jnp.minimum(value, best), since

        init = (z0, opt.init(z0), jnp.int32(0), gnorm, value, jnp.int32(0))
        z, _, it, gnorm, _, since = jax.lax.while_loop(cond_fn, body_fn, init)
        obj = per_map(z, state, d, w, cond)
        return inv(state, z, cond), z, it, gnorm, obj, since >= patience

    return solve


_LATENT_CACHE: dict = {}


def flow_latent_map(
    model,
    d,
    mask,
    noise_var,
    *,
    cond=None,
    init=None,
    signal_power_half=None,
    steps: int = 1000,
    gtol: float = 1e-4,
    patience: int = 25,
) -> MAPResult:
    r"""Latent MAP of a flow: the MAP of its Gaussian latent z, mapped to the field.

        z_hat = argmax_z [ -1/2 (d - M s(z))^T N^-1 (d - M s(z)) - 1/2 |z|^2 ],
        s(z) = f^-1(z | theta),      returns  s_hat = f^-1(z_hat | theta).

    **Not** the issue's "data-space MAP" of the field (:func:`flow_map` with
    ``model.log_prob``), argmax_s [-1/2 |d - M s|^2_N + log p_flow(s | theta)]: the
    two differ by the flow's log-determinant log|det df/ds| in the prior, which this
    estimator leaves out (equivalently, it is the data-space MAP with the prior density
    taken with respect to the measure that f pushes to N(0, I)). Why: for a lognormal
    field the log-determinant of f(delta) ~ log(1 + delta) is -sum log(1 + delta), which
    sinks the weakly constrained (masked, noisy) pixels towards the mode of the
    one-point PDF, below the mean (:func:`lognormal_log_prior`); a TRENF whose first
    Psi ~ log(1 + delta) then makes this estimator the analogue of the exact MAP of
    g = log(1 + delta) (``lognormal_log_prior(..., jacobian=False)``). For a linear
    (Gaussian) flow, log|det| is a constant and both estimators are the Wiener filter.
    The estimator depends on the flow's parametrisation of the latent, not only on the
    density p(s | theta): it is a practical estimator, not the mode of the posterior.

    Args:
        model: the flow: an object with ``forward(x, cond) -> (z, logdet)`` and
            ``inverse(z, cond) -> x`` (every fieldflow model; an NNX model is split
            into graph and state so the compiled solver is reused across calls and
            training), or a pair ``(forward, inverse)`` of callables; ``inverse`` must
            be traceable by jax (it runs inside the jitted loop).
        d, mask, noise_var: the data, as in :func:`wiener_filter`.
        cond: conditions theta (B, P) or (P,) for a conditional flow, else None.
        init: starting field; default the Wiener filter when ``signal_power_half`` is
            given, else M d. The optimisation starts from z = f(init), with init raised
            into the support x > -1 - c of a flow with a log transform.
        signal_power_half: S_k for the Wiener-filter start.
        steps: most L-BFGS steps (the B maps are optimised jointly in one jitted loop).
        gtol: stop when every map has ||d objective / d z|| <= gtol ||M^T N^-1 d||.
        patience: stop after this many steps without a decrease of the objective (the
            float32 floor, or the kinks of the spline Psi): ``stopped="stalled"``.

    Returns:
        :class:`MAPResult`: ``field`` s_hat, ``grad_norm`` the relative latent gradient
        above, ``objective`` log-likelihood - |z|^2 / 2 (nats, without the constant
        -N^2/2 log 2 pi), ``theta`` None.
    """
    d_b, single = _as_batch(d)
    b = d_b.shape[0]
    m = _check_mask(mask, d_b.shape)
    v = _check_noise(noise_var, d_b.shape)
    if int(steps) < 0 or not gtol > 0 or int(patience) < 1:
        raise ValueError("need steps >= 0, gtol > 0 and patience >= 1")
    inv, forward, state, cache = _latent_parts(model)
    w = np.ascontiguousarray(np.broadcast_to(m / v, d_b.shape), dtype=np.float32)
    s0 = _start_field(init, d_b, m, v, signal_power_half)
    floor = _domain_floor(model)
    if floor is not None:  # a Wiener start can dip below the flow's support
        s0 = np.maximum(s0, floor)
    if cond is not None:
        cond = np.asarray(cond, dtype=np.float32)
        if cond.ndim == 1:
            cond = np.broadcast_to(cond, (b, cond.shape[0]))
        if cond.ndim != 2 or cond.shape[0] != b:
            raise ValueError(f"cond must have shape ({b}, P), got {tuple(cond.shape)}")
    z0 = jnp.asarray(forward(np.ascontiguousarray(s0, dtype=np.float32), cond)[0], jnp.float32)
    if not bool(jnp.all(jnp.isfinite(z0))):
        raise ValueError("the flow maps the starting field to a non-finite latent")

    solve = None
    if cache is not None:
        key, ref = cache
        hit = _LATENT_CACHE.get((key, int(patience)))
        if hit is not None and hit[0]() is ref() and ref() is not None:
            solve = hit[1]
    if solve is None:
        solve = _build_latent_solver(inv, int(patience))
        if cache is not None:
            if len(_LATENT_CACHE) >= 16:
                _LATENT_CACHE.pop(next(iter(_LATENT_CACHE)))
            _LATENT_CACHE[(key, int(patience))] = (ref, solve)
    field, _, it, gnorm, obj, stalled = solve(
        z0, state, d_b, w, cond, np.int32(steps), np.float32(gtol)
    )
    ok = np.asarray(gnorm) <= gtol
    if single:
        field = field[0]
    stopped = "gtol" if ok.all() else ("stalled" if bool(stalled) else "max_steps")
    return MAPResult(field, int(it), gnorm, jnp.asarray(ok), obj, None, stopped)


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
    try:
        from data_gen import lognormal_log_likelihood
    except ImportError as err:  # pragma: no cover - depends on the data_gen package
        raise ImportError("lognormal_log_prior needs data_gen.lognormal_log_likelihood") from err
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


# ------------------------------------------------------------------ metrics, figure
def denoising_metrics(truth, recon, mask, box: float, edges=None) -> dict:
    """Quality of a reconstruction against the truth.

    Returns a dict of numpy arrays: ``k`` (bin centres, h/Mpc); ``r_k`` the
    cross-correlation r(k) = P_{s,s_hat} / sqrt(P_s P_s_hat); ``residual_pk`` =
    P_{s - s_hat}(k); ``truth_pk`` = P_s(k); ``mse_all``, ``mse_observed``,
    ``mse_masked`` the pixel MSE overall, where M = 1 and where M = 0 (NaN when the
    region is empty). Per map: (B, n_bins) / (B,), or unbatched for (N, N) input.
    """
    truth = jnp.asarray(truth, jnp.float32)
    recon = jnp.asarray(recon, jnp.float32)
    n = truth.shape[-1]
    e = fourier.k_bin_edges(n, box) if edges is None else np.asarray(edges)
    out = {
        "k": fourier.k_bin_centers(e),
        "r_k": metrics.cross_correlation(truth, recon, box, e),
        "residual_pk": metrics.power_spectrum(truth - recon, box, e),
        "truth_pk": metrics.power_spectrum(truth, box, e),
        "mse_all": metrics.pixel_mse(truth, recon),
    }
    if mask is not None:
        out["mse_observed"] = metrics.pixel_mse(truth, recon, mask, "observed")
        out["mse_masked"] = metrics.pixel_mse(truth, recon, mask, "masked")
    return {k: np.asarray(v) for k, v in out.items()}


def metrics_to_json(results: dict) -> str:
    """JSON text of nested dicts of numpy arrays/scalars (for summaries)."""

    def conv(x):
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (np.ndarray, jnp.ndarray)):
            return np.asarray(x).tolist()
        if isinstance(x, (np.floating, np.integer, np.bool_)):
            return x.item()
        return x

    return json.dumps(conv(results), indent=2, allow_nan=True)


def plot_denoising(
    truth,
    observation,
    mask,
    wiener,
    flow=None,
    *,
    box: float,
    path=None,
    edges=None,
    labels: tuple[str, str] = ("Wiener", "flow MAP"),
    title: str | None = None,
):
    """Figure: truth, observation (masked pixels grey), Wiener, flow MAP, their
    residuals, and r(k) and residual P(k) against the truth.

    All maps are single (N, N) arrays (pass ``x[i]`` for a batch). ``flow`` may be
    None. Saved to ``path`` when given (PNG via the Agg backend). Returns the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = np.asarray(truth)
    obs = np.array(observation, dtype=float)
    if mask is not None:
        obs = np.where(np.asarray(mask) > 0, obs, np.nan)
    recons = [(labels[0], np.asarray(wiener))]
    if flow is not None:
        recons.append((labels[1], np.asarray(flow)))
    n_top = 2 + len(recons)
    fig, axes = plt.subplots(2, n_top, figsize=(3.2 * n_top, 6.4))
    lim = float(np.percentile(np.abs(truth), 99.5)) or 1.0  # robust to skewed fields
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.6")
    kw = {"cmap": cmap, "vmin": -lim, "vmax": lim, "origin": "lower"}
    panels = [("truth", truth), ("observation", obs)] + recons
    for ax, (name, img) in zip(axes[0], panels, strict=True):
        im = ax.imshow(img, **kw)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    for ax in axes[1, : len(recons)]:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, (name, img) in zip(axes[1], recons, strict=False):
        ax.imshow(img - truth, **kw)
        ax.set_title(f"{name} − truth")
    ax_r, ax_p = axes[1, len(recons)], axes[1, len(recons) + 1]
    for name, img in recons:
        met = denoising_metrics(truth, img, mask, box, edges)
        ax_r.plot(met["k"], met["r_k"], "o-", ms=3, label=name)
        ax_p.loglog(met["k"], np.maximum(met["residual_pk"], 1e-30), "o-", ms=3, label=name)
    ax_p.loglog(met["k"], met["truth_pk"], "k--", label="truth")
    ax_p.xaxis.set_minor_formatter(plt.NullFormatter())  # no overlapping minor labels
    ax_r.set_xlabel(r"$k$ [$h$/Mpc]")
    ax_r.set_ylabel(r"$r(k)$")
    ax_r.axhline(1.0, color="k", lw=0.5)
    ax_r.legend(fontsize=8)
    ax_p.set_xlabel(r"$k$ [$h$/Mpc]")
    ax_p.set_ylabel(r"$P_{\rm res}(k)$")
    ax_p.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
