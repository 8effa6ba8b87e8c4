r"""Field-level posterior densities of (theta, z) given a noisy, masked map, and their checks.

Observation d = M s + n, n ~ N(0, diag(sigma_n^2)), W = M / sigma_n^2 per pixel
(:mod:`fieldflow.denoise.observation`). The signal is a deterministic map of a white latent
z ~ N(0, I) and theta, s = f^-1(z; theta), so the prior on s is exactly N(z; 0, I) in latent
coordinates (no Jacobian):

    log p(theta, z | d) = log p(theta) - 1/2 |z|^2
                          - 1/2 sum_pixels W (d - f^-1(z; theta))^2 + const.

Two maps z -> s (the "field" of a target, a hashable object so that jit caches on it):

* :class:`FlowField`: a trained flow, s = f^-1(z; theta) (its pure ``_inverse``);
* :class:`LognormalField`: the exact lognormal prior in whitened coordinates,
  g = F^-1[ sqrt(P_g(k; theta)) F z ],  s = delta = exp(g - sigma_g^2 / 2) - 1,
  with P_g and sigma_g^2 from ``data_gen.lognormal.lognormal_gaussian_power``.

In data coordinates (the centred parameterisation) the field is sampled as u, its pointwise
coordinate (u = s, ln(1 + c + s) for a flow with a log transform, ln(1 + delta) for the
lognormal), with the prior density log p(u | theta) (:func:`log_posterior_data`): better
where the noise is small, while the latent coordinates are better where it is comparable to
the signal (:func:`auto_coordinates` picks by the observed pixels' signal-to-noise).

theta lives in the flat prior box [low, high] and is sampled in unconstrained coordinates
t = logit((theta - low) / (high - low)), whose log-Jacobian
sum log[(high - low) sigmoid(t) (1 - sigmoid(t))] makes the prior flat in theta.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fieldflow.denoise.observation import check_data, check_mask, check_noise, noise_weights

__all__ = [
    "FlowField",
    "LognormalField",
    "Observation",
    "make_observation",
    "auto_coordinates",
    "theta_from_t",
    "t_from_theta",
    "log_posterior",
    "log_posterior_data",
    "check_theta_start",
    "START_FLOOR",
]

# a start field (a Wiener filter) can dip below the support delta > -1 of a log transform;
# it is raised to this floor (minus the flow's log offset) before it is mapped to a latent
START_FLOOR = -0.99


# ------------------------------------------------------------------- the fields
@dataclasses.dataclass(frozen=True)
class FlowField:
    """s = f^-1(z; theta) of a split NNX flow: ``graphdef`` static, the state an argument."""

    graphdef: Any

    def field(self, params, z, theta):
        """(..., N, N) latent, (..., 2) theta -> (..., N, N) field."""
        model = nnx.merge(self.graphdef, params)
        zb, tb = jnp.reshape(z, (-1, *z.shape[-2:])), jnp.reshape(theta, (-1, theta.shape[-1]))
        return model._inverse(zb, tb).reshape(z.shape)

    def latent(self, params, s, theta):
        """The inverse map z = f(s; theta), s first raised into the support of a flow with a
        log transform (s >= ``START_FLOOR`` - c, c its log offset)."""
        model = nnx.merge(self.graphdef, params)
        offset = getattr(model, "log_offset", None)
        if offset is not None:
            s = jnp.maximum(s, START_FLOOR - offset)
        sb, tb = jnp.reshape(s, (-1, *s.shape[-2:])), jnp.reshape(theta, (-1, theta.shape[-1]))
        return model._forward(sb, tb)[0].reshape(s.shape)

    def signal(self, params, u):
        """s from the data coordinate u: s = u, or exp(u) - 1 - c with a log transform."""
        offset = getattr(nnx.merge(self.graphdef, params), "log_offset", None)
        return u if offset is None else jnp.exp(u) - (1.0 + offset)

    def data_coordinate(self, params, s):
        """u from s (raised to ``START_FLOOR`` - c first with a log transform)."""
        offset = getattr(nnx.merge(self.graphdef, params), "log_offset", None)
        if offset is None:
            return s
        return jnp.log(jnp.maximum(s, START_FLOOR - offset) + (1.0 + offset))

    def data_log_prior(self, params, u, theta):
        """log p(u | theta) = log p_flow(s(u) | theta) + sum log |ds/du|  (sum u with a log
        transform, where ds/du = exp(u))."""
        model = nnx.merge(self.graphdef, params)
        s = self.signal(params, u)
        log_p = jnp.sum(model._log_prob(s[None], jnp.reshape(theta, (1, -1))))
        return log_p if getattr(model, "log_offset", None) is None else log_p + jnp.sum(u)


@dataclasses.dataclass(frozen=True)
class LognormalField:
    r"""The exact lognormal prior in whitened coordinates (maps of side ``n``, box ``box``).

        g = F^-1[ sqrt(P_g,pix(k; theta)) F z ],   delta = exp(g - sigma_g^2 / 2) - 1,

    so z ~ N(0, I) gives exactly the lognormal field of ``data_gen.lognormal`` (same
    ``gaussian_field`` convention). ``params`` is unused (None).
    """

    n: int
    box: float
    slab: float | None = None

    def _power(self, theta):
        from data_gen.lognormal import lognormal_gaussian_power
        from data_gen.power import pixel_power_grid

        pg, var = lognormal_gaussian_power(
            pixel_power_grid(jnp.reshape(theta, (-1, 2)), self.n, self.box, self.slab)
        )
        return pg, var

    def field(self, params, z, theta):
        n = self.n
        pg, var = self._power(theta)
        zb = jnp.reshape(z, (-1, n, n))
        g = jnp.fft.irfft2(jnp.fft.rfft2(zb) * jnp.sqrt(pg), s=(n, n))
        return jnp.expm1(g - 0.5 * var[:, None, None]).reshape(z.shape).astype(jnp.float32)

    def latent(self, params, s, theta):
        n = self.n
        pg, var = self._power(theta)
        sb = jnp.reshape(s, (-1, n, n))
        g = jnp.log1p(jnp.maximum(sb, START_FLOOR)) + 0.5 * var[:, None, None]
        return jnp.fft.irfft2(jnp.fft.rfft2(g) / jnp.sqrt(pg), s=(n, n)).reshape(s.shape)

    def signal(self, params, u):
        """delta = exp(u) - 1 from the data coordinate u = ln(1 + delta)."""
        return jnp.expm1(u)

    def data_coordinate(self, params, s):
        """u = ln(1 + delta), delta raised to ``START_FLOOR`` first."""
        return jnp.log1p(jnp.maximum(s, START_FLOOR))

    def data_log_prior(self, params, u, theta):
        """log p(u | theta) = log N(u + sigma_g^2 / 2; 0, C_g(theta)): the lognormal density
        of delta times |d delta / du| = 1 + delta."""
        from data_gen.gaussian import gaussian_log_density

        pg, var = self._power(theta)
        return gaussian_log_density(u + 0.5 * var[0], pg[0])


# --------------------------------------------------------------- observation
@dataclasses.dataclass(frozen=True)
class Observation:
    """Checked data: ``d`` (N, N), weights ``w`` = M / sigma_n^2 (N, N), ``mask``, ``noise_var``."""

    d: np.ndarray
    w: np.ndarray
    mask: np.ndarray
    noise_var: np.ndarray


def make_observation(d, mask=None, noise_var=1.0) -> Observation:
    """Check one observed map d (N, N), its mask (None = all observed) and noise variance.

    ValueError for NaN maps, a mask hiding every pixel, noise <= 0 or non-finite, and shapes
    that disagree (the checks of :mod:`fieldflow.denoise.observation`).
    """
    d_b, _ = check_data(d)
    if d_b.shape[0] != 1:
        raise ValueError(f"field-level inference takes one map d (N, N), got {d_b.shape[0]}")
    m = check_mask(mask, d_b.shape).reshape(d_b.shape[-2:])
    v = check_noise(noise_var, d_b.shape)
    v = np.broadcast_to(v.reshape(v.shape[-2:]) if v.ndim else v, d_b.shape[-2:])
    w = noise_weights(m, v, d_b.shape[-2:])
    return Observation(d_b[0], w, m, np.ascontiguousarray(v, np.float32))


# per-pixel signal-to-noise of the observed pixels above which the data coordinates mix faster
# than the latent ones (NUTS on 32^2 lognormal maps, 20% mask or none: latent 2-3x more
# effective samples per gradient at S/N 1, even at S/N 2, data 3-20x more from S/N 3 up)
DATA_COORDINATES_SNR = 2.5


def auto_coordinates(obs: Observation) -> str:
    """'data' when the observed pixels' signal-to-noise per pixel,
    sqrt((var(d) - <sigma_n^2>) / <sigma_n^2>) over observed pixels, is at least
    ``DATA_COORDINATES_SNR``; else 'latent'."""
    seen = obs.mask > 0
    noise = float(np.mean(obs.noise_var[seen]))
    signal = max(float(np.var(obs.d[seen])) - noise, 0.0)
    return "data" if signal >= DATA_COORDINATES_SNR**2 * noise else "latent"


# -------------------------------------------------------------------- theta
def theta_from_t(t, low, high):
    """theta = low + (high - low) sigmoid(t)."""
    return low + (high - low) * jax.nn.sigmoid(t)


def log_jacobian_t(t, low, high):
    """log |d theta / d t| = sum log[(high - low) s(t)(1 - s(t))], s the logistic sigmoid: the
    term that makes the prior flat in theta."""
    return jnp.sum(jnp.log(high - low) + jax.nn.log_sigmoid(t) + jax.nn.log_sigmoid(-t))


def t_from_theta(theta, low, high):
    """t = logit((theta - low) / (high - low)) (theta strictly inside the box)."""
    u = (theta - low) / (high - low)
    return jnp.log(u) - jnp.log1p(-u)


def check_theta_start(theta0, low, high) -> np.ndarray:
    """A starting theta (2,) strictly inside the prior box, else ValueError."""
    t = np.asarray(theta0, np.float64).astype(np.float32)  # compared as it will be used
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    if t.shape != low.shape:
        raise ValueError(f"theta_start must have shape {low.shape}, got {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(t <= low) or np.any(t >= high):
        raise ValueError(
            f"theta_start {t.tolist()} is outside the prior box {low.tolist()} .. {high.tolist()}"
        )
    return t.astype(np.float32)


def log_posterior(target, params, position, d, w, low, high):
    r"""log p(theta, z | d) up to a constant, in the unconstrained coordinates (t, z):

        log p = sum log[(high - low) s(t)(1 - s(t))] - 1/2 |z|^2
                - 1/2 sum W (d - f^-1(z; theta(t)))^2,    s the logistic sigmoid.

    ``position`` is ``{"t": (2,), "z": (N, N)}``; ``target`` a field object
    (:class:`FlowField` or :class:`LognormalField`).
    """
    t, z = position["t"], position["z"]
    theta = theta_from_t(t, low, high)
    log_jac = log_jacobian_t(t, low, high)
    s = target.field(params, z, theta)
    log_like = -0.5 * jnp.sum(w * (d - s) ** 2)
    return log_jac - 0.5 * jnp.sum(z * z) + log_like


def log_posterior_data(target, params, position, d, w, low, high):
    r"""log p(theta, u | d) up to a constant in the data coordinates (t, u), u the field's own
    pointwise coordinate (s itself, or ln(1 + c + s) with a log transform):

        log p = sum log[(high - low) s(t)(1 - s(t))] + log p(u | theta)
                - 1/2 sum W (d - s(u))^2.

    The centred parameterisation: where the data pin every pixel (no mask, small noise), u
    barely moves with theta and the chains explore theta | field freely; in latent
    coordinates the same posterior is a thin curved ridge (s = f^-1(z; theta) fixed).
    ``position`` is ``{"t": (2,), "u": (N, N)}``.
    """
    t, u = position["t"], position["u"]
    theta = theta_from_t(t, low, high)
    log_jac = log_jacobian_t(t, low, high)
    log_like = -0.5 * jnp.sum(w * (d - target.signal(params, u)) ** 2)
    return log_jac + target.data_log_prior(params, u, theta) + log_like
