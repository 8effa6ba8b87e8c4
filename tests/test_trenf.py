"""TRENF-specific behaviour: conditioning, sampling, initialisation, large input, jit and grad,
configuration, and the log(1 + c + x) transform. Round trips, brute-force log-determinants,
lattice symmetries and bad input are in test_contract.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRENF_SMALL, TRENF_STANDARDISATION, contrasts, gaussian_fields, rbg_rngs
from flax import nnx

from fieldflow import TRENF

# beside test_contract.py's tests of the shared "trenf" flow: one worker compiles it
pytestmark = pytest.mark.xdist_group("flow_trenf")


def test_log_prob_depends_on_condition(flows, conds):
    model = flows["trenf"].module
    x = np.broadcast_to(np.asarray(gaussian_fields(8))[:1], (3, 8, 8))  # one map, 3 conditions
    lp = np.asarray(model.log_prob(x, conds))
    assert np.min(np.abs(np.diff(lp))) > 1e-3


def test_samples_shape_finite_and_key_dependent(flows, conds):
    model = flows["trenf"].module
    a = model.sample(jax.random.key(0), conds)
    b = model.sample(jax.random.key(1), conds)
    assert a.shape == (3, 8, 8) and a.dtype == jnp.float32
    a, b = np.asarray(a), np.asarray(b)
    assert np.all(np.isfinite(a))
    assert np.max(np.abs(a - b)) > 1e-2


def test_unconditional_model_samples_and_log_prob(flows):
    model = flows["trenf_9_unconditional"].module
    x = model.sample(jax.random.key(0), num=3)
    assert x.shape == (3, 9, 9)
    lp = model.log_prob(x)
    assert lp.shape == (3,) and np.all(np.isfinite(np.asarray(lp)))


def test_initialisation_is_near_but_not_exactly_identity(conds):
    # the configuration of flows["trenf"], unperturbed: its compiled forward is shared
    model = TRENF((8, 8), hidden=(16,), rngs=rbg_rngs(0), **TRENF_SMALL, **TRENF_STANDARDISATION)
    x = np.asarray(gaussian_fields(8))
    z, logdet = model.forward(x, conds)
    u = (x - model.data_shift) / model.data_scale  # the model's fixed standardisation
    err = np.max(np.abs(np.asarray(z) - u))
    assert 0.0 < err < 0.5


def test_jit_and_grad_finite_also_for_large_input(flows, conds):
    """One jitted value_and_grad in the parameters and the maps: it matches log_prob, and
    log p and both gradients stay finite for large finite maps (1e3 sigma)."""
    model = flows["trenf"].module
    graphdef, state = nnx.split(model)

    def loss(state, x, c):
        return -nnx.merge(graphdef, state).log_prob(x, c).mean()

    def finite(tree):  # numpy: an eager jnp check would compile once per leaf shape
        return all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(tree))

    x = gaussian_fields(8)
    large = jnp.asarray(1e3 * np.asarray(x))
    value_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))  # one compile
    value, (grads, _) = value_and_grads(state, x, conds)
    assert np.isclose(float(value), -float(np.mean(model.log_prob(x, conds))), rtol=1e-5)
    assert finite(grads)
    assert finite(model.log_prob(large, conds))
    value, (grads, grads_x) = value_and_grads(state, large, conds)
    assert np.isfinite(float(value)) and finite(grads_x)
    assert finite(grads)


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
    x = np.asarray(contrasts(8))
    u = np.log(x + np.float32(1.0 + c))
    np.testing.assert_allclose(
        model.log_prob(x, conds),
        np.asarray(plain.log_prob(u, conds)) - np.sum(u, axis=(1, 2)),
        rtol=1e-5,
    )
    samples = model.sample(jax.random.key(0), conds)
    assert np.all(np.asarray(samples) > -1.0 - c)


def test_log_offset_support_is_checked_by_posteriors_and_model_for_data(flows):
    good = np.asarray(contrasts(8))
    x = good.copy()
    x[0, 2, 3] = -1.5
    from fieldflow import inference as inf

    with pytest.raises(ValueError, match="log transform"):
        inf.flow_posterior(flows["trenf_log_offset"].module, x[0], inf.theta_grid(4, 4))
    from fieldflow.train import model_for_data

    with pytest.raises(ValueError, match="use a larger one"):
        model_for_data("trenf", x, log_offset=0.01)
    small = dict(n_layers=1, hidden=(8,))
    fresh = model_for_data("trenf", good, log_offset=0.01, **small)
    assert fresh.config["log_offset"] == 0.01
    assert abs(fresh.data_scale - float(np.std(np.log(good.astype(np.float64) + 1.01)))) < 1e-4
