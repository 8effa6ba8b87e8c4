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

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fieldflow.layers import normalise_cond
from fieldflow.models.base import FlowModel

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


# --------------------------------------------------------------------- permutations
def squeeze(h: jnp.ndarray) -> jnp.ndarray:
    """Space-to-depth: (B, H, W, C) -> (B, H/2, W/2, 4C).

    Each 2x2 block [[a, b], [c, d]] becomes the channels [a, d, b, c] (each a group of
    C channels): the first half of the output channels holds one colour of the
    checkerboard (the diagonal a, d) and the second half the other (b, c), so a
    channel split after the squeeze is a checkerboard split of the finer grid.
    A permutation: log|det| = 0.
    """
    b, hh, ww, c = h.shape
    h = h.reshape(b, hh // 2, 2, ww // 2, 2, c)
    a, bb = h[:, :, 0, :, 0], h[:, :, 0, :, 1]
    cc, d = h[:, :, 1, :, 0], h[:, :, 1, :, 1]
    return jnp.concatenate([a, d, bb, cc], axis=-1)


def unsqueeze(h: jnp.ndarray) -> jnp.ndarray:
    """Depth-to-space, the inverse of :func:`squeeze`: (B, H, W, 4C) -> (B, 2H, 2W, C)."""
    b, hh, ww, c4 = h.shape
    a, d, bb, cc = jnp.split(h, 4, axis=-1)
    top = jnp.stack([a, bb], axis=3)  # (B, H, W, 2, C): dx = 0, 1
    bottom = jnp.stack([cc, d], axis=3)
    blocks = jnp.stack([top, bottom], axis=2)  # (B, H, 2, W, 2, C)
    return blocks.reshape(b, 2 * hh, 2 * ww, c4 // 4)


def checkerboard(n: int, parity: int) -> jnp.ndarray:
    """(n, n, 1) float mask, 1 where (i + j + parity) is even: the pixels kept fixed."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return jnp.asarray(((i + j + parity) % 2 == 0)[..., None], dtype=jnp.float32)


def _with_cond(h: jnp.ndarray, cond: jnp.ndarray | None) -> jnp.ndarray:
    """Append cond (B, D) as D constant channels: (B, H, W, C) -> (B, H, W, C + D)."""
    if cond is None:
        return h
    b, hh, ww, _ = h.shape
    planes = jnp.broadcast_to(cond[:, None, None, :], (b, hh, ww, cond.shape[-1]))
    return jnp.concatenate([h, planes.astype(h.dtype)], axis=-1)


# ------------------------------------------------------------------------ bijections
class ActNorm(nnx.Module):
    """Per-channel affine map y = h exp(log_scale) + bias on (B, H, W, C).

    Data-independent initialisation at the identity (log_scale = bias = 0);
    log|det| = H W sum_c log_scale_c, the same for every map.
    """

    def __init__(self, channels: int):
        self.log_scale = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def forward(self, h: jnp.ndarray, cond=None) -> tuple[jnp.ndarray, jnp.ndarray]:
        """h (B, H, W, C) -> (y (B, H, W, C), log|det| (B,))."""
        y = h * jnp.exp(self.log_scale[...]) + self.bias[...]
        ld = h.shape[1] * h.shape[2] * jnp.sum(self.log_scale[...])
        return y, jnp.broadcast_to(ld, (h.shape[0],))

    def inverse(self, y: jnp.ndarray, cond=None) -> jnp.ndarray:
        """y (B, H, W, C) -> h = (y - bias) exp(-log_scale)."""
        return (y - self.bias[...]) * jnp.exp(-self.log_scale[...])


class _ResBlock(nnx.Module):
    """h + conv(act(conv(act(h)))), 3x3 circular convolutions, width kept."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(width, width, (3, 3), padding="CIRCULAR", rngs=rngs)
        self.conv2 = nnx.Conv(width, width, (3, 3), padding="CIRCULAR", rngs=rngs)

    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        return h + self.conv2(nnx.silu(self.conv1(nnx.silu(h))))


class ConvResNet(nnx.Module):
    """Periodic conv ResNet (B, H, W, C_in) -> (B, H, W, C_out).

    3x3 circular conv to ``hidden`` channels, ``n_blocks`` residual blocks, SiLU, and a
    3x3 circular output conv whose kernel starts small (output std ~ ``init_noise``
    for unit-variance features) and bias zero, so the coupling starts near identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int,
        n_blocks: int,
        *,
        init_noise: float,
        rngs: nnx.Rngs,
    ):
        self.conv_in = nnx.Conv(in_channels, hidden, (3, 3), padding="CIRCULAR", rngs=rngs)
        self.blocks = nnx.List([_ResBlock(hidden, rngs=rngs) for _ in range(n_blocks)])
        std = init_noise / np.sqrt(9.0 * hidden)
        self.conv_out = nnx.Conv(
            hidden,
            out_channels,
            (3, 3),
            padding="CIRCULAR",
            kernel_init=nnx.initializers.normal(stddev=std),
            bias_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )

    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        h = self.conv_in(h)
        for block in self.blocks:
            h = block(h)
        return self.conv_out(nnx.silu(h))


class AffineCoupling(nnx.Module):
    """Affine coupling layer on (B, H, W, C) with a checkerboard or a channel mask.

    ``mask="checkerboard"``: pixels with (i + j + parity) even are kept (h_a), the
    others are transformed (h_b), all channels alike.
    ``mask="channel"``: the first C/2 channels are kept and the last C/2 transformed
    (parity 0), or the reverse (parity 1).

        h_b' = h_b exp(s) + t,   (raw, t) = net([h_a, theta]),   s = s_max tanh(raw / s_max),
        log|det| = sum over transformed entries of s,
        inverse:  h_b = (h_b' - t) exp(-s)   (h_a, hence s and t, unchanged).
    """

    def __init__(
        self,
        channels: int,
        mask: str,
        parity: int,
        *,
        cond_dim: int,
        hidden: int,
        n_res_blocks: int,
        max_log_scale: float,
        init_noise: float,
        rngs: nnx.Rngs,
    ):
        if mask not in ("checkerboard", "channel"):
            raise ValueError(f"mask must be 'checkerboard' or 'channel', got {mask!r}")
        if mask == "channel" and channels % 2:
            raise ValueError(f"a channel mask needs an even number of channels, got {channels}")
        self.mask = mask
        self.parity = int(parity) % 2
        self.max_log_scale = float(max_log_scale)
        c_in = channels if mask == "checkerboard" else channels // 2
        self.net = ConvResNet(
            c_in + cond_dim, 2 * c_in, hidden, n_res_blocks, init_noise=init_noise, rngs=rngs
        )

    def _scale_shift(self, h_a: jnp.ndarray, cond) -> tuple[jnp.ndarray, jnp.ndarray]:
        raw, t = jnp.split(self.net(_with_cond(h_a, cond)), 2, axis=-1)
        s = self.max_log_scale * jnp.tanh(raw / self.max_log_scale)
        return s, t

    def _split(self, h):
        a, b = jnp.split(h, 2, axis=-1)
        return (a, b) if self.parity == 0 else (b, a)

    def _merge(self, h_a, h_b):
        parts = [h_a, h_b] if self.parity == 0 else [h_b, h_a]
        return jnp.concatenate(parts, axis=-1)

    def forward(self, h: jnp.ndarray, cond=None) -> tuple[jnp.ndarray, jnp.ndarray]:
        """h (B, H, W, C), cond (B, D) normalised or None -> (y (B, H, W, C), log|det| (B,))."""
        if self.mask == "checkerboard":
            keep = checkerboard(h.shape[1], self.parity)
            s, t = self._scale_shift(h * keep, cond)
            s, t = s * (1.0 - keep), t * (1.0 - keep)
            y = h * jnp.exp(s) + t
        else:
            h_a, h_b = self._split(h)
            s, t = self._scale_shift(h_a, cond)
            y = self._merge(h_a, h_b * jnp.exp(s) + t)
        return y, jnp.sum(s, axis=(1, 2, 3))

    def inverse(self, y: jnp.ndarray, cond=None) -> jnp.ndarray:
        """y (B, H, W, C) -> h (B, H, W, C)."""
        if self.mask == "checkerboard":
            keep = checkerboard(y.shape[1], self.parity)
            s, t = self._scale_shift(y * keep, cond)
            s, t = s * (1.0 - keep), t * (1.0 - keep)
            return (y - t) * jnp.exp(-s)
        y_a, y_b = self._split(y)
        s, t = self._scale_shift(y_a, cond)
        return self._merge(y_a, (y_b - t) * jnp.exp(-s))


class CouplingStep(nnx.Module):
    """ActNorm then an affine coupling (parity 0) on (B, H, W, C); log|det| adds."""

    def __init__(self, channels: int, mask: str, *, rngs: nnx.Rngs, **coupling_kwargs):
        self.norm = ActNorm(channels)
        self.coupling = AffineCoupling(channels, mask, 0, rngs=rngs, **coupling_kwargs)

    def forward(self, h: jnp.ndarray, cond=None) -> tuple[jnp.ndarray, jnp.ndarray]:
        """h (B, H, W, C) -> (y (B, H, W, C), log|det| (B,))."""
        h, ld_norm = self.norm.forward(h, cond)
        h, ld_coupling = self.coupling.forward(h, cond)
        return h, ld_norm + ld_coupling

    def inverse(self, y: jnp.ndarray, cond=None) -> jnp.ndarray:
        """y (B, H, W, C) -> h (B, H, W, C)."""
        return self.norm.inverse(self.coupling.inverse(y, cond), cond)


class CouplingStack(nnx.Module):
    """K coupling steps with stacked parameters, run by ``jax.lax.scan`` (one compiled
    body, however deep), on (B, H, W, C).

    Step k is P o CouplingStep_k, where the permutation P swaps the roles of the two
    parts so that consecutive couplings alternate:

    - checkerboard: P rolls the map by one pixel along W, which swaps the checkerboard
      colours. The conv nets are translation equivariant (circular padding), so this
      equals alternating the mask parity. The net roll by K pixels is undone at the end.
    - channel: P swaps the two channel halves; the net swap is undone at the end.

    Permutations have log|det| = 0, so log|det| = sum_k log|det CouplingStep_k|.
    """

    def __init__(
        self, channels: int, mask: str, n_steps: int, *, rngs: nnx.Rngs, **coupling_kwargs
    ):
        self.mask = mask
        self.n_steps = int(n_steps)

        @nnx.split_rngs(splits=self.n_steps)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs):
            return CouplingStep(channels, mask, rngs=rngs, **coupling_kwargs)

        self.steps = create(rngs)

    def _permute(self, h: jnp.ndarray, times: int) -> jnp.ndarray:
        """P^times (times may be negative)."""
        if self.mask == "checkerboard":
            return jnp.roll(h, times, axis=2)
        if times % 2:
            a, b = jnp.split(h, 2, axis=-1)
            return jnp.concatenate([b, a], axis=-1)
        return h

    def forward(self, h: jnp.ndarray, cond=None) -> tuple[jnp.ndarray, jnp.ndarray]:
        """h (B, H, W, C) -> (y (B, H, W, C), log|det| (B,))."""
        graphdef, state = nnx.split(self.steps)

        def body(carry, step_state):
            h, logdet = carry
            h, ld = nnx.merge(graphdef, step_state).forward(h, cond)
            return (self._permute(h, 1), logdet + ld), None

        init = (h, jnp.zeros((h.shape[0],), h.dtype))
        (h, logdet), _ = jax.lax.scan(body, init, state)
        return self._permute(h, -self.n_steps), logdet

    def inverse(self, y: jnp.ndarray, cond=None) -> jnp.ndarray:
        """y (B, H, W, C) -> h (B, H, W, C)."""
        graphdef, state = nnx.split(self.steps)

        def body(y, step_state):
            return nnx.merge(graphdef, step_state).inverse(self._permute(y, -1), cond), None

        y, _ = jax.lax.scan(body, self._permute(y, self.n_steps), state, reverse=True)
        return y


class MultiScaleBlock(nnx.Module):
    """One scale: (B, H, W, C) -> (B, H/2, W/2, 4C).

    K x [ActNorm, checkerboard coupling] (alternating colours), squeeze,
    K x [ActNorm, channel coupling] (alternating halves). log|det| = sum of the parts.
    """

    def __init__(self, channels: int, n_couplings: int, *, rngs: nnx.Rngs, **coupling_kwargs):
        self.spatial = CouplingStack(
            channels, "checkerboard", n_couplings, rngs=rngs, **coupling_kwargs
        )
        self.channel = CouplingStack(
            4 * channels, "channel", n_couplings, rngs=rngs, **coupling_kwargs
        )

    def forward(self, h: jnp.ndarray, cond=None) -> tuple[jnp.ndarray, jnp.ndarray]:
        """h (B, H, W, C) -> (y (B, H/2, W/2, 4C), log|det| (B,))."""
        h, ld_spatial = self.spatial.forward(h, cond)
        h, ld_channel = self.channel.forward(squeeze(h), cond)
        return h, ld_spatial + ld_channel

    def inverse(self, y: jnp.ndarray, cond=None) -> jnp.ndarray:
        """y (B, H/2, W/2, 4C) -> h (B, H, W, C)."""
        return self.spatial.inverse(unsqueeze(self.channel.inverse(y, cond)), cond)


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
