"""The conditional flow of one level's Haar details given its coarse map, p(D_l | s_l, theta).

Part of the multiscale flow (``fieldflow.models.multiscale``). Each detail density
p(D_l | s_l, theta) is a conditional flow D_l -> z_l of J layers; layer j is

    1. a positive radial Fourier kernel per detail channel, T_{j,c}(|k|; theta):
       log|det| = sum over the (N/2^l)^2 modes of log T (as in TRENF);
    2. six coupling steps, one per (sub-lattice, channel) in the order
       (A, h), (A, v), (A, e), (B, h), (B, v), (B, e), A and B the two checkerboard
       sub-lattices of the detail grid. Step t transforms channel c on its sub-lattice,
       pixel by pixel,

           y = Psi_p((x - mu_p) exp(-sigma_p)),   log|det| = sum_p [log Psi_p'(.) - sigma_p],

       with Psi_p a rational-quadratic spline on [-B, B] (``fieldflow.splines``) and
       (mu_p, sigma_p, knots of Psi_p) = MLP_t(phi_p): phi_p holds the 3x3 neighbourhood of
       the coarse map s_l / 2^l (the local density and its gradients) and of the
       three detail channels with step t's own pixels set to zero, the coarse map smoothed
       at two scales, the log local energy log(0.01 + G * D^2) of each channel at two
       scales (G a Gaussian), and the normalised theta. Every input is left unchanged by
       step t, so its Jacobian is triangular and its inverse exact:
       x = Psi_p^{-1}(y) exp(sigma_p) + mu_p (a quadratic per bin), computed with the same
       MLP outputs. So the amplitude and the shape of the small scales follow the local
       large-scale density, the other detail channels and the detail channel's own
       neighbourhood.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fieldflow.layers import (
    EXACT,
    Conditioner,
    fourier_conv_forward,
    fourier_conv_inverse,
    normalise_cond,
    radial_grid,
)
from fieldflow.splines import rq_forward, rq_identity_params, rq_inverse, rq_knots

__all__ = ["DetailFlow"]

N_STEPS = 6  # coupling steps per detail layer: 2 sub-lattices x 3 channels
SMOOTHING = (1.0, 3.0)  # Gaussian widths (detail-grid pixels) of the smoothed features
ENERGY_FLOOR = 0.01
MAX_LOG_SCALE = 3.0
OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


@functools.lru_cache(maxsize=16)
def _smoothing_matrix(m: int) -> np.ndarray:
    """(m^2, len(SMOOTHING) m^2): the periodic Gaussian smoothings of a flattened m x m map,
    kernels exp(-r^2 / 2 w^2) summed over the periodic images and normalised to unit sum,
    written as one matrix (on CPU a matrix product is much faster than small FFTs). Every
    entry is >= 0, so a smoothed energy (sum of squares) is never negative: a Fourier-space
    Gaussian truncated at the Nyquist frequency rings slightly below zero, and a large
    detail value then drove log(floor + energy) to NaN."""
    offsets = np.arange(m)[:, None] - np.arange(m)[None, :]  # (m, m): i - j
    images = np.arange(-3, 4)[:, None, None] * m
    cols = []
    for w in SMOOTHING:
        one_axis = np.exp(-0.5 * ((offsets[None] + images) / w) ** 2).sum(axis=0)  # (m, m)
        kernel = np.einsum("ac,bd->abcd", one_axis, one_axis).reshape(m * m, m * m)
        cols.append(kernel / kernel.sum(axis=0, keepdims=True))
    return np.concatenate(cols, axis=1).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _step_masks(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step t: the target mask (6, 3, m, m), the channel one-hot (6, 3) and the
    sub-lattice mask (6, m, m) (checkerboard A = (i + j) even first, then B)."""
    i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    lattices = [((i + j) % 2 == parity).astype(np.float32) for parity in (0, 1)]
    onehot = np.zeros((N_STEPS, 3), np.float32)
    sub = np.zeros((N_STEPS, m, m), np.float32)
    for t in range(N_STEPS):
        onehot[t, t % 3] = 1.0
        sub[t] = lattices[t // 3]
    return onehot[:, :, None, None] * sub[:, None], onehot, sub


def _neighbourhood(x: jnp.ndarray) -> jnp.ndarray:
    """(B, C, m, m) -> (B, m, m, 9 C): the periodic 3x3 neighbourhood of every pixel."""
    rolled = [jnp.roll(x, (dy, dx), axis=(-2, -1)) for dy, dx in OFFSETS]
    out = jnp.stack(rolled, axis=2)  # (B, C, 9, m, m)
    b, c, _, m, _ = out.shape
    return jnp.moveaxis(out.reshape(b, c * 9, m, m), 1, -1)


def _smooth(x: jnp.ndarray) -> jnp.ndarray:
    """(B, C, m, m) -> (B, m, m, C * len(SMOOTHING)): Gaussian-smoothed copies."""
    b, c, m, _ = x.shape
    out = jnp.matmul(x.reshape(b, c, m * m), _smoothing_matrix(m), precision=EXACT)
    return jnp.moveaxis(out.reshape(b, c * len(SMOOTHING), m, m), 1, -1)


class DetailFlow(nnx.Module):
    """The conditional flow D -> z of one level's details D (B, 3, m, m) given the coarse
    map s (B, m, m) and theta (see the module docstring).

    Args:
        m: side of the detail maps (even).
        level: l (the coarse map is divided by 2^l to give a local mean).
        n_layers: J layers of (radial Fourier kernels, 6 coupling steps).
        n_bins: bins K of each spline.
        hidden: width of the per-pixel MLPs (two hidden layers).
        n_t_knots: knots of each radial kernel (default m // 2 + 1).
        bound: the splines act on [-B, B], the identity outside.
        cond_dim, cond_low, cond_high, cond_hidden: the conditions and the MLP of theta
            that gives the Fourier kernels.
    """

    def __init__(
        self,
        m: int,
        level: int,
        *,
        n_layers: int,
        n_bins: int,
        hidden: int,
        n_t_knots: int | None,
        bound: float,
        cond_dim: int,
        cond_low: Sequence[float],
        cond_high: Sequence[float],
        cond_hidden: Sequence[int],
        init_noise: float,
        unroll: bool = True,
        rngs: nnx.Rngs,
    ):
        self.m = int(m)
        self.unroll = bool(unroll)
        self.level = int(level)
        self.n_layers = int(n_layers)
        self.n_bins = int(n_bins)
        self.bound = float(bound)
        self.cond_dim = int(cond_dim)
        self.cond_low = tuple(cond_low)
        self.cond_high = tuple(cond_high)
        self.n_t_knots = self.m // 2 + 1 if n_t_knots is None else int(n_t_knots)
        n_features = 9 + len(SMOOTHING) + 3 * (9 + len(SMOOTHING)) + self.cond_dim
        n_out = 2 + 3 * self.n_bins - 1
        shape = (self.n_layers, N_STEPS)

        # numpy draws from one key: eager jax draws would compile once per shape
        rng = np.random.default_rng(np.asarray(jax.random.key_data(rngs.params())).ravel())

        def normal(fan_in, *dims, std=None):
            std = 1.0 / np.sqrt(fan_in) if std is None else std
            return nnx.Param(jnp.asarray(std * rng.standard_normal((*shape, *dims)), jnp.float32))

        self.w1 = normal(n_features, n_features, hidden)
        self.b1 = nnx.Param(jnp.zeros((*shape, hidden), jnp.float32))
        self.w2 = normal(hidden, hidden, hidden)
        self.b2 = nnx.Param(jnp.zeros((*shape, hidden), jnp.float32))
        self.w3 = normal(hidden, hidden, n_out, std=1e-3)
        identity = np.concatenate([np.zeros(2), rq_identity_params(self.n_bins)])
        b3 = np.tile(identity, (*shape, 1)) + init_noise * rng.standard_normal((*shape, n_out))
        self.b3 = nnx.Param(jnp.asarray(b3, jnp.float32))
        self.kernels = Conditioner(
            np.zeros((self.n_layers, 3, self.n_t_knots)),
            self.cond_dim,
            tuple(cond_hidden),
            cond_low=self.cond_low,
            cond_high=self.cond_high,
            init_noise=init_noise,
            rngs=rngs,
        )

    # ------------------------------------------------------------------ pieces
    def _coarse_features(self, s: jnp.ndarray, cond) -> jnp.ndarray:
        """(B, m, m, F0): 3x3 neighbourhood and smoothed copies of s / 2^l, and theta."""
        s = s[:, None] / 2.0**self.level
        feats = [_neighbourhood(s), _smooth(s)]
        if self.cond_dim:
            t = normalise_cond(cond, self.cond_low, self.cond_high)
            feats.append(jnp.broadcast_to(t[:, None, None, :], (*s.shape[:1], *s.shape[2:], 2)))
        return jnp.concatenate(feats, axis=-1)

    def _step_params(self, details, coarse_feats, weights, target):
        """Per pixel (mu, sigma, spline knots) of one step from everything it leaves unchanged."""
        known = details * (1.0 - target)
        energy = jnp.log(ENERGY_FLOOR + _smooth(known * known))
        f = jnp.concatenate([coarse_feats, _neighbourhood(known), energy], axis=-1)
        w1, b1, w2, b2, w3, b3 = weights
        h = jax.nn.silu(jnp.matmul(f, w1, precision=EXACT) + b1)
        h = jax.nn.silu(jnp.matmul(h, w2, precision=EXACT) + b2)
        out = jnp.matmul(h, w3, precision=EXACT) + b3
        sigma = MAX_LOG_SCALE * jnp.tanh(out[..., 1] / MAX_LOG_SCALE)
        return out[..., 0], sigma, rq_knots(out[..., 2:], self.bound)

    def _weights(self):
        return tuple(p[...] for p in (self.w1, self.b1, self.w2, self.b2, self.w3, self.b3))

    def _kernel_values(self, cond, batch: int) -> jnp.ndarray:
        """(J, B * 3, n_t_knots) log-kernel knot values per layer, map and channel."""
        values = self.kernels(cond, batch)  # (B, J, 3, nt)
        return jnp.moveaxis(values, 1, 0).reshape(self.n_layers, batch * 3, self.n_t_knots)

    # --------------------------------------------------------------- transforms
    def forward(self, details, s, cond) -> tuple[jnp.ndarray, jnp.ndarray]:
        """z (B, 3, m, m) and log|det dz/dD| (B,)."""
        b, m = details.shape[0], self.m
        grid = radial_grid(m, self.n_t_knots)
        targets, onehots, subs = (jnp.asarray(a) for a in _step_masks(m))
        coarse_feats = self._coarse_features(s, cond)

        def step(carry, inputs):
            d, logdet = carry
            weights, target, onehot, sub = inputs
            mu, sigma, knots = self._step_params(d, coarse_feats, weights, target)
            x = jnp.einsum("bcij,c->bij", d, onehot)
            y, logd = rq_forward(((x - mu) * jnp.exp(-sigma))[..., None], knots)
            y, logd = y[..., 0], logd[..., 0] - sigma
            new = jnp.where(sub > 0, y, x)
            logdet = logdet + jnp.sum(sub * logd, axis=(-2, -1))
            return (d + onehot[:, None, None] * (new - x)[:, None], logdet), None

        def layer(carry, inputs):
            d, logdet = carry
            weights, values = inputs
            flat, ld = fourier_conv_forward(d.reshape(b * 3, m, m), values, grid)
            carry = (flat.reshape(b, 3, m, m), logdet + jnp.sum(ld.reshape(b, 3), axis=1))
            # unrolled: log p and its gradient run ~5x faster on CPU, but take longer to compile
            steps = (weights, targets, onehots, subs)
            carry, _ = jax.lax.scan(step, carry, steps, unroll=self.unroll)
            return carry, None

        init = (details, jnp.zeros((b,), jnp.float32))
        (z, logdet), _ = jax.lax.scan(layer, init, (self._weights(), self._kernel_values(cond, b)))
        return z, logdet

    def inverse(self, z, s, cond) -> jnp.ndarray:
        """D (B, 3, m, m) from z: each step inverted exactly, in reverse order."""
        b, m = z.shape[0], self.m
        grid = radial_grid(m, self.n_t_knots)
        targets, onehots, subs = (jnp.asarray(a) for a in _step_masks(m))
        coarse_feats = self._coarse_features(s, cond)

        def step(d, inputs):
            weights, target, onehot, sub = inputs
            mu, sigma, knots = self._step_params(d, coarse_feats, weights, target)
            y = jnp.einsum("bcij,c->bij", d, onehot)
            x, _ = rq_inverse(y[..., None], knots)
            x = x[..., 0] * jnp.exp(sigma) + mu
            new = jnp.where(sub > 0, x, y)
            return d + onehot[:, None, None] * (new - y)[:, None], None

        def layer(d, inputs):
            weights, values = inputs
            d, _ = jax.lax.scan(step, d, (weights, targets, onehots, subs), reverse=True)
            flat = fourier_conv_inverse(d.reshape(b * 3, m, m), values, grid)
            return flat.reshape(b, 3, m, m), None

        d, _ = jax.lax.scan(layer, z, (self._weights(), self._kernel_values(cond, b)), reverse=True)
        return d
