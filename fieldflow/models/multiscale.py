"""Multiscale flow: a Haar-wavelet hierarchy of conditional flows (after Dai & Seljak 2023,
arXiv:2306.04689, and Wavelet Flow, Yu et al. 2020).

The standardised map u = (g(x) - shift) / scale (g(x) = x or log(1 + c + x)), optionally
passed through P full-resolution TRENF layers first (v = f_P(u; theta), v = u for P = 0),
is split level by level with the orthonormal Haar transform (``fieldflow.models.haar``),

    s_0 = v,   (s_l, D_l) = Haar(s_{l-1}),   D_l = (h, v, e)_l,   l = 1 ... L,

s_l of side N / 2^l, D_l its three detail maps. Haar is orthogonal (log|det| = 0), so

    log p(x | theta) = log p_TRENF(s_L | theta) + sum_l log p(D_l | s_l, theta)
                       [+ log|dv/du|] - N^2 log(scale) [- sum_pixels log(1 + c + x)].

With P > 0 the hierarchy models what a TRENF leaves behind (its latent map, white and
Gaussian in its one-point statistics, but with a small-scale amplitude that follows the
large-scale density): the coarse TRENF and the detail flows start near the identity, so the
untrained model is close to the full-resolution TRENF followed by a white Gaussian.

The coarsest map s_L is modelled by a TRENF, each detail density p(D_l | s_l, theta) by
the conditional flow of ``fieldflow.models.detail_flow`` (radial Fourier kernels per detail
channel, then couplings over checkerboard sub-lattices whose splines follow the local coarse
density, the other channels and the channel's own neighbourhood).

The latent map is assembled by the inverse Haar transform of (z_TRENF, z_L, ..., z_1), an
orthogonal map, so log N(z; 0, I) is the sum of the levels' standard normal densities.

Symmetries (exact): log p is invariant, and z equivariant, under the periodic shifts
(a, b) with a and b multiples of 2^L and (a + b) / 2^L even (e.g. (2^(L+1), 0),
(2^L, 2^L), (2^(L+1), -2^(L+1))): the Haar blocks, the checkerboards of every level and the
TRENF all move onto themselves (the full-resolution TRENF keeps every periodic shift and
lattice symmetry, so it changes none of this). It is NOT invariant under the other shifts,
the 90 and 180 degree rotations, the reflections or the transpose: Haar maps these onto
permutations and sign flips of (h, v, e), which the couplings do not share.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from fieldflow.models.base import FlowModel, call_jitted, standard_normal_logpdf
from fieldflow.models.detail_flow import DetailFlow
from fieldflow.models.haar import haar_merge, haar_split
from fieldflow.models.trenf import TRENF

__all__ = ["MultiscaleFlow", "DetailFlow", "deepest_levels"]

MAX_AUTO_LEVELS = 3


def deepest_levels(n: int, cap: int = MAX_AUTO_LEVELS) -> int:
    """The most Haar levels L <= ``cap`` that an N x N map allows (N divisible by 2^(L + 1),
    N / 2^L >= 4), at least 1. On 32^2 PM N-body maps each level more brought the samples'
    P(k) closer to the simulations' at the same NLL (README)."""
    levels = 1
    while levels < cap and _levels_fit(n, levels + 1):
        levels += 1
    return levels


def _levels_fit(n: int, levels: int) -> bool:
    """Whether an N x N map takes ``levels`` Haar levels: the shift lattice of the last level
    (2^(levels + 1)) divides N and the coarsest map keeps at least 4 x 4 pixels."""
    return n % 2 ** (levels + 1) == 0 and n // 2**levels >= 4


class MultiscaleFlow(FlowModel):
    """Conditional multiscale flow on (B, N, N) float32 maps (see the module docstring).

    Args:
        shape: (N, N); N must be divisible by 2^(n_levels + 1) with N / 2^n_levels >= 4.
        n_levels: L Haar levels; None: :func:`deepest_levels` (up to 3, as deep as N allows).
        coarse_layers, coarse_psi_bins, coarse_hidden: the TRENF of the coarsest map.
        prefix_layers: P full-resolution TRENF layers before the Haar split (0: none); they
            share the coarse TRENF's spline bins and conditioner widths.
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
        n_levels: int | None = 1,
        coarse_layers: int = 4,
        coarse_psi_bins: int = 8,
        coarse_hidden: Sequence[int] = (64, 64),
        prefix_layers: int = 0,
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
        n = self.shape[0]
        n_levels = deepest_levels(n) if n_levels is None else int(n_levels)
        if n_levels < 1:
            raise ValueError(f"n_levels must be >= 1, got {n_levels}")
        if not _levels_fit(n, n_levels):
            raise ValueError(
                f"N = {n} must be divisible by 2^(n_levels + 1) = {2 ** (n_levels + 1)} "
                f"with N / 2^n_levels >= 4"
            )
        if prefix_layers < 0:
            raise ValueError(f"prefix_layers must be >= 0, got {prefix_layers}")
        if detail_layers < 1 or detail_bins < 2 or detail_hidden < 1:
            raise ValueError("detail_layers, detail_hidden must be >= 1 and detail_bins >= 2")
        if not psi_bound > 0:
            raise ValueError(f"psi_bound must be positive, got {psi_bound}")
        self.n_levels = n_levels
        self.coarse_layers = int(coarse_layers)
        self.coarse_psi_bins = int(coarse_psi_bins)
        self.coarse_hidden = tuple(int(h) for h in coarse_hidden)
        self.prefix_layers = int(prefix_layers)
        self.detail_layers = int(detail_layers)
        self.detail_bins = int(detail_bins)
        self.detail_hidden = int(detail_hidden)
        self.detail_t_knots = None if detail_t_knots is None else int(detail_t_knots)
        self.psi_bound = float(psi_bound)
        self.hidden = tuple(int(h) for h in hidden)
        self.init_noise = float(init_noise)
        self.unroll = bool(unroll)
        nc = n // 2**n_levels
        self.coarse = self._trenf(nc, self.coarse_layers, rngs)
        self.prefix = self._trenf(n, self.prefix_layers, rngs) if self.prefix_layers else None
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
            "prefix_layers": self.prefix_layers,
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

    def _trenf(self, n: int, n_layers: int, rngs: nnx.Rngs) -> TRENF:
        """A TRENF on n x n standardised maps, with the coarse TRENF's settings."""
        return TRENF(
            (n, n),
            n_layers=n_layers,
            n_psi_bins=self.coarse_psi_bins,
            psi_bound=self.psi_bound,
            cond_dim=self.cond_dim,
            hidden=self.coarse_hidden,
            cond_low=self.cond_low,
            cond_high=self.cond_high,
            init_noise=self.init_noise,
            rngs=rngs,
        )

    @property
    def level_term_names(self) -> list[str]:
        """Names of the columns of :meth:`level_log_probs`."""
        names = ["coarsest", *(f"details_level_{i}" for i in range(1, self.n_levels + 1))]
        return (
            names + (["full_resolution_trenf"] if self.prefix_layers else []) + ["standardisation"]
        )

    def _prefixed(self, x, cond):
        """v = f_P(u; theta) of the standardised map u, log|dv/du| (B,) and log|du/dx| (B,)."""
        u, logdet = self._standardise(x)
        if self.prefix is None:
            return u, jnp.zeros_like(logdet), logdet
        v, ld_prefix = self.prefix._forward(u, cond)
        return v, ld_prefix, logdet

    def _levels_forward(self, x, cond):
        """The latents of every level: z_coarse (B, nc, nc), [z_1 ... z_L] (B, 3, m_l, m_l),
        and the log-determinants [coarse, level 1 ... level L] (each (B,)) of v -> latents."""
        s, zs, logdets = x, [], []
        for flow in self.details:
            s, d = haar_split(s)
            z, ld = flow.forward(d, s, cond)
            zs.append(z)
            logdets.append(ld)
        z_coarse, ld_coarse = self.coarse._forward(s, cond)
        return z_coarse, zs, [ld_coarse, *logdets]

    def _forward(self, x, cond):
        v, ld_prefix, logdet = self._prefixed(x, cond)
        z, zs, logdets = self._levels_forward(v, cond)
        for z_details in reversed(zs):
            z = haar_merge(z, z_details)
        return z, logdet + ld_prefix + sum(logdets)

    def _level_log_probs(self, x, cond):
        """(B, len(level_term_names)): log p(s_L | theta), log p(D_l | s_l, theta) for
        l = 1 ... L, log|dv/du| of the full-resolution TRENF (if any) and log|du/dx| of the
        standardisation; their sum is log p(x | theta)."""
        v, ld_prefix, logdet = self._prefixed(x, cond)
        z, zs, logdets = self._levels_forward(v, cond)
        terms = [standard_normal_logpdf(z) + logdets[0]]
        for z_details, ld in zip(zs, logdets[1:], strict=True):
            b = z_details.shape[0]
            terms.append(standard_normal_logpdf(z_details.reshape(b, -1, z_details.shape[-1])) + ld)
        if self.prefix is not None:
            terms.append(ld_prefix)
        return jnp.stack([*terms, logdet], axis=1)

    def _log_prob(self, x, cond):
        return jnp.sum(self._level_log_probs(x, cond), axis=1)

    def level_log_probs(self, x, cond=None) -> jnp.ndarray:
        """The terms of log p(x | theta) in nats, (B, len(level_term_names)): the coarsest
        map's TRENF density log p(s_L | theta), the detail densities log p(D_l | s_l, theta)
        of levels l = 1 ... L, the full-resolution TRENF's log|dv/du| (if it has one) and the
        standardisation's log|du/dx|. They sum to :meth:`log_prob`."""
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
        if self.prefix is not None:
            s = self.prefix._inverse(s, cond)  # its own standardisation is the identity
        return self._destandardise(s)
