import jax
import numpy as np
import pytest

from fieldflow import fourier

# one compile per map shape, not one per operation
power_spectrum = jax.jit(fourier.power_spectrum, static_argnums=1)


@pytest.mark.parametrize("n", [8, 9, 16])
def test_rfft_multiplicity_counts_every_frequency_once(n):
    w = fourier.rfft_multiplicity(n)
    assert w.shape == (n, n // 2 + 1)
    assert w.sum() == n * n
    # Parseval on the half plane with these weights
    x = np.random.default_rng(0).normal(size=(n, n))
    f = np.fft.rfft2(x)
    assert np.isclose((w * np.abs(f) ** 2).sum() / n**2, (x**2).sum())


@pytest.mark.parametrize("n", [8, 9])
def test_half_plane_radii_match_full_grid(n):
    full = fourier.kmag(n, 10.0)
    half = fourier.kmag_half(n, 10.0)
    np.testing.assert_allclose(full[:, : n // 2 + 1], half, atol=1e-12)
    assert np.isclose(fourier.fundamental_k(10.0), full[0, 1])


def test_power_spectrum_of_plane_wave_lands_in_its_bin():
    n, box = 16, 100.0
    x = np.arange(n) * box / n
    wave = np.cos(3 * fourier.fundamental_k(box) * x)[None, :] * np.ones((n, 1))
    pk = np.asarray(power_spectrum(wave.astype(np.float32), box))
    centers = fourier.k_bin_centers(fourier.k_bin_edges(n, box))
    assert np.argmax(pk) == np.argmin(np.abs(centers - 3 * fourier.fundamental_k(box)))
    assert np.count_nonzero(pk > 1e-6 * pk.max()) == 1


def test_power_spectrum_of_white_noise_is_flat():
    n, box, sigma = 32, 64.0, 2.0
    x = sigma * np.random.default_rng(1).normal(size=(200, n, n)).astype(np.float32)
    pk = np.asarray(power_spectrum(x, box)).mean(0)
    expected = sigma**2 * (box / n) ** 2  # P = sigma^2 * pixel area
    np.testing.assert_allclose(pk, expected, rtol=0.1)


def test_bad_grid_raises():
    with pytest.raises(ValueError, match="box"):
        fourier.kmag(8, -1.0)
    with pytest.raises(ValueError, match="n must"):
        fourier.kmag(1, 1.0)


def test_bins_below_nyquist_leave_out_the_bin_centred_on_it():
    for n, box in ((8, 64.0), (32, 128.0), (9, 10.0)):
        mask = fourier.bins_below_nyquist(n, box)
        centres = fourier.k_bin_centers(fourier.k_bin_edges(n, box))
        assert mask.dtype == bool and mask.shape == centres.shape
        assert mask.all() == (n % 2 == 1) and mask[:-1].all()
        assert np.all(centres[mask] < fourier.nyquist_k(n, box))
