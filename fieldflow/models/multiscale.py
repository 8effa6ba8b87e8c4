"""Multiscale flow: a Haar-wavelet hierarchy of conditional flows (after Dai & Seljak 2023,
arXiv:2306.04689, and Wavelet Flow, Yu et al. 2020).

The standardised map u = (g(x) - shift) / scale (g(x) = x or log(1 + c + x)) is split
level by level with the orthonormal Haar transform (``fieldflow.models.haar``),

    s_0 = u,   (s_l, D_l) = Haar(s_{l-1}),   D_l = (h, v, e)_l,   l = 1 ... L,

s_l of side N / 2^l, D_l its three detail maps. Haar is orthogonal (log|det| = 0), so

    log p(x | theta) = log p_TRENF(s_L | theta) + sum_l log p(D_l | s_l, theta)
                       - N^2 log(scale) [- sum_pixels log(1 + c + x)].

The coarsest map s_L is modelled by a TRENF. Each detail density p(D_l | s_l, theta) is a
conditional flow D_l -> z_l of J layers; layer j is

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

The latent map is assembled by the inverse Haar transform of (z_TRENF, z_L, ..., z_1), an
orthogonal map, so log N(z; 0, I) is the sum of the levels' standard normal densities.

Symmetries (exact): log p is invariant, and z equivariant, under the periodic shifts
(a, b) with a and b multiples of 2^L and (a + b) / 2^L even (e.g. (2^(L+1), 0),
(2^L, 2^L), (2^(L+1), -2^(L+1))): the Haar blocks, the checkerboards of every level and the
TRENF all move onto themselves. It is NOT invariant under the other shifts, the 90 and 180
degree rotations, the reflections or the transpose: Haar maps these onto permutations and
sign flips of (h, v, e), which the couplings do not share.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fieldflow.fourier import kgrid_half
from fieldflow.layers import (
    EXACT,
    Conditioner,
    fourier_conv_forward,
    fourier_conv_inverse,
    normalise_cond,
    radial_grid,
)
from fieldflow.models.base import FlowModel, call_jitted, standard_normal_logpdf
from fieldflow.models.haar import haar_merge, haar_split
from fieldflow.models.trenf import TRENF
from fieldflow.splines import rq_forward, rq_identity_params, rq_inverse, rq_knots

__all__ = ["MultiscaleFlow", "DetailFlow"]

N_STEPS = 6  # coupling steps per detail layer: 2 sub-lattices x 3 channels
SMOOTHING = (1.0, 3.0)  # Gaussian widths (detail-grid pixels) of the smoothed features
ENERGY_FLOOR = 0.01
MAX_LOG_SCALE = 3.0
OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


@functools.lru_cache(maxsize=16)
def _smoothing_matrix(m: int) -> np.ndarray:
    """(m^2, len(SMOOTHING) m^2): the periodic Gaussian smoothings of a flattened m x m map,
    filters exp(-k^2 w^2 / 2) (k in radians per pixel) written as one matrix (on CPU a
    matrix product is much faster than small FFTs)."""
    kx, ky = kgrid_half(m)
    k2 = (2.0 * np.pi / m) ** 2 * (kx**2 + ky**2)
    basis = np.eye(m * m).reshape(m * m, m, m)
    cols = [
        np.fft.irfft2(np.fft.rfft2(basis) * np.exp(-0.5 * k2 * w**2), s=(m, m)).reshape(m * m, -1)
        for w in SMOOTHING
    ]
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


class MultiscaleFlow(FlowModel):
    """Conditional multiscale flow on (B, N, N) float32 maps (see the module docstring).

    Args:
        shape: (N, N); N must be divisible by 2^(n_levels + 1) with N / 2^n_levels >= 4.
        n_levels: L Haar levels.
        coarse_layers, coarse_psi_bins, coarse_hidden: the TRENF of the coarsest map.
        detail_layers: J layers of each level's detail flow.
        detail_bins: spline bins of the detail couplings.
        detail_hidden: width of the detail couplings' per-pixel MLPs.
        detail_t_knots: knots of the detail Fourier kernels (default m // 2 + 1).
        psi_bound: the splines act on [-B, B] (standardised units), the identity outside.
        cond_dim: 2 for (Omega_m, sigma_8); 0 for an unconditional model.
        hidden: widths of the theta MLP of the detail Fourier kernels.
        cond_low, cond_high: the trained range of the conditions; outside it is refused.
        data_shift, data_scale, log_offset: the fixed standardisation, as in TRENF.
        init_noise: scale of the noise added to the initial (identity) parameters.
        unroll: unroll the six coupling steps of each detail layer in the forward direction
            (log p and training run ~5x faster on CPU; compilation takes longer).
        rngs: flax random streams.
    """

    model_type = "multiscale"

    def __init__(
        self,
        shape: Sequence[int],
        *,
        n_levels: int = 1,
        coarse_layers: int = 4,
        coarse_psi_bins: int = 8,
        coarse_hidden: Sequence[int] = (64, 64),
        detail_layers: int = 2,
        detail_bins: int = 8,
        detail_hidden: int = 32,
        detail_t_knots: int | None = None,
        psi_bound: float = 5.0,
        cond_dim: int = 2,
        hidden: Sequence[int] = (32,),
        cond_low: Sequence[float] = (0.2, 0.5),
        cond_high: Sequence[float] = (0.5, 1.1),
        data_shift: float = 0.0,
        data_scale: float = 1.0,
        log_offset: float | None = None,
        init_noise: float = 1e-2,
        unroll: bool = True,
        rngs: nnx.Rngs,
    ):
        self._set_data_and_conditions(
            shape, cond_dim, cond_low, cond_high, data_shift, data_scale, log_offset
        )
        n, n_levels = self.shape[0], int(n_levels)
        if n_levels < 1:
            raise ValueError(f"n_levels must be >= 1, got {n_levels}")
        if n % 2 ** (n_levels + 1) or n // 2**n_levels < 4:
            raise ValueError(
                f"N = {n} must be divisible by 2^(n_levels + 1) = {2 ** (n_levels + 1)} "
                f"with N / 2^n_levels >= 4"
            )
        if detail_layers < 1 or detail_bins < 2 or detail_hidden < 1:
            raise ValueError("detail_layers, detail_hidden must be >= 1 and detail_bins >= 2")
        if not psi_bound > 0:
            raise ValueError(f"psi_bound must be positive, got {psi_bound}")
        self.n_levels = n_levels
        self.coarse_layers = int(coarse_layers)
        self.coarse_psi_bins = int(coarse_psi_bins)
        self.coarse_hidden = tuple(int(h) for h in coarse_hidden)
        self.detail_layers = int(detail_layers)
        self.detail_bins = int(detail_bins)
        self.detail_hidden = int(detail_hidden)
        self.detail_t_knots = None if detail_t_knots is None else int(detail_t_knots)
        self.psi_bound = float(psi_bound)
        self.hidden = tuple(int(h) for h in hidden)
        self.init_noise = float(init_noise)
        self.unroll = bool(unroll)
        nc = n // 2**n_levels
        self.coarse = TRENF(
            (nc, nc),
            n_layers=self.coarse_layers,
            n_psi_bins=self.coarse_psi_bins,
            psi_bound=self.psi_bound,
            cond_dim=self.cond_dim,
            hidden=self.coarse_hidden,
            cond_low=self.cond_low,
            cond_high=self.cond_high,
            init_noise=self.init_noise,
            rngs=rngs,
        )
        self.details = nnx.List(
            [
                DetailFlow(
                    n // 2**level,
                    level,
                    n_layers=self.detail_layers,
                    n_bins=self.detail_bins,
                    hidden=self.detail_hidden,
                    n_t_knots=self.detail_t_knots,
                    bound=self.psi_bound,
                    cond_dim=self.cond_dim,
                    cond_low=self.cond_low,
                    cond_high=self.cond_high,
                    cond_hidden=self.hidden,
                    init_noise=self.init_noise,
                    unroll=self.unroll,
                    rngs=rngs,
                )
                for level in range(1, n_levels + 1)
            ]
        )

    @property
    def config(self) -> dict:
        """JSON-serialisable constructor arguments: ``MultiscaleFlow(**config, rngs=...)``."""
        return {
            "shape": list(self.shape),
            "n_levels": self.n_levels,
            "coarse_layers": self.coarse_layers,
            "coarse_psi_bins": self.coarse_psi_bins,
            "coarse_hidden": list(self.coarse_hidden),
            "detail_layers": self.detail_layers,
            "detail_bins": self.detail_bins,
            "detail_hidden": self.detail_hidden,
            "detail_t_knots": self.detail_t_knots,
            "psi_bound": self.psi_bound,
            "cond_dim": self.cond_dim,
            "hidden": list(self.hidden),
            "cond_low": list(self.cond_low),
            "cond_high": list(self.cond_high),
            "data_shift": self.data_shift,
            "data_scale": self.data_scale,
            "log_offset": self.log_offset,
            "init_noise": self.init_noise,
            "unroll": self.unroll,
        }

    def _levels_forward(self, x, cond):
        """The latents of every level: z_coarse (B, nc, nc), [z_1 ... z_L] (B, 3, m_l, m_l),
        and the log-determinants [coarse, level 1 ... level L] (each (B,)) of u -> latents."""
        s, zs, logdets = x, [], []
        for flow in self.details:
            s, d = haar_split(s)
            z, ld = flow.forward(d, s, cond)
            zs.append(z)
            logdets.append(ld)
        z_coarse, ld_coarse = self.coarse._forward(s, cond)
        return z_coarse, zs, [ld_coarse, *logdets]

    def _forward(self, x, cond):
        u, logdet = self._standardise(x)
        z, zs, logdets = self._levels_forward(u, cond)
        for z_details in reversed(zs):
            z = haar_merge(z, z_details)
        return z, logdet + sum(logdets)

    def _level_log_probs(self, x, cond):
        """(B, L + 2): log p(s_L | theta), log p(D_l | s_l, theta) for l = 1 ... L, and
        log|du/dx| of the standardisation; their sum is log p(x | theta)."""
        u, logdet = self._standardise(x)
        z, zs, logdets = self._levels_forward(u, cond)
        terms = [standard_normal_logpdf(z) + logdets[0]]
        for z_details, ld in zip(zs, logdets[1:], strict=True):
            b = z_details.shape[0]
            terms.append(standard_normal_logpdf(z_details.reshape(b, -1, z_details.shape[-1])) + ld)
        return jnp.stack([*terms, logdet], axis=1)

    def _log_prob(self, x, cond):
        return jnp.sum(self._level_log_probs(x, cond), axis=1)

    def level_log_probs(self, x, cond=None) -> jnp.ndarray:
        """The terms of log p(x | theta) in nats, (B, L + 2): the coarsest map's TRENF
        density log p(s_L | theta), the detail densities log p(D_l | s_l, theta) of levels
        l = 1 ... L, and the standardisation's log|du/dx|. They sum to :meth:`log_prob`."""
        return call_jitted(self, "_level_log_probs", *self._check(x, cond, "x"))

    def log_prob(self, x, cond=None) -> jnp.ndarray:
        """log p(x | cond) in nats, (B,): the sum of :meth:`level_log_probs` (one compiled
        function serves both)."""
        return jnp.sum(self.level_log_probs(x, cond), axis=1)

    def _inverse(self, z, cond):
        zs = []
        for _ in range(self.n_levels):
            z, z_details = haar_split(z)
            zs.append(z_details)
        s = self.coarse._inverse(z, cond)
        for flow, z_details in zip(reversed(self.details), reversed(zs), strict=True):
            s = haar_merge(s, flow.inverse(z_details, s, cond))
        return self._destandardise(s)
