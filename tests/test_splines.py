import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fieldflow.splines import (
    cubic_spline_basis,
    rq_forward,
    rq_identity_params,
    rq_inverse,
    rq_knots,
)

BOUND = 3.0

# The tests run the splines jitted, as the models do: one compile per function and shape
# instead of one per primitive (eager op-by-op), which made this file slow.
forward = jax.jit(rq_forward)
inverse = jax.jit(rq_inverse)
knots_of = jax.jit(rq_knots, static_argnums=1)


def random_knots(seed, n_bins=8, batch=4, scale=2.0):
    raw = scale * jax.random.normal(jax.random.key(seed), (batch, 3 * n_bins - 1))
    return knots_of(raw, BOUND)


def test_identity_parameters_give_identity():
    knots = knots_of(jnp.asarray(rq_identity_params(6))[None], BOUND)
    x = jnp.linspace(-5, 5, 101)[None]
    y, logd = forward(x, knots)
    np.testing.assert_allclose(y, x, atol=1e-5)
    np.testing.assert_allclose(logd, 0.0, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_round_trip_and_log_derivative(scale):
    knots = random_knots(0, scale=scale)
    x = jax.random.uniform(jax.random.key(1), (4, 500), minval=-4.0, maxval=4.0)
    y, logd = forward(x, knots)
    x_back, logd_inv = inverse(y, knots)
    # float32 round-off in y, divided by the local slope, bounds the error in x
    np.testing.assert_allclose((x_back - x) * jnp.exp(logd), 0.0, atol=1e-5 * scale**2)
    np.testing.assert_allclose(forward(x_back, knots)[0], y, atol=1e-5 * scale**2)
    if scale == 1.0:  # well-conditioned: exact in x and in the log-derivative too
        np.testing.assert_allclose(x_back, x, atol=1e-4)
        np.testing.assert_allclose(logd_inv, logd, atol=1e-4)

    # elementwise map: a JVP with ones is the diagonal of the Jacobian
    def diagonal(v, k):
        return jax.jvp(lambda u: rq_forward(u, k)[0], (v,), (jnp.ones_like(v),))[1]

    dydx = jax.jit(diagonal)(x, knots)
    np.testing.assert_allclose(jnp.log(dydx), logd, atol=1e-3)


def test_monotone_continuous_and_identity_outside():
    knots = random_knots(2, scale=3.0)
    x = jnp.broadcast_to(jnp.linspace(-6, 6, 4001), (4, 4001))
    y, _ = forward(x, knots)
    assert bool(jnp.all(jnp.diff(y, axis=-1) > 0))
    xk, yk, _ = knots  # continuous: each knot maps onto its knot from both sides
    for eps in (-1e-4, 0.0, 1e-4):
        np.testing.assert_allclose(forward(xk + eps, knots)[0], yk, atol=1e-4 * 50)
    outside = jnp.abs(x) > BOUND
    np.testing.assert_allclose(jnp.where(outside, y - x, 0.0), 0.0, atol=1e-6)


def test_extreme_parameters_stay_finite_with_finite_gradients():
    raw = jnp.concatenate(
        [jnp.full((1, 8), 50.0), jnp.full((1, 8), -50.0), jnp.full((1, 7), -80.0)], axis=-1
    )
    x = jnp.linspace(-10, 10, 257)[None]

    def total(raw, x):
        y, logd = rq_forward(x, rq_knots(raw, BOUND))
        return jnp.sum(y) + jnp.sum(logd)

    value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(raw, x)
    assert np.isfinite(float(value))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    x_back, _ = inverse(forward(x, knots_of(raw, BOUND))[0], knots_of(raw, BOUND))
    assert bool(jnp.all(jnp.isfinite(x_back)))


@pytest.mark.parametrize("n_knots", [4, 17])
def test_cubic_spline_basis_interpolates_and_reproduces_lines(n_knots):
    knots = np.linspace(0.0, 10.0, n_knots)
    values = np.random.default_rng(0).normal(size=n_knots)
    np.testing.assert_allclose(values @ cubic_spline_basis(knots, knots), values, atol=1e-10)
    pts = np.linspace(0, 10, 37)
    np.testing.assert_allclose(
        (2 * knots + 1) @ cubic_spline_basis(knots, pts), 2 * pts + 1, atol=1e-10
    )


def test_hand_written_derivatives_match_autodiff():
    """rq_forward's closed-form JVP (and its transpose) against autodiff of the plain arithmetic."""
    from fieldflow.splines import _rq_parts

    raw = 2.0 * jax.random.normal(jax.random.key(3), (3, 3 * 6 - 1))
    x = jax.random.uniform(jax.random.key(4), (3, 300), minval=-4.0, maxval=4.0)

    def loss(spline):
        def total(raw, x):
            y, logd = spline(x, rq_knots(raw, BOUND))
            return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(logd) * y)

        return total

    plain = loss(lambda v, k: _rq_parts(v, k)[0])
    fast = loss(rq_forward)

    @jax.jit  # one compile for all four derivatives
    def derivatives(raw, x, tangents):
        grads = [jax.grad(f, argnums=(0, 1))(raw, x) for f in (fast, plain)]
        jvps = [jax.jvp(f, (raw, x), tangents)[1] for f in (fast, plain)]
        return grads, jvps

    tangents = (jax.random.normal(jax.random.key(5), raw.shape), jnp.ones_like(x))
    (grad_fast, grad_plain), (jvp_fast, jvp_plain) = derivatives(raw, x, tangents)
    for got, want in zip(grad_fast, grad_plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))
    np.testing.assert_allclose(jvp_fast, jvp_plain, rtol=1e-4)
