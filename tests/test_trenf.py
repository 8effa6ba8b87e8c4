"""TRENF: exactness (round trip, brute-force log-determinant), symmetry, conditioning, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import perturb
from flax import nnx

from fieldflow import TRENF


def make_model(n, seed=0, **kwargs):
    kwargs.setdefault("n_layers", 3)
    kwargs.setdefault("hidden", (16,))
    return perturb(TRENF((n, n), rngs=nnx.Rngs(seed), **kwargs), seed=seed + 1, scale=0.2)


def fields(n, batch=3, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, n, n), dtype=jnp.float32)


@pytest.mark.parametrize("n", [8, 9])
def test_round_trip_both_directions(n, conds):
    model = make_model(n, data_shift=0.1, data_scale=0.7)
    x = fields(n)
    z, _ = model.forward(x, conds)
    np.testing.assert_allclose(model.inverse(z, conds), x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        model.forward(model.inverse(x, conds), conds)[0], x, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("n", [8, 9])
def test_logdet_matches_brute_force_jacobian(n, conds):
    model = make_model(n, data_shift=-0.2, data_scale=1.3)
    x = 1.5 * fields(n, batch=1, seed=3)
    for c in conds:
        c = c[None]
        _, logdet = model.forward(x, c)

        def flat(v, c=c):
            return model.forward(v.reshape(1, n, n), c)[0].ravel()

        jac = jax.jacfwd(flat)(x.ravel())
        sign, brute = jnp.linalg.slogdet(jac)
        assert float(sign) > 0
        assert abs(float(brute) - float(logdet[0])) < 1e-3


def test_log_prob_is_normal_plus_logdet(conds):
    model = make_model(8)
    x = fields(8)
    z, logdet = model.forward(x, conds)
    expected = -0.5 * jnp.sum(z**2, axis=(1, 2)) - 32 * np.log(2 * np.pi) + logdet
    np.testing.assert_allclose(model.log_prob(x, conds), expected, rtol=1e-6)


def symmetries(x):
    yield "shift", jnp.roll(x, (3, 5), axis=(1, 2))
    yield "shift1", jnp.roll(x, 1, axis=2)
    for k in (1, 2, 3):
        yield f"rot{k}", jnp.rot90(x, k, axes=(1, 2))
    yield "flip_y", x[:, ::-1, :]
    yield "flip_x", x[:, :, ::-1]
    yield "transpose", jnp.swapaxes(x, 1, 2)


@pytest.mark.parametrize("n", [8, 9])
def test_log_prob_invariant_under_lattice_symmetries(n, conds):
    model = make_model(n)
    x = fields(n, seed=4)
    ref = model.log_prob(x, conds)
    for name, xt in symmetries(x):
        np.testing.assert_allclose(model.log_prob(xt, conds), ref, rtol=2e-5, err_msg=name)


def test_non_radial_control_model_is_not_rotation_invariant(conds):
    model = make_model(8, radial=False)
    x = fields(8, seed=4)
    ref = model.log_prob(x, conds)
    rotated = model.log_prob(jnp.rot90(x, 1, axes=(1, 2)), conds)
    assert float(jnp.max(jnp.abs(rotated - ref))) > 1e-2
    # still translation invariant
    np.testing.assert_allclose(model.log_prob(jnp.roll(x, 2, axis=1), conds), ref, rtol=2e-5)


def test_log_prob_depends_on_condition(conds):
    model = make_model(8)
    x = jnp.broadcast_to(fields(8, batch=1), (3, 8, 8))
    lp = model.log_prob(x, conds)
    assert float(jnp.min(jnp.abs(jnp.diff(lp)))) > 1e-3


def test_samples_shape_finite_and_key_dependent(conds):
    model = make_model(8)
    a = model.sample(jax.random.key(0), conds)
    b = model.sample(jax.random.key(1), conds)
    assert a.shape == (3, 8, 8) and a.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(a)))
    assert float(jnp.max(jnp.abs(a - b))) > 1e-2


def test_unconditional_model():
    model = make_model(8, cond_dim=0)
    x = model.sample(jax.random.key(0), num=4)
    assert x.shape == (4, 8, 8)
    lp = model.log_prob(x)
    assert lp.shape == (4,) and bool(jnp.all(jnp.isfinite(lp)))
    with pytest.raises(ValueError, match="unconditional"):
        model.log_prob(x, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="num"):
        model.sample(jax.random.key(0))


def test_initialisation_is_near_but_not_exactly_identity(conds):
    model = TRENF((8, 8), n_layers=2, hidden=(8,), rngs=nnx.Rngs(0))
    x = fields(8)
    z, logdet = model.forward(x, conds)
    err = float(jnp.max(jnp.abs(z - x)))
    assert 0.0 < err < 0.5


def test_no_nan_for_large_finite_input(conds):
    model = make_model(8)
    x = 1e3 * fields(8)
    lp = model.log_prob(x, conds)
    assert bool(jnp.all(jnp.isfinite(lp)))
    grads = jax.grad(lambda v: model.log_prob(v, conds).sum())(x)
    assert bool(jnp.all(jnp.isfinite(grads)))


def test_works_under_jit_and_grad(conds):
    model = make_model(8)
    graphdef, state = nnx.split(model)

    @jax.jit
    def loss(state, x, c):
        return -nnx.merge(graphdef, state).log_prob(x, c).mean()

    x = fields(8)
    value, grads = jax.value_and_grad(loss)(state, x, conds)
    assert np.isclose(float(value), -float(model.log_prob(x, conds).mean()), rtol=1e-5)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "x_shape, cond, match",
    [
        ((3, 8), None, "shape"),
        ((3, 8, 9), None, "square"),
        ((3, 16, 16), None, "shape"),
        ((8, 8), None, "shape"),
        ((3, 8, 8), np.ones((2, 2)), "batch"),
        ((3, 8, 8), np.ones((3, 3)), "shape"),
        ((3, 8, 8), None, "required"),
        ((3, 8, 8), np.full((3, 2), 0.9), "outside the trained range"),
    ],
)
def test_bad_input_raises(x_shape, cond, match):
    model = make_model(8)
    with pytest.raises(ValueError, match=match):
        model.log_prob(np.zeros(x_shape, np.float32), cond)


def test_non_finite_input_raises(conds):
    model = make_model(8)
    x = np.array(fields(8))
    x[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        model.log_prob(x, conds)
    c = np.asarray(conds).copy()
    c[0, 1] = np.inf
    with pytest.raises(ValueError, match="cond contains NaN"):
        model.forward(np.zeros((3, 8, 8)), c)
    with pytest.raises(ValueError, match="z contains NaN"):
        model.inverse(np.full((3, 8, 8), np.inf), conds)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="shape"):
        TRENF((8, 4), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="data_scale"):
        TRENF((8, 8), data_scale=0.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="n_psi_bins"):
        TRENF((8, 8), n_psi_bins=1, rngs=nnx.Rngs(0))


def contrasts(n, batch=3, seed=0):
    """Positive-skewed density contrasts > -1 (a lognormal-like field), heavy upper tail."""
    g = 0.8 * fields(n, batch, seed)
    return jnp.exp(g - 0.32) - 1.0


def test_log_offset_transform_is_exact_and_symmetric(conds):
    """log(1 + c + x) standardisation: round trip, brute-force logdet, lattice invariance."""
    n, c = 8, 0.01
    model = make_model(n, data_shift=-0.3, data_scale=0.8, log_offset=c)
    x = contrasts(n)
    z, _ = model.forward(x, conds)
    np.testing.assert_allclose(model.inverse(z, conds), x, rtol=1e-4, atol=1e-4)
    cond = conds[:1]
    _, logdet = model.forward(x[:1], cond)
    jac = jax.jacfwd(lambda v: model.forward(v.reshape(1, n, n), cond)[0].ravel())(x[0].ravel())
    sign, brute = jnp.linalg.slogdet(jac)
    assert float(sign) > 0 and abs(float(brute) - float(logdet[0])) < 1e-3
    # the same network without the transform differs by exactly the pixel log-Jacobian
    plain = make_model(n, data_shift=-0.3, data_scale=0.8)
    u = jnp.log(x + 1.0 + c)
    np.testing.assert_allclose(
        model.log_prob(x, conds),
        plain.log_prob(u, conds) - jnp.sum(u, axis=(1, 2)),
        rtol=1e-5,
    )
    ref = model.log_prob(x, conds)
    for name, xt in symmetries(x):
        np.testing.assert_allclose(model.log_prob(xt, conds), ref, rtol=2e-5, err_msg=name)
    samples = model.sample(jax.random.key(0), conds)
    assert bool(jnp.all(samples > -1.0 - c))


def test_log_offset_refuses_maps_outside_its_domain(conds):
    model = make_model(8, log_offset=0.01)
    x = contrasts(8).at[0, 2, 3].set(-1.5)
    with pytest.raises(ValueError, match="log transform"):
        model.log_prob(x, conds)
    from fieldflow import inference as inf

    with pytest.raises(ValueError, match="log transform"):
        inf.flow_posterior(model, np.asarray(x[0]), inf.theta_grid(4, 4))
    with pytest.raises(ValueError, match="log_offset"):
        make_model(8, log_offset=-0.5)
    from fieldflow.train import model_for_data

    with pytest.raises(ValueError, match="use a larger one"):
        model_for_data("trenf", np.asarray(x), log_offset=0.01)
    fresh = model_for_data("trenf", np.asarray(contrasts(8, batch=16)), log_offset=0.01)
    assert fresh.config["log_offset"] == 0.01
    assert abs(fresh.data_scale - float(np.std(np.log(contrasts(8, batch=16) + 1.01)))) < 1e-4
