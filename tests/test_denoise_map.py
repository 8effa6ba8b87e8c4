"""The data-space MAP (flow_map): under a Gaussian prior it is the Wiener filter (in either
parametrisation, with a fitted mean too); a flow trained on Gaussian fields reproduces it; the
compiled solver is built once per model structure and shared with the latent MAP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rbg_rngs
from test_denoise import BOX, gaussian_prior, grf, observe, power, problem, rel

from fieldflow import denoise as dn
from fieldflow import fourier
from fieldflow.denoise import solver
from fieldflow.denoise.observation import fourier_apply
from fieldflow.masks import make_mask


# ------------------------------------------------------------------------- flow MAP
def test_map_with_gaussian_prior_is_the_wiener_filter():
    s_half, s, mask, noise_var, d = problem()
    wf = dn.wiener_filter(d, mask, noise_var, s_half, tol=1e-7)
    lp = gaussian_prior(16)  # dn.gaussian_log_prior(s_half)
    # start far from the answer (the masked data), not from the Wiener filter
    res = dn.flow_map(lp, d, mask, noise_var, init=mask * d, gtol=1e-4)
    assert np.all(res.converged) and res.stopped == "gtol" and 0 < res.iterations < 200
    assert np.all(res.grad_norm <= 1e-4)
    assert rel(res.field, wf.field) < 5e-4
    # below the float32 floor (1e-7 to 3e-5 here, depending on the CPU's rounding path)
    # the line search stalls, and says so; where it stalls depends on the CPU too (a relative
    # distance to the Wiener filter of 2e-5 to 1.5e-4 seen on two machines)
    tight = dn.flow_map(lp, d, mask, noise_var, init=mask * d, gtol=1e-9)
    assert tight.stopped == "stalled" and not np.any(tight.converged)
    assert rel(tight.field, wf.field) < 3e-4
    # objective = log-likelihood + log-prior, in nats
    ll = -0.5 * jnp.sum(mask * (d - res.field) ** 2 / noise_var, axis=(-2, -1))
    np.testing.assert_allclose(res.objective, ll + lp(res.field), rtol=1e-5)
    # the Wiener start is already converged
    warm = dn.flow_map(lp, d, mask, noise_var, signal_power_half=s_half)
    assert warm.iterations <= 2 and np.all(warm.converged)
    # Adam gets there too, less precisely
    adam = dn.flow_map(
        lp,
        d,
        mask,
        noise_var,
        init=mask * d,
        optimizer="adam",
        steps=1500,
        learning_rate=0.05,
        gtol=1e-4,
    )
    assert rel(adam.field, wf.field) < 1e-2


def test_map_log1p_parametrisation_same_argmax():
    s_half, s, mask, noise_var, d = problem(seed=3)
    scale = 0.3 / float(jnp.abs(s).max())  # keep the field > -1
    s_half, d, noise_var = s_half * scale**2, d * scale, noise_var * scale**2
    wf = dn.wiener_filter(d, mask, noise_var, s_half, tol=1e-7)
    res = dn.flow_map(
        dn.gaussian_log_prior(s_half), d, mask, noise_var, init=mask * d, parametrization="log1p"
    )
    assert np.all(res.converged)
    assert rel(res.field, wf.field) < 1e-3


def test_map_joint_theta_fit():
    """Prior N(s; mu, C) with an unknown mean mu = theta: at the joint MAP, mu is the
    pixel mean of s (C^-1 1 is proportional to 1) and s - mu is the Wiener filter of
    d - M mu."""
    s_half, s, mask, noise_var, d = problem(seed=5, batch=2, snr=5.0)
    d = mask * (d + 0.7)
    base = dn.gaussian_log_prior(s_half)

    def lp(x, cond):
        return base(x - cond[:, 0, None, None])

    res = dn.flow_map(
        lp,
        d,
        mask,
        noise_var,
        cond=jnp.zeros((2, 1)),
        fit_theta=True,
        theta_bounds=([-2.0], [2.0]),
        init=mask * d,
        gtol=1e-4,
        gtol_theta=1e-4,
    )
    assert res.theta.shape == (2, 1) and np.all(res.converged)
    mu = np.asarray(res.theta)[:, 0, None, None]
    np.testing.assert_allclose(mu[:, 0, 0], res.field.mean(axis=(1, 2)), atol=1e-3)
    assert np.all(np.abs(mu) > 0.2)  # theta really moved from its start at 0
    wf = dn.wiener_filter(d - mask * mu, mask, noise_var, s_half, tol=1e-7)
    assert rel(res.field - mu, wf.field) < 1e-3
    with pytest.raises(ValueError, match="theta_bounds"):
        dn.flow_map(lp, d, mask, noise_var, cond=jnp.zeros((2, 1)), fit_theta=True)


def test_lognormal_theta_fit_may_roam_the_simulators_whole_range():
    """`fieldflow denoise --prior lognormal --fit-theta` bounds theta by where the exact
    lognormal prior is defined (the simulators' supported range), not by a default box."""
    import data_gen
    from fieldflow.denoise.reconstruct import _map_prior

    theta = np.float32([[0.15, 1.3]])  # outside the default box, inside the supported range
    _, cond, kwargs = _map_prior("lognormal", None, theta, BOX, None, fit_theta=True)
    om, s8 = data_gen.SUPPORTED_OMEGA_M_RANGE, data_gen.SUPPORTED_SIGMA8_RANGE
    assert kwargs["theta_bounds"] == ((om[0], s8[0]), (om[1], s8[1]))
    np.testing.assert_array_equal(cond, theta)


def test_map_compiles_once_per_model():
    """A module method is split into graph + state: a second call (even after the
    parameters change, or with another model of the same structure) reuses the compiled
    solver."""
    nnx = pytest.importorskip("flax.nnx")
    s_half, s, mask, noise_var, d = problem(n=8, batch=2)
    inv = 1.0 / s_half * fourier.rfft_multiplicity(8)

    class Gauss(nnx.Module):
        def __init__(self):
            self.log_amp = nnx.Param(jnp.zeros(()))

        def log_prob(self, x, cond=None):
            fx = jnp.fft.rfft2(x)
            q = jnp.sum(jnp.abs(fx) ** 2 * inv, axis=(-2, -1))
            return -0.5 * q * jnp.exp(-self.log_amp[...]) - 0.5 * 64 * self.log_amp[...]

    before = solver.compiled_solver.cache_info()
    model = Gauss()
    first = dn.flow_map(model.log_prob, d, mask, noise_var, init=mask * d)
    model.log_amp[...] = jnp.log(jnp.float32(4.0))  # not weak-typed: jit would recompile
    second = dn.flow_map(model.log_prob, d, mask, noise_var, init=mask * d)
    after = solver.compiled_solver.cache_info()
    assert after.misses - before.misses == 1  # built once
    assert after.hits - before.hits == 1
    # another model of the same structure shares the compiled solver too
    dn.flow_map(Gauss().log_prob, d, mask, noise_var, init=mask * d, steps=2)
    assert solver.compiled_solver.cache_info().misses == after.misses
    # the new parameter value was used: prior variance x4
    assert rel(first.field, dn.wiener_filter(d, mask, noise_var, s_half).field) < 1e-3
    assert rel(second.field, dn.wiener_filter(d, mask, noise_var, 4 * s_half).field) < 1e-3


# ------------------------------------------------------- flow trained on a GRF
def test_flow_trained_on_grf_reproduces_the_wiener_filter():
    """For a Gaussian random field the Wiener filter is the exact MAP, so a flow trained
    on GRF samples must give (nearly) the Wiener filter of the true spectrum.

    Honest tolerance: the flow learns S_k from 1024 maps, through a spline T(k) with
    17 knots and a pointwise spline Psi that is only approximately linear, so its
    density is a slightly wrong Gaussian; the MAP inherits a relative error of the
    order of the spectrum error (the filter S / (S + N) moves by less than dS / S).
    Measured over training seeds 0-4 (100 Adam steps): 1.5-3%. We require < 10%,
    against ~80% for the distance between truth and filter (the posterior width), and
    r(k) > 0.98 between the two reconstructions; the untrained flow fails both.
    """
    nnx = pytest.importorskip("flax.nnx")
    optax = pytest.importorskip("optax")
    trenf = pytest.importorskip("fieldflow.models.trenf")
    n = 16
    s_half = power(n)
    x = grf(10, s_half, 1024)
    model = trenf.TRENF(
        (n, n),
        n_layers=1,
        cond_dim=0,
        hidden=(8,),
        n_t_knots=17,
        data_scale=float(x.std()),
        rngs=rbg_rngs(1),
    )
    s_true, mask, noise_var = x[:2], make_mask(jax.random.key(11), n, 0.25), 0.5 * float(x.var())
    d = observe(s_true, mask, noise_var, seed=12)
    wf = dn.wiener_filter(d, mask, noise_var, s_half, tol=1e-7)
    untrained = dn.flow_map(model.log_prob, d, mask, noise_var, init=mask * d)
    assert rel(untrained.field, wf.field) > 0.2

    opt = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, xb):
        loss, grads = nnx.value_and_grad(lambda m: -m.log_prob(xb).mean() / n**2)(model)
        opt.update(model, grads)
        return loss

    idx = np.random.default_rng(1).integers(0, x.shape[0], (100, 128))
    for i in range(100):
        step(model, opt, x[idx[i]])
    # the flow learned the density: log p within 0.01 nats per pixel of the truth
    gap = model.log_prob(s_true) - dn.gaussian_log_prior(s_half)(s_true)
    assert np.all(np.abs(gap) / n**2 < 0.01)

    res = dn.flow_map(model.log_prob, d, mask, noise_var, init=mask * d)
    assert res.stopped in ("gtol", "stalled") and res.iterations > 0
    # a maximum of the flow posterior: at least as good as the Wiener filter under the flow
    at_wf = -0.5 * jnp.sum(mask * (d - wf.field) ** 2 / noise_var, axis=(-2, -1))
    assert np.all(res.objective >= at_wf + model.log_prob(wf.field) - 1e-3)
    assert rel(res.field, wf.field) < 0.1
    assert rel(s_true, wf.field) > 0.5  # the scale the 10% is measured against
    r = dn.denoising_metrics(wf.field, res.field, None, BOX)["r_k"]
    assert np.all(r > 0.98)


def test_both_maps_share_one_solver_cache(caplog):
    """flow_map and flow_latent_map both get their loop from the one cached
    ``solver.compiled_solver``: a second call of each with the same shapes is two hits of
    that cache and compiles nothing. With the linear flow x = C^1/2 z both are the Wiener
    filter."""
    s_half, s, mask, noise_var, d = problem()
    root = jnp.sqrt(jnp.asarray(s_half)) / s_half.shape[0]

    def forward(x, cond=None):
        return fourier_apply(x, 1.0 / root), None

    def inverse(z, cond=None):
        return fourier_apply(z, root)

    def both():
        field = dn.flow_map(gaussian_prior(16), d, mask, noise_var, init=mask * d)
        latent = dn.flow_latent_map((forward, inverse), d, mask, noise_var, init=mask * d)
        return field, latent

    start = solver.compiled_solver.cache_info()
    first = both()
    built = solver.compiled_solver.cache_info()
    assert (built.hits + built.misses) - (start.hits + start.misses) == 2  # one cache
    with jax.log_compiles(True), caplog.at_level("WARNING"):
        again = both()
    after = solver.compiled_solver.cache_info()
    assert after.misses == built.misses and after.hits - built.hits == 2
    assert not [r for r in caplog.records if "Compiling jit(solve)" in r.getMessage()]
    wf = dn.wiener_filter(d, mask, noise_var, s_half, tol=1e-7).field
    for res in (*first, *again):
        assert np.all(res.converged) and rel(res.field, wf) < 1e-3
