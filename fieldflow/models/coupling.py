"""The building blocks of RealNVP: permutations (squeeze, checkerboard masks), ActNorm,
circular-padding conv ResNets, affine couplings and their stacks and multi-scale blocks.

Each coupling keeps one part h_a of its input and maps the other part by
h_b' = h_b * exp(s(h_a, theta)) + t(h_a, theta), log|det| = sum s; see
:mod:`fieldflow.models.realnvp` for how the model assembles them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
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
