"""Grid posteriors, HPD regions and FoM, chunked evaluation, flows, exact and P(k) likelihoods."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturb_numpy, rbg_rngs

import data_gen
from fieldflow import inference as inf
from fieldflow.models import TRENF

# one worker runs this module: its module fixtures are built once
pytestmark = pytest.mark.xdist_group("inference")


def gaussian_loglike(grid, mu, sig, rho):
    cov = np.array([[sig[0] ** 2, rho * sig[0] * sig[1]], [rho * sig[0] * sig[1], sig[1] ** 2]])
    d = grid.points - np.asarray(mu)
    return (-0.5 * np.einsum("ti,ij,tj->t", d, np.linalg.inv(cov), d)).reshape(grid.shape)


@pytest.fixture(scope="module")
def tiny_flow():
    model = TRENF((8, 8), n_layers=2, n_psi_bins=4, hidden=(16,), rngs=rbg_rngs(0))
    return perturb_numpy(model, seed=1, scale=0.1)  # numpy noise: nothing to compile


def test_theta_grid_cells_tile_the_box():
    g = inf.theta_grid(4, 5, (0.2, 0.6), (0.5, 1.0))
    assert g.shape == (4, 5) and g.size == 20
    np.testing.assert_allclose(g.om, [0.25, 0.35, 0.45, 0.55])
    np.testing.assert_allclose(g.cell_area, 0.1 * 0.1)
    assert g.points.shape == (20, 2)
    np.testing.assert_allclose(g.points[1], [0.25, g.s8[1]], rtol=1e-6)  # Omega_m slowest
    with pytest.raises(ValueError):
        inf.theta_grid(1, 5)
    with pytest.raises(ValueError):
        inf.theta_grid(5, 5, (0.5, 0.2))


@pytest.mark.parametrize("rho", [0.0, -0.6])
def test_gaussian_posterior_area_and_moments(rho):
    mu, sig = (0.33, 0.78), (0.02, 0.05)
    g = inf.theta_grid(40, 40, (0.23, 0.43), (0.53, 1.03))
    post = inf.posterior_from_loglike(gaussian_loglike(g, mu, sig, rho), g)
    assert post.post.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(post.mean, mu, atol=1e-4)
    np.testing.assert_allclose(post.std, sig, rtol=0.02)
    assert post.corr == pytest.approx(rho, abs=0.02)
    for mass, area in zip(post.masses, post.areas, strict=True):
        analytic = np.pi * (-2 * np.log(1 - mass)) * sig[0] * sig[1] * np.sqrt(1 - rho**2)
        assert area == pytest.approx(analytic, rel=0.03)
    analytic_fom = 1 / (np.pi * 2.30 * sig[0] * sig[1] * np.sqrt(1 - rho**2))
    assert post.fom == pytest.approx(analytic_fom, rel=0.03)
    assert inf.figure_of_merit(post) == pytest.approx(post.fom)
    assert inf.figure_of_merit(post.post, g) == pytest.approx(post.fom)
    # the HPD region holds its mass and contains the mode, not a 3-sigma point
    assert post.post[post.post >= post.levels[0]].sum() >= 0.68
    assert inf.contains(post, mu)
    assert not inf.contains(post, (mu[0] + 3 * sig[0], mu[1]))
    assert inf.contains(post, (mu[0] + 2 * sig[0] * np.sqrt(1 - rho**2), mu[1]), 0.95)
    assert inf.credible_mass_at(post, mu) < 0.05


def test_posterior_prior_and_errors():
    g = inf.theta_grid(10, 10)
    ll = np.zeros(g.shape)
    flat = inf.posterior_from_loglike(ll, g)
    np.testing.assert_allclose(flat.post, 1 / 100)
    assert flat.fom == pytest.approx(1 / (0.68 * 0.3 * 0.6), rel=1e-6)
    half = inf.posterior_from_loglike(
        ll, g, log_prior=lambda t: np.where(t[:, 0] < 0.35, 0, -np.inf)
    )
    assert half.post[g.om > 0.35].sum() == 0
    with pytest.raises(ValueError, match="shape"):
        inf.posterior_from_loglike(np.zeros((3, 3)), g)
    with pytest.raises(ValueError, match="-inf"):
        inf.posterior_from_loglike(np.full(g.shape, -np.inf), g)
    with pytest.raises(ValueError):
        inf.hpd_threshold(flat.post, 1.5)


def _toy_fn(x, theta):
    x, theta = jnp.asarray(x), jnp.asarray(theta)
    return -jnp.sum((x - theta[:, :1, None]) ** 2, axis=(1, 2)) / theta[:, 1] - jnp.log(theta[:, 1])


def test_chunking_and_padding_match_unchunked():
    rng = np.random.default_rng(0)
    maps = rng.normal(0.3, 0.5, (5, 4, 4)).astype(np.float32)
    g = inf.theta_grid(7, 6)
    full = inf.grid_log_likelihood(jax.jit(_toy_fn), maps, g, chunk=10_000, per_map=True)
    direct = np.stack([np.asarray(_toy_fn(np.repeat(m[None], g.size, 0), g.points)) for m in maps])
    np.testing.assert_allclose(full, direct.reshape(5, *g.shape), rtol=1e-5)
    for chunk in (1, 3, 7, 17, 41):
        part = inf.grid_log_likelihood(jax.jit(_toy_fn), maps, g, chunk=chunk, per_map=True)
        np.testing.assert_array_equal(part, full)
    summed = inf.grid_log_likelihood(jax.jit(_toy_fn), maps, g, chunk=13)
    np.testing.assert_allclose(summed, full.sum(0), rtol=1e-12)

    def pairwise(x, theta):
        m, t = len(x), len(theta)
        return np.asarray(_toy_fn(np.repeat(x, t, 0), np.tile(theta, (m, 1)))).reshape(m, t)

    pw = inf.grid_log_likelihood(pairwise, maps, g, chunk=11, per_map=True, pairwise=True)
    np.testing.assert_allclose(pw, full, rtol=1e-6)


def test_bad_maps_are_refused():
    g = inf.theta_grid(3, 3)
    good = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="8 x 8"):
        inf.grid_log_likelihood(_toy_fn, np.zeros((2, 6, 6)), g, n=8)
    with pytest.raises(ValueError, match="square"):
        inf.check_maps(np.zeros((2, 8, 6)))
    with pytest.raises(ValueError, match="shape"):
        inf.check_maps(np.zeros((1, 2, 8, 8)))
    bad = good.copy()
    bad[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        inf.grid_log_likelihood(_toy_fn, bad, g)


def test_flow_posterior_checks_chunks_and_clips(tiny_flow):
    rng = np.random.default_rng(1)
    maps = rng.normal(0, 1, (3, 8, 8)).astype(np.float32)
    g = inf.theta_grid(6, 5)
    a = inf.flow_posterior(tiny_flow, maps, g, chunk=7, per_map=True)
    b = inf.flow_posterior(tiny_flow, maps, g, chunk=4096, per_map=True)
    assert len(a) == 3
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_allclose(pa.log_post, pb.log_post, rtol=1e-5, atol=1e-4)
    # the grid evaluation agrees with the model's own log_prob (same batch: one compilation)
    with jax.default_matmul_precision("highest"):
        direct = np.asarray(tiny_flow.log_prob(np.repeat(maps[:1], 6, 0), g.points[:6]))
    ll = inf.grid_log_likelihood(inf.flow_log_like_fn(tiny_flow), maps[:1], g, chunk=6)
    np.testing.assert_allclose(ll.ravel()[:6], direct, rtol=1e-5, atol=1e-3)
    # outside the trained range: warned about and clipped
    wide = inf.theta_grid(6, 5, (0.1, 0.5), (0.5, 1.3))
    with pytest.warns(UserWarning, match="clipped"):
        p = inf.flow_posterior(tiny_flow, maps, wide)
    assert p.grid.om_range == (0.2, 0.5) and p.grid.s8_range == (0.5, 1.1)
    assert p.grid.shape == (6, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inf.flow_posterior(tiny_flow, maps, g)  # inside: no warning
    with pytest.raises(ValueError, match="does not overlap"):
        inf.flow_posterior(tiny_flow, maps, inf.theta_grid(3, 3, (0.6, 0.9)))
    with pytest.raises(ValueError, match="8 x 8"):
        inf.flow_posterior(tiny_flow, np.zeros((2, 16, 16)), g)
    nan = maps.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        inf.flow_posterior(tiny_flow, nan, g)


def test_flow_posterior_default_grid_spans_the_trained_range():
    """The default grid is (Omega_m low..high) x (sigma_8 low..high) of the model's range,
    not (low of both) x (high of both), which only coincide for the default range."""
    model = TRENF(
        (8, 8),
        n_layers=1,
        n_psi_bins=4,
        hidden=(8,),
        cond_low=(0.25, 0.6),
        cond_high=(0.45, 1.0),
        rngs=rbg_rngs(3),
    )
    assert model.cond_low == (0.25, 0.6) and model.cond_high == (0.45, 1.0)
    maps = np.random.default_rng(5).normal(0, 1, (2, 8, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to clip
        post = inf.flow_posterior(model, maps)
    assert post.grid.om_range == (0.25, 0.45) and post.grid.s8_range == (0.6, 1.0)
    assert post.grid.shape == (100, 100)
    assert inf.model_theta_range(model) == ((0.25, 0.45), (0.6, 1.0))


def test_grad_log_prob_theta_matches_autodiff(tiny_flow):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(0, 1, (2, 8, 8)), jnp.float32)
    theta = jnp.array([[0.3, 0.8], [0.4, 0.9]], jnp.float32)
    lp, grad = inf.grad_log_prob_theta(tiny_flow, with_value=True)(x, theta)
    assert grad.shape == (2, 2)
    # central differences, all in one batch of 8: float32, so a small step, loose atol
    eps = 1e-3
    steps = np.concatenate(
        [s * eps * np.eye(2)[j][None].repeat(2, 0) for j in range(2) for s in (1, -1)]
    )
    with jax.default_matmul_precision("highest"):  # no TF32 on GPUs
        lp8 = np.asarray(
            tiny_flow.log_prob(jnp.tile(x, (4, 1, 1)), jnp.tile(theta, (4, 1)) + steps)
        )
        centre = np.asarray(tiny_flow.log_prob(jnp.tile(x, (4, 1, 1)), jnp.tile(theta, (4, 1))))
    lp8 = lp8.reshape(2, 2, 2)  # (column, sign, map)
    fd = (lp8[:, 0] - lp8[:, 1]).T / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=0.02, atol=0.3)
    np.testing.assert_allclose(lp, centre[:2], rtol=1e-5)


def test_exact_lognormal_posterior_peaks_near_truth():
    truth = np.array([0.3, 0.8])
    x = data_gen.lognormal(jax.random.key(3), np.tile(truth, (4, 1)), n=16, box=64.0)
    fn = inf.lognormal_log_like_fn(64.0)
    g = inf.theta_grid(20, 20)
    pw = np.asarray(fn(x, g.points))  # the (maps, theta) shape the posterior uses below
    ref = np.stack(
        [np.asarray(data_gen.lognormal_log_likelihood(x, t, box=64.0)) for t in g.points[::97]],
        axis=1,
    )
    np.testing.assert_allclose(pw[:, ::97], ref, rtol=1e-5, atol=1e-3)  # float32 nats
    post = inf.exact_lognormal_posterior(x, g, box=64.0)
    z = (post.mean - truth) / post.std
    assert np.all(np.abs(z) < 3), (post.mean, post.std)
    assert inf.contains(post, truth, 0.95)
    assert post.fom > 1 / (0.3 * 0.6)  # better than the prior
    per = inf.exact_lognormal_posterior(x, g, box=64.0, per_map=True)
    assert len(per) == 4 and all(p.fom < post.fom for p in per)


def test_hartlap_factor_debiases_inverse_covariance():
    assert inf.hartlap_factor(100, 10) == pytest.approx(88 / 99)
    with pytest.raises(ValueError, match="more than 12"):
        inf.hartlap_factor(12, 10)
    rng = np.random.default_rng(4)
    n_s, n_b = 20, 6
    a = rng.normal(size=(n_b, n_b))
    cov = a @ a.T + n_b * np.eye(n_b)
    chol = np.linalg.cholesky(cov)
    inv = np.mean(
        [
            np.linalg.inv(np.cov(rng.normal(size=(n_s, n_b)) @ chol.T, rowvar=False))
            for _ in range(3000)
        ],
        axis=0,
    )
    np.testing.assert_allclose(
        inf.hartlap_factor(n_s, n_b) * inv,
        np.linalg.inv(cov),
        rtol=0.05,
        atol=0.03 * np.abs(np.linalg.inv(cov)).max(),
    )


def test_power_spectrum_likelihood_on_grf_maps():
    n, box = 16, 64.0
    theta = data_gen.design_theta(256, seed=1)
    fid_theta = np.tile(np.float32([0.3, 0.8]), (60, 1))
    maps = data_gen.grf(jax.random.key(5), np.concatenate([theta, fid_theta]), n=n, box=box)
    train, fid = maps[:256], maps[256:]
    ps = inf.PowerSpectrumLikelihood.fit(train, theta, fid, box)
    assert ps.n_bins == n // 2 and ps.hartlap == pytest.approx((60 - 8 - 2) / 59)
    assert isinstance(ps.emulator, inf.PowerSpectrumEmulator)
    np.testing.assert_array_equal(ps.mean(theta[:5]), ps.emulator.mean(theta[:5]))
    assert ps.edges is ps.emulator.edges and ps.fit_report["n_fiducial"] == 60
    d = ps.data_vector(fid)
    np.testing.assert_allclose(ps.cov, np.cov(d, rowvar=False), rtol=1e-10)
    np.testing.assert_allclose(ps.precision, ps.hartlap * np.linalg.inv(ps.cov), rtol=1e-8)
    # the emulator: the fiducial mean, and P proportional to sigma_8^2 for a GRF
    se = d.std(0) / np.sqrt(len(d))
    assert np.all(np.abs(ps.mean([0.3, 0.8])[0] - d.mean(0)) < 4 * se + 0.05 * d.mean(0))
    np.testing.assert_allclose(
        ps.mean([0.3, 1.0]) / ps.mean([0.3, 0.8]), (1.0 / 0.8) ** 2, rtol=0.1
    )  # 256 noisy training maps
    # pairs vs pairwise, and a posterior of the stack near the truth
    np.testing.assert_allclose(
        ps(fid[:3], np.tile([0.3, 0.8], (3, 1))), ps.pairwise(fid[:3], [[0.3, 0.8]])[:, 0]
    )
    post = ps.posterior(fid[:20], inf.theta_grid(20, 20))
    assert np.all(np.abs(post.mean - [0.3, 0.8]) < 3 * post.std + 0.02)
    with pytest.raises(ValueError, match="fiducial simulations"):
        inf.PowerSpectrumLikelihood.fit(train, theta, fid[:9], box)
    ps_cut = inf.PowerSpectrumLikelihood.fit(train, theta, fid, box, k_max=0.3)
    assert ps_cut.n_bins == int(np.sum(ps.k <= 0.3))
    with pytest.warns(UserWarning, match="clipped"):
        ps.posterior(fid[:2], inf.theta_grid(5, 5, (0.1, 0.4)))
