"""RealNVP baseline: exactness (round trip, brute-force log-determinant), conditioning,
sampling, configuration round trip, bad input.

Models are small (hidden width 8, two couplings per mask type) and shared between tests;
every model computation runs jitted, so the file is dominated by a handful of compiles.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fieldflow.models.realnvp import RealNVP, squeeze, unsqueeze

SMALL = dict(n_couplings_per_scale=2, hidden_channels=8, n_res_blocks=1)


def rngs(seed: int = 0) -> nnx.Rngs:
    """Flax streams on the "rbg" PRNG: on CPU its initialisers compile ~10x faster than
    threefry's, which otherwise dominates the runtime of this file."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl="rbg")


def perturb(model, seed=1, scale=0.05):
    """Add N(0, scale^2) noise to every parameter, in place (numpy noise: nothing to compile)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    noise = lambda p: p + scale * rng.standard_normal(p.shape).astype(np.float32)  # noqa: E731
    nnx.update(model, jax.tree.map(noise, state))
    return model


@functools.cache
def _cached_model(n, n_scales, cond_dim, perturbed):
    model = RealNVP(
        (n, n),
        n_scales=n_scales,
        cond_dim=cond_dim,
        data_shift=0.1,
        data_scale=0.7,
        rngs=rngs(0),
        **SMALL,
    )
    return perturb(model) if perturbed else model


def make_model(n=8, n_scales=2, cond_dim=2, perturbed=True):
    """A shared model; tests must not modify it."""
    return _cached_model(n, n_scales, cond_dim, perturbed)


def fields(n, batch=3, seed=0):
    return jax.random.normal(key(seed), (batch, n, n), dtype=jnp.float32)


fwd = nnx.jit(lambda m, x, c: m.forward(x, c))
inv = nnx.jit(lambda m, z, c: m.inverse(z, c))
log_prob = nnx.jit(lambda m, x, c: m.log_prob(x, c))
sample = nnx.jit(lambda m, key, c: m.sample(key, c))


# ------------------------------------------------------------------------ exactness
def test_squeeze_is_a_permutation():
    h = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    s = squeeze(h)
    assert s.shape == (2, 2, 3, 12)
    np.testing.assert_array_equal(unsqueeze(s), h)
    np.testing.assert_array_equal(np.sort(np.ravel(s)), np.ravel(h))


@pytest.mark.parametrize("n, n_scales", [(8, 1), (8, 2), (16, 2)])
def test_round_trip_both_directions(n, n_scales, conds):
    model = make_model(n, n_scales)
    x = fields(n)
    z, logdet = fwd(model, x, conds)
    assert z.shape == x.shape and logdet.shape == (3,)
    assert float(jnp.max(jnp.abs(z - x))) > 0.1  # the perturbed model is far from identity
    np.testing.assert_allclose(inv(model, z, conds), x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fwd(model, inv(model, x, conds), conds)[0], x, rtol=1e-4, atol=1e-4)


def test_logdet_matches_brute_force_jacobian(conds):
    """Whole model (standardisation, 2 scales, squeezes, factor-out) on one 8 x 8 map."""
    n = 8
    model = make_model(n, n_scales=2)
    x = 1.5 * fields(n, batch=1, seed=3)

    @jax.jit
    def jacobian(v, c):  # float32 (N^2, N^2) Jacobian of the whole model by forward autodiff
        return jax.jacfwd(lambda u: model.forward(u.reshape(1, n, n), c)[0].ravel())(v)

    for c in conds:
        c = c[None]
        _, logdet = fwd(model, x, c)
        jac = np.asarray(jacobian(x.ravel(), c), np.float64)
        assert np.abs(jac - np.diag(np.diag(jac))).max() > 0.1  # couplings mix pixels
        sign, value = np.linalg.slogdet(jac)
        assert float(sign) > 0
        assert abs(float(value) - float(logdet[0])) < 1e-3


def test_log_offset_standardisation_round_trip_and_log_jacobian(conds):
    """log(1 + c + x) before the couplings: exact inverse, and log p shifted by -sum log(1+c+x)."""
    n, c = 8, 0.01
    model = make_model(n)
    logged = RealNVP((n, n), data_shift=0.1, data_scale=0.7, log_offset=c, rngs=rngs(0), **SMALL)
    nnx.update(logged, nnx.state(model, nnx.Param))
    x = jnp.exp(0.8 * fields(n) - 0.32) - 1.0
    u = jnp.log(x + 1.0 + c)
    z, _ = fwd(logged, x, conds)
    np.testing.assert_allclose(inv(logged, z, conds), x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        log_prob(logged, x, conds),
        log_prob(model, u, conds) - jnp.sum(u, axis=(1, 2)),
        rtol=1e-5,
    )
    assert logged.config["log_offset"] == c


def test_log_prob_is_normal_plus_logdet(conds):
    model = make_model()
    x = fields(8)
    z, logdet = fwd(model, x, conds)
    expected = -0.5 * jnp.sum(z**2, axis=(1, 2)) - 32 * np.log(2 * np.pi) + logdet
    np.testing.assert_allclose(log_prob(model, x, conds), expected, rtol=1e-5)


def test_initialisation_is_near_but_not_exactly_identity(conds):
    model = make_model(perturbed=False)
    x = fields(8)
    z, logdet = fwd(model, x, conds)
    u = (x - 0.1) / 0.7  # the model's fixed standardisation
    err = float(jnp.max(jnp.abs(z - u)))
    assert 0.0 < err < 0.5
    np.testing.assert_allclose(logdet, -64 * np.log(0.7), atol=0.5)


def test_periodic_but_not_rotation_invariant(conds):
    """Circular padding makes log p invariant under shifts by multiples of 2**n_scales
    (the masks and squeezes repeat with that period); other shifts and rotations change
    it: the baseline is not equivariant."""
    model = make_model()
    x = fields(8, seed=4)
    ref = log_prob(model, x, conds)
    shifted = jnp.roll(x, (4, -4), axis=(1, 2))
    np.testing.assert_allclose(log_prob(model, shifted, conds), ref, rtol=1e-5)
    for xt in (jnp.roll(x, 1, axis=2), jnp.rot90(x, 1, axes=(1, 2))):
        assert float(jnp.max(jnp.abs(log_prob(model, xt, conds) - ref))) > 1e-2


# --------------------------------------------------------------------- conditioning
def test_log_prob_depends_on_condition(conds):
    model = make_model()
    x = jnp.broadcast_to(fields(8, batch=1), (3, 8, 8))
    lp = log_prob(model, x, conds)
    assert float(jnp.min(jnp.abs(jnp.diff(lp)))) > 1e-3


def test_samples_shape_finite_and_key_dependent(conds):
    model = make_model()
    a = sample(model, key(0), conds)
    b = sample(model, key(1), conds)
    assert a.shape == (3, 8, 8) and a.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(a)))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2


def test_unconditional_model():
    model = make_model(n_scales=1, cond_dim=0)
    draw = nnx.jit(lambda m, key: m.sample(key, num=4))
    x = draw(model, key(0))
    assert x.shape == (4, 8, 8) and bool(jnp.all(jnp.isfinite(x)))
    lp = log_prob(model, x, None)
    assert lp.shape == (4,) and bool(jnp.all(jnp.isfinite(lp)))
    with pytest.raises(ValueError, match="unconditional"):
        model.log_prob(x, jnp.full((4, 2), 0.3))
    with pytest.raises(ValueError, match="num"):
        model.sample(key(0))


# ----------------------------------------------------------------- training, config
def test_jit_and_grad_finite_also_for_large_input(conds):
    model = make_model(n_scales=1)
    graphdef, state = nnx.split(model)

    @jax.jit
    def loss(state, x, c):
        return -nnx.merge(graphdef, state).log_prob(x, c).mean()

    x = fields(8)
    value, grads = jax.value_and_grad(loss)(state, x, conds)
    assert np.isclose(float(value), -float(log_prob(model, x, conds).mean()), rtol=1e-5)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    value, grads = jax.value_and_grad(loss)(state, 30.0 * x, conds)
    assert np.isfinite(float(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_config_round_trip(conds):
    model = make_model()
    config = json.loads(json.dumps(model.config))
    assert config["data_shift"] == 0.1 and config["data_scale"] == 0.7
    rebuilt = RealNVP(**config, rngs=rngs(1))
    shapes = jax.tree.map(jnp.shape, nnx.state(model, nnx.Param))
    assert jax.tree.map(jnp.shape, nnx.state(rebuilt, nnx.Param)) == shapes
    assert rebuilt.num_params() == model.num_params()
    nnx.update(rebuilt, nnx.state(model, nnx.Param))
    x = fields(8)
    np.testing.assert_array_equal(fwd(rebuilt, x, conds)[0], fwd(model, x, conds)[0])


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "x_shape, cond, match",
    [
        ((3, 8), None, "shape"),
        ((8, 8), None, "shape"),
        ((3, 8, 9), None, "square"),
        ((3, 16, 16), None, "shape"),
        ((3, 8, 8), np.full((2, 2), 0.3), "batch"),
        ((3, 8, 8), np.full((3, 3), 0.3), "shape"),
        ((3, 8, 8), None, "required"),
        ((3, 8, 8), np.full((3, 2), 0.9), "outside the trained range"),
    ],
)
def test_bad_input_raises(x_shape, cond, match):
    model = make_model()
    with pytest.raises(ValueError, match=match):
        model.log_prob(np.zeros(x_shape, np.float32), cond)


def test_non_finite_input_raises(conds):
    model = make_model()
    x = np.array(fields(8))
    x[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        model.log_prob(x, conds)
    with pytest.raises(ValueError, match="x contains NaN"):
        model.forward(x, conds)
    c = np.asarray(conds).copy()
    c[0, 1] = np.inf
    with pytest.raises(ValueError, match="cond contains NaN"):
        model.forward(np.zeros((3, 8, 8)), c)
    with pytest.raises(ValueError, match="z contains NaN"):
        model.inverse(np.full((3, 8, 8), np.inf), conds)
    with pytest.raises(ValueError, match="shape"):
        model.sample(key(0), np.full((3, 2, 1), 0.3))


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
