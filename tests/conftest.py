"""Shared test helpers: small maps, perturbed (non-identity) models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx


def perturb(model: nnx.Module, seed: int = 0, scale: float = 0.1) -> nnx.Module:
    """Add Gaussian noise of std ``scale`` to every trainable parameter, in place."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [
        p + scale * jax.random.normal(k, p.shape, p.dtype)
        for p, k in zip(leaves, keys, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, noisy))
    return model


@pytest.fixture
def conds() -> jnp.ndarray:
    """Three conditions spread over the prior (Omega_m, sigma_8)."""
    return jnp.array([[0.3, 0.8], [0.22, 0.55], [0.48, 1.05]], dtype=jnp.float32)
