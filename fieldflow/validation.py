"""Input checks done once at public entry points, never inside jitted inner code.

Every check of map arrays goes through :func:`check_maps` (from ``data_gen.validation``,
the layer below, so the simulators use the same one); this module adds the checks of
conditions, trained ranges and transform domains.

Shapes are static and always checked. Finiteness is checked only on concrete
arrays: inside ``jit`` the values are tracers and the check is skipped, so a
public method may still be called from a jitted function.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from data_gen.validation import check_maps, is_concrete

__all__ = [
    "check_maps",
    "check_fields",
    "check_cond",
    "check_cond_range",
    "check_above",
    "check_temperature",
    "is_concrete",
]


def _check_finite(x, name: str) -> None:
    # numpy, not jnp: inside a trace even a concrete array's jnp result would be traced
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name} contains NaN or inf values")


def check_fields(x, shape: Sequence[int], name: str = "x") -> jnp.ndarray:
    """Validate a batch of maps of shape (B, *shape) and return it as float32 (jax)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"a model's map shape must be square (N, N), got {shape}")
    maps, _ = check_maps(x, shape[0], name, allow_single=False)
    return jnp.asarray(maps)


def check_above(x, bound: float, name: str, why: str) -> None:
    """Refuse a concrete array with a value <= ``bound`` (the domain of a transform)."""
    if is_concrete(x):
        low = float(np.min(np.asarray(x)))
        if not low > bound:
            raise ValueError(f"{name} must be > {bound:g} ({why}); its minimum is {low:g}")


def check_cond(cond, batch: int, cond_dim: int, name: str = "cond") -> jnp.ndarray | None:
    """Validate conditions of shape (batch, cond_dim); ``None`` when ``cond_dim == 0``."""
    if cond_dim == 0:
        if cond is not None and np.size(cond) != 0:
            raise ValueError(f"this model is unconditional: {name} must be None")
        return None
    if cond is None:
        raise ValueError(f"{name} is required: expected shape ({batch}, {cond_dim})")
    if not hasattr(cond, "shape"):
        cond = np.asarray(cond)
    if cond.ndim != 2 or cond.shape[1] != cond_dim:
        raise ValueError(f"{name} must have shape (B, {cond_dim}), got {tuple(cond.shape)}")
    if cond.shape[0] != batch:
        raise ValueError(
            f"{name} has batch {cond.shape[0]} but the maps have batch {batch}: "
            f"expected shape ({batch}, {cond_dim})"
        )
    cond = jnp.asarray(cond, dtype=jnp.float32)
    _check_finite(cond, name)
    return cond


def check_cond_range(cond, low: Sequence[float], high: Sequence[float], name: str = "cond") -> None:
    """Refuse concrete conditions outside the trained range [low, high] (per column)."""
    if not is_concrete(cond):
        return
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    tol = 1e-6 * (high - low)
    c = np.asarray(cond, dtype=np.float64)
    bad = (c < low - tol) | (c > high + tol)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{name}[{row}, {col}] = {c[row, col]:.4g} is outside the trained range "
            f"[{low[col]:.4g}, {high[col]:.4g}] of this model"
        )


def check_temperature(temperature, batch: int) -> jnp.ndarray:
    """A sampling temperature as (batch,) float32: one positive finite number, or one per map."""
    t = np.asarray(temperature, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(batch, float(t))
    if t.shape != (batch,):
        raise ValueError(
            f"temperature must be a number or have shape ({batch},), got {tuple(t.shape)}"
        )
    if not np.all(np.isfinite(t) & (t > 0)):
        raise ValueError(f"temperature must be positive and finite, got {t.min():g}..{t.max():g}")
    return jnp.asarray(t, dtype=jnp.float32)
