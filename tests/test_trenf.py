"""TRENF-specific behaviour: conditioning, sampling, initialisation, large input, jit and grad,
configuration, and the log(1 + c + x) transform. Round trips, brute-force log-determinants,
lattice symmetries and bad input are in test_contract.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRENF_STANDARDISATION, contrasts, gaussian_fields, rbg_rngs
from flax import nnx

from fieldflow import TRENF

# beside test_contract.py's tests of the shared "trenf" flow: one worker compiles it
pytestmark = pytest.mark.xdist_group("flow_trenf")


def test_log_prob_depends_on_condition(flows, conds):
    model = flows["trenf"].module
    x = jnp.broadcast_to(gaussian_fields(8, batch=1), (3, 8, 8))
    lp = model.log_prob(x, conds)
    assert float(jnp.min(jnp.abs(jnp.diff(lp)))) > 1e-3


def test_samples_shape_finite_and_key_dependent(flows, conds):
    model = flows["trenf"].module
    a = model.sample(jax.random.key(0), conds)
    b = model.sample(jax.random.key(1), conds)
    assert a.shape == (3, 8, 8) and a.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(a)))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2


def test_unconditional_model_samples_and_log_prob(flows):
    model = flows["trenf_9_unconditional"].module
    x = model.sample(jax.random.key(0), num=3)
    assert x.shape == (3, 9, 9)
    lp = model.log_prob(x)
    assert lp.shape == (3,) and bool(jnp.all(jnp.isfinite(lp)))


def test_initialisation_is_near_but_not_exactly_identity(conds):
    # the configuration of flows["trenf"], unperturbed: its compiled forward is shared
    model = TRENF((8, 8), n_layers=3, hidden=(16,), rngs=rbg_rngs(0), **TRENF_STANDARDISATION)
    x = gaussian_fields(8)
    z, logdet = model.forward(x, conds)
    u = (x - model.data_shift) / model.data_scale  # the model's fixed standardisation
    err = float(jnp.max(jnp.abs(z - u)))
    assert 0.0 < err < 0.5


def test_jit_and_grad_finite_also_for_large_input(flows, conds):
    """One jitted value_and_grad in the parameters and the maps: it matches log_prob, and
    log p and both gradients stay finite for large finite maps (1e3 sigma)."""
    model = flows["trenf"].module
    graphdef, state = nnx.split(model)

    def loss(state, x, c):
        return -nnx.merge(graphdef, state).log_prob(x, c).mean()

    x = gaussian_fields(8)
    value_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))  # one compile
    value, (grads, _) = value_and_grads(state, x, conds)
    assert np.isclose(float(value), -float(model.log_prob(x, conds).mean()), rtol=1e-5)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    lp = model.log_prob(1e3 * x, conds)
    assert bool(jnp.all(jnp.isfinite(lp)))
    value, (grads, grads_x) = value_and_grads(state, 1e3 * x, conds)
    assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grads_x)))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="shape"):
        TRENF((8, 4), rngs=rbg_rngs(0))
    with pytest.raises(ValueError, match="data_scale"):
        TRENF((8, 8), data_scale=0.0, rngs=rbg_rngs(0))
    with pytest.raises(ValueError, match="n_psi_bins"):
        TRENF((8, 8), n_psi_bins=1, rngs=rbg_rngs(0))
    with pytest.raises(ValueError, match="log_offset"):
        TRENF((8, 8), log_offset=-0.5, rngs=rbg_rngs(0))


def test_log_offset_is_the_plain_model_plus_the_pixel_log_jacobian(flows, conds):
    """log(1 + c + x) standardisation: the same network without the transform differs by
    exactly the pixel log-Jacobian, and samples stay inside the support x > -1 - c."""
    c = 0.01
    model, plain = flows["trenf_log_offset"].module, flows["trenf"].module
    for a, b in zip(  # the same parameters: built from the same seeds and noise
        jax.tree.leaves(nnx.state(model, nnx.Param)),
        jax.tree.leaves(nnx.state(plain, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    x = contrasts(8)
    u = jnp.log(x + 1.0 + c)
    np.testing.assert_allclose(
        model.log_prob(x, conds),
        plain.log_prob(u, conds) - jnp.sum(u, axis=(1, 2)),
        rtol=1e-5,
    )
    samples = model.sample(jax.random.key(0), conds)
    assert bool(jnp.all(samples > -1.0 - c))


def test_log_offset_support_is_checked_by_posteriors_and_model_for_data(flows):
    x = contrasts(8).at[0, 2, 3].set(-1.5)
    from fieldflow import inference as inf

    with pytest.raises(ValueError, match="log transform"):
        inf.flow_posterior(flows["trenf_log_offset"].module, np.asarray(x[0]), inf.theta_grid(4, 4))
    from fieldflow.train import model_for_data

    with pytest.raises(ValueError, match="use a larger one"):
        model_for_data("trenf", np.asarray(x), log_offset=0.01)
    small = dict(n_layers=1, hidden=(8,))
    fresh = model_for_data("trenf", np.asarray(contrasts(8, batch=16)), log_offset=0.01, **small)
    assert fresh.config["log_offset"] == 0.01
    assert abs(fresh.data_scale - float(np.std(np.log(contrasts(8, batch=16) + 1.01)))) < 1e-4
