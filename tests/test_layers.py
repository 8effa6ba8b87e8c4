"""The radial kernel grid of FourierConv. Round trips, brute-force log-determinants,
equivariance and bad input of the single bijections FourierConv and PointwiseSpline (free
and MLP-conditioned) are in test_contract.py."""

import jax.numpy as jnp
import numpy as np
import pytest

from fieldflow.layers import radial_grid


@pytest.mark.parametrize("n", [8, 9])
def test_radial_grid_logdet_weights_count_all_frequencies(n):
    grid = radial_grid(n, 5)
    # a constant log T = c over the knots gives log T = c at every one of the N^2 frequencies
    np.testing.assert_allclose(np.ones(5) @ grid.logdet_weights, n * n, rtol=1e-5)
    log_t = grid.log_t(jnp.full((1, 5), 0.7))
    np.testing.assert_allclose(log_t, 0.7, atol=1e-5)
