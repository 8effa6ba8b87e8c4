"""Exact symmetrisation of a flow by a mixture over the lattice symmetries it lacks.

The symmetries of periodic N x N maps, G, are the periodic shifts and the 8 rotations and
reflections of the square lattice (D4); every g in G permutes pixels, |det g| = 1. A flow p
invariant under a subgroup H of G becomes exactly G-invariant as the mixture

    p_G(x) = (1 / |R|) sum_{r in R} p(r x),

R a set of right-coset representatives of H in G (G = union of the cosets H r): each
p(r .) is a density, so their mean is one, and for g in G, r -> r g permutes the cosets
while p(h r' x) = p(r' x), so p_G(g x) = p_G(x). Cost: |R| evaluations of p per map.
Sampling: draw r uniformly and x' ~ p, return r^-1 x'.

For the multiscale flow with L Haar levels H is the shift lattice
{2^L (u, v): u + v even} (no rotation or reflection), so R = {shift (a, b) after d :
0 <= a, b < 2^L or a in [2^L, 2^(L+1)), d in D4}: 2 * 4^L * 8 elements (64 for L = 1).
TRENF with a radial kernel is G-invariant already (R = {identity}).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LatticeSymmetry",
    "coset_representatives",
    "group_mixture_log_prob",
    "group_mixture_sample",
]


def _array_module(x):
    """numpy for a numpy array (a permutation on the host: exact, and nothing to compile,
    where each eager jnp roll or rotation compiles once per shift and shape), else jnp."""
    return np if isinstance(x, np.ndarray) else jnp


def _on_host(x):
    """A concrete map batch as a float32 numpy array; a traced one as a float32 jnp array."""
    if isinstance(x, jax.core.Tracer):
        return jnp.asarray(x, jnp.float32)
    return np.asarray(x, np.float32)


@dataclasses.dataclass(frozen=True)
class LatticeSymmetry:
    """x -> roll(rot90(transpose?(x), k), shift) on the last two axes of (B, N, N) maps
    (numpy maps stay numpy, others become jnp arrays)."""

    shift: tuple[int, int] = (0, 0)
    quarter_turns: int = 0
    transpose: bool = False

    def __call__(self, x):
        xp = _array_module(x)
        y = xp.swapaxes(x, -1, -2) if self.transpose else x
        return xp.roll(xp.rot90(y, self.quarter_turns, axes=(-2, -1)), self.shift, axis=(-2, -1))

    def inverse(self, x):
        xp = _array_module(x)
        y = xp.rot90(
            xp.roll(x, (-self.shift[0], -self.shift[1]), axis=(-2, -1)),
            -self.quarter_turns,
            axes=(-2, -1),
        )
        return xp.swapaxes(y, -1, -2) if self.transpose else y


def coset_representatives(model) -> list[LatticeSymmetry]:
    """R for ``model`` (see the module docstring): the identity for a radial TRENF, the
    2 * 4^L * 8 elements for a multiscale flow with L levels; ValueError for a model whose
    symmetry group is not known (RealNVP, a non-radial TRENF)."""
    kind = getattr(model, "model_type", None)
    if kind == "trenf" and model.config.get("radial", True):
        return [LatticeSymmetry()]
    if kind != "multiscale":
        raise ValueError(f"the lattice symmetries of a {kind!r} model are not known")
    p = 2**model.n_levels
    shifts = [(a + e * p, b) for e in (0, 1) for a in range(p) for b in range(p)]
    d4 = [(k, t) for t in (False, True) for k in range(4)]
    return [LatticeSymmetry(s, k, t) for s in shifts for k, t in d4]


def group_mixture_log_prob(model, x, cond=None, elements=None) -> jnp.ndarray:
    """log p_G(x | cond) = logsumexp_r log p(r x | cond) - log |R|, shape (B,), for maps x
    (B, N, N); ``elements`` defaults to :func:`coset_representatives` of ``model``."""
    elements = coset_representatives(model) if elements is None else list(elements)
    x = _on_host(x)  # the elements permute concrete maps on the host
    lps = jnp.stack([model.log_prob(r(x), cond) for r in elements])
    return jax.nn.logsumexp(lps, axis=0) - np.log(len(elements))


def group_mixture_sample(model, key: jax.Array, cond, elements=None) -> jnp.ndarray:
    """Maps x ~ p_G(x | cond) (B, N, N): x' ~ p, then r^-1 x' with r drawn uniformly per
    map from ``elements`` (default :func:`coset_representatives`)."""
    elements = coset_representatives(model) if elements is None else list(elements)
    k_sample, k_pick = jax.random.split(key)
    x = model.sample(k_sample, cond)
    pick = jax.random.randint(k_pick, (x.shape[0],), 0, len(elements))
    x = _on_host(x)
    xp = _array_module(x)
    pick = xp.asarray(pick)
    moved = xp.stack([r.inverse(x) for r in elements])  # (|R|, B, N, N)
    return jnp.asarray(moved[pick, xp.arange(x.shape[0])])
