"""Exact GRF / lognormal log-likelihoods: brute force on 4x4, support, gradients, ML theta."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_gen import (
    grf,
    grf_log_likelihood,
    log_likelihood_grid,
    lognormal,
    lognormal_log_likelihood,
    pixel_power_grid,
)
from data_gen.lognormal import lognormal_gaussian_power

N, BOX = 4, 32.0
# one worker: the tests share compiled simulators and likelihoods (same shapes) and tables
pytestmark = pytest.mark.xdist_group("data_gen_likelihood")
# the pixel spectrum and its lognormal Gaussian spectrum, each compiled once per grid
# instead of one eager compile per operation
pixel_power = jax.jit(pixel_power_grid, static_argnums=(1, 2))
gaussian_power = jax.jit(
    lambda theta, n, box: lognormal_gaussian_power(pixel_power(theta, n, box)),
    static_argnums=(1, 2),
)


def _dense_cov(ppix_half, n):
    """Pixel covariance C_ij = xi(r_i - r_j), xi = irfft2(P_pix), in float64."""
    xi = np.fft.irfft2(np.asarray(ppix_half, np.float64), s=(n, n))
    iy, ix = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    iy, ix = iy.ravel(), ix.ravel()
    return xi[(iy[:, None] - iy[None]) % n, (ix[:, None] - ix[None]) % n]


def _mvn_logpdf(x, cov):
    sign, logdet = np.linalg.slogdet(cov)
    assert sign > 0
    return -0.5 * (x @ np.linalg.solve(cov, x) + logdet + len(x) * np.log(2 * np.pi))


def test_grf_likelihood_brute_force():
    theta = (0.27, 0.95)
    x = grf(jax.random.PRNGKey(0), np.tile(theta, (3, 1)), n=N, box=BOX)
    ll = np.asarray(grf_log_likelihood(x, theta, box=BOX))
    cov = _dense_cov(np.asarray(pixel_power(theta, N, BOX))[0], N)
    ref = [_mvn_logpdf(np.asarray(xi, np.float64).ravel(), cov) for xi in np.asarray(x)]
    np.testing.assert_allclose(ll, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("theta", [(0.3, 0.8), (0.45, 1.05)])
def test_lognormal_likelihood_brute_force(theta):
    """log p(delta) = log N(g; 0, C_g) + log|det dg/ddelta| with an autodiff Jacobian."""
    x = lognormal(jax.random.PRNGKey(1), np.tile(theta, (3, 1)), n=N, box=BOX)
    ll = np.asarray(lognormal_log_likelihood(x, theta, box=BOX))
    pg, var = (np.asarray(a) for a in gaussian_power(theta, N, BOX))
    cov = _dense_cov(pg[0], N)

    def to_g(d):
        return jnp.log1p(d) + 0.5 * var[0]

    # g and its Jacobian of every map, by forward autodiff, in one compiled function
    jac_and_g = jax.jit(
        jax.vmap(lambda d: (jax.jacfwd(lambda v: to_g(v.reshape(N, N)).ravel())(d), to_g(d)))
    )
    jacs, gs = (np.asarray(a, np.float64) for a in jac_and_g(np.asarray(x).reshape(3, N * N)))
    for jac, g, lli in zip(jacs, gs, ll, strict=True):
        _, logdet = np.linalg.slogdet(jac)
        np.testing.assert_allclose(lli, _mvn_logpdf(g, cov) + logdet, rtol=1e-4, atol=2e-3)


def test_lognormal_mean_and_variance_on_grid():
    """exp(g - var/2) - 1 has zero mean and the target pixel variance (exact on the grid)."""
    theta = (0.3, 0.8)
    x = np.asarray(lognormal(jax.random.PRNGKey(5), np.tile(theta, (2000, 1)), n=8, box=64.0))
    target = np.fft.irfft2(np.asarray(pixel_power(theta, 8, 64.0))[0], s=(8, 8))[0, 0]
    assert abs(float(x.mean())) < 0.02
    np.testing.assert_allclose(float(x.var()), target, rtol=0.05)
    assert float(x.min()) > -1.0


def test_outside_support_is_minus_inf_without_nan():
    # the maps of test_batch_broadcast_and_errors (the same compiled simulator and likelihood)
    x = np.array(lognormal(jax.random.PRNGKey(6), np.tile((0.3, 0.8), (3, 1)), n=8, box=64.0))
    x[1, 3, 3] = -1.5  # map 1 leaves the support
    ll = np.asarray(lognormal_log_likelihood(x, (0.3, 0.8), box=64.0))
    assert np.isfinite(ll[0]) and np.isfinite(ll[2]) and ll[1] == -np.inf
    g = jax.grad(lambda y: lognormal_log_likelihood(y, (0.3, 0.8), box=64.0)[1])(x)
    assert not np.any(np.isnan(np.asarray(g)))


def test_gradients_and_jit():
    x = lognormal(jax.random.PRNGKey(3), (0.3, 0.8), n=16, box=64.0)
    f = jax.jit(lambda y, t: lognormal_log_likelihood(y, t, box=64.0).sum())
    grad = jax.jit(jax.grad(f, argnums=(0, 1)))  # one compile for both gradients
    gx, _ = grad(x, jnp.array([0.3, 0.8]))
    _, gt = grad(x, jnp.array([0.31, 0.82]))
    assert gx.shape == x.shape and np.all(np.isfinite(np.asarray(gx)))
    assert np.all(np.isfinite(np.asarray(gt))) and np.any(np.asarray(gt) != 0)
    # finite-difference check of d/dx along a random direction
    v = np.asarray(jax.random.normal(jax.random.PRNGKey(4), x.shape)) * np.float32(2e-3)
    x = np.asarray(x)
    fd = (f(x + v, jnp.array([0.3, 0.8])) - f(x - v, jnp.array([0.3, 0.8]))) / 2
    np.testing.assert_allclose(float(fd), float(np.sum(np.asarray(gx) * v)), rtol=2e-2)
    g2 = jax.grad(lambda y: grf_log_likelihood(y, (0.3, 0.8), box=64.0).sum())(x)
    assert np.all(np.isfinite(np.asarray(g2)))


def test_batch_broadcast_and_errors():
    x = np.asarray(lognormal(jax.random.PRNGKey(6), np.tile((0.3, 0.8), (3, 1)), n=8, box=64.0))
    one = lognormal_log_likelihood(x[:1], [[0.3, 0.8], [0.4, 0.9]], box=64.0)
    assert one.shape == (2,)
    assert lognormal_log_likelihood(x, (0.3, 0.8), box=64.0).shape == (3,)
    with pytest.raises(ValueError, match="batch"):
        lognormal_log_likelihood(x, [[0.3, 0.8], [0.4, 0.9]], box=64.0)
    with pytest.raises(ValueError, match="Omega_m"):
        lognormal_log_likelihood(x, (0.05, 0.8), box=64.0)
    nan = x.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        grf_log_likelihood(nan, (0.3, 0.8), box=64.0)


def test_maximum_likelihood_recovers_true_theta():
    """Average ML estimate over maps on a theta grid is unbiased within grid resolution."""
    truth = np.array([0.33, 0.85])
    maps = np.asarray(lognormal(jax.random.PRNGKey(7), np.tile(truth, (12, 1)), n=32, box=256.0))
    om = np.linspace(0.2, 0.5, 31)
    s8 = np.linspace(0.5, 1.1, 31)
    est, total = [], 0.0
    for m in maps:
        ll = log_likelihood_grid(m, om, s8, box=256.0)
        i, j = np.unravel_index(np.argmax(ll), ll.shape)
        est.append((om[i], s8[j]))
        total = total + ll
    est = np.array(est)
    err = est.mean(0) - truth
    assert abs(err[0]) < 0.03 and abs(err[1]) < 0.04, est
    # the truth lies inside the 99% region of the joint likelihood of the 12 maps
    from scipy.interpolate import RegularGridInterpolator

    at_truth = RegularGridInterpolator((om, s8), total)(truth[None])[0]
    assert total.max() - at_truth < 4.6
