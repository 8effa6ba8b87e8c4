"""Masks, signal power, Wiener filter (CG vs closed form vs dense solve), bad input, metrics
and figure; the helpers (a power-law spectrum, Gaussian fields, dense solves) are shared by
the other test_denoise_*.py files."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fieldflow import denoise as dn
from fieldflow import fourier, metrics
from fieldflow.io import to_jsonable
from fieldflow.masks import make_mask, masked_fraction
from fieldflow.plots import plot_denoising

BOX = 100.0
KF = fourier.fundamental_k(BOX)


def pk_model(k):
    return 40.0 * (np.asarray(k) / KF) ** -1.5


def power(n, k0=True):
    """S_k on the half plane for pk_model; the mean mode floats (S_0 > 0) unless k0=False."""
    return dn.signal_power_from_pk(pk_model, n, BOX, k0_power=float(pk_model(KF)) if k0 else 0.0)


@functools.cache
def gaussian_prior(n: int):
    """The exact prior of ``power(n)``, one callable per session: MAPs under it share their
    compiled solver (which is cached per callable)."""
    return dn.gaussian_log_prior(power(n))


def dense_covariance(s_half):
    """Pixel covariance C = F^-1 diag(S) F^-dagger as a dense (N^2, N^2) matrix, float64."""
    n = s_half.shape[0]
    # expand the radial half-plane S to the full plane: S(-k) = S(k)
    idx = np.arange(n)
    conj_col = (-idx) % n
    s_full = np.empty((n, n))
    for ky in range(n):
        for kx in range(n):
            if kx <= n // 2:
                s_full[ky, kx] = s_half[ky, kx]
            else:
                s_full[ky, kx] = s_half[conj_col[ky], conj_col[kx]]
    f = np.fft.fft2(np.eye(n * n).reshape(n * n, n, n)).reshape(n * n, n * n).T  # F[k, x]
    finv = np.linalg.inv(f)
    return np.real(finv @ np.diag(s_full.reshape(-1)) @ finv.conj().T)


def dense_wiener(d, mask, noise_var, s_half):
    c = dense_covariance(np.asarray(s_half, np.float64))
    w = np.diag((np.asarray(mask, np.float64) / np.asarray(noise_var, np.float64)).reshape(-1))
    # (C^-1 + W) s = W d, multiplied by C: valid when C is singular (S_0 = 0)
    a = np.eye(len(c)) + c @ w
    return np.linalg.solve(a, c @ w @ np.asarray(d, np.float64).reshape(-1)).reshape(d.shape)


# Test data come from numpy generators: on CPU every new shape of jax.random.normal
# costs ~1.5 s of compilation. dn.sample_gaussian_field is tested on its own.
def grf(seed, s_half, batch):
    """Gaussian fields with <|FFT s|^2> = S_k: s = F^-1 (F w) sqrt(S) / N, w white."""
    n = s_half.shape[0]
    w = np.random.default_rng(seed).standard_normal((batch, n, n))
    return np.fft.irfft2(np.fft.rfft2(w) * np.sqrt(s_half) / n, s=(n, n)).astype(np.float32)


def observe(s, mask, noise_var, seed=1):
    noise = np.sqrt(noise_var) * np.random.default_rng(seed).standard_normal(np.shape(s))
    return np.asarray(mask * (s + noise), dtype=np.float32)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def problem(n=16, batch=2, seed=0, frac=0.25, snr=2.0):
    s_half = power(n)
    s = grf(seed, s_half, batch)
    mask = make_mask(jax.random.key(seed + 1), n, frac)
    noise_var = float(s.var()) / snr
    return s_half, s, mask, noise_var, observe(s, mask, noise_var, seed + 2)


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("n", [16, 32])
@pytest.mark.parametrize("frac", [0.05, 0.2, 0.5])
def test_mask_fraction_binary_reproducible(n, frac):
    m = make_mask(jax.random.key(7), n, frac)
    assert m.shape == (n, n) and m.dtype == jnp.float32
    assert set(np.unique(np.asarray(m))) <= {0.0, 1.0}
    assert abs(float(masked_fraction(m)) - frac) <= 0.5 / n**2 + 1e-9
    np.testing.assert_array_equal(m, make_mask(jax.random.key(7), n, frac))
    assert not np.array_equal(m, make_mask(jax.random.key(8), n, frac))


def test_mask_options_and_bad_arguments():
    holes = make_mask(jax.random.key(0), 32, 0.2, n_stripes=0)
    stripes = make_mask(jax.random.key(0), 32, 0.2, n_holes=0)
    assert abs(float(masked_fraction(holes)) - 0.2) < 1e-3
    assert abs(float(masked_fraction(stripes)) - 0.2) < 1e-3
    # a stripe-only mask has whole masked rows or columns
    s = np.asarray(stripes)
    assert (s.sum(0) == 0).any() or (s.sum(1) == 0).any()
    np.testing.assert_array_equal(make_mask(jax.random.key(0), 16, 0.0), 1.0)
    for kwargs in (
        {"masked_fraction": 1.0},
        {"masked_fraction": -0.1},
        {"n_holes": 0, "n_stripes": 0},
        {"stripe_share": 2.0},
    ):
        with pytest.raises(ValueError):
            make_mask(jax.random.key(0), 16, **kwargs)


# ------------------------------------------------------------------- signal power units
def test_signal_power_units_give_the_right_pk():
    n = 16
    s_half = power(n)
    x = dn.sample_gaussian_field(jax.random.key(0), s_half, 800)
    measured = np.asarray(metrics.power_spectrum(x, BOX)).mean(0)
    expected = np.asarray(
        fourier.radial_average_half(
            jnp.asarray(
                pk_model(np.where(fourier.kmag_half(n, BOX) > 0, fourier.kmag_half(n, BOX), KF))
            ),
            n,
            BOX,
        )
    )
    # each bin has >= 4 modes x 800 maps: ~3% scatter
    np.testing.assert_allclose(measured, expected, rtol=0.1)
    # S_k = N^4 P / L^2, and binned / half-plane inputs agree with the callable
    k = fourier.kmag_half(n, BOX)
    np.testing.assert_allclose(s_half[1, 2], n**4 * pk_model(k[1, 2]) / BOX**2, rtol=1e-5)
    assert s_half[0, 0] == pytest.approx(n**4 * pk_model(KF) / BOX**2, rel=1e-5)
    binned = dn.signal_power_from_pk(np.arange(1.0, n // 2 + 1), n, BOX)
    idx = fourier.bin_index_half(n, BOX, fourier.k_bin_edges(n, BOX))
    inside = idx >= 0
    np.testing.assert_allclose(binned[inside], n**4 * (idx[inside] + 1.0) / BOX**2, rtol=1e-6)
    assert binned[0, 0] == 0.0
    p_half = pk_model(np.where(k > 0, k, KF))
    np.testing.assert_allclose(
        dn.signal_power_from_pk(p_half, n, BOX, k0_power=pk_model(KF)), s_half, rtol=1e-6
    )


def test_gaussian_log_prior_matches_dense_density():
    n = 8
    s_half = power(n)
    x = grf(3, s_half, 2).astype(np.float64)
    c = dense_covariance(np.asarray(s_half, np.float64))
    _, logdet = np.linalg.slogdet(2 * np.pi * c)
    flat = x.reshape(2, -1)
    ref = -0.5 * np.einsum("bi,ij,bj->b", flat, np.linalg.inv(c), flat) - 0.5 * logdet
    np.testing.assert_allclose(dn.gaussian_log_prior(s_half)(jnp.asarray(x)), ref, rtol=1e-4)
    with pytest.raises(ValueError, match="S_k > 0"):
        dn.gaussian_log_prior(power(n, k0=False))


# --------------------------------------------------------------------------- Wiener
def test_wiener_without_mask_closed_form_cg_and_dense():
    n = 8
    s_half = power(n)
    s = grf(0, s_half, 2)
    noise_var = 0.5 * float(s.var())
    d = observe(s, 1.0, noise_var)
    closed = dn.wiener_filter(d, None, noise_var, s_half)
    assert np.all(closed.iterations == 0) and np.all(closed.converged)
    # closed form S / (S + N^2 sigma^2) in Fourier space
    ref = np.fft.irfft2(
        np.fft.rfft2(np.asarray(d)) * s_half / (s_half + n**2 * noise_var), s=(n, n)
    )
    np.testing.assert_allclose(closed.field, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        dn.wiener_filter_fourier(d, noise_var, s_half), closed.field, rtol=1e-6
    )
    cg = dn.wiener_filter(d, jnp.ones((n, n)), noise_var, s_half, method="cg")
    assert np.all(cg.iterations >= 1) and np.all(cg.converged)
    for i in range(2):
        dense = dense_wiener(d[i], np.ones((n, n)), noise_var, s_half)
        assert rel(closed.field[i], dense) < 1e-5
        assert rel(cg.field[i], dense) < 1e-4
    # single map in, single map out
    assert dn.wiener_filter(d[0], None, noise_var, s_half).field.shape == (n, n)


@pytest.mark.parametrize("k0", [True, False])
def test_wiener_with_mask_and_pixel_noise_matches_dense_solve(k0):
    n = 8
    s_half = power(n, k0=k0)
    s = grf(1, s_half, 2)
    mask = make_mask(jax.random.key(2), n, 0.3)
    var0 = float(s.var())
    noise_var = var0 * (0.1 + np.random.default_rng(5).random((n, n)))
    d = observe(s, mask, noise_var)
    res = dn.wiener_filter(d, mask, noise_var, s_half, tol=1e-6)
    assert res.field.shape == (2, n, n)
    assert np.all(res.converged)
    assert np.all(res.iterations >= 2) and np.all(res.iterations < 100)
    assert np.all(res.residual < 1e-5)
    for i in range(2):
        assert rel(res.field[i], dense_wiener(d[i], mask, noise_var, s_half)) < 1e-4
    # the filter's estimate beats the masked data as an estimate of the truth
    assert rel(res.field, s) < rel(mask * d, s)
    # too few iterations: not converged, and says so
    short = dn.wiener_filter(d, mask, noise_var, s_half, max_iter=1)
    assert np.all(short.iterations == 1) and not np.any(short.converged)
    assert np.all(short.residual > 1e-5)


def test_wiener_batched_mask_and_noise():
    n = 16
    s_half = power(n)
    s = grf(4, s_half, 2)
    masks = jnp.stack([make_mask(jax.random.key(i), n, 0.2) for i in range(2)])
    noise = jnp.array([0.05, 0.5])[:, None, None] * jnp.ones((2, n, n)) * float(s.var())
    d = observe(s, masks, noise)
    both = dn.wiener_filter(d, masks, noise, s_half)
    assert both.iterations.shape == (2,) and np.all(both.converged)
    # the noisier map needs fewer iterations (a better-conditioned system)
    assert both.iterations[1] < both.iterations[0]
    for i in range(2):
        assert rel(both.field[i], dense_wiener(d[i], masks[i], noise[i], s_half)) < 1e-4


def test_bad_inputs_raise_clear_errors():
    n = 8
    s_half = power(n)
    d = jnp.zeros((2, n, n))
    mask = jnp.ones((n, n))
    with pytest.raises(ValueError, match="mask must have shape"):
        dn.wiener_filter(d, jnp.ones((n, n + 1)), 1.0, s_half)
    with pytest.raises(ValueError, match="only 0 .masked. and 1"):
        dn.wiener_filter(d, 0.5 * mask, 1.0, s_half)
    with pytest.raises(ValueError, match="noise_var must be > 0"):
        dn.wiener_filter(d, mask, 0.0, s_half)
    with pytest.raises(ValueError, match="noise_var must be > 0"):
        dn.wiener_filter(d, mask, -jnp.ones((n, n)), s_half)
    with pytest.raises(ValueError, match="noise_var must be a scalar"):
        dn.wiener_filter(d, mask, jnp.ones((3, n, n)), s_half)
    with pytest.raises(ValueError, match="hides every pixel"):
        dn.wiener_filter(d, jnp.zeros((n, n)), 1.0, s_half)
    with pytest.raises(ValueError, match="hides every pixel"):
        dn.wiener_filter(d, jnp.stack([mask, 0 * mask]), 1.0, s_half)
    with pytest.raises(ValueError, match="signal_power_half"):
        dn.wiener_filter(d, mask, 1.0, s_half[:, :-1])
    with pytest.raises(ValueError, match="NaN"):
        dn.wiener_filter(d.at[0, 0, 0].set(jnp.nan), mask, 1.0, s_half)
    with pytest.raises(ValueError, match="fourier"):
        dn.wiener_filter(d, make_mask(jax.random.key(0), n, 0.2), 1.0, s_half, method="fourier")
    lp = dn.gaussian_log_prior(s_half)
    with pytest.raises(ValueError, match="hides every pixel"):
        dn.flow_map(lp, d, jnp.zeros((n, n)), 1.0)
    with pytest.raises(ValueError, match="noise_var must be > 0"):
        dn.flow_map(lp, d, mask, 0.0)
    with pytest.raises(ValueError, match="optimizer"):
        dn.flow_map(lp, d, mask, 1.0, optimizer="sgd")


# ---------------------------------------------------------------- metrics and figure
def test_denoising_metrics_and_figure(tmp_path):
    s_half, s, mask, noise_var, d = problem(n=16, batch=2)
    wf = dn.wiener_filter(d, mask, noise_var, s_half)
    met = dn.denoising_metrics(s, wf.field, mask, BOX)
    assert met["r_k"].shape == (2, 8) and met["k"].shape == (8,)
    assert np.all(met["r_k"] <= 1.0 + 1e-6) and met["r_k"][0, 0] > 0.5
    # the filter is better where it sees the data
    assert met["mse_observed"][0] < met["mse_masked"][0]
    same = dn.denoising_metrics(s, s, mask, BOX)
    np.testing.assert_allclose(same["r_k"], 1.0, atol=1e-5)
    np.testing.assert_allclose(same["residual_pk"], 0.0, atol=1e-12)
    out = tmp_path / "fig.png"
    fig = plot_denoising(s[0], d[0], mask, wf.field[0], wf.field[0] * 0.9, box=BOX, path=out)
    assert out.exists() and out.stat().st_size > 10_000
    assert len(fig.axes) >= 8
    text = json.dumps(to_jsonable({"wiener": met}))
    assert '"r_k"' in text
