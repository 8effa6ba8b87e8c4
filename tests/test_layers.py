"""Single bijections FourierConv and PointwiseSpline, free and conditioned parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturb
from flax import nnx

from fieldflow.layers import FourierConv, PointwiseSpline, radial_grid


def layers(n, cond_dim):
    rngs = nnx.Rngs(0)
    return [
        perturb(FourierConv(n, n_knots=6, cond_dim=cond_dim, hidden=(8,), rngs=rngs), scale=0.3),
        perturb(
            PointwiseSpline(n, n_bins=5, bound=2.0, cond_dim=cond_dim, hidden=(8,), rngs=rngs),
            scale=0.5,
        ),
    ]


@pytest.mark.parametrize("n", [8, 9])
@pytest.mark.parametrize("cond_dim", [0, 2])
def test_each_layer_round_trip_and_brute_force_logdet(n, cond_dim):
    cond = jnp.array([[0.31, 0.77]]) if cond_dim else None
    x = 1.2 * jax.random.normal(jax.random.key(1), (1, n, n))
    for layer in layers(n, cond_dim):
        z, logdet = layer.forward(x, cond)
        np.testing.assert_allclose(layer.inverse(z, cond), x, atol=1e-4, rtol=1e-4)
        jac = jax.jacfwd(lambda v, layer=layer: layer.forward(v.reshape(1, n, n), cond)[0].ravel())
        sign, brute = jnp.linalg.slogdet(jac(x.ravel()))
        assert float(sign) > 0
        assert abs(float(brute) - float(logdet[0])) < 1e-3, type(layer).__name__


@pytest.mark.parametrize("n", [8, 9])
def test_fourier_conv_is_equivariant(n):
    conv = layers(n, 0)[0]
    x = jax.random.normal(jax.random.key(2), (2, n, n))
    y, _ = conv.forward(x)
    np.testing.assert_allclose(
        conv.forward(jnp.roll(x, 3, axis=2))[0], jnp.roll(y, 3, axis=2), atol=1e-5
    )
    np.testing.assert_allclose(
        conv.forward(jnp.rot90(x, axes=(1, 2)))[0], jnp.rot90(y, axes=(1, 2)), atol=1e-5
    )


@pytest.mark.parametrize("n", [8, 9])
def test_radial_grid_logdet_weights_count_all_frequencies(n):
    grid = radial_grid(n, 5)
    # a constant log T = c over the knots gives log T = c at every one of the N^2 frequencies
    np.testing.assert_allclose(np.ones(5) @ grid.logdet_weights, n * n, rtol=1e-5)
    log_t = grid.log_t(jnp.full((1, 5), 0.7))
    np.testing.assert_allclose(log_t, 0.7, atol=1e-5)
