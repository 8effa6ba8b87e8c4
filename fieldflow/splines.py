"""Splines: the monotone rational-quadratic spline Psi and the radial kernel spline T(k).

Rational-quadratic spline (Gregory & Delbourgo 1982; Durkan et al. 2019). On
[-B, B] with K bins, knots (x_j, y_j) and positive derivatives d_j, inside bin j
with w = x_{j+1} - x_j, h = y_{j+1} - y_j, s = h / w and xi = (x - x_j) / w:

    y(x)  = y_j + h [s xi^2 + d_j xi (1 - xi)] / [s + (d_{j+1} + d_j - 2 s) xi (1 - xi)]
    y'(x) = s^2 [d_{j+1} xi^2 + 2 s xi (1 - xi) + d_j (1 - xi)^2]
            / [s + (d_{j+1} + d_j - 2 s) xi (1 - xi)]^2

The boundary derivatives are 1, so the map continues as the identity outside
[-B, B]. Minimum bin widths, heights and derivatives keep the map away from
flat or singular. The inverse solves the quadratic a xi^2 + b xi + c = 0 with
the numerically stable root xi = 2c / (-b - sqrt(b^2 - 4ac)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.interpolate import CubicSpline

__all__ = [
    "MIN_BIN_WIDTH",
    "MIN_BIN_HEIGHT",
    "MIN_DERIVATIVE",
    "rq_num_params",
    "rq_identity_params",
    "rq_knots",
    "rq_forward",
    "rq_inverse",
    "cubic_spline_basis",
]

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3


def rq_num_params(n_bins: int) -> int:
    """Unconstrained parameters of a K-bin spline: K widths, K heights, K-1 inner derivatives."""
    return 3 * n_bins - 1


def _inverse_softplus(y: float) -> float:
    return float(np.log(np.expm1(y)))


def rq_identity_params(n_bins: int) -> np.ndarray:
    """Unconstrained parameters for which the spline is exactly the identity."""
    d = _inverse_softplus(1.0 - MIN_DERIVATIVE)
    return np.concatenate([np.zeros(2 * n_bins), np.full(n_bins - 1, d)]).astype(np.float32)


def _normalised_bins(raw: jnp.ndarray, min_size: float) -> jnp.ndarray:
    n_bins = raw.shape[-1]
    return min_size + (1.0 - min_size * n_bins) * jax.nn.softmax(raw, axis=-1)


def _knot_positions(sizes: jnp.ndarray, bound: float) -> jnp.ndarray:
    cum = jnp.cumsum(sizes, axis=-1)
    cum = jnp.concatenate([jnp.zeros_like(cum[..., :1]), cum], axis=-1)
    knots = bound * (2.0 * cum - 1.0)
    # pin the ends exactly so the identity outside joins without a gap
    return knots.at[..., 0].set(-bound).at[..., -1].set(bound)


def rq_knots(raw: jnp.ndarray, bound: float) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Knots (x_j, y_j, d_j), each (..., K+1), from unconstrained parameters (..., 3K-1)."""
    n_bins = (raw.shape[-1] + 1) // 3
    raw_w = raw[..., :n_bins]
    raw_h = raw[..., n_bins : 2 * n_bins]
    raw_d = raw[..., 2 * n_bins :]
    xk = _knot_positions(_normalised_bins(raw_w, MIN_BIN_WIDTH), bound)
    yk = _knot_positions(_normalised_bins(raw_h, MIN_BIN_HEIGHT), bound)
    inner = MIN_DERIVATIVE + jax.nn.softplus(raw_d)
    ones = jnp.ones_like(inner[..., :1])
    dk = jnp.concatenate([ones, inner, ones], axis=-1)
    return xk, yk, dk


def _bin_quantities(v, knots, edges):
    """Per-element (x_j, w_j, y_j, h_j, d_j, d_{j+1}) of the bin j of ``edges`` holding v.

    Written as a sum of steps, q(v) = q_0 + sum_k [v >= e_k] (q_k - q_{k-1}) over the
    K-1 inner edges, rather than a gather: elementwise work that XLA fuses, whose
    gradient with respect to the knots is a plain reduction (a gather's would be a
    scatter, slow on CPU). Plain autodiff, so forward and reverse mode both work.
    """
    xk, yk, dk = knots
    n_bins = xk.shape[-1] - 1
    steps = [(v >= edges[..., k : k + 1]).astype(v.dtype) for k in range(1, n_bins)]
    out = []
    for q in (
        xk[..., :-1],
        jnp.diff(xk, axis=-1),
        yk[..., :-1],
        jnp.diff(yk, axis=-1),
        dk[..., :-1],
        dk[..., 1:],
    ):
        dq = jnp.diff(q, axis=-1)
        acc = jnp.broadcast_to(q[..., :1], v.shape)
        for k, step in enumerate(steps):
            acc = acc + step * dq[..., k : k + 1]
        out.append(acc)
    return tuple(out)


def _rq_parts(x, knots):
    """Bin quantities and intermediate terms of Psi at x, shared by the value and its JVP."""
    xk = knots[0]
    lo_b, hi_b = xk[..., :1], xk[..., -1:]
    inside = (x >= lo_b) & (x <= hi_b)
    xc = jnp.clip(x, lo_b, hi_b)
    x0, w, y0, h, d0, d1 = _bin_quantities(xc, knots, xk)
    s = h / w
    xi = jnp.clip((xc - x0) / w, 0.0, 1.0)
    xi1 = xi * (1.0 - xi)
    denom = s + (d1 + d0 - 2.0 * s) * xi1
    frac = (s * xi * xi + d0 * xi1) / denom
    num = d1 * xi * xi + 2.0 * s * xi1 + d0 * (1.0 - xi) ** 2
    y = jnp.where(inside, y0 + h * frac, x)
    logd = jnp.where(inside, jnp.log(s * s * num / (denom * denom)), 0.0)
    return (y, logd), (inside, xc, xi, xi1, w, h, s, d0, d1, frac, num, denom)


@jax.custom_jvp
def rq_forward(
    x: jnp.ndarray, knots: tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """y = Psi(x) and log Psi'(x) for x (..., M) and knots each (..., K+1).

    Identity (log-derivative 0) outside [x_0, x_K]. The input is clipped into the
    interval before the spline arithmetic so no NaN can leak into gradients. The
    derivatives are written out by hand (see ``_rq_forward_jvp``); forward and
    reverse mode both work.
    """
    return _rq_parts(x, knots)[0]


@rq_forward.defjvp
def _rq_forward_jvp(primals, tangents):
    """Closed-form partials of y and log Psi' with respect to x and the bin's knots.

    With P = s xi^2 + d_j xi(1 - xi), D the denominator and N the numerator of Psi':

        dy/dxi = h s N / D^2,   dy/ds = h [xi^2 - (P/D)(1 - 2 xi(1 - xi))] / D,
        d log Psi'/dxi = N_xi / N - 2 D_xi / D,   ...

    chained through xi = (x - x_j)/w and s = h/w. Autodiff of the arithmetic in
    ``_rq_parts`` gives the same numbers (tested), but its transpose makes a
    training step about 1.4x slower on CPU: here the per-pixel partials are
    computed once and the bin's knot tangents enter linearly through the step
    sum of ``_bin_quantities``, whose transpose is one reduction per edge.
    """
    x, knots = primals
    tx, tknots = tangents
    (y, logd), parts = _rq_parts(x, knots)
    inside, xc, xi, xi1, w, h, s, d0, d1, frac, num, denom = parts
    inv_w, inv_d, inv_n = 1.0 / w, 1.0 / denom, 1.0 / num
    one_m_2xi1 = 1.0 - 2.0 * xi1
    dy_dxi = h * s * num * inv_d * inv_d
    dy_ds = h * (xi * xi - frac * one_m_2xi1) * inv_d
    dl_dxi = (
        2.0 * (d1 * xi + s * (1.0 - 2.0 * xi) - d0 * (1.0 - xi)) * inv_n
        - 2.0 * (d1 + d0 - 2.0 * s) * (1.0 - 2.0 * xi) * inv_d
    )
    dl_ds = 2.0 / s + 2.0 * xi1 * inv_n - 2.0 * one_m_2xi1 * inv_d
    # tangents of (x_j, w, y_j, h, d_j, d_{j+1}) of each element's bin
    t_x0, t_w, t_y0, t_h, t_d0, t_d1 = _bin_quantities(xc, tknots, knots[0])
    t_xi = (tx - t_x0 - xi * t_w) * inv_w
    t_s = (t_h - s * t_w) * inv_w
    t_y = (
        t_y0
        + frac * t_h
        + dy_dxi * t_xi
        + dy_ds * t_s
        + h * xi1 * inv_d * ((1.0 - frac) * t_d0 - frac * t_d1)
    )
    t_l = (
        dl_dxi * t_xi
        + dl_ds * t_s
        + ((1.0 - xi) ** 2 * inv_n - 2.0 * xi1 * inv_d) * t_d0
        + (xi * xi * inv_n - 2.0 * xi1 * inv_d) * t_d1
    )
    return (y, logd), (jnp.where(inside, t_y, tx), jnp.where(inside, t_l, 0.0))


def rq_inverse(
    y: jnp.ndarray, knots: tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """x = Psi^{-1}(y) and log Psi'(x) (the forward log-derivative at the result)."""
    yk = knots[1]
    lo_b, hi_b = yk[..., :1], yk[..., -1:]
    inside = (y >= lo_b) & (y <= hi_b)
    yc = jnp.clip(y, lo_b, hi_b)
    x0, w, y0, h, d0, d1 = _bin_quantities(yc, knots, yk)
    s = h / w
    dy = yc - y0
    c2 = d1 + d0 - 2.0 * s
    a = h * (s - d0) + dy * c2
    b = h * d0 - dy * c2
    c = -s * dy
    disc = jnp.maximum(b * b - 4.0 * a * c, 0.0)
    xi = jnp.clip(2.0 * c / (-b - jnp.sqrt(disc)), 0.0, 1.0)
    x = x0 + xi * w
    xi1 = xi * (1.0 - xi)
    denom = s + c2 * xi1
    num = d1 * xi * xi + 2.0 * s * xi1 + d0 * (1.0 - xi) ** 2
    logd = jnp.log(s * s * num / (denom * denom))
    return jnp.where(inside, x, y), jnp.where(inside, logd, 0.0)


def cubic_spline_basis(knots: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Matrix A (len(knots), len(points)) with S(points) = values @ A.

    S is the natural cubic spline through (knots, values): smooth (C^2) and
    linear in the values, so it can be precomputed once for a fixed k-grid.
    """
    knots = np.asarray(knots, dtype=np.float64)
    eye = np.eye(len(knots))
    spline = CubicSpline(knots, eye, axis=0, bc_type="natural")
    return spline(np.asarray(points, dtype=np.float64)).T
