"""Bijections of (B, N, N) maps: the Fourier convolution T(|k|) and the pointwise spline Psi.

Each bijection exists twice: as pure functions of the field and its (possibly
per-map) parameters, which the TRENF model stacks and scans over, and as a flax
NNX module with the protocol

    z, logdet = layer.forward(x, cond)      # data -> latent, logdet (B,)
    x = layer.inverse(z, cond)              # latent -> data

whose parameters are either free or produced from the condition by an MLP.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fieldflow.fourier import kgrid_half, rfft_multiplicity
from fieldflow.splines import (
    cubic_spline_basis,
    rq_forward,
    rq_identity_params,
    rq_inverse,
    rq_knots,
)
from fieldflow.validation import check_cond, check_fields

__all__ = [
    "RadialGrid",
    "radial_grid",
    "fourier_conv_forward",
    "fourier_conv_inverse",
    "pointwise_spline_forward",
    "pointwise_spline_inverse",
    "Conditioner",
    "FourierConv",
    "PointwiseSpline",
]

# full float32 matrix products: GPUs default to TF32, which would move log p by ~0.03 nats
EXACT = jax.lax.Precision.HIGHEST
ANISOTROPY = 1.5  # k_x stretch of the deliberately non-radial kernel used as a control


class RadialGrid:
    """Precomputed map from T's values to log T on the rfft2 half plane.

    The kernel is T(k) = exp(S(k)). The mean mode k = 0 has its own value
    (``values[0]``): it is a single mode whose scale may differ sharply from its
    neighbours. For k > 0, S is the natural cubic spline through the other
    ``n_knots - 1`` values at equally spaced wavenumbers (grid units, k_f = 1)
    from the smallest to the largest nonzero |k| on the grid. The values enter
    log T linearly, through a basis precomputed for the grid, so evaluating T
    costs one small matrix product.

    With ``radial=False`` the radius is sqrt((1.5 k_x)^2 + k_y^2): still a real,
    even kernel (the map stays real and translation-equivariant) but no longer
    invariant under 90-degree rotations.
    """

    def __init__(self, n: int, n_knots: int, radial: bool = True):
        if n_knots < 3:
            raise ValueError(f"n_t_knots must be >= 3 (k = 0 and two spline knots), got {n_knots}")
        kx, ky = kgrid_half(n)  # grid units: k_f = 1
        stretch = 1.0 if radial else ANISOTROPY
        k = np.sqrt((stretch * kx) ** 2 + ky**2)
        radii, inverse = np.unique(np.round(k, 9), return_inverse=True)
        knots = np.linspace(radii[1], radii[-1], n_knots - 1)
        basis = np.zeros((n_knots, len(radii)))  # radii[0] == 0: the mean mode
        basis[0, 0] = 1.0
        basis[1:, 1:] = cubic_spline_basis(knots, radii[1:])
        counts = np.bincount(inverse.ravel(), weights=rfft_multiplicity(n).ravel())
        self.n = n
        self.n_knots = n_knots
        self.radial = radial
        self.index = inverse.reshape(k.shape)
        # (n_knots, N * (N//2+1)): a matmul, whose gradient needs no scatter
        self.basis = basis[:, self.index.ravel()].astype(np.float32)
        # sum over all N^2 frequencies of log T = values @ logdet_weights
        self.logdet_weights = (basis @ counts).astype(np.float32)

    def log_t(self, values: jnp.ndarray) -> jnp.ndarray:
        """log T on the half plane, (B, N, N//2+1), from knot values (B, n_knots)."""
        log_t = jnp.matmul(values, self.basis, precision=EXACT)
        return log_t.reshape(values.shape[0], *self.index.shape)


@functools.lru_cache(maxsize=32)
def radial_grid(n: int, n_knots: int, radial: bool = True) -> RadialGrid:
    """Cached :class:`RadialGrid` (the precomputation is done once per shape)."""
    return RadialGrid(n, n_knots, radial)


def fourier_conv_forward(
    x: jnp.ndarray, values: jnp.ndarray, grid: RadialGrid
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """y = F^-1[T(|k|) F x], log|det| = sum over all N^2 frequencies of log T(|k|).

    x (B, N, N), values (B, n_knots) the log T knot values; returns y and (B,).
    """
    n = x.shape[-1]
    y = jnp.fft.irfft2(jnp.exp(grid.log_t(values)) * jnp.fft.rfft2(x), s=(n, n))
    return y, jnp.matmul(values, grid.logdet_weights, precision=EXACT)


def fourier_conv_inverse(y: jnp.ndarray, values: jnp.ndarray, grid: RadialGrid) -> jnp.ndarray:
    """x = F^-1[F y / T(|k|)]."""
    n = y.shape[-1]
    return jnp.fft.irfft2(jnp.exp(-grid.log_t(values)) * jnp.fft.rfft2(y), s=(n, n))


def pointwise_spline_forward(
    x: jnp.ndarray, raw: jnp.ndarray, bound: float
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """y = Psi(x) pixel by pixel, log|det| = sum_pixels log Psi'(x).

    x (B, N, N), raw (B, 3K-1) unconstrained spline parameters of each map.
    """
    b, n, m = x.shape
    y, logd = rq_forward(x.reshape(b, n * m), rq_knots(raw, bound))
    return y.reshape(b, n, m), jnp.sum(logd, axis=-1)


def pointwise_spline_inverse(y: jnp.ndarray, raw: jnp.ndarray, bound: float) -> jnp.ndarray:
    """x = Psi^{-1}(y) pixel by pixel."""
    b, n, m = y.shape
    x, _ = rq_inverse(y.reshape(b, n * m), rq_knots(raw, bound))
    return x.reshape(b, n, m)


def normalise_cond(cond: jnp.ndarray, low, high) -> jnp.ndarray:
    """Map each condition from [low, high] to [-1, 1]."""
    low = jnp.asarray(low, dtype=jnp.float32)
    high = jnp.asarray(high, dtype=jnp.float32)
    return 2.0 * (cond - low) / (high - low) - 1.0


class Conditioner(nnx.Module):
    """Parameters of shape ``out_shape`` for each map: free, or an MLP of the condition.

    params(cond) = base + MLP(normalised cond), with the MLP's last layer
    initialised near zero, so every map starts from ``base``.
    """

    def __init__(
        self,
        init: np.ndarray,
        cond_dim: int,
        hidden: tuple[int, ...],
        *,
        cond_low=(0.2, 0.5),
        cond_high=(0.5, 1.1),
        init_noise: float = 1e-2,
        rngs: nnx.Rngs,
    ):
        init = np.asarray(init, dtype=np.float32)
        self.out_shape = init.shape
        self.cond_dim = cond_dim
        self.cond_low = tuple(float(v) for v in cond_low)[:cond_dim]
        self.cond_high = tuple(float(v) for v in cond_high)[:cond_dim]
        noise = init_noise * jax.random.normal(rngs.params(), init.shape)
        self.base = nnx.Param(jnp.asarray(init) + noise)
        widths = (cond_dim, *hidden) if cond_dim else ()
        self.hidden = nnx.List(
            [
                nnx.Linear(a, b, precision=EXACT, rngs=rngs)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        width = widths[-1] if cond_dim else 0
        if cond_dim:
            self.out = nnx.Linear(
                width,
                int(np.prod(init.shape)),
                precision=EXACT,
                kernel_init=nnx.initializers.normal(1e-3),
                rngs=rngs,
            )

    def __call__(self, cond: jnp.ndarray | None, batch: int) -> jnp.ndarray:
        """(batch, *out_shape) parameters for conditions (batch, cond_dim) or None."""
        base = self.base[...]
        if not self.cond_dim:
            return jnp.broadcast_to(base, (batch, *self.out_shape))
        h = normalise_cond(cond, self.cond_low, self.cond_high)
        for layer in self.hidden:
            h = jax.nn.silu(layer(h))
        return base + self.out(h).reshape(batch, *self.out_shape)


class _ConditionedLayer(nnx.Module):
    """Common public-method plumbing of the single-layer bijections."""

    shape: tuple[int, int]
    cond_dim: int
    conditioner: Conditioner

    def _checked(self, x, cond, name: str):
        x = check_fields(x, self.shape, name)
        cond = check_cond(cond, x.shape[0], self.cond_dim)
        return x, self.conditioner(cond, x.shape[0])


class FourierConv(_ConditionedLayer):
    """y = F^-1[T(|k|) F x] with T = exp(cubic spline in |k|), real and strictly positive."""

    def __init__(
        self,
        n: int,
        n_knots: int = 32,
        *,
        cond_dim: int = 0,
        hidden: tuple[int, ...] = (32,),
        radial: bool = True,
        rngs: nnx.Rngs,
    ):
        self.shape = (n, n)
        self.cond_dim = cond_dim
        self.n_knots = n_knots
        self.radial = radial
        self.conditioner = Conditioner(np.zeros(n_knots), cond_dim, hidden, rngs=rngs)

    @property
    def grid(self) -> RadialGrid:
        return radial_grid(self.shape[0], self.n_knots, self.radial)

    def forward(self, x, cond=None) -> tuple[jnp.ndarray, jnp.ndarray]:
        x, values = self._checked(x, cond, "x")
        return fourier_conv_forward(x, values, self.grid)

    def inverse(self, z, cond=None) -> jnp.ndarray:
        z, values = self._checked(z, cond, "z")
        return fourier_conv_inverse(z, values, self.grid)


class PointwiseSpline(_ConditionedLayer):
    """y = Psi(x) pixel by pixel: a monotone rational-quadratic spline on [-B, B]."""

    def __init__(
        self,
        n: int,
        n_bins: int = 8,
        bound: float = 5.0,
        *,
        cond_dim: int = 0,
        hidden: tuple[int, ...] = (32,),
        rngs: nnx.Rngs,
    ):
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound}")
        self.shape = (n, n)
        self.cond_dim = cond_dim
        self.bound = float(bound)
        self.conditioner = Conditioner(rq_identity_params(n_bins), cond_dim, hidden, rngs=rngs)

    def forward(self, x, cond=None) -> tuple[jnp.ndarray, jnp.ndarray]:
        x, raw = self._checked(x, cond, "x")
        return pointwise_spline_forward(x, raw, self.bound)

    def inverse(self, z, cond=None) -> jnp.ndarray:
        z, raw = self._checked(z, cond, "z")
        return pointwise_spline_inverse(z, raw, self.bound)
