"""TRENF: the translation and rotation equivariant normalizing flow (Dai & Seljak 2022).

    z = f_L o ... o f_1 (u),   u = (g(x) - shift) / scale,  g(x) = x or log(1 + c + x),
    f_i(u) = Psi_i(F^-1[T_i(|k|) F u]),
    log p(x | theta) = log N(z; 0, I) + sum_i [sum_k log T_i(|k|) + sum_pixels log Psi_i']
                       - N^2 log(scale) [- sum_pixels log(1 + c + x)].

T_i is a positive radial kernel, Psi_i a monotone rational-quadratic spline;
both commute with periodic shifts and the 8 symmetries of the square lattice,
so log p is invariant under them. A conditioner MLP maps the normalised
theta = (Omega_m, sigma_8) to the knots of every T_i and Psi_i. The layers' parameters
are stacked and the layers run by ``jax.lax.scan``: fully unrolled in the forward
direction (log p and training, where the unrolled loop runs faster; its compile time
grows with depth), rolled in the inverse direction (sampling; one compiled layer body,
whatever the depth).
"""

from __future__ import annotations

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
from fieldflow.models.base import FlowModel
from fieldflow.splines import rq_identity_params

__all__ = ["TRENF"]


class TRENF(FlowModel):
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
        log_offset: None, or c >= 0 to standardise log(1 + c + x) instead of x (for
            density contrasts with heavy tails, such as N-body maps; maps must then be
            > -1 - c). Exact: its log-determinant is included too.
        radial: False replaces |k| by the anisotropic radius sqrt((1.5 k_x)^2 + k_y^2) (a
            control model, for tests only: still invariant under periodic shifts, the
            180-degree rotation and the axis flips, but not under 90-degree rotations or
            the transpose).
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
        log_offset: float | None = None,
        radial: bool = True,
        init_noise: float = 1e-2,
        rngs: nnx.Rngs,
    ):
        self._set_data_and_conditions(
            shape, cond_dim, cond_low, cond_high, data_shift, data_scale, log_offset
        )
        n = self.shape[0]
        n_t_knots = n // 2 + 1 if n_t_knots is None else int(n_t_knots)
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if n_psi_bins < 2:
            raise ValueError(f"n_psi_bins must be >= 2, got {n_psi_bins}")
        if n_t_knots < 3:
            raise ValueError(f"n_t_knots must be >= 3, got {n_t_knots}")
        if not psi_bound > 0:
            raise ValueError(f"psi_bound must be positive, got {psi_bound}")

        self.n_layers = int(n_layers)
        self.n_t_knots = n_t_knots
        self.psi_bound = float(psi_bound)
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
            "log_offset": self.log_offset,
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

    def _forward(self, x, cond):
        grid, nt, bound = self._grid, self.n_t_knots, self.psi_bound
        u, logdet = self._standardise(x)

        def layer(carry, params):
            u, logdet = carry
            u, ld_t = fourier_conv_forward(u, params[:, :nt], grid)
            u, ld_psi = pointwise_spline_forward(u, params[:, nt:], bound)
            return (u, logdet + ld_t + ld_psi), None

        # unrolled: log p and its gradient run faster; compile time grows with n_layers
        (z, logdet), _ = jax.lax.scan(
            layer, (u, logdet), self._layer_params(cond, x.shape[0]), unroll=True
        )
        return z, logdet

    def _inverse(self, z, cond):
        grid, nt, bound = self._grid, self.n_t_knots, self.psi_bound

        def layer(u, params):
            u = pointwise_spline_inverse(u, params[:, nt:], bound)
            return fourier_conv_inverse(u, params[:, :nt], grid), None

        # rolled: one compiled layer body, whatever the depth
        u, _ = jax.lax.scan(layer, z, self._layer_params(cond, z.shape[0]), reverse=True)
        return self._destandardise(u)
