"""Field-level inference (fieldflow.field_level): the sampler recovers the analytic Gaussian
field posterior (Wiener mean and variance), the exact lognormal target is the lognormal
simulator in whitened coordinates and equals the flow target of an exact flow (so both samplers
draw the same chains), bad input is refused, unconverged chains are flagged, and the outputs
reload. theta-only NUTS against the grid posterior is checked by
scripts/benchmark_field_level.py (its compilation is too dear for the suite)."""

import dataclasses
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONDS
from flax import nnx

from fieldflow.field_level import (
    FlowField,
    LognormalField,
    chain_diagnostics,
    field_level_posterior,
    load_result,
    log_posterior,
    log_posterior_data,
    make_observation,
)

# one worker runs this module: its module fixtures are built once
pytestmark = pytest.mark.xdist_group("field_level")

N = 8
LOW, HIGH = np.array([0.2, 0.5], np.float32), np.array([0.5, 1.1], np.float32)


class LinearFlow(nnx.Module):
    """A Gaussian 'flow' independent of theta: s = F^-1[a(k) F z], so p(s) = N(0, C)."""

    def __init__(self, amp):
        self.shape, self.cond_dim = (N, N), 2
        self.cond_low, self.cond_high = tuple(LOW.tolist()), tuple(HIGH.tolist())
        self.amp = nnx.Variable(jnp.asarray(amp, jnp.float32))

    def _inverse(self, z, cond):
        return jnp.fft.irfft2(jnp.fft.rfft2(z) * self.amp[...], s=(N, N))

    def _forward(self, x, cond):
        z = jnp.fft.irfft2(jnp.fft.rfft2(x) / self.amp[...], s=(N, N))
        return z, jnp.zeros(x.shape[0])

    def _log_prob(self, x, cond):  # up to the constant -log|det A|
        return -0.5 * jnp.sum(self._forward(x, cond)[0] ** 2, axis=(-2, -1))


class ExactLognormalFlow(nnx.Module):
    """The lognormal model written as a conditional flow (its inverse is the simulator)."""

    def __init__(self, box):
        self.shape, self.cond_dim = (N, N), 2
        self.cond_low, self.cond_high = tuple(LOW.tolist()), tuple(HIGH.tolist())
        self.box = box

    def _inverse(self, z, cond):
        return LognormalField(N, self.box).field(None, z, cond)

    def _forward(self, x, cond):
        return LognormalField(N, self.box).latent(None, x, cond), jnp.zeros(x.shape[0])


def _amp():
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(N), np.fft.rfftfreq(N), indexing="ij"))
    return (0.6 / (0.15 + k)).astype(np.float32)  # > 0 at every mode, red spectrum


def _dense(amp):
    """The matrix of z -> F^-1[amp F z] on (N*N,) vectors (symmetric)."""
    eye = np.eye(N * N).reshape(-1, N, N)
    return np.fft.irfft2(np.fft.rfft2(eye) * amp, s=(N, N)).reshape(N * N, N * N)


@pytest.fixture(scope="module")
def gaussian_case():
    amp = _amp()
    a = _dense(amp.astype(np.float64))
    c = a @ a.T
    rng = np.random.default_rng(0)
    truth = (a @ rng.standard_normal(N * N)).reshape(N, N)
    mask = np.ones((N, N), np.float32)
    mask[2:4, 1:6] = 0.0
    noise_var = 0.5 * float(np.var(truth))
    d = (mask * (truth + np.sqrt(noise_var) * rng.standard_normal((N, N)))).astype(np.float32)
    w = (mask / noise_var).ravel()
    cov = np.linalg.inv(np.linalg.inv(c) + np.diag(w))
    mean = cov @ (w * d.ravel())
    model = LinearFlow(amp)
    kw = dict(key=jax.random.key(1), sampler="nuts", num_chains=2, num_warmup=100)
    kw.update(num_samples=200, progress=False, min_ess=50, field_draws=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # short runs: checked below
        result = field_level_posterior(model, d, mask, noise_var, coordinates="latent", **kw)
        in_data = field_level_posterior(model, d, mask, noise_var, coordinates="data", **kw)
    return dict(
        model=model,
        d=d,
        mask=mask,
        noise_var=noise_var,
        result=result,
        in_data=in_data,
        mean=mean.reshape(N, N),
        std=np.sqrt(np.diag(cov)).reshape(N, N),
    )


@pytest.mark.parametrize("coordinates", ["latent", "data"])
def test_gaussian_field_posterior_is_the_wiener_mean_and_variance(gaussian_case, coordinates):
    r = gaussian_case["result" if coordinates == "latent" else "in_data"]
    mean, std = gaussian_case["mean"], gaussian_case["std"]
    assert r.coordinates == coordinates
    assert r.field_mean.shape == (N, N) and r.theta.shape == (2, 200, 2)
    err = np.abs(r.field_mean - mean) / std  # Monte Carlo error ~ 1 / sqrt(ESS) per pixel
    assert err.mean() < 0.15 and err.max() < 0.6, (err.mean(), err.max())
    ratio = r.field_std / std
    assert 0.85 < np.median(ratio) < 1.15 and ratio.min() > 0.6, ratio
    # the masked pixels are the uncertain ones
    hidden = gaussian_case["mask"] == 0
    assert r.field_std[hidden].mean() > 1.5 * r.field_std[~hidden].mean()
    # theta is not informed by a theta-independent prior: flat over the box
    assert np.all(r.samples >= LOW) and np.all(r.samples <= HIGH)
    assert np.allclose(r.mean, (LOW + HIGH) / 2, atol=0.1 * (HIGH - LOW))
    assert r.divergent.sum() == 0 and np.all(r.rhat < 1.1)
    assert r.grad_evals > 0 and r.summary()["ess_per_grad"][0] > 0
    # the kept draws are draws of the same posterior
    assert r.field_draws.shape == (2, 40, N, N)
    draw_std = r.field_draws.reshape(-1, N, N).std(axis=0)
    assert 0.75 < np.median(draw_std / r.field_std) < 1.25
    assert r.interval_coverage(mean) > 0.9 and r.interval_coverage(mean + 3 * std) < 0.1


def test_unconverged_chains_are_extended_up_to_the_limit(gaussian_case):
    c = gaussian_case
    kw = dict(key=jax.random.key(1), sampler="nuts", num_chains=2, num_warmup=100, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        never = field_level_posterior(c["model"], c["d"], c["mask"], c["noise_var"], **kw,
                                      num_samples=200, field_draws=40, extend_samples=30,
                                      min_ess=1e9)  # fmt: skip
    assert never.theta.shape == (2, 240, 2) and not never.converged  # two more chunks of 20
    np.testing.assert_array_equal(never.theta[:, :200], c["result"].theta)  # same chains
    assert never.field_draws.shape == (2, 40, N, N)
    with pytest.raises(ValueError, match="extend_samples"):
        field_level_posterior(c["model"], c["d"], c["mask"], c["noise_var"], **kw,
                              extend_samples=-1)  # fmt: skip


def test_outputs_reload(gaussian_case, tmp_path):
    import arviz as az

    r = gaussian_case["result"]
    files = r.save(tmp_path, "fl")
    assert files == ["fl.npz", "fl.nc"]
    back = load_result(tmp_path / "fl.npz")
    np.testing.assert_array_equal(back.theta, r.theta)
    np.testing.assert_array_equal(back.field_std, r.field_std)
    np.testing.assert_array_equal(back.field_draws, r.field_draws)
    assert back.summary() == r.summary()
    idata = az.from_netcdf(tmp_path / "fl.nc")
    np.testing.assert_allclose(idata.posterior["sigma_8"].values, r.theta[..., 1])
    assert "diverging" in idata.sample_stats
    mc = r.to_getdist()
    np.testing.assert_allclose(mc.getMeans()[:2], r.mean, rtol=1e-5)


def test_central_intervals_cover_skewed_marginals_where_mean_and_std_do_not():
    from fieldflow.field_level import FieldLevelResult

    rng = np.random.default_rng(0)
    draws = rng.exponential(size=(2, 300, 32, 32)).astype(np.float32)  # a skewed posterior
    truth = rng.exponential(size=(32, 32))  # drawn from it: a calibrated posterior
    stub = dict.fromkeys(f.name for f in dataclasses.fields(FieldLevelResult))
    r = FieldLevelResult(**{**stub, "field_draws": draws})
    assert abs(r.interval_coverage(truth) - 0.683) < 0.05  # 3.5 binomial standard errors
    within_std = np.mean(np.abs(truth - draws.mean((0, 1))) <= draws.std((0, 1)))
    assert within_std > 0.78  # 1 - exp(-2) = 0.86 for an exponential
    assert r.interval_coverage(truth, truth > 2.0) < 0.1  # tail pixels: beyond the 84th centile
    mask = (truth <= 2.0).astype(np.float32)  # the tail pixels masked
    assert r.masked_coverage(truth, mask) == r.interval_coverage(truth, truth > 2.0)
    assert r.masked_coverage(None, mask) is None and r.masked_coverage(truth, 1 + 0 * mask) is None
    with pytest.raises(ValueError, match="truth must have shape"):
        r.interval_coverage(truth[:4])
    with pytest.raises(ValueError, match="no field draws"):
        FieldLevelResult(**stub).interval_coverage(truth)
    assert FieldLevelResult(**stub).masked_coverage(truth, mask) is None


def test_std_in_log_space_covers_lognormal_marginals_where_the_std_of_the_field_does_not():
    from fieldflow.field_level import FieldLevelResult

    rng = np.random.default_rng(1)
    draws = np.expm1(rng.normal(0.0, 0.8, size=(2, 300, 32, 32)))  # lognormal marginals
    truth = np.expm1(rng.normal(0.0, 0.8, size=(32, 32)))  # a calibrated posterior
    stub = dict.fromkeys(f.name for f in dataclasses.fields(FieldLevelResult))
    r = FieldLevelResult(
        **{
            **stub,
            "field_draws": draws,
            "field_mean": draws.mean((0, 1)),
            "field_std": draws.std((0, 1)),
        }  # fmt: skip
    )
    assert abs(r.std_coverage(truth, log_offset=0.0) - 0.683) < 0.05  # 3.5 binomial errors
    assert r.std_coverage(truth) > 0.75  # mean +- std of s: a skewed marginal's
    mean_u, std_u = r.log_moments(0.0)
    np.testing.assert_allclose(std_u, 0.8, rtol=0.25)
    mask = np.ones((32, 32), np.float32)
    mask[:8] = 0
    assert r.masked_std_coverage(truth, mask) == r.std_coverage(truth, mask == 0, 0.0)
    assert r.masked_std_coverage(truth - 3.0, mask) is None  # truth outside ln(1 + s)'s domain
    assert FieldLevelResult(**stub).masked_std_coverage(truth, mask) is None  # no draws
    with pytest.raises(ValueError, match="no ln"):
        r.log_moments(-0.5)  # draws below -1 + 0.5


def test_lognormal_target_is_the_simulator_and_an_exact_flow(tmp_path):
    from data_gen.lognormal import lognormal

    box, theta = 32.0, np.array([0.31, 0.83], np.float32)
    key = jax.random.key(3)
    field = LognormalField(N, box)

    @jax.jit  # one compilation instead of one per operation
    def fields(key, theta):
        z = jax.random.normal(jax.random.split(key, 1)[0], (N, N), jnp.float32)
        s = field.field(None, z, theta)
        return z, s, field.latent(None, s, theta)

    z, s, z_back = fields(key, theta)
    np.testing.assert_allclose(
        s, np.asarray(lognormal(key, theta, n=N, box=box))[0], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(z_back, z, atol=2e-3)
    # the flow target of an exact flow is the exact target, value and gradient
    graphdef, state = nnx.split(ExactLognormalFlow(box))
    d = np.asarray(s) + 0.1
    w = np.full((N, N), 4.0, np.float32)
    pos = {"t": jnp.array([0.3, -0.2]), "z": 0.7 * z}

    @jax.jit  # both targets in one compilation
    def both(pos, params):
        def lp(target, params):
            return jax.value_and_grad(log_posterior, 2)(target, params, pos, d, w, LOW, HIGH)

        return lp(FlowField(graphdef), params), lp(field, None)

    (v1, g1), (v2, g2) = both(pos, state)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_data_coordinates_are_the_latent_posterior_with_its_jacobian(flows):
    """log p(theta, u | d) = log p(theta, z(u) | d) + log|det dz/du| + const: the two
    parameterisations are one density (brute-force jacfwd determinant), for a flow with a
    log transform and for the exact lognormal field."""
    from data_gen.lognormal import lognormal

    box = 32.0
    flow = flows["trenf_log_offset"]
    graphdef, state = nnx.split(flow.module)
    x0 = np.asarray(flow.fields(1))[0]
    cases = [(FlowField(graphdef), state, x0)]
    x1 = np.asarray(lognormal(jax.random.key(5), [0.3, 0.8], n=N, box=box))[0]
    cases.append((LognormalField(N, box), None, x1))
    w = np.full((N, N), 3.0, np.float32)
    for field, params, x in cases:
        d = x + 0.05

        @jax.jit  # one compilation per field instead of one per operation
        def terms(t, x_start, field=field, params=params, d=d):
            theta = jax.nn.sigmoid(t) * (HIGH - LOW) + LOW
            u = field.data_coordinate(params, x_start)

            def z_of(u):
                return field.latent(params, field.signal(params, u), theta)

            jac = jax.jacfwd(z_of)(u).reshape(N * N, N * N)
            data_lp = log_posterior_data(field, params, {"t": t, "u": u}, d, w, LOW, HIGH)
            latent_lp = log_posterior(field, params, {"t": t, "z": z_of(u)}, d, w, LOW, HIGH)
            return data_lp - latent_lp, jac

        gaps = []
        for i, (t, scale) in enumerate([([0.3, -0.2], 1.0), ([-0.5, 0.4], 0.8)]):
            gap, jac = terms(jnp.asarray(t, jnp.float32), scale * jnp.asarray(x) + 0.02 * i)
            logdet = np.linalg.slogdet(np.asarray(jac, np.float64))[1]
            gaps.append(float(gap) - logdet)
        # the constant is -N^2/2 log(2 pi) (the flow's normalisation); 64 pixels in float32
        assert abs(gaps[0] - gaps[1]) < 2e-2 * N, (type(field).__name__, gaps)


def test_auto_coordinates_follow_the_observed_pixels_signal_to_noise():
    from fieldflow.field_level.posterior import auto_coordinates

    rng = np.random.default_rng(2)
    signal = rng.standard_normal((N, N)).astype(np.float32)

    def choice(noise_std, mask=None):
        d = signal + noise_std * rng.standard_normal((N, N)).astype(np.float32)
        return auto_coordinates(make_observation(d, mask, noise_std**2))

    assert choice(0.05) == "data" and choice(1.0) == "latent"
    mask = np.ones((N, N), np.float32)
    mask[:, :4] = 0.0  # hidden pixels do not count as signal or noise
    assert choice(0.05, mask) == "data" and choice(1.0, mask) == "latent"


def test_bad_input_is_refused(gaussian_case):
    from fieldflow.field_level import lognormal_field_level_posterior

    model, d, mask = gaussian_case["model"], gaussian_case["d"], gaussian_case["mask"]
    kw = dict(key=jax.random.key(0), progress=False)
    cases = [
        ((d, np.zeros((N, N)), 1.0), {}, "hides every pixel"),
        ((d, mask, 0.0), {}, "noise_var must be > 0"),
        ((d, mask, -1.0), {}, "noise_var must be > 0"),
        ((d, mask, np.nan), {}, "finite"),
        ((d, mask, np.inf), {}, "finite"),
        ((np.zeros((16, 16), np.float32), None, 1.0), {}, r"\(8, 8\) map"),
        ((d, np.ones((4, 4)), 1.0), {}, "mask must have shape"),
        ((d, mask, np.ones((3, 3))), {}, "noise_var must be a scalar"),
        ((d, mask, 1.0), {"theta_start": [0.1, 0.8]}, "outside the prior"),
        ((d, mask, 1.0), {"theta_start": [0.3, 1.1]}, "outside the prior"),
        ((d, mask, 1.0), {"sampler": "hmc"}, "sampler must be"),
        ((d, mask, 1.0), {"coordinates": "pixels"}, "coordinates must be"),
        ((np.full((N, N), np.nan, np.float32), mask, 1.0), {}, "NaN|finite"),
        ((d, mask, 1.0), {"init_field": np.full((N, N), np.nan)}, "non-finite latent coordinate"),
    ]
    for args, extra, msg in cases:
        with pytest.raises(ValueError, match=msg):
            field_level_posterior(model, *args, **kw, **extra)
    with pytest.raises(ValueError, match="hides every pixel"):
        lognormal_field_level_posterior(d, np.zeros((N, N)), 1.0, box=32.0, **kw)
    with pytest.raises(ValueError, match="outside the prior"):
        lognormal_field_level_posterior(d, mask, 1.0, box=32.0, theta_start=[0.3, 2.0], **kw)


def test_unconverged_and_divergent_chains_are_flagged():
    rng = np.random.default_rng(0)
    theta = 0.5 + 0.01 * rng.standard_normal((4, 200, 2))
    ok = chain_diagnostics(theta, np.zeros((4, 200), bool), min_ess=50, warn=False)
    assert ok["converged"] and not ok["problems"]
    theta[2] += 0.05  # one chain elsewhere
    div = np.zeros((4, 200), bool)
    div[1, 7] = True
    with pytest.warns(RuntimeWarning, match="not a trustworthy posterior"):
        bad = chain_diagnostics(theta, div, min_ess=50)
    assert not bad["converged"] and bad["stray_chains"].tolist() == [False, False, True, False]
    assert bad["divergent_chains"].tolist() == [False, True, False, False]
    assert np.any(bad["rhat"] > 1.01)


def test_a_start_field_below_a_log_transform_support_is_raised_into_it(flows):
    """A Wiener filter can dip below delta = -1 - c; its latent must stay finite (NaN
    starts made every transition divergent)."""
    flow = flows["trenf_log_offset"]
    graphdef, state = nnx.split(flow.module)
    x = np.asarray(flow.fields(1))[0]
    low = x.copy()
    low[0, :3] = -1.5
    theta = jnp.asarray(CONDS[0])
    latent = jax.jit(FlowField(graphdef).latent)
    z_low, z = np.asarray(latent(state, low, theta)), np.asarray(latent(state, x, theta))
    assert np.all(np.isfinite(z_low))
    np.testing.assert_allclose(
        z, np.asarray(flow.module.forward(x[None], theta[None])[0])[0], atol=1e-5
    )


def test_benchmark_rows_resume_only_runs_sampled_alike(tmp_path):
    from fieldflow.field_level.benchmark import _load_rows

    settings = {"num_chains": 2, "seed": 0}
    path = tmp_path / "rows.jsonl"
    assert _load_rows(path, 3, settings) == {}
    path.write_text("".join(json.dumps({"map": i, "settings": settings}) + "\n" for i in range(4)))
    assert sorted(_load_rows(path, 3, settings)) == [0, 1, 2]  # a longer run's rows: its first
    with pytest.raises(ValueError, match="sampled with"):
        _load_rows(path, 3, {**settings, "num_chains": 4})


def test_benchmark_rows_of_another_map_are_refused(tmp_path):
    from fieldflow.field_level.benchmark import _load_rows, map_fingerprint

    maps, theta = np.zeros((2, 8, 8), np.float32), np.full((2, 2), 0.5, np.float32)
    maps[1, 0, 0] = 1.0
    prints = [map_fingerprint(m, t) for m, t in zip(maps, theta, strict=True)]
    assert prints[0] != prints[1] != map_fingerprint(maps[1], theta[1] + 0.1)
    path, settings = tmp_path / "rows.jsonl", {"seed": 0}
    rows = [{"map": i, "settings": settings, "map_fingerprint": prints[i]} for i in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sorted(_load_rows(path, 2, settings, prints)) == [0, 1]
    with pytest.raises(ValueError, match="another map 1"):
        _load_rows(path, 2, settings, [prints[0], prints[0]])


def test_benchmark_monte_carlo_errors_shrink_with_the_chains_effective_size():
    """A shift of 0.25 sigma from 100 effective draws is within 2 errors of 0.2 sigma; from
    10,000 it is the model's."""
    from fieldflow.field_level.benchmark import mc_errors

    def row(ess):
        return {
            "flow_std": [1.0, 2.0],
            "exact_std": [1.0, 2.0],
            "std_ratio": [1.0, 1.0],
            "flow_cost": {"ess": [ess, ess]},
            "exact_cost": {"ess": [ess, ess]},
        }

    shift, ratio = mc_errors(row(100.0))
    np.testing.assert_allclose(shift, np.sqrt(2 / 100), rtol=1e-12)  # both means' errors
    np.testing.assert_allclose(ratio, np.sqrt(1 / 100), rtol=1e-12)  # both stds' errors
    assert 0.25 - 2 * shift[0] < 0.2 < 0.25 - 2 * mc_errors(row(1e4))[0][0]


def test_credible_mass_of_draws_is_uniform_for_a_calibrated_posterior_and_respects_the_prior():
    from fieldflow.field_level import FieldLevelResult
    from fieldflow.field_level.benchmark import _hpd_coverage
    from fieldflow.field_level.results import sample_credible_mass

    rng = np.random.default_rng(0)
    chol = np.array([[1.0, 0.0], [0.8, 0.6]])  # correlated, like Omega_m and sigma_8
    masses = []
    for _ in range(300):  # truth and draws from the same posterior: c(truth) uniform
        mu = rng.normal(size=2)
        draws = mu + rng.normal(size=(500, 2)) @ chol.T
        masses.append(sample_credible_mass(draws, mu + chol @ rng.normal(size=2)))
    masses = np.array(masses)
    assert abs(np.mean(masses <= 0.6827) - 0.6827) < 0.08  # 3 binomial standard errors
    assert abs(np.mean(masses <= 0.95) - 0.95) < 0.04
    # a posterior cut by the prior at Omega_m = 0: at the edge, at radius 1.1 (true mass 0.45),
    # the reflected estimate is right; without the prior's edges the density there is halved
    for seed in range(3):
        r = np.random.default_rng(seed).normal(size=(6000, 2))
        draws = r[r[:, 0] > 0][:1000]
        true = np.mean((draws**2).sum(1) < 1.1**2)
        box = ((0.0, 10.0), (-10.0, 10.0))
        with_box = sample_credible_mass(draws, [0.0, 1.1], box)
        assert abs(with_box - true) < 0.12
        assert sample_credible_mass(draws, [0.0, 1.1]) > with_box + 0.15
    stub = dict.fromkeys(f.name for f in dataclasses.fields(FieldLevelResult))
    result = FieldLevelResult(**{**stub, "theta": draws[None]})
    assert result.credible_mass_at([0.0, 1.1], box) == with_box
    rows = [
        {
            "flow_credible_mass": m,
            "exact_credible_mass": m,
            "flow_inside_68_gaussian": True,
            "exact_inside_68_gaussian": True,
        }
        for m in (0.1, 0.7, 0.97)
    ]
    summary = _hpd_coverage(rows)
    assert summary["coverage68_flow"] == 1 / 3 and summary["coverage95_flow"] == 2 / 3
    assert summary["coverage68_gaussian_flow"] == 1.0
    old_rows = [{"flow_inside_68": True, "exact_inside_68": False}]  # before the masses
    assert _hpd_coverage(old_rows) == {
        "coverage68_gaussian_flow": 1.0,
        "coverage68_gaussian_exact": 0.0,
    }
    with pytest.raises(ValueError, match="samples must be finite"):
        sample_credible_mass(np.full((100, 2), np.nan), [0.0, 0.0])
