"""The calibration diagnostics: the exact lognormal likelihood passes them (that is their test),
a likelihood made overconfident by hand fails them by the factor it was given, and the
curvature adjustment makes such a likelihood honest. The mechanics are checked on a cheap
exact toy likelihood: pixels N(mu, sigma^2) with theta = (mu, sigma)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_gen import lognormal, lognormal_log_likelihood
from fieldflow.inference import (
    coverage_curve,
    posterior_from_loglike,
    predicted_coverage,
    score_and_hessian,
    score_test,
    theta_grid,
)

# one worker runs this module: its module fixtures are built once
pytestmark = pytest.mark.xdist_group("inference_calibration")

THETA0 = (0.3, 0.8)
N, BOX = 16, 64.0


@pytest.fixture(scope="module")
def fiducial_maps():
    return np.asarray(lognormal(jax.random.key(3), np.tile(THETA0, (96, 1)), n=N, box=BOX))


def exact(x, theta):
    return lognormal_log_likelihood(x, theta, box=BOX)


# jitted: the grid evaluations call them on hundreds of chunks (one compilation per shape,
# not one dispatch per operation)
@jax.jit
def toy(x, th):
    """The exact log-likelihood of maps whose pixels are N(mu, sigma^2), theta = (mu, sigma)."""
    mu, sig = th[:, 0, None, None], th[:, 1, None, None]
    return jnp.sum(-((x - mu) ** 2) / (2 * sig**2) - jnp.log(sig), axis=(1, 2))


@jax.jit
def over(x, th):  # the toy likelihood x 4: posteriors 2x too narrow in every direction
    return 4.0 * toy(x, th)


@pytest.fixture(scope="module")
def toy_maps():
    return (0.3 + 0.8 * np.random.default_rng(0).normal(size=(300, 4, 4))).astype(np.float32)


@pytest.fixture(scope="module")
def exact_scores(fiducial_maps):
    return score_and_hessian(exact, fiducial_maps, THETA0, chunk=32)


def test_exact_lognormal_likelihood_passes_the_score_test(exact_scores):
    s, h = exact_scores
    assert s.shape == (96, 2) and h.shape == (96, 2, 2)
    np.testing.assert_allclose(h, np.swapaxes(h, 1, 2), rtol=1e-3, atol=1e-2)
    res = score_test(s, h)
    # 96 maps: each eigenvalue is estimated to ~15%; the mean score is consistent with zero
    assert 0.6 < res["eigenvalues"][0] <= res["eigenvalues"][1] < 1.5
    assert res["hotelling_t2"] < 13.8  # chi2_2 99.9% quantile
    assert abs(res["predicted_coverage"]["0.68"] - 0.68) < 0.12
    # the bootstrap interval brackets each eigenvalue, and 1 (the truth)
    ci = res["eigenvalue_interval"]
    assert ci["n_boot"] == 1000 and ci["level"] == 0.9
    for lo, lam, hi in zip(ci["low"], res["eigenvalues"], ci["high"], strict=True):
        assert lo < lam < hi and lo < 1.0 < hi


def test_an_overconfident_likelihood_fails_by_its_factor(exact_scores):
    # log L x 4 (scores and Hessians x 4): 2x too narrow, eigenvalues of F^-1 C x 4
    s, h = exact_scores
    res = score_test(4.0 * s, 4.0 * h)
    np.testing.assert_allclose(res["eigenvalues"], 4.0 * np.array(score_test(s, h)["eigenvalues"]))
    assert 2.4 < res["eigenvalues"][0] and res["eigenvalues"][1] < 6.0
    np.testing.assert_allclose(res["std_too_small_by"], np.sqrt(res["eigenvalues"]))
    assert res["predicted_coverage"]["0.68"] < 0.35
    # on 96 maps the interval tells a factor 4 from 1: both lower ends above 1.4
    assert min(res["eigenvalue_interval"]["low"]) > 1.4


def test_scores_match_autodiff_of_one_map(toy_maps):
    x = toy_maps[:3]
    s, h = score_and_hessian(toy, x, THETA0, chunk=2)  # a padded last chunk
    per_map = np.stack([[0.3, 0.8], [0.35, 0.7], [0.25, 0.9]])
    s2, h2 = score_and_hessian(toy, x, per_map, chunk=4)  # one theta per map

    def one(t, xb):
        return toy(xb[None], t[None])[0]

    grad, hessian = jax.jit(jax.grad(one)), jax.jit(jax.hessian(one))
    for b in range(3):
        xb = jnp.asarray(x[b])
        for t, sb, hb in ((THETA0, s[b], h[b]), (per_map[b], s2[b], h2[b])):
            t = jnp.asarray(t, jnp.float32)
            np.testing.assert_allclose(sb, grad(t, xb), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(hb, hessian(t, xb), rtol=1e-4, atol=1e-3)


def test_predicted_coverage_of_known_cases():
    assert predicted_coverage([1.0, 1.0], 0.68) == pytest.approx(0.68, abs=1e-6)
    assert predicted_coverage([1.0, 1.0], 0.95) == pytest.approx(0.95, abs=1e-6)
    assert predicted_coverage([4.8, 10.4], 0.68) == pytest.approx(0.148, abs=0.005)
    # too wide by sqrt(2): P(chi2_2 <= 2 q) = 1 - 0.32^2, over-covers
    assert predicted_coverage([0.5, 0.5], 0.68) == pytest.approx(1 - 0.32**2, abs=1e-6)
    with pytest.raises(ValueError, match="eigenvalues"):
        predicted_coverage([1.0, -1.0])


def test_score_test_refuses_bad_input_and_warns_on_few_maps():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="scores must be"):
        score_test(rng.normal(size=(10, 2)), rng.normal(size=(10, 3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        score_test(np.full((10, 2), np.nan), -np.tile(np.eye(2), (10, 1, 1)))
    with pytest.warns(UserWarning, match="error bars are large"):
        score_test(rng.normal(size=(20, 2)), -np.tile(np.eye(2), (20, 1, 1)))


def test_coverage_curve_of_calibrated_gaussian_posteriors():
    # posteriors N(theta_hat, sigma^2 I) with theta_hat ~ N(truth, sigma^2 I): calibrated
    rng = np.random.default_rng(1)
    grid = theta_grid(60, 60)
    pts = grid.points.reshape(60, 60, 2)
    sig = np.array([0.02, 0.04])
    truth = np.array(THETA0)
    posts = []
    for _ in range(120):
        hat = truth + sig * rng.normal(size=2)
        ll = -0.5 * np.sum(((pts - hat) / sig) ** 2, axis=-1)
        posts.append(posterior_from_loglike(ll, grid))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curve = coverage_curve(posts, truth)
    cov, err = np.array(curve["coverage"]), np.array(curve["stderr"])
    assert np.all(np.abs(cov - np.array(curve["levels"])) < 4 * err + 0.02)
    # twice too narrow: under-covers at every level
    narrow = [posterior_from_loglike(4 * p.log_post, grid) for p in posts]
    assert np.all(np.array(coverage_curve(narrow, truth)["coverage"])[4:] < curve["levels"][4:])


def test_power_spectrum_likelihood_as_a_jax_function(fiducial_maps):
    from data_gen import design_theta
    from fieldflow.inference import PowerSpectrumLikelihood

    theta = np.asarray(design_theta(128, seed=0), np.float32)
    train = np.asarray(lognormal(jax.random.key(4), theta, n=N, box=BOX))
    ps = PowerSpectrumLikelihood.fit(train, theta, fiducial_maps[:64], BOX, degree=2)
    fn = ps.log_like_fn()
    x, t = fiducial_maps[64:70], theta[:6]
    np.testing.assert_allclose(fn(x, t), ps(x, t), rtol=1e-4, atol=1e-3)
    s, h = score_and_hessian(fn, fiducial_maps[64:80], THETA0)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(h))
    assert np.all(np.linalg.eigvalsh(-h.mean(axis=0)) > 0)
    # the data vectors are computed once and only the theta part differentiated: the same
    # scores and Hessians as autodiff through the whole function
    s_all, h_all = score_and_hessian(lambda x, t: fn(x, t), fiducial_maps[64:80], THETA0)
    np.testing.assert_allclose(s, s_all, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(h, h_all, rtol=1e-4, atol=1e-3)


def test_coverage_figure(tmp_path):
    from fieldflow.plots import plot_coverage

    curve = {
        "levels": [0.1, 0.5, 0.9],
        "coverage": [0.1, 0.4, 0.8],
        "stderr": [0.03] * 3,
        "n_maps": 100,
    }
    fig = plot_coverage({"flow": curve, "exact": curve})
    fig.savefig(tmp_path / "coverage.png")
    assert len(fig.axes[0].lines) == 3 and (tmp_path / "coverage.png").stat().st_size > 0


WIDE = {"om_range": (-0.6, 1.2), "s8_range": (0.4, 1.4)}  # no posterior of the toy is clipped


def test_curvature_adjustment_restores_an_overconfident_likelihood(toy_maps, tmp_path):
    from fieldflow.inference import (
        CurvatureAdjustment,
        adjusted_posteriors,
        adjustment_matrix,
        estimate_adjustment,
        grid_log_likelihood,
        posteriors_from_loglike,
    )

    f, c = np.array([[4.0, 1.0], [1.0, 3.0]]), np.array([[9.0, 2.0], [2.0, 5.0]])
    a = adjustment_matrix(f, c)
    np.testing.assert_allclose(a.T @ f @ a, f @ np.linalg.solve(c, f), rtol=1e-10)

    fp = {"model": "m1", "data": "d1"}
    adj = estimate_adjustment(over, [(THETA0, toy_maps[:200])], (0.2, 0.5), (0.5, 1.1), fp)
    np.testing.assert_allclose(adj.matrix([(0.25, 0.9), THETA0]), np.stack([adj.matrices[0]] * 2))
    assert np.all(np.abs(np.linalg.svd(adj.matrices[0], compute_uv=False) - 0.5) < 0.1)

    grid = theta_grid(80, 80, **WIDE)
    maps = toy_maps[200:216]
    raw = grid_log_likelihood(over, maps, grid, per_map=True, chunk=4096)
    adjusted = adjusted_posteriors(over, maps, grid, adj, raw_loglike=raw, chunk=4096)
    truth = posteriors_from_loglike(raw / 4.0, grid)  # the exact posteriors
    naive = posteriors_from_loglike(raw, grid)
    ratio = np.array([p.std / t.std for p, t in zip(adjusted, truth, strict=True)])
    naive_ratio = np.array([p.std / t.std for p, t in zip(naive, truth, strict=True)])
    # x 4 halves a Gaussian posterior's std; the sigma direction is skewed (and its grid edge
    # truncates some), hence the spread: 0.41-0.68 raw, 0.75-1.07 adjusted
    assert abs(np.median(naive_ratio) - 0.5) < 0.08 and np.all(naive_ratio < 0.72)
    assert abs(np.median(ratio) - 1.0) < 0.12 and np.all((ratio > 0.7) & (ratio < 1.15))

    path = adj.save(tmp_path / "calibration.json")
    back = CurvatureAdjustment.load(path, model="m1", data="d1")
    np.testing.assert_allclose(back.matrices, adj.matrices)
    with pytest.raises(ValueError, match="another model"):
        CurvatureAdjustment.load(path, model="m2")
    with pytest.raises(ValueError, match="another data set"):
        CurvatureAdjustment.load(path, model="m1", data="d2")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a fieldflow calibration file"):
        CurvatureAdjustment.load(tmp_path / "other.json")


def test_joint_adjusted_posterior_of_several_maps(toy_maps):
    from fieldflow.inference import (
        CurvatureAdjustment,
        adjusted_posteriors,
        grid_log_likelihood,
        posterior_from_loglike,
    )

    # A = I: the adjusted likelihood is the raw one
    ident = CurvatureAdjustment(
        np.array([THETA0]), np.eye(2)[None], (0.2, 0.5), (0.5, 1.1), {"model": "m", "data": "d"}
    )
    grid = theta_grid(12, 12, **WIDE)
    maps = toy_maps[:3]
    joint = adjusted_posteriors(toy, maps, grid, ident, per_map=False, chunk=1024)
    raw = posterior_from_loglike(grid_log_likelihood(toy, maps, grid, chunk=1024), grid)
    np.testing.assert_allclose(joint.post, raw.post, atol=1e-6)


def test_adjusted_likelihood_passes_the_score_test(toy_maps):
    from fieldflow.inference import adjusted_score_test, estimate_adjustment

    fp = {"model": "m", "data": "d"}
    adj = estimate_adjustment(over, [(THETA0, toy_maps[:200])], (0.2, 0.5), (0.5, 1.1), fp)
    grid = theta_grid(80, 80, **WIDE)
    res = adjusted_score_test(over, toy_maps[200:], THETA0, grid, adj, chunk=4096)
    assert min(adj.tests[0]["eigenvalues"]) > 3.0  # raw: 4
    assert 0.7 < res["eigenvalues"][0] <= res["eigenvalues"][1] < 1.4


def test_adjusted_score_test_follows_the_clipped_likelihood_of_the_posterior(toy_maps):
    """theta* = theta_hat + A (theta0 - theta_hat) beyond the grid box is clipped to it, as in
    adjusted_posteriors; the score and Hessian are those of l(clip(theta*)) (autodiff check)."""
    from fieldflow.inference import CurvatureAdjustment, adjusted_score_test, grid_log_likelihood

    a = 3.0 * np.eye(2)
    adj = CurvatureAdjustment(np.array([THETA0]), a[None], (0.0, 0.5), (0.6, 1.1), {})
    grid = theta_grid(40, 40, om_range=(0.0, 0.6), s8_range=(0.5, 1.1))
    maps = toy_maps[:80]
    res = adjusted_score_test(toy, maps, THETA0, grid, adj, chunk=4096)

    raw = grid_log_likelihood(toy, maps, grid, per_map=True, chunk=4096).reshape(len(maps), -1)
    hats = jnp.asarray(grid.points[np.argmax(raw, axis=1)], jnp.float32)
    lo, hi = jnp.array([0.0, 0.5]), jnp.array([0.6, 1.1])

    def l_adj(theta, x, hat):
        star = jnp.clip(hat + jnp.asarray(a, jnp.float32) @ (theta - hat), lo, hi)
        return toy(x[None], star[None])[0]

    t0 = jnp.asarray(THETA0, jnp.float32)
    s, h = jax.jit(
        jax.vmap(lambda *a: (jax.grad(l_adj)(*a), jax.hessian(l_adj)(*a)), (None, 0, 0))
    )(t0, jnp.asarray(maps), hats)
    clipped = np.any((hats + (t0 - hats) @ a.T < lo) | (hats + (t0 - hats) @ a.T > hi), axis=1)
    assert 0 < clipped.sum() < len(maps)  # the case under test happens, but not everywhere
    np.testing.assert_allclose(res["mean_score"], np.mean(s, axis=0), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(res["fisher"], -np.mean(h, axis=0), rtol=1e-3, atol=1e-3)
