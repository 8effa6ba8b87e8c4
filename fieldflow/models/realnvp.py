"""RealNVP: the multi-scale affine-coupling baseline (Dinh, Sohl-Dickstein & Bengio 2016).

    u = (x - shift) / scale,   z = f(u),
    log p(x | theta) = log N(z; 0, I) + log|det df/du| - N^2 log(scale).

f is a multi-scale stack. Each scale i (maps h of shape (B, H, W, C), C = 2^i) runs

    K x [ActNorm -> checkerboard affine coupling]     on (B, H, W, C)
    squeeze                                           -> (B, H/2, W/2, 4C)
    K x [ActNorm -> channel affine coupling]          on (B, H/2, W/2, 4C)
    factor out the first 2C channels (they are final latents); the other 2C
    channels go on to scale i + 1 (the last scale factors out nothing).

An affine coupling keeps one part h_a of its input and maps the other part by

    h_b' = h_b * exp(s(h_a, theta)) + t(h_a, theta),   log|det| = sum s,

with s, t from a small conv ResNet (circular padding, so the maps stay periodic)
whose input is h_a with the normalised theta = (Omega_m, sigma_8) broadcast as extra
constant channels. s is soft-clamped, s = s_max tanh(raw / s_max), so exp(s) never
overflows. Squeeze and factor-out are permutations (log|det| = 0); the factored-out
parts are re-assembled by the inverse permutations, so z is again a (B, N, N) map
with a standard normal white base density over all N^2 pixels.

The K couplings of one mask type share one compiled body: their parameters are
stacked and run with ``jax.lax.scan`` (see :class:`CouplingStack`), so compile time
does not grow with K.

Unlike TRENF this model is not equivariant: log p is invariant only under periodic
shifts by multiples of 2**n_scales pixels (where masks and squeezes repeat), not
under other shifts or rotations. It is the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from fieldflow.layers import normalise_cond
from fieldflow.models.base import FlowModel
from fieldflow.models.coupling import (
    ActNorm,
    AffineCoupling,
    ConvResNet,
    CouplingStack,
    CouplingStep,
    MultiScaleBlock,
    checkerboard,
    squeeze,
    unsqueeze,
)

__all__ = [
    "RealNVP",
    "ActNorm",
    "AffineCoupling",
    "ConvResNet",
    "CouplingStep",
    "CouplingStack",
    "MultiScaleBlock",
    "squeeze",
    "unsqueeze",
    "checkerboard",
]


# ----------------------------------------------------------------------------- model
class RealNVP(FlowModel):
    """Conditional multi-scale RealNVP on (B, N, N) float32 maps (the non-equivariant baseline).

    Args:
        shape: (N, N) map shape; N must be divisible by 2**n_scales.
        n_scales: number of scales; each squeezes once and factors out half the channels.
        n_couplings_per_scale: K, checkerboard couplings before and channel couplings
            after each squeeze (2K couplings per scale, each preceded by an ActNorm).
        hidden_channels: width of the coupling ResNets.
        n_res_blocks: residual blocks per coupling ResNet.
        cond_dim: 2 for (Omega_m, sigma_8); 0 for an unconditional model.
        cond_low, cond_high: the trained range of the conditions, mapped to [-1, 1];
            conditions outside it are refused.
        data_shift, data_scale: fixed standardisation u = (x - shift) / scale, whose
            log-determinant -N^2 log(scale) is included so log p is the density of x.
        log_offset: None, or c >= 0 to standardise log(1 + c + x) instead of x (for
            density contrasts with heavy tails; maps must then be > -1 - c).
        max_log_scale: soft bound s_max on the coupling log-scales, |s| < s_max.
        init_noise: approximate std of the coupling outputs s, t at initialisation
            (small: the model starts near, not at, the identity).
        rngs: flax random streams.
    """

    model_type = "realnvp"

    def __init__(
        self,
        shape: Sequence[int],
        *,
        n_scales: int = 2,
        n_couplings_per_scale: int = 4,
        hidden_channels: int = 32,
        n_res_blocks: int = 1,
        cond_dim: int = 2,
        cond_low: Sequence[float] = (0.2, 0.5),
        cond_high: Sequence[float] = (0.5, 1.1),
        data_shift: float = 0.0,
        data_scale: float = 1.0,
        log_offset: float | None = None,
        max_log_scale: float = 3.0,
        init_noise: float = 1e-2,
        rngs: nnx.Rngs,
    ):
        self._set_data_and_conditions(
            shape, cond_dim, cond_low, cond_high, data_shift, data_scale, log_offset
        )
        n = self.shape[0]
        if n_scales < 1:
            raise ValueError(f"n_scales must be >= 1, got {n_scales}")
        if n % 2**n_scales:
            raise ValueError(
                f"N = {n} must be divisible by 2**n_scales = {2**n_scales} (n_scales={n_scales})"
            )
        if n_couplings_per_scale < 1:
            raise ValueError(f"n_couplings_per_scale must be >= 1, got {n_couplings_per_scale}")
        if hidden_channels < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden_channels}")
        if n_res_blocks < 0:
            raise ValueError(f"n_res_blocks must be >= 0, got {n_res_blocks}")
        if not (np.isfinite(max_log_scale) and max_log_scale > 0):
            raise ValueError(f"max_log_scale must be positive and finite, got {max_log_scale}")

        self.n_scales = int(n_scales)
        config = {
            "shape": list(self.shape),
            "n_scales": self.n_scales,
            "n_couplings_per_scale": int(n_couplings_per_scale),
            "hidden_channels": int(hidden_channels),
            "n_res_blocks": int(n_res_blocks),
            "cond_dim": self.cond_dim,
            "cond_low": list(self.cond_low),
            "cond_high": list(self.cond_high),
            "data_shift": self.data_shift,
            "data_scale": self.data_scale,
            "log_offset": self.log_offset,
            "max_log_scale": float(max_log_scale),
            "init_noise": float(init_noise),
        }
        # hashable (tuples), since the module structure is a static jit argument
        self._config_items = tuple(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()
        )
        coupling_kwargs = dict(
            cond_dim=self.cond_dim,
            hidden=int(hidden_channels),
            n_res_blocks=int(n_res_blocks),
            max_log_scale=float(max_log_scale),
            init_noise=float(init_noise),
        )
        self.scales = nnx.List(
            [
                MultiScaleBlock(2**i, int(n_couplings_per_scale), rngs=rngs, **coupling_kwargs)
                for i in range(self.n_scales)
            ]
        )

    # ----------------------------------------------------------------- internals
    @property
    def config(self) -> dict:
        """JSON-serialisable constructor arguments: ``RealNVP(**config, rngs=...)`` rebuilds it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._config_items}

    def _normalise_cond(self, cond):
        """theta (B, D) -> 2 (theta - low) / (high - low) - 1, in [-1, 1] on the trained range."""
        return None if cond is None else normalise_cond(cond, self.cond_low, self.cond_high)

    def _flow(self, h, c, i: int):
        """Scales i.. on h (B, H, W, C) -> (same-shape latent, log|det| (B,))."""
        h, logdet = self.scales[i].forward(h, c)
        if i + 1 < self.n_scales:
            z_out, rest = jnp.split(h, 2, axis=-1)
            rest, ld = self._flow(rest, c, i + 1)
            h, logdet = jnp.concatenate([z_out, rest], axis=-1), logdet + ld
        return unsqueeze(h), logdet

    def _flow_inverse(self, z, c, i: int):
        """Inverse of :meth:`_flow`: latent (B, H, W, C) -> h (B, H, W, C)."""
        h = squeeze(z)
        if i + 1 < self.n_scales:
            z_out, rest = jnp.split(h, 2, axis=-1)
            h = jnp.concatenate([z_out, self._flow_inverse(rest, c, i + 1)], axis=-1)
        return self.scales[i].inverse(h, c)

    def _forward(self, x, cond):
        u, logdet = self._standardise(x)
        z, logdet_flow = self._flow(u[..., None], self._normalise_cond(cond), 0)
        return z[..., 0], logdet + logdet_flow

    def _inverse(self, z, cond):
        u = self._flow_inverse(z[..., None], self._normalise_cond(cond), 0)[..., 0]
        return self._destandardise(u)
