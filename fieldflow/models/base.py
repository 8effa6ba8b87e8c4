"""The public protocol every fieldflow model shares.

A subclass sets ``shape``, ``cond_dim``, ``cond_low`` and ``cond_high`` and implements
the pure, unchecked ``_forward(x, cond) -> (z, logdet)`` and ``_inverse(z, cond) -> x``.
The public methods validate their input once, then run the pure code under one
cached ``jax.jit`` per model structure and input shape:

    log p(x | cond) = log N(z; 0, I) + log |det dz/dx|,   z = forward(x, cond).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fieldflow.validation import (
    check_above,
    check_cond,
    check_cond_range,
    check_fields,
    check_temperature,
)

__all__ = ["FlowModel", "standard_normal_logpdf", "call_jitted", "jitted_method"]

LOG_2PI = float(np.log(2.0 * np.pi))


def standard_normal_logpdf(z: jnp.ndarray) -> jnp.ndarray:
    """log N(z; 0, I) summed over the map: -1/2 sum z^2 - (N^2 / 2) log 2 pi, shape (B,)."""
    d = z.shape[-1] * z.shape[-2]
    return -0.5 * jnp.sum(z * z, axis=(-2, -1)) - 0.5 * d * LOG_2PI


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def jitted_method(graphdef, method: str, precision: str | None, state, *args):
    """Run a pure method of a split module (``nnx.split``) under one cached jit per
    (structure, method, matmul precision): the one split -> jit -> merge of the package.
    ``precision`` 'highest' keeps float32 matrix products exact on GPUs (whose default is
    TF32); None is jax's default."""
    with jax.default_matmul_precision(precision):
        return getattr(nnx.merge(graphdef, state), method)(*args)


def call_jitted(module: nnx.Module, method: str, *args, precision: str | None = None):
    """``module.method(*args)`` compiled once per module structure and input shape."""
    graphdef, state = nnx.split(module)
    return jitted_method(graphdef, method, precision, state, *args)


class FlowModel(nnx.Module):
    """Base of the normalizing-flow models: forward, inverse, log_prob, sample."""

    model_type: str
    shape: tuple[int, int]
    cond_dim: int
    cond_low: tuple[float, ...]
    cond_high: tuple[float, ...]

    def _set_data_and_conditions(
        self, shape, cond_dim, cond_low, cond_high, data_shift, data_scale, log_offset=None
    ) -> None:
        """Validate and store what every model has: the map shape, the conditions and
        their trained range, and the fixed standardisation u = (g(x) - shift) / scale with
        g(x) = x, or g(x) = log(1 + c + x) when ``log_offset`` c is given (see
        :meth:`_standardise`)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 2:
            raise ValueError(f"shape must be (N, N) with N >= 2, got {shape}")
        if not (np.isfinite(data_scale) and data_scale > 0 and np.isfinite(data_shift)):
            raise ValueError(f"data_scale must be positive and finite, got {data_scale}")
        if cond_dim < 0 or (cond_dim and (len(cond_low) < cond_dim or len(cond_high) < cond_dim)):
            raise ValueError(f"cond_low and cond_high need {cond_dim} entries")
        if cond_dim and not np.all(np.asarray(cond_high[:cond_dim]) > cond_low[:cond_dim]):
            raise ValueError(f"cond_high {cond_high} must exceed cond_low {cond_low}")
        self.shape = shape
        self.cond_dim = int(cond_dim)
        self.cond_low = tuple(float(v) for v in cond_low[:cond_dim])
        self.cond_high = tuple(float(v) for v in cond_high[:cond_dim])
        if log_offset is not None and not (np.isfinite(log_offset) and log_offset >= 0):
            raise ValueError(f"log_offset must be None or a finite number >= 0, got {log_offset}")
        self.data_shift = float(data_shift)
        self.data_scale = float(data_scale)
        self.log_offset = None if log_offset is None else float(log_offset)

    def _standardise(self, x) -> tuple[jnp.ndarray, jnp.ndarray]:
        """u = (g(x) - shift) / scale and log|det du/dx| (B,), pixel by pixel.

        g(x) = x, or with a log offset c, g(x) = log(1 + c + x): density contrasts
        x > -1 - c become a field with light tails (the lognormal map, for c = 0, is
        then Gaussian), and log|det| gains -sum_pixels log(1 + c + x).
        """
        n_pix = self.shape[0] * self.shape[1]
        logdet = jnp.full(x.shape[:1], -n_pix * np.log(self.data_scale), dtype=jnp.float32)
        if self.log_offset is not None:
            x = jnp.log(x + (1.0 + self.log_offset))
            logdet = logdet - jnp.sum(x, axis=(-2, -1))
        return (x - self.data_shift) / self.data_scale, logdet

    def _destandardise(self, u) -> jnp.ndarray:
        """x from u: the inverse of :meth:`_standardise`."""
        g = u * self.data_scale + self.data_shift
        return g if self.log_offset is None else jnp.exp(g) - (1.0 + self.log_offset)

    def _forward(self, x, cond):  # pragma: no cover - abstract
        raise NotImplementedError

    def _inverse(self, z, cond):  # pragma: no cover - abstract
        raise NotImplementedError

    def check_support(self, x, name: str = "x") -> None:
        """Refuse maps outside the model's support x > -1 - c (with a log transform)."""
        if self.log_offset is not None:
            check_above(x, -1.0 - self.log_offset, name, "the model's log transform")

    def _check(self, x, cond, name: str):
        x = check_fields(x, self.shape, name)
        if name == "x":
            self.check_support(x, name)
        cond = check_cond(cond, x.shape[0], self.cond_dim)
        if cond is not None:
            check_cond_range(cond, self.cond_low, self.cond_high)
        return x, cond

    def _log_prob(self, x, cond):
        z, logdet = self._forward(x, cond)
        return standard_normal_logpdf(z) + logdet

    def forward(self, x, cond=None) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Data to latent: z (B, N, N) and log|det dz/dx| (B,) in nats."""
        return call_jitted(self, "_forward", *self._check(x, cond, "x"))

    def inverse(self, z, cond=None) -> jnp.ndarray:
        """Latent to data: x (B, N, N)."""
        return call_jitted(self, "_inverse", *self._check(z, cond, "z"))

    def log_prob(self, x, cond=None) -> jnp.ndarray:
        """log p(x | cond) = log N(z; 0, I) + log|det dz/dx| in nats, shape (B,)."""
        return call_jitted(self, "_log_prob", *self._check(x, cond, "x"))

    def sample(
        self, key: jax.Array, cond=None, *, num: int | None = None, temperature=None
    ) -> jnp.ndarray:
        """Draw maps x ~ p(x | cond): (B, N, N) for cond (B, cond_dim), or ``num`` maps
        from an unconditional model.

        ``temperature`` T (a positive number, or one per map, (B,)) draws the latent from
        N(0, T^2 I) instead: x = f^-1(T z; cond). T != 1 gives maps that are *not* draws
        from p(x | cond) (see :mod:`fieldflow.sampling_temperature`, which fits a T(theta)
        that makes a flow's mocks match its simulations' power); None and 1 are the flow's
        own samples."""
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
        if temperature is not None:
            z = z * check_temperature(temperature, batch)[:, None, None]
        return self.inverse(z, cond)

    def num_params(self) -> int:
        """Number of trainable scalars."""
        return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(self, nnx.Param)))
