"""The one check of map arrays, shared by the simulators and by ``fieldflow.validation``.

Shapes are static and always checked. Finiteness is checked only on concrete arrays:
inside ``jit`` the values are tracers and the check is skipped, so a public function may
still be called from a jitted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_maps", "is_concrete"]


def is_concrete(x) -> bool:
    """True when ``x`` holds values (not a tracer inside a transformation)."""
    return not isinstance(x, jax.core.Tracer)


def check_maps(
    x,
    n: int | None = None,
    name: str = "maps",
    *,
    allow_single: bool = True,
    finite: bool = True,
) -> tuple[np.ndarray | jnp.ndarray, bool]:
    """Validate square maps and return ``(maps (B, N, N) float32, single)``.

    ``single`` says the input was one ``(N, N)`` map (allowed when ``allow_single``); it was
    given a batch axis. ``n`` fixes the side. The result is a numpy array for numpy input (or
    lists) and a jax array for jax input (tracers included), so host-side callers never start
    small device computations. ValueError for a wrong number of dimensions, non-square or
    smaller-than-2 maps, another side than ``n``, an empty batch, a non-real dtype, or (when
    ``finite`` and the values are concrete) NaN / inf pixels, naming the first bad maps.
    """
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    dims = "(B, N, N) or (N, N)" if allow_single else "(B, N, N)"
    if n is not None:
        dims = dims.replace("N, N", f"{int(n)}, {int(n)}")
    if x.ndim not in ((2, 3) if allow_single else (3,)):
        raise ValueError(f"{name} must have shape {dims}, got {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2] or x.shape[-1] < 2:
        raise ValueError(f"{name} must hold square N x N maps (N >= 2), got {tuple(x.shape)}")
    if n is not None and x.shape[-1] != int(n):
        raise ValueError(f"{name} must have shape {dims}, got {tuple(x.shape)}")
    if x.ndim == 3 and x.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one map, got an empty batch")
    dtype = np.dtype(x.dtype)
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise ValueError(f"{name} must be a real array, got dtype {dtype}")
    single = x.ndim == 2
    xp = np if isinstance(x, np.ndarray) else jnp
    x = xp.asarray(x, dtype=xp.float32)
    if single:
        x = x[None]
    if finite and is_concrete(x):
        ok = np.all(np.isfinite(np.asarray(x)), axis=(1, 2))
        if not ok.all():
            bad = np.flatnonzero(~ok)[:5].tolist()
            raise ValueError(f"{name} contains NaN or inf values (map(s) {bad})")
    return x, single
