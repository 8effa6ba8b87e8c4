"""RealNVP-specific behaviour: squeeze, initialisation, the log(1 + c + x) transform,
conditioning, sampling, jit and grad, configuration round trip and refusal. Round trips,
brute-force log-determinants, (non-)invariance under lattice maps and bad input are in
test_contract.py.

Models are small (hidden width 8, two couplings per mask type) and shared with the
contract (conftest.FLOW_SPECS); every model computation runs jitted, so the file is
dominated by a handful of compiles.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import build_realnvp, contrasts, rbg_rngs
from flax import nnx

from fieldflow.models.realnvp import RealNVP, squeeze, unsqueeze

# beside test_contract.py's tests of the shared "realnvp" flow: one worker compiles it
pytestmark = pytest.mark.xdist_group("flow_realnvp")


def key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def fields(n, batch=3, seed=0):
    return jax.random.normal(key(seed), (batch, n, n), dtype=jnp.float32)


def test_squeeze_is_a_permutation():
    h = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    s = jax.jit(squeeze)(h)  # one compile each instead of one per operation
    assert s.shape == (2, 2, 3, 12)
    np.testing.assert_array_equal(jax.jit(unsqueeze)(s), h)
    np.testing.assert_array_equal(np.sort(np.ravel(s)), np.ravel(h))


def test_log_offset_standardisation_adds_the_pixel_log_jacobian(flows, conds):
    """log(1 + c + x) before the couplings: log p shifted by -sum log(1 + c + x)."""
    c = 0.01
    logged = build_realnvp(log_offset=c)  # the log transform itself is in the contract
    plain = flows["realnvp"].module  # (TRENF, multiscale); the same seeds: the same parameters
    for a, b in zip(
        jax.tree.leaves(nnx.state(plain, nnx.Param)),
        jax.tree.leaves(nnx.state(logged, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    x = np.asarray(contrasts(8))
    u = np.log(x + np.float32(1.0 + c))
    np.testing.assert_allclose(
        logged.log_prob(x, conds),
        np.asarray(plain.log_prob(u, conds)) - np.sum(u, axis=(1, 2)),
        rtol=1e-5,
    )
    assert logged.config["log_offset"] == c


def test_initialisation_is_near_but_not_exactly_identity(conds):
    model = build_realnvp(perturbed=False)
    x = np.asarray(fields(8))
    z, logdet = model.forward(x, conds)
    u = (x - 0.1) / 0.7  # the model's fixed standardisation
    err = np.max(np.abs(np.asarray(z) - u))
    assert 0.0 < err < 0.5
    np.testing.assert_allclose(logdet, -64 * np.log(0.7), atol=0.5)


def test_log_prob_depends_on_condition(flows, conds):
    model = flows["realnvp"].module
    x = np.broadcast_to(np.asarray(fields(8))[:1], (3, 8, 8))  # one map, 3 conditions
    lp = np.asarray(model.log_prob(x, conds))
    assert np.min(np.abs(np.diff(lp))) > 1e-3


def test_samples_shape_finite_and_key_dependent(flows, conds):
    model = flows["realnvp"].module
    a = model.sample(key(0), conds)
    b = model.sample(key(1), conds)
    assert a.shape == (3, 8, 8) and a.dtype == jnp.float32
    a, b = np.asarray(a), np.asarray(b)
    assert np.all(np.isfinite(a))
    assert np.max(np.abs(a - b)) > 1e-2


def test_unconditional_model_samples_and_log_prob(flows):
    model = flows["realnvp_1_scale_unconditional"].module
    x = model.sample(key(0), num=3)
    assert x.shape == (3, 8, 8) and np.all(np.isfinite(np.asarray(x)))
    lp = model.log_prob(x, None)
    assert lp.shape == (3,) and np.all(np.isfinite(np.asarray(lp)))


def test_jit_and_grad_finite_also_for_large_input(flows):
    model = flows["realnvp_1_scale_unconditional"].module
    graphdef, state = nnx.split(model)

    def loss(state, x):
        return -nnx.merge(graphdef, state).log_prob(x).mean()

    def finite(tree):  # numpy: an eager jnp check would compile once per leaf shape
        return all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(tree))

    value_and_grad = jax.jit(jax.value_and_grad(loss))  # one compile
    x = fields(8)
    value, grads = value_and_grad(state, x)
    assert np.isclose(float(value), -float(np.mean(model.log_prob(x))), rtol=1e-5)
    assert finite(grads)
    value, grads = value_and_grad(state, jnp.asarray(30.0 * np.asarray(x)))
    assert np.isfinite(float(value))
    assert finite(grads)


def test_config_round_trip(flows, conds):
    model = flows["realnvp"].module
    config = json.loads(json.dumps(model.config))
    assert config["data_shift"] == 0.1 and config["data_scale"] == 0.7
    rebuilt = RealNVP(**config, rngs=rbg_rngs(1))
    shapes = jax.tree.map(jnp.shape, nnx.state(model, nnx.Param))
    assert jax.tree.map(jnp.shape, nnx.state(rebuilt, nnx.Param)) == shapes
    assert rebuilt.num_params() == model.num_params()
    nnx.update(rebuilt, nnx.state(model, nnx.Param))
    x = fields(8)
    np.testing.assert_array_equal(rebuilt.forward(x, conds)[0], model.forward(x, conds)[0])


@pytest.mark.parametrize(
    "shape, kwargs, match",
    [
        ((8, 4), {}, "shape"),
        ((12, 12), {"n_scales": 3}, "divisible"),
        ((6, 6), {"n_scales": 2}, "divisible"),
        ((8, 8), {"n_scales": 0}, "n_scales"),
        ((8, 8), {"n_couplings_per_scale": 0}, "n_couplings_per_scale"),
        ((8, 8), {"data_scale": 0.0}, "data_scale"),
        ((8, 8), {"cond_low": (0.5, 0.5)}, "cond_high"),
        ((8, 8), {"max_log_scale": -1.0}, "max_log_scale"),
    ],
)
def test_bad_configuration_raises(shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        RealNVP(shape, rngs=nnx.Rngs(0), **kwargs)
