"""The orthonormal 2D Haar split of (B, N, N) maps into a coarse map and three detail maps.

For each 2x2 block [[a, b], [c, d]] (rows y, columns x; the block at rows 2i, 2i+1 and
columns 2j, 2j+1):

    s = (a + b + c + d) / 2     coarse
    h = (a - b + c - d) / 2     detail across x
    v = (a + b - c - d) / 2     detail across y
    e = (a - b - c + d) / 2     diagonal detail

The 4x4 matrix is symmetric and orthogonal (it is its own inverse), so |det| = 1 and
log|det| = 0 exactly; the sum of squares is kept, so a white standard normal map stays one.
Both functions are jitted (inlined when called inside a jitted model).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["haar_split", "haar_merge"]


@jax.jit
def haar_split(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(B, N, N) with N even -> coarse s (B, N/2, N/2) and details (B, 3, N/2, N/2) = (h, v, e)."""
    a, b = x[:, 0::2, 0::2], x[:, 0::2, 1::2]
    c, d = x[:, 1::2, 0::2], x[:, 1::2, 1::2]
    s = 0.5 * (a + b + c + d)
    h = 0.5 * (a - b + c - d)
    v = 0.5 * (a + b - c - d)
    e = 0.5 * (a - b - c + d)
    return s, jnp.stack([h, v, e], axis=1)


@jax.jit
def haar_merge(s: jnp.ndarray, details: jnp.ndarray) -> jnp.ndarray:
    """The inverse of :func:`haar_split`: (B, M, M) and (B, 3, M, M) -> (B, 2M, 2M)."""
    h, v, e = details[:, 0], details[:, 1], details[:, 2]
    a = 0.5 * (s + h + v + e)
    b = 0.5 * (s - h + v - e)
    c = 0.5 * (s + h - v - e)
    d = 0.5 * (s - h - v + e)
    batch, m = s.shape[0], s.shape[-1]
    top = jnp.stack([a, b], axis=-1).reshape(batch, m, 2 * m)  # row 2i: a b a b ...
    bottom = jnp.stack([c, d], axis=-1).reshape(batch, m, 2 * m)
    return jnp.stack([top, bottom], axis=2).reshape(batch, 2 * m, 2 * m)
