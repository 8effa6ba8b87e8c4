"""P_2D tables, theta checks, and the measured spectra of GRF / lognormal fields."""

import jax
import numpy as np
import pytest

from data_gen import (
    check_theta,
    grf,
    lognormal,
    pixel_power_grid,
    power_2d,
    power_2d_binned,
    power_2d_grid,
)
from data_gen.power import _LOGK3, _power_3d_jit
from fieldflow.fourier import (
    bin_index_half,
    k_bin_edges,
    kmag_half,
    power_spectrum,
    rfft_multiplicity,
)

# one worker: the tests share jax-cosmo's compiled P_3D and the tables of each grid
pytestmark = pytest.mark.xdist_group("data_gen_power")
# compiled once per grid instead of one eager compile per operation
spectrum = jax.jit(power_spectrum, static_argnums=1)
binned = jax.jit(power_2d_binned, static_argnums=(1, 2))
grid_power = jax.jit(power_2d_grid, static_argnums=(1, 2, 3))
pixel_power = jax.jit(pixel_power_grid, static_argnums=(1, 2))


@pytest.mark.parametrize("theta", [(0.09, 0.8), (0.3, 1.45), (0.61, 0.4), (np.nan, 0.8)])
def test_theta_out_of_range(theta):
    with pytest.raises(ValueError, match="Omega_m|sigma8|NaN"):
        check_theta(theta)
    with pytest.raises(ValueError):
        grf(jax.random.PRNGKey(0), theta, n=8)


def test_theta_shape_and_grid_errors():
    with pytest.raises(ValueError, match="shape"):
        check_theta([0.3, 0.8, 0.1])
    with pytest.raises(ValueError, match="box"):
        grf(jax.random.PRNGKey(0), (0.3, 0.8), n=8, box=-1.0)
    with pytest.raises(ValueError, match="n"):
        grf(jax.random.PRNGKey(0), (0.3, 0.8), n=0)
    assert check_theta((0.2, 1.1)).shape == (1, 2)


def test_table_matches_direct_quadrature():
    """Interpolation between Omega_m nodes (midpoint, worst case) and in k: < 1e-3."""
    n, box, slab = 16, 128.0, 32.0
    theta = (0.30125, 0.83)  # halfway between two Omega_m nodes
    grid = np.asarray(grid_power(theta, n, box, slab))[0]
    k = kmag_half(n, box)
    direct = power_2d(k.ravel(), theta, slab)[0].reshape(k.shape)
    np.testing.assert_allclose(grid, direct, rtol=1e-3)


def test_thin_slab_limit_and_sigma8_scaling():
    """P_2D -> P_3D / L_z for k L_z >> 1; linear P scales as sigma8^2."""
    slab = 200.0
    kk = np.exp(_LOGK3).astype(np.float32)
    p3 = np.asarray(_power_3d_jit(kk, np.float32(0.3), np.float32(0.8), nonlinear=False))
    k = np.array([0.3, 0.5])
    p2 = power_2d(k, (0.3, 0.8), slab)[0]
    np.testing.assert_allclose(p2 * slab, np.interp(k, kk, p3), rtol=0.02)
    a = np.asarray(pixel_power(np.float32([[0.3, 0.5], [0.3, 1.0]]), 8, 64.0))
    np.testing.assert_allclose(a[1] / a[0], 4.0, rtol=1e-5)


def _check_measured(maps, theta, box, nsig=5.0):
    n = maps.shape[-1]
    edges = k_bin_edges(n, box)
    pk = np.asarray(spectrum(maps, box)).mean(0)
    ref = np.asarray(binned(np.float32(theta), n, box))[0]
    idx = bin_index_half(n, box, edges)
    w = rfft_multiplicity(n) * (idx >= 0)
    modes = np.array([w[idx == b].sum() for b in range(len(edges) - 1)])
    sigma = np.sqrt(2.0 / (modes * len(maps)))  # each independent mode pair ~ chi2_2
    z = (pk / ref - 1) / sigma
    assert np.all(np.abs(z) < nsig), z
    assert np.mean(z**2) < 2.5, z
    return pk / ref


def test_grf_power_spectrum_matches_input():
    theta = (0.35, 0.9)
    maps = grf(jax.random.PRNGKey(1), np.tile(theta, (256, 1)), n=32, box=128.0)
    _check_measured(maps, theta, 128.0)


def test_lognormal_power_spectrum_matches_input():
    theta = (0.3, 0.8)
    maps = lognormal(jax.random.PRNGKey(2), np.tile(theta, (512, 1)), n=32, box=256.0)
    # lognormal modes are not Gaussian: allow a wider band
    _check_measured(maps, theta, 256.0, nsig=7.0)
