"""Summary statistics: power spectra, r(k), one-point PDF, peak counts, pixel MSE."""

import jax.numpy as jnp
import numpy as np
import pytest

from fieldflow import fourier, metrics

BOX = 100.0


def _normal(seed: int, shape) -> jnp.ndarray:
    """Standard normal float32 draws (numpy's generator: no sampler to compile)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def plane_wave(n, mx, my, amp=1.0, box=BOX):
    y, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return amp * np.cos(2 * np.pi * (mx * x + my * y) / n).astype(np.float32)


@pytest.mark.parametrize(("n", "mx", "my"), [(16, 3, 0), (16, 0, 5), (32, 3, 4), (32, 7, 0)])
def test_plane_wave_power_lands_in_its_bin(n, mx, my):
    amp = 2.0
    pk = np.asarray(metrics.power_spectrum(plane_wave(n, mx, my, amp), BOX))
    edges = fourier.k_bin_edges(n, BOX)
    k = np.hypot(mx, my) * fourier.fundamental_k(BOX)
    b = np.digitize(k, edges) - 1
    assert pk.shape == (n // 2,)
    assert np.argmax(pk) == b
    np.testing.assert_allclose(np.delete(pk, b), 0.0, atol=1e-6 * pk[b])
    # |FFT|^2 = (A N^2 / 2)^2 at +-k: the bin mean times its mode count is 2 L^2 A^2 / 4
    idx = fourier.bin_index_half(n, BOX, edges)
    count = (fourier.rfft_multiplicity(n) * (idx == b)).sum()
    np.testing.assert_allclose(pk[b] * count, 2 * BOX**2 * amp**2 / 4, rtol=1e-4)


def test_power_spectrum_is_fourier_wrapper_and_batched():
    x = _normal(0, (3, 16, 16))
    pk = metrics.power_spectrum(x, BOX)
    np.testing.assert_allclose(pk, fourier.power_spectrum(x, BOX), rtol=1e-6)
    assert pk.shape == (3, 8)
    np.testing.assert_allclose(metrics.power_spectrum(x[1], BOX), pk[1], rtol=1e-6)
    edges = fourier.k_bin_edges(16, BOX, 4)
    assert metrics.power_spectrum(x, BOX, edges).shape == (3, 4)
    # white noise of unit variance: P = L^2 / N^2 in every bin (on average)
    xs = _normal(1, (200, 16, 16))
    np.testing.assert_allclose(metrics.power_spectrum(xs, BOX).mean(0), BOX**2 / 16**2, rtol=0.15)


def test_cross_spectrum_and_correlation():
    a, b = _normal(2, (2, 64, 32, 32))
    np.testing.assert_allclose(
        metrics.cross_power_spectrum(a, a, BOX), metrics.power_spectrum(a, BOX), rtol=1e-5
    )
    r_same = metrics.cross_correlation(a, a, BOX)
    np.testing.assert_allclose(r_same, 1.0, atol=1e-5)
    np.testing.assert_allclose(metrics.cross_correlation(a, -3.0 * a, BOX), -1.0, atol=1e-5)
    r_ind = np.asarray(metrics.cross_correlation(a, b, BOX))
    assert r_ind.shape == (64, 16)
    assert np.all(np.abs(r_ind) <= 1.0 + 1e-6)
    # independent maps: r ~ 0, with scatter ~ 1/sqrt(modes); averaged over 64 pairs
    assert np.all(np.abs(r_ind.mean(0)) < 0.1)
    assert np.abs(r_ind.mean()) < 0.02
    # partial correlation: b' = a + b has r = 1/sqrt(2)
    r_half = np.asarray(metrics.cross_correlation(a, a + b, BOX)).mean(0)
    np.testing.assert_allclose(r_half[2:], 1 / np.sqrt(2), atol=0.05)
    assert metrics.cross_correlation(a[0], b[0], BOX).shape == (16,)


def test_pdf_integrates_to_one_and_matches_numpy():
    x = _normal(3, (2, 32, 32))
    edges = np.linspace(-6, 6, 41)
    p = np.asarray(metrics.one_point_pdf(x, edges))
    assert p.shape == (2, 40)
    np.testing.assert_allclose((p * np.diff(edges)).sum(-1), 1.0, rtol=1e-6)
    ref, _ = np.histogram(np.asarray(x[1]), bins=edges, density=True)
    np.testing.assert_allclose(p[1], ref, rtol=1e-5)
    # edges covering half the values: the integral is the fraction inside
    half = np.asarray(metrics.one_point_pdf(x[0], np.array([0.0, 10.0])))
    frac = float((x[0] >= 0).mean())
    np.testing.assert_allclose(half[0] * 10.0, frac, rtol=1e-6)


def test_peak_counts_on_constructed_map():
    n = 16
    x = np.zeros((n, n), np.float32)
    # three isolated peaks of different heights, one on the periodic edge,
    # and a plateau (two equal neighbours) that is not a strict maximum
    x[4, 4] = 5.0
    x[10, 12] = 2.0
    x[0, 15] = 3.0
    x[8, 2] = x[8, 3] = 4.0
    x[0, 0] = 1.0  # neighbour of (0, 15) across the boundary: (0, 15) still wins
    mean, std = x.mean(), x.std()
    thresholds = np.array([-10.0, (2.5 - mean) / std, (4.5 - mean) / std, 100.0])
    counts = np.asarray(metrics.peak_counts(x, thresholds))
    # strict maxima: (4,4)=5, (10,12)=2, (0,15)=3; (0,0)=1 < its neighbour 3; plateau excluded
    np.testing.assert_array_equal(counts, [3, 2, 1, 0])
    # periodicity: shifting the map changes nothing
    xs = np.roll(x, (5, 7), axis=(0, 1))
    np.testing.assert_array_equal(metrics.peak_counts(xs, thresholds), counts)
    # batched, and a constant map has no peaks
    both = np.stack([x, np.ones_like(x)])
    got = np.asarray(metrics.peak_counts(both, thresholds))
    assert got.shape == (2, 4)
    np.testing.assert_array_equal(got[0], counts)
    np.testing.assert_array_equal(got[1], 0)


def test_pixel_mse_regions():
    a = np.zeros((2, 8, 8), np.float32)
    b = np.zeros((2, 8, 8), np.float32)
    mask = np.ones((8, 8), np.float32)
    mask[:2] = 0.0  # 16 masked pixels
    b[:, :2] = 2.0  # error 4 in the masked rows
    b[1, 5] = 1.0  # error 1 in 8 observed pixels of map 1
    np.testing.assert_allclose(metrics.pixel_mse(a, b, mask, "masked"), [4.0, 4.0])
    np.testing.assert_allclose(metrics.pixel_mse(a, b, mask, "observed"), [0.0, 8 / 48])
    np.testing.assert_allclose(metrics.pixel_mse(a, b), [1.0, 72 / 64])
    assert metrics.pixel_mse(a[0], b[0], mask, "masked").shape == ()
    assert np.isnan(metrics.pixel_mse(a, b, np.ones((8, 8)), "masked")).all()
    with pytest.raises(ValueError, match="0 .masked. and 1"):
        metrics.pixel_mse(a, b, mask * 0.5, "observed")
    with pytest.raises(ValueError, match="needs a mask"):
        metrics.pixel_mse(a, b, None, "masked")


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="square"):
        metrics.power_spectrum(jnp.zeros((8, 6)), BOX)
    with pytest.raises(ValueError, match="shape"):
        metrics.power_spectrum(jnp.zeros((2, 2, 8, 8)), BOX)
    with pytest.raises(ValueError, match="same shape"):
        metrics.cross_correlation(jnp.zeros((8, 8)), jnp.zeros((16, 16)), BOX)
    with pytest.raises(ValueError, match="box"):
        metrics.power_spectrum(jnp.zeros((8, 8)), -1.0)
