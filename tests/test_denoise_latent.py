"""The latent MAP of a flow: for a Gaussian (linear) flow it is the Wiener filter; it converges
on a nonlinear flow; with the exact lognormal flow it is the exact MAP of g = log(1 + delta);
both MAPs stay in the support of a log-transformed flow."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rbg_rngs
from flax import nnx
from test_denoise import observe, rel

from fieldflow import TRENF
from fieldflow import denoise as dn
from fieldflow.denoise import flow_latent_map, wiener_filter
from fieldflow.denoise.observation import fourier_apply
from fieldflow.masks import make_mask

LOG_OFFSET = 0.01


@functools.cache
def log_flow():
    """A small nonlinear conditional TRENF on log(1 + c + x) (8 x 8, two layers), built once:
    the tests below share its structure, hence its compiled solvers (they do not modify it)."""
    from fieldflow.models import trenf

    return trenf.TRENF(
        (8, 8),
        n_layers=2,
        n_t_knots=5,
        hidden=(8,),
        init_noise=0.3,
        log_offset=LOG_OFFSET,
        rngs=rbg_rngs(3),
    )


def test_latent_map_of_a_gaussian_flow_is_the_wiener_filter():
    n = 16
    # Psi = identity (no noise on the spline parameters), T a random positive radial kernel:
    # x = F^-1[F z / T], a Gaussian field with S_k = <|FFT x|^2> = N^2 / T(k)^2
    model = TRENF((n, n), n_layers=1, cond_dim=0, n_t_knots=6, init_noise=0.0, rngs=rbg_rngs(0))
    # numpy draws: a jax.random draw of a new shape compiles
    values = (0.5 * np.random.default_rng(1).standard_normal((1, 6)) - 1.0).astype(np.float32)
    state = nnx.state(model, nnx.Param)
    base = state["conditioner"]["base"]
    base[...] = base[...].at[0, :6].set(values[0])
    nnx.update(model, state)
    log_t = model._grid.log_t(values)[0]
    signal = n**2 * np.exp(-2.0 * np.asarray(log_t))

    rng = np.random.default_rng(0)
    # two maps: the shapes of the other 16 x 16 tests, whose compiled Wiener filter is reused
    z = np.random.default_rng(2).standard_normal((2, n, n)).astype(np.float32)
    truth = np.asarray(model.inverse(z))  # a sample of the flow
    mask = np.asarray(make_mask(jax.random.key(3), n, 0.2))
    noise_var = 0.5 * float(truth.var())
    d = mask * (truth + np.sqrt(noise_var) * rng.normal(size=truth.shape)).astype(np.float32)

    wiener = np.asarray(wiener_filter(d, mask, noise_var, signal, tol=1e-7).field)
    latent = flow_latent_map(model, d, mask, noise_var, steps=500, gtol=1e-5)
    assert bool(np.all(latent.converged))
    err = np.linalg.norm(np.asarray(latent.field) - wiener) / np.linalg.norm(wiener)
    assert err < 2e-3
    # and it is not simply the data
    assert np.linalg.norm(wiener - d) / np.linalg.norm(wiener) > 0.1
    assert np.all(np.isfinite(np.asarray(latent.objective)))


@pytest.mark.xdist_group("log_flow")  # one worker: log_flow() and its solver built once
def test_maps_of_a_log_transformed_flow_stay_in_its_support():
    """A flow on log(1 + c + x): a start below -1 - c is raised into the support (latent MAP)
    and the data-space MAP optimises log(1 + s) by default; both end finite and > -1 - c."""
    from fieldflow.denoise import flow_map

    n, c, model = 8, LOG_OFFSET, log_flow()
    cond = np.tile(np.float32([0.3, 0.8]), (2, 1))
    rng = np.random.default_rng(1)
    truth = np.exp(0.6 * rng.normal(size=(2, n, n)) - 0.18).astype(np.float32) - 1.0
    mask = np.asarray(make_mask(jax.random.key(3), n, 0.2))
    d = (mask * (truth + 0.5 * rng.normal(size=truth.shape))).astype(np.float32)
    init = d.copy()
    init[:, 0, 0] = -3.0  # outside the support: forward(init) would be NaN
    latent = flow_latent_map(model, d, mask, 0.25, cond=cond, init=init, steps=50)
    field = flow_map(model.log_prob, d, mask, 0.25, cond=cond, init=init, steps=50)
    for res in (latent, field):
        s = np.asarray(res.field)
        assert np.all(np.isfinite(s)) and np.all(s > -1.0 - c)
        assert np.all(np.isfinite(np.asarray(res.objective)))


# ------------------------------------------------------------- latent MAP of a flow
@pytest.mark.xdist_group("log_flow")
def test_latent_map_of_a_nonlinear_flow_converges():
    """L-BFGS on z reaches the gradient tolerance on a small nonlinear conditional TRENF with
    a log transform (checked with an independent gradient), and improves on its start, the
    data raised into the flow's support."""
    from fieldflow.denoise.solver import domain_floor

    n, model = 8, log_flow()
    cond = np.tile(np.float32([0.3, 0.8]), (2, 1))
    truth = np.expm1(0.5 * np.random.default_rng(4).standard_normal((2, n, n))).astype("f4")
    mask = np.asarray(make_mask(jax.random.key(5), n, 0.25))
    noise_var = float(truth.var())
    d = observe(truth, mask, noise_var, seed=6)
    res = dn.flow_latent_map(model, d, mask, noise_var, cond=cond, steps=300, gtol=1e-4)
    assert res.stopped == "gtol" and np.all(res.converged) and res.iterations > 0
    assert np.all(np.asarray(res.grad_norm) <= 1e-4)

    # independent check of stationarity and of the objective at the solution
    z = model.forward(res.field, cond)[0]

    def objective(z):
        s = model._inverse(z, jnp.asarray(cond))
        return -0.5 * jnp.sum(mask * (d - s) ** 2 / noise_var, (-2, -1)) - 0.5 * jnp.sum(
            z * z, (-2, -1)
        )

    @jax.jit  # the objective and its gradient in one compilation
    def objective_and_grad(z):
        value, vjp = jax.vjp(objective, z)
        return value, vjp(jnp.ones_like(value))[0]

    value, g = objective_and_grad(z)
    scale = np.linalg.norm((mask * d / noise_var).reshape(2, -1), axis=1)
    assert np.all(np.linalg.norm(np.asarray(g).reshape(2, -1), axis=1) / scale < 5e-4)
    np.testing.assert_allclose(res.objective, value, rtol=1e-4, atol=1e-3)
    z_start = model.forward(np.maximum(mask * d, domain_floor(model)), cond)[0]
    assert np.all(np.asarray(res.objective) > np.asarray(objective_and_grad(z_start)[0]))


def test_latent_map_of_the_exact_lognormal_flow_is_the_map_of_g():
    """With the exact lognormal flow z = C_g^-1/2 (log(1 + delta) + sigma_g^2 / 2), the
    latent MAP is the MAP of g under the exact prior (``jacobian=False``), found by
    flow_map in u = log(1 + delta): two solvers, two parametrisations, one maximum."""
    pytest.importorskip("data_gen")
    from data_gen.lognormal import lognormal_gaussian_power
    from data_gen.power import pixel_power_grid

    n, box, theta = 16, 64.0, np.float32([0.3, 0.9])

    @jax.jit  # one compilation instead of one per operation
    def spectra(theta):
        pk = pixel_power_grid(theta, n, box)
        return pk, *lognormal_gaussian_power(pk)

    pk, pg, var = spectra(theta)
    pg, var = pg[0], float(var[0])

    def forward(x, cond=None):
        g = jnp.log1p(jnp.maximum(x, -1.0 + 1e-3)) + 0.5 * var
        return fourier_apply(g, 1.0 / jnp.sqrt(pg)), None

    def inverse(z, cond=None):
        return jnp.expm1(fourier_apply(z, jnp.sqrt(pg)) - 0.5 * var)

    truth = np.asarray(jax.jit(inverse)(np.random.default_rng(7).standard_normal((2, n, n))))
    mask = np.asarray(make_mask(jax.random.key(8), n, 0.2))
    noise_var = float(truth.var())
    d = observe(truth, mask, noise_var, seed=9)
    wf = dn.wiener_filter(d, mask, noise_var, n**2 * np.asarray(pk)[0])
    lat = dn.flow_latent_map((forward, inverse), d, mask, noise_var, init=wf.field, gtol=1e-5)
    prior = dn.lognormal_log_prior(theta, box, jacobian=False)
    ref = dn.flow_map(prior, d, mask, noise_var, init=wf.field, parametrization="log1p", gtol=1e-5)
    assert lat.stopped in ("gtol", "stalled") and ref.stopped in ("gtol", "stalled")
    assert rel(lat.field, ref.field) < 2e-3
    assert rel(lat.field, wf.field) > 0.05  # not simply the Wiener start
