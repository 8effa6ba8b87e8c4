"""Synthetic survey masks: circular holes (bright stars, bad fields) plus stripes
(scan gaps, survey edges) on a periodic N x N grid.

Construction. Draw ``n_holes`` circles with random centres and log-uniform radii
r_i, and ``n_stripes`` axis-aligned stripes with random position, orientation and
a smoothly wobbling half-width w_j(t) (a periodic sinusoid along the stripe, so
the edges are not perfectly straight). Every pixel gets the "depth"

    u(x) = min( min_i d_i(x) / r_i ,  min_j e_j(x) / w_j(t) ),

with d_i the periodic distance to centre i and e_j the periodic distance to the
centre line of stripe j. Masking the pixels with u <= s is the union of all the
holes and stripes with their sizes scaled by a common factor s; choosing s as the
quantile of u at the requested fraction gives

    masked fraction = round(f N^2) / N^2   exactly

(the k = round(f N^2) deepest pixels are masked; exact ties of u, which have
probability zero for these continuous random shapes, are broken by pixel index).
The geometry is drawn with numpy from a generator seeded by the key's bits, so the
same key gives the same mask (no compilation; masks are made once per survey).
So the tolerance on the fraction is 1 / (2 N^2). The relative sizes are set so
that stripes cover about ``stripe_share`` of the masked area before the common
rescaling (the realised share varies with overlaps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["make_mask", "masked_fraction"]


def masked_fraction(mask) -> jnp.ndarray:
    """Fraction of masked (0) pixels, per map: (B,) for (B, N, N), scalar for (N, N)."""
    m = jnp.asarray(mask, dtype=jnp.float32)
    return 1.0 - m.mean(axis=(-2, -1))


def _periodic_abs(dx, n):
    dx = np.abs(dx) % n
    return np.minimum(dx, n - dx)


def _rng_from_key(key) -> np.random.Generator:
    """A numpy generator seeded by the bits of a jax PRNG key (typed or raw uint32)."""
    data = np.asarray(jax.random.key_data(key) if hasattr(key, "dtype") else key)
    return np.random.default_rng(data.astype(np.uint64).ravel().tolist())


def _depth(rng, n, n_holes, n_stripes, frac, stripe_share, radius_ratio, wobble):
    """The field u(x) whose sub-level sets are the scaled union of holes and stripes."""
    y, x = np.meshgrid(
        np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64), indexing="ij"
    )
    area = frac * n * n
    u = np.full((n, n), np.inf)
    if n_holes:
        centres = rng.uniform(0.0, n, (n_holes, 2))
        r = np.exp(rng.uniform(0.0, np.log(radius_ratio), n_holes))
        # scale so that the holes alone would cover (1 - share) of the target area
        r = r * np.sqrt((1.0 - stripe_share) * area / (np.pi * np.sum(r**2)))
        r = np.maximum(r, 1e-6)
        dy = _periodic_abs(y[None] - centres[:, 0, None, None], n)
        dx = _periodic_abs(x[None] - centres[:, 1, None, None], n)
        u = np.minimum(u, np.min(np.hypot(dx, dy) / r[:, None, None], axis=0))
    if n_stripes:
        pos = rng.uniform(0.0, n, n_stripes)
        vertical = rng.random(n_stripes) < 0.5
        w_rel = rng.uniform(0.5, 1.5, n_stripes)
        w = w_rel * stripe_share * area / (2.0 * n * np.sum(w_rel))  # half-widths
        phase = rng.uniform(0.0, 2.0 * np.pi, n_stripes)
        modes = rng.integers(1, 4, n_stripes).astype(np.float64)  # periodic wobble
        across = np.where(vertical[:, None, None], x[None], y[None])
        along = np.where(vertical[:, None, None], y[None], x[None])
        e = _periodic_abs(across - pos[:, None, None], n)
        arg = 2.0 * np.pi * modes[:, None, None] * along / n + phase[:, None, None]
        half = w[:, None, None] * (1.0 + wobble * np.sin(arg))
        u = np.minimum(u, np.min(e / np.maximum(half, 1e-9), axis=0))
    return u


def make_mask(
    key: jax.Array,
    n: int,
    masked_fraction: float = 0.2,
    *,
    n_holes: int = 12,
    n_stripes: int = 2,
    stripe_share: float = 0.3,
    radius_ratio: float = 4.0,
    wobble: float = 0.2,
) -> jnp.ndarray:
    """A random periodic survey mask with holes and stripes, (N, N) float32, 1 = observed.

    Args:
        key: jax PRNG key; the same key gives the same mask.
        n: map side N (>= 4).
        masked_fraction: fraction f of masked pixels, 0 <= f < 1. The result has
            exactly round(f N^2) masked pixels (tolerance 1 / (2 N^2) on f).
        n_holes: number of circular holes (0 for stripes only).
        n_stripes: number of stripes (0 for holes only); at least one of the two > 0.
        stripe_share: target share of the masked area in stripes, in [0, 1]
            (approximate; ignored when one kind is absent).
        radius_ratio: largest / smallest hole radius (log-uniform radii), >= 1.
        wobble: relative amplitude of the stripe-edge wobble, in [0, 1).

    Returns:
        (N, N) float32 array of 0 (masked) and 1 (observed).
    """
    if int(n) != n or n < 4:
        raise ValueError(f"n must be an integer >= 4, got {n!r}")
    n = int(n)
    f = float(masked_fraction)
    if not (0.0 <= f < 1.0):
        raise ValueError(f"masked_fraction must be in [0, 1), got {masked_fraction!r}")
    n_holes, n_stripes = int(n_holes), int(n_stripes)
    if n_holes < 0 or n_stripes < 0 or n_holes + n_stripes == 0:
        raise ValueError("need n_holes >= 0, n_stripes >= 0 and at least one hole or stripe")
    if not (0.0 <= stripe_share <= 1.0):
        raise ValueError(f"stripe_share must be in [0, 1], got {stripe_share!r}")
    if not radius_ratio >= 1.0:
        raise ValueError(f"radius_ratio must be >= 1, got {radius_ratio!r}")
    if not (0.0 <= wobble < 1.0):
        raise ValueError(f"wobble must be in [0, 1), got {wobble!r}")
    if n_stripes == 0:
        stripe_share = 0.0
    elif n_holes == 0:
        stripe_share = 1.0
    n_masked = int(round(f * n * n))
    if n_masked == 0:
        return jnp.ones((n, n), jnp.float32)
    rng = _rng_from_key(key)
    u = _depth(
        rng,
        n,
        n_holes,
        n_stripes,
        max(f, 1.0 / (n * n)),
        float(stripe_share),
        float(radius_ratio),
        float(wobble),
    )
    order = np.argsort(u.reshape(-1), kind="stable")
    mask = np.ones(n * n, np.float32)
    mask[order[:n_masked]] = 0.0
    return jnp.asarray(mask.reshape(n, n))
