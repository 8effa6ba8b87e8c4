"""TRENF: the translation and rotation equivariant normalizing flow (Dai & Seljak 2022).

    z = f_L o ... o f_1 (u),   u = (x - shift) / scale,
    f_i(u) = Psi_i(F^-1[T_i(|k|) F u]),
    log p(x | theta) = log N(z; 0, I) + sum_i [sum_k log T_i(|k|) + sum_pixels log Psi_i']
                       - N^2 log(scale).

T_i is a positive radial kernel, Psi_i a monotone rational-quadratic spline;
both commute with periodic shifts and the 8 symmetries of the square lattice,
so log p is invariant under them. A conditioner MLP maps the normalised
theta = (Omega_m, sigma_8) to the knots of every T_i and Psi_i. The layers are
stacked and run with ``jax.lax.scan`` so compile time does not grow with depth.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fieldflow.layers import (
    Conditioner,
    fourier_conv_forward,
    fourier_conv_inverse,
    pointwise_spline_forward,
    pointwise_spline_inverse,
    radial_grid,
)
from fieldflow.splines import rq_identity_params
from fieldflow.validation import check_cond, check_cond_range, check_fields

__all__ = ["TRENF", "standard_normal_logpdf"]

LOG_2PI = float(np.log(2.0 * np.pi))


def standard_normal_logpdf(z: jnp.ndarray) -> jnp.ndarray:
    """log N(z; 0, I) summed over the map: -1/2 sum z^2 - (N^2 / 2) log 2 pi, shape (B,)."""
    d = z.shape[-1] * z.shape[-2]
    return -0.5 * jnp.sum(z * z, axis=(-2, -1)) - 0.5 * d * LOG_2PI


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jitted_method(graphdef, method: str, state, *args):
    """Run a pure method of a split module under one cached jit per (structure, method)."""
    return getattr(nnx.merge(graphdef, state), method)(*args)


def call_jitted(module: nnx.Module, method: str, *args):
    """``module.method(*args)`` compiled once per module structure and input shape."""
    graphdef, state = nnx.split(module)
    return _jitted_method(graphdef, method, state, *args)


class TRENF(nnx.Module):
    """Conditional TRENF on (B, N, N) float32 maps.

    Args:
        shape: (N, N) map shape.
        n_layers: number of Psi o T layers.
        n_psi_bins: bins K of each rational-quadratic spline Psi.
        n_t_knots: values of each radial kernel: log T(0) and the spline knots of log T(k > 0);
            default N // 2 + 1.
        psi_bound: Psi acts on [-B, B] (after standardisation) and is the identity outside.
        cond_dim: 2 for (Omega_m, sigma_8); 0 for an unconditional model.
        hidden: widths of the conditioner MLP.
        cond_low, cond_high: the trained range of the conditions, mapped to [-1, 1];
            conditions outside it are refused.
        data_shift, data_scale: fixed standardisation u = (x - shift) / scale, whose
            log-determinant is included so log p is the density of x itself.
        radial: False replaces |k| by an anisotropic radius (a control model that is
            not rotation invariant; for tests only).
        rngs: flax random streams.
    """

    model_type = "trenf"

    def __init__(
        self,
        shape: Sequence[int],
        *,
        n_layers: int = 5,
        n_psi_bins: int = 8,
        n_t_knots: int | None = None,
        psi_bound: float = 5.0,
        cond_dim: int = 2,
        hidden: Sequence[int] = (128, 128),
        cond_low: Sequence[float] = (0.2, 0.5),
        cond_high: Sequence[float] = (0.5, 1.1),
        data_shift: float = 0.0,
        data_scale: float = 1.0,
        radial: bool = True,
        init_noise: float = 1e-2,
        rngs: nnx.Rngs,
    ):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 2:
            raise ValueError(f"shape must be (N, N) with N >= 2, got {shape}")
        n = shape[0]
        n_t_knots = n // 2 + 1 if n_t_knots is None else int(n_t_knots)
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if n_psi_bins < 2:
            raise ValueError(f"n_psi_bins must be >= 2, got {n_psi_bins}")
        if n_t_knots < 3:
            raise ValueError(f"n_t_knots must be >= 3, got {n_t_knots}")
        if not psi_bound > 0:
            raise ValueError(f"psi_bound must be positive, got {psi_bound}")
        if not (np.isfinite(data_scale) and data_scale > 0 and np.isfinite(data_shift)):
            raise ValueError(f"data_scale must be positive and finite, got {data_scale}")
        if cond_dim < 0 or (cond_dim and (len(cond_low) < cond_dim or len(cond_high) < cond_dim)):
            raise ValueError(f"cond_low and cond_high need {cond_dim} entries")
        if cond_dim and not np.all(np.asarray(cond_high[:cond_dim]) > cond_low[:cond_dim]):
            raise ValueError(f"cond_high {cond_high} must exceed cond_low {cond_low}")

        self.shape = shape
        self.n_layers = int(n_layers)
        self.n_t_knots = n_t_knots
        self.psi_bound = float(psi_bound)
        self.cond_dim = int(cond_dim)
        self.cond_low = tuple(float(v) for v in cond_low[:cond_dim])
        self.cond_high = tuple(float(v) for v in cond_high[:cond_dim])
        self.data_shift = float(data_shift)
        self.data_scale = float(data_scale)
        self.radial = bool(radial)
        self.n_psi_bins = int(n_psi_bins)
        self.hidden = tuple(int(h) for h in hidden)
        self.init_noise = float(init_noise)
        layer_init = np.concatenate([np.zeros(n_t_knots), rq_identity_params(n_psi_bins)])
        self.conditioner = Conditioner(
            np.tile(layer_init, (self.n_layers, 1)),
            self.cond_dim,
            self.hidden,
            cond_low=self.cond_low,
            cond_high=self.cond_high,
            init_noise=init_noise,
            rngs=rngs,
        )

    @property
    def config(self) -> dict:
        """JSON-serialisable constructor arguments: ``TRENF(**config, rngs=...)`` rebuilds it."""
        return {
            "shape": list(self.shape),
            "n_layers": self.n_layers,
            "n_psi_bins": self.n_psi_bins,
            "n_t_knots": self.n_t_knots,
            "psi_bound": self.psi_bound,
            "cond_dim": self.cond_dim,
            "hidden": list(self.hidden),
            "cond_low": list(self.cond_low),
            "cond_high": list(self.cond_high),
            "data_shift": self.data_shift,
            "data_scale": self.data_scale,
            "radial": self.radial,
            "init_noise": self.init_noise,
        }

    # ----------------------------------------------------------------- internals
    @property
    def _grid(self):
        return radial_grid(self.shape[0], self.n_t_knots, self.radial)

    def _layer_params(self, cond, batch: int) -> jnp.ndarray:
        """(L, B, P) per-layer parameters: P = n_t_knots log T values + Psi's 3K-1."""
        return jnp.swapaxes(self.conditioner(cond, batch), 0, 1)

    def _check(self, x, cond, name: str):
        x = check_fields(x, self.shape, name)
        cond = check_cond(cond, x.shape[0], self.cond_dim)
        if cond is not None:
            check_cond_range(cond, self.cond_low, self.cond_high)
        return x, cond

    def _forward(self, x, cond):
        grid, nt, bound = self._grid, self.n_t_knots, self.psi_bound
        n_pix = self.shape[0] * self.shape[1]
        u = (x - self.data_shift) / self.data_scale
        logdet = jnp.full((x.shape[0],), -n_pix * np.log(self.data_scale), dtype=jnp.float32)

        def layer(carry, params):
            u, logdet = carry
            u, ld_t = fourier_conv_forward(u, params[:, :nt], grid)
            u, ld_psi = pointwise_spline_forward(u, params[:, nt:], bound)
            return (u, logdet + ld_t + ld_psi), None

        (z, logdet), _ = jax.lax.scan(
            layer, (u, logdet), self._layer_params(cond, x.shape[0]), unroll=True
        )
        return z, logdet

    def _inverse(self, z, cond):
        grid, nt, bound = self._grid, self.n_t_knots, self.psi_bound

        def layer(u, params):
            u = pointwise_spline_inverse(u, params[:, nt:], bound)
            return fourier_conv_inverse(u, params[:, :nt], grid), None

        u, _ = jax.lax.scan(layer, z, self._layer_params(cond, z.shape[0]), reverse=True)
        return u * self.data_scale + self.data_shift

    # ------------------------------------------------------------------- public
    def forward(self, x, cond=None) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Data to latent: z (B, N, N) and log|det dz/dx| (B,) in nats."""
        return call_jitted(self, "_forward", *self._check(x, cond, "x"))

    def inverse(self, z, cond=None) -> jnp.ndarray:
        """Latent to data: x (B, N, N)."""
        return call_jitted(self, "_inverse", *self._check(z, cond, "z"))

    def log_prob(self, x, cond=None) -> jnp.ndarray:
        """log p(x | cond) in nats, shape (B,)."""
        return call_jitted(self, "_log_prob", *self._check(x, cond, "x"))

    def _log_prob(self, x, cond):
        z, logdet = self._forward(x, cond)
        return standard_normal_logpdf(z) + logdet

    def sample(self, key: jax.Array, cond=None, *, num: int | None = None) -> jnp.ndarray:
        """Draw maps x ~ p(x | cond): (B, N, N) for cond (B, cond_dim), or ``num`` maps
        from an unconditional model."""
        if self.cond_dim:
            if num is not None:
                raise ValueError("num is only for unconditional models; pass cond (B, 2)")
            if cond is None or not hasattr(cond, "shape") and np.ndim(cond) == 0:
                raise ValueError(f"cond is required: expected shape (B, {self.cond_dim})")
            batch = int(np.shape(cond)[0]) if np.ndim(cond) == 2 else -1
        else:
            if num is None or int(num) < 1:
                raise ValueError(f"num must be a positive integer, got {num!r}")
            batch = int(num)
        if batch < 1:
            raise ValueError(f"cond must have shape (B, {self.cond_dim}), got {np.shape(cond)}")
        z = jax.random.normal(key, (batch, *self.shape), dtype=jnp.float32)
        return self.inverse(z, cond)

    def num_params(self) -> int:
        """Number of trainable scalars."""
        return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(self, nnx.Param)))
