"""Gaussian likelihoods of summaries: the P(k) one is the power-spectrum likelihood, the
flow's score compresses a map into two numbers, and the emulator recovers known means."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from conftest import build_trenf

import data_gen
from fieldflow import inference as inf

# one worker runs this module: its module fixtures (and what they compile) are built once
pytestmark = pytest.mark.xdist_group("inference_summary")

N, BOX = 8, 32.0


@pytest.fixture(scope="module")
def grf_sets():
    """GRF maps: 120 across the prior (training), 80 at the fiducial theta."""
    theta = data_gen.design_theta(120, seed=2)
    fid_theta = np.tile(np.float32([0.3, 0.8]), (80, 1))
    maps = data_gen.grf(jax.random.key(3), np.concatenate([theta, fid_theta]), n=N, box=BOX)
    return (maps[:120], theta), maps[120:]


@pytest.fixture(scope="module")
def flow():
    """A small conditional TRENF (one layer, perturbed): its score is a summary."""
    return build_trenf(N, n_layers=1)


def test_power_spectrum_summary_gives_the_power_spectrum_likelihood(grf_sets):
    (train, theta), fid = grf_sets
    ps = inf.PowerSpectrumLikelihood.fit(train, theta, fid, BOX, degree=2)
    summ = inf.SummaryLikelihood.fit(
        inf.power_spectrum_summary(N, BOX), train, theta, fid, degree=2
    )
    np.testing.assert_allclose(summ.emulator.coef, ps.emulator.coef, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(summ.precision, ps.precision, rtol=1e-5)
    grid = inf.theta_grid(5, 5)
    np.testing.assert_allclose(
        summ.pairwise(fid[:3], grid.points), ps.pairwise(fid[:3], grid.points), rtol=1e-5
    )
    # the jax form (for score tests) agrees with the numpy one
    pairs = np.tile([[0.31, 0.83]], (3, 1))
    np.testing.assert_allclose(
        summ.log_like_fn()(fid[:3], pairs), summ(fid[:3], pairs), rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(ps.log_like_fn()(fid[:3], pairs), ps(fid[:3], pairs), rtol=1e-4)
    # data vectors computed once give the same posteriors and score tests as the maps
    d = summ.data_vector(fid[:3])
    by_maps = summ.posterior(fid[:3], grid, per_map=True)
    by_vectors = summ.posterior_of_data_vectors(d, grid)
    for a, b in zip(by_maps, by_vectors, strict=True):
        np.testing.assert_allclose(b.post, a.post, rtol=1e-5, atol=1e-12)
    fn = summ.log_like_fn()
    for a, b in zip(
        inf.score_and_hessian(fn, fid[:3], [0.31, 0.83]),
        inf.data_vector_score_and_hessian(fn, d, [0.31, 0.83]),
        strict=True,
    ):
        np.testing.assert_allclose(b, a, rtol=1e-6)
    with pytest.raises(ValueError, match="data vectors"):
        summ.posterior_of_data_vectors(d[0], grid)
    with pytest.raises(ValueError, match="data vectors"):
        inf.data_vector_score_and_hessian(fn, np.full_like(d, np.nan), [0.31, 0.83])


def test_log_power_spectrum_summary_is_ln_p_with_a_polynomial_mean(grf_sets):
    """ln P(k) in the P(k) bins, emulated as a polynomial (no log link), rebuilt from its
    spec; its likelihood gives normalised posteriors."""
    (train, theta), fid = grf_sets
    power, log_power = inf.power_spectrum_summary(N, BOX), inf.log_power_spectrum_summary(N, BOX)
    np.testing.assert_allclose(log_power(fid[:4]), np.log(power(fid[:4])), rtol=1e-5)
    assert log_power.log_link == (False,) * power.dim and log_power.labels[0].startswith("ln ")
    again = inf.summary_from_spec(json.loads(json.dumps(log_power.spec)))
    np.testing.assert_array_equal(again(fid[:4]), log_power(fid[:4]))
    assert np.all(np.isfinite(log_power(np.zeros((1, N, N), np.float32))))  # no power: floored
    like = inf.SummaryLikelihood.fit(log_power, train, theta, fid[:60], degree=2)
    post = like.posterior(fid[60:62], inf.theta_grid(8, 8), per_map=True)
    for p in post:
        np.testing.assert_allclose(p.post.sum(), 1.0, rtol=1e-6)


def test_flow_score_compression(grf_sets, flow):
    (train, theta), fid = grf_sets
    model = flow
    score = inf.flow_score_summary(model, chunk=4)  # one compiled shape: 4 maps
    t = score(fid[:5])  # two chunks, the second padded
    # the gradient of each map, unpadded (maps 0-3 and 1-4: the compiled shape of 4 maps)
    grad, fid_theta = inf.grad_log_prob_theta(model), np.tile([0.3, 0.8], (4, 1))
    expected = np.concatenate([grad(fid[:4], fid_theta), grad(fid[1:5], fid_theta)[3:]])
    np.testing.assert_allclose(t, expected, rtol=1e-5)
    both = inf.concatenate_summaries(inf.power_spectrum_summary(N, BOX), score)
    assert both.dim == N // 2 + 2 and both.log_link == (True,) * (N // 2) + (False, False)
    like = inf.SummaryLikelihood.fit(score, train, theta, fid[:60], degree=2)
    assert like.fit_report["labels"] == list(score.labels) and like.n_fiducial == 60
    np.testing.assert_allclose(like.cov, np.cov(score(fid[:60]), rowvar=False), rtol=1e-6)
    post = like.posterior(fid[60:], inf.theta_grid(12, 12))
    np.testing.assert_allclose(post.post.sum(), 1.0, rtol=1e-6)
    # the score-compressed likelihood: emulated residuals, correlation quadratic in theta
    compressed = inf.score_compressed_likelihood(model, train, theta, fid[:60], tails="gaussian")
    assert compressed.fit_report["covariance"] == "emulated"
    assert compressed.residuals.corr_degree == inf.SCORE_CORR_DEGREE


def test_summary_emulator_recovers_known_means():
    theta = data_gen.design_theta(40, seed=0).astype(np.float64)
    u = 2 * (theta - [0.1, 0.5]) / ([0.5, 1.1] - np.array([0.1, 0.5])) - 1
    y = np.stack([1 + u[:, 0] - 2 * u[:, 0] * u[:, 1], np.exp(0.5 * u[:, 1] ** 2)], axis=1)
    emu = inf.SummaryEmulator.fit(y, theta, (False, True), degree=2)
    np.testing.assert_allclose(emu.mean(theta), y, rtol=1e-8)
    np.testing.assert_allclose(emu.mean_fn()(theta.astype(np.float32)), y, rtol=1e-5)
    with pytest.raises(ValueError, match="<= 0"):
        inf.SummaryEmulator.fit(-y, theta, (False, True))
    with pytest.raises(ValueError, match="too few"):
        inf.SummaryEmulator.fit(y[:10], theta[:10], False, degree=3)


def test_bad_summaries_raise(grf_sets, flow):
    (train, theta), fid = grf_sets
    with pytest.raises(ValueError, match="fiducial simulations"):
        inf.SummaryLikelihood.fit(inf.power_spectrum_summary(N, BOX), train, theta, fid[:6])
    with pytest.raises(ValueError, match="different sizes"):
        inf.concatenate_summaries(inf.power_spectrum_summary(16, BOX), inf.flow_score_summary(flow))
    with pytest.raises(ValueError, match="shape"):
        inf.power_spectrum_summary(N, BOX)(np.zeros((2, N + 1, N + 1)))


# a summary that reads the first two pixels of a map, and maps that hold given summaries there
TWO_PIXELS = inf.Summary("two pixels", lambda x: x[:, 0, :2], ("a", "b"), (False, False), 8)


def _two_pixel_maps(t) -> np.ndarray:
    maps = np.zeros((len(t), 8, 8), np.float32)
    maps[:, 0, :2] = t
    return maps


def _heavy_tailed_summaries(m: int, seed: int = 5):
    """Two-number summaries whose spreads and correlation follow theta, Student-t with
    nu = 6 (unit covariance scale): (theta, t, true std(theta), true rho(theta))."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform([0.2, 0.5], [0.5, 1.1], size=(m, 2))

    def sd(th):
        return np.stack([0.1 + th[:, 1], 0.5 * th[:, 0] + th[:, 1] ** 2], axis=1)

    def rho(th):
        return 0.8 * (th[:, 1] - 0.8) / 0.3

    g = rng.normal(size=(m, 2))
    r = rho(theta)
    z = np.stack([g[:, 0], r * g[:, 0] + np.sqrt(1 - r**2) * g[:, 1]], axis=1)
    w = np.sqrt(4 / rng.chisquare(6, m))  # Var = 1: nu / (nu - 2) * 4 / 6
    mean = np.stack([theta[:, 0] + theta[:, 1], theta[:, 1] ** 2], axis=1)
    return theta, mean + sd(theta) * z * w[:, None], sd, rho


def test_emulated_covariance_follows_theta():
    """Heavy-tailed summaries whose spreads and correlation follow theta: the 'emulated'
    residual model recovers them and nu; its log L is the Student-t log density (scipy), in
    numpy and jax, and with Gaussian tails the Gaussian one."""
    from scipy.stats import multivariate_normal, multivariate_t

    theta, t, sd, rho = _heavy_tailed_summaries(3000)
    maps, summary = _two_pixel_maps(t), TWO_PIXELS
    like = inf.SummaryLikelihood.fit(summary, maps[:2500], theta[:2500], maps[2500:], degree=2,
                                     covariance="emulated", tails="student")  # fmt: skip
    assert like.fit_report["covariance"] == "emulated"
    assert 4.0 < like.residuals.nu < 9.0, like.residuals.nu
    probe = np.array([[0.25, 0.6], [0.45, 1.0]])
    np.testing.assert_allclose(like.std(probe), sd(probe), rtol=0.15)
    cov = like.residuals.covariance(probe)
    corr = cov[:, 0, 1] / np.prod(like.std(probe), axis=1)
    np.testing.assert_allclose(corr, rho(probe), atol=0.15)
    x, th = maps[2500:2503], theta[2500:2503]
    nu = like.residuals.nu
    expected = [
        multivariate_t.logpdf(t[2500 + i], like.mean(th[i])[0],
                              like.residuals.covariance(th[i])[0] * (nu - 2) / nu, df=nu)
        for i in range(3)
    ]  # fmt: skip
    np.testing.assert_allclose(like(x, th), expected, rtol=1e-6)
    np.testing.assert_allclose(like.log_like_fn()(x, th), expected, rtol=1e-4)
    np.testing.assert_allclose(like.pairwise(x, th).diagonal(), expected, rtol=1e-6)

    gauss = inf.SummaryLikelihood.fit(summary, maps[:2500], theta[:2500], maps[2500:], degree=2,
                                      covariance="emulated")  # fmt: skip
    assert gauss.residuals.nu is None
    expected = [
        multivariate_normal.logpdf(t[2500 + i], gauss.mean(th[i])[0],
                                   gauss.residuals.covariance(th[i])[0])
        for i in range(3)
    ]  # fmt: skip
    np.testing.assert_allclose(gauss(x, th), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="covariance must be"):
        inf.SummaryLikelihood.fit(summary, maps, theta, maps[:50], covariance="sample")


def test_correlation_of_degree_two_follows_a_correlation_that_peaks_inside_the_box():
    """The flow scores' correlation swings across a wide prior box: a correlation that is
    0.9 at the centre of the sigma_8 range and 0.17 near its edges is followed by the
    quadratic correlation of the score-compressed likelihood (SCORE_CORR_DEGREE), not by a
    linear one."""
    rng = np.random.default_rng(3)
    theta = rng.uniform([0.2, 0.5], [0.5, 1.1], size=(3000, 2))

    def rho(th):
        return 0.9 * (1 - ((th[:, 1] - 0.8) / 0.3) ** 2)

    g = rng.normal(size=(3000, 2))
    r = np.stack([g[:, 0], rho(theta) * g[:, 0] + np.sqrt(1 - rho(theta) ** 2) * g[:, 1]], 1)
    probe = np.array([[0.35, 0.53], [0.35, 0.65], [0.35, 0.8], [0.35, 0.95], [0.35, 1.07]])
    box = dict(theta_low=(0.2, 0.5), theta_high=(0.5, 1.1))

    def corr_error(degree):
        cov = inf.ResidualModel.fit(r, theta, corr_degree=degree, **box).covariance(probe)
        corr = cov[:, 0, 1] / np.sqrt(cov[:, 0, 0] * cov[:, 1, 1])
        return np.abs(corr - rho(probe)).max()

    assert inf.SCORE_CORR_DEGREE == 2
    assert corr_error(2) < 0.08
    assert corr_error(1) > 0.25


def test_residual_model_refuses_bad_input():
    theta, t, _, _ = _heavy_tailed_summaries(200)
    box = dict(theta_low=(0.2, 0.5), theta_high=(0.5, 1.1))
    with pytest.raises(ValueError, match="tails"):
        inf.ResidualModel.fit(t, theta, tails="cauchy", **box)
    with pytest.raises(ValueError, match="must agree"):
        inf.ResidualModel.fit(t, theta[:-1], **box)
    bad = t.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        inf.ResidualModel.fit(bad, theta, **box)
    with pytest.raises(ValueError, match="too few"):
        inf.ResidualModel.fit(t[:20], theta[:20], **box)
    with pytest.warns(UserWarning, match="fitting degrees"):
        small = inf.ResidualModel.fit(t[:30], theta[:30], shrink=True, **box)
    assert (small.scale_degree, small.corr_degree) == (1, 0)


def test_residual_flow_is_a_normalised_density_that_beats_its_start():
    """Skewed heavy-tailed summaries: the residual flow is a density (an exact bijection onto
    its base: round trip, brute-force log-determinant; it integrates to 1 at any theta), fits
    held-out residuals better than its start (splines at the identity), its draws (inverted
    splines) have the density's mean, numpy / jax / pairwise agree, and it reloads."""
    theta, t, sd, _ = _heavy_tailed_summaries(2400)
    t = t + 0.4 * np.abs(t - t.mean(axis=0))  # a monotone skew for the splines to fit
    maps, summary = _two_pixel_maps(t), TWO_PIXELS
    like = inf.SummaryLikelihood.fit(summary, maps[:2200], theta[:2200], maps[2200:], degree=2,
                                     covariance="emulated")  # fmt: skip
    residuals = t[:2200] - like.mean(theta[:2200])  # what tails="flow" fits, in fewer steps
    # (30 steps: the held-out NLL falls by 0.15-0.24 over four data seeds, 0.16-0.24 in 50)
    flow = inf.ResidualFlow.fit(residuals, theta[:2200], like.residuals, steps=30,
                                learning_rate=2e-2)  # fmt: skip
    like = dataclasses.replace(like, residuals=flow)
    report = flow.fit_report
    assert report["held_out_nll"] < report["held_out_nll_start"] - 0.02, report

    # the bijection r -> v: exact inverse, log-determinant = brute-force Jacobian (one
    # compiled function)
    @jax.jit
    def bijection(params, r, th):
        v, log_det = flow._transform(params, r, th)
        jac = jax.vmap(jax.jacfwd(lambda x, t: flow._transform(params, x, t)[0]))(r, th)
        return log_det, flow._untransform(params, v, th), jac

    r0, th0 = np.asarray(residuals[:4], "float32"), np.asarray(theta[:4], "float32")
    log_det, back, jac = bijection(flow._jax_params(), r0, th0)
    np.testing.assert_allclose(back, r0, atol=1e-4 * float(np.abs(r0).max()))
    np.testing.assert_allclose(np.linalg.slogdet(jac)[1], log_det, atol=1e-4)
    probe = np.array([[0.25, 0.6], [0.45, 1.0]])
    draws = flow.sample(jax.random.key(1), probe, 8000)
    for th, r_th in zip(probe, draws, strict=True):
        s = 15 * sd(th[None])[0]
        a, b = np.meshgrid(np.linspace(-s[0], s[0], 241), np.linspace(-s[1], s[1], 241))
        r = np.stack([a.ravel(), b.ravel()], axis=1)
        p = np.exp(flow.log_prob(r[:, None, :], th[None]))[:, 0] * (s[0] / 120) * (s[1] / 120)
        assert abs(p.sum() - 1) < 0.02, p.sum()  # a density
        np.testing.assert_allclose(r_th.mean(axis=0), p @ r, atol=0.05 * sd(th[None])[0].max())
    x, th = maps[2200:2203], theta[2200:2203]
    np.testing.assert_allclose(like.log_like_fn()(x, th), like(x, th), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(like.pairwise(x, th).diagonal(), like(x, th), rtol=1e-6)
    from fieldflow.inference.residual_flow import residual_model_from_json

    back = residual_model_from_json(json.loads(json.dumps(flow.to_json())))  # as files hold it
    r = t[2200:2203, None, :] - like.mean(probe)[None]
    np.testing.assert_allclose(back.log_prob(r, probe), flow.log_prob(r, probe), rtol=1e-6)
    # tails="flow" with too few maps for the flow: the Gaussian residual model, with a warning
    with pytest.warns(UserWarning, match="Gaussian residuals instead"):
        few = inf.SummaryLikelihood.fit(summary, maps[:150], theta[:150], maps[2200:],
                                        degree=2, covariance="emulated", tails="flow")  # fmt: skip
    assert isinstance(few.residuals, inf.ResidualModel)
    with pytest.raises(ValueError, match="must agree"):
        inf.ResidualFlow.fit(t[:600], theta[:599], flow.gaussian)
    with pytest.raises(ValueError, match="theta_penalty"):
        inf.ResidualFlow.fit(residuals, theta[:2200], flow.gaussian, theta_penalty=-1.0)
    # by default one shape at every theta (its theta weights stay zero); a finite
    # theta_penalty lets the knots follow theta
    assert np.all(flow.weights[:, :2] == 0) and not report["shape_follows_theta"]
    follows = inf.ResidualFlow.fit(residuals, theta[:2200], flow.gaussian, steps=20,
                                   learning_rate=2e-2, theta_penalty=0.0)  # fmt: skip
    assert np.abs(follows.weights[:, :2]).max() > 1e-3 and follows.fit_report["shape_follows_theta"]


def test_emulated_covariance_reloads(grf_sets, tmp_path):
    (train, theta), fid = grf_sets
    summary = inf.power_spectrum_summary(N, BOX)
    like = inf.SummaryLikelihood.fit(summary, train, theta, fid, degree=1, covariance="emulated",
                                     scale_degree=1, corr_degree=0)  # fmt: skip
    path = like.save(tmp_path / "s.json", {})
    back = inf.SummaryLikelihood.load(path, None)
    assert back.residuals is not None
    points = inf.theta_grid(4, 4).points
    np.testing.assert_allclose(back.pairwise(fid[:3], points), like.pairwise(fid[:3], points))
    np.testing.assert_allclose(back.std(points), like.std(points))

    old = json.loads(path.read_text())
    old["format"] = "fieldflow-summary-likelihood-1"
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="another version of fieldflow"):
        inf.SummaryLikelihood.load(path, None)


def test_variance_fit_survives_heavy_tails():
    """Squared residuals with a few enormous outliers (void-dominated maps): the Gamma-GLM
    fit of the variance stays finite and still follows theta."""
    rng = np.random.default_rng(7)
    theta = rng.uniform([0.2, 0.5], [0.5, 1.1], size=(2000, 2))
    var = theta[:, 1] ** 4
    y = var * rng.standard_normal(2000) ** 2
    y[:5] *= 1e8
    emu = inf.SummaryEmulator.fit(y[:, None], theta, True, degree=2)
    fitted = emu.mean(np.array([[0.35, 0.6], [0.35, 1.0]]))[:, 0]
    assert np.all(np.isfinite(emu.coef)) and fitted[1] > 3 * fitted[0], fitted


def test_nan_log_likelihoods_become_minus_inf_with_a_warning():
    from fieldflow.inference.likelihoods import nan_to_minus_inf

    with pytest.warns(RuntimeWarning, match="2 NaN"):
        out = nan_to_minus_inf(np.array([0.0, np.nan, np.nan]))
    assert out[0] == 0.0 and np.all(out[1:] == -np.inf)


def _pixel_likelihood(t_train, theta, t_fid, **options):
    """The likelihood of the two-pixel summary fitted to summaries ``t_train`` at ``theta``
    and ``t_fid`` at the fiducial theta."""
    maps, fid = _two_pixel_maps(t_train), _two_pixel_maps(t_fid)
    return inf.SummaryLikelihood.fit(TWO_PIXELS, maps, theta, fid, **options)


def test_draws_from_a_summary_likelihood_have_its_moments():
    """Fixed, Gaussian-emulated and Student-t residuals: draws at theta have the emulated mean
    and the model's covariance."""
    theta, t, _, _ = _heavy_tailed_summaries(3000)
    probe = np.array([[0.25, 0.6], [0.45, 1.0]])
    for options, n in (({"covariance": "fiducial"}, 4000), ({"covariance": "emulated"}, 4000),
                       ({"covariance": "emulated", "tails": "student"}, 40000)):  # fmt: skip
        like = _pixel_likelihood(t[:2500], theta[:2500], t[2500:], degree=2, **options)
        draws = like.sample(jax.random.key(1), probe, n)
        assert draws.shape == (2, n, 2)
        if like.residuals is None:
            cov = np.broadcast_to(np.linalg.inv(like.precision), (2, 2, 2))
        else:
            cov = like.residuals.covariance(probe)
        se = np.sqrt(np.diagonal(cov, axis1=1, axis2=2) / n)
        assert np.all(np.abs(draws.mean(axis=1) - like.mean(probe)) < 5 * se), options
        sample_cov = np.stack([np.cov(d.T) for d in draws])
        np.testing.assert_allclose(sample_cov, cov, rtol=0.15, atol=0.05 * cov.max())
    with pytest.raises(ValueError, match="theta"):
        like.sample(jax.random.key(0), [0.3, 0.8, 1.0], 10)


def test_reference_coverage_is_nominal_inside_the_prior_and_not_at_its_edge():
    """A likelihood's own posteriors on its own draws: nominal coverage where the posterior
    stays inside the prior box; at a theta beside the edge the box pulls the posterior mean
    inwards — the reference that fixed-theta coverage of real maps is judged against."""
    rng = np.random.default_rng(2)
    theta = rng.uniform([0.2, 0.5], [0.5, 1.1], size=(600, 2))
    fid = np.tile([0.3, 0.8], (200, 1))

    def draw(th, noise):
        mean = np.stack([th[:, 0] + th[:, 1], th[:, 1] ** 2], axis=1)
        return mean + noise * rng.normal(size=mean.shape)

    grid = inf.theta_grid(60, 60)
    tight = _pixel_likelihood(draw(theta, 0.03), theta, draw(fid, 0.03), degree=2)
    inside = tight.reference_coverage(jax.random.key(3), [0.35, 0.8], 400, grid)
    assert inside["n_draws"] == 400 and inside["theta"] == [0.35, 0.8]
    assert 0.6 < inside["coverage_68"] < 0.76 and 0.91 < inside["coverage_95"] < 0.99, inside
    assert np.all(np.abs(inside["mean_bias_over_std"]) < 0.2), inside
    wide = _pixel_likelihood(draw(theta, 0.1), theta, draw(fid, 0.1), degree=2)
    edge = wide.reference_coverage(jax.random.key(3), [0.21, 0.8], 400, grid)
    assert edge["mean_bias_over_std"][0] > 0.3, edge
