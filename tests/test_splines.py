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
N_BINS = 8
BATCH = 4

# The tests run the splines jitted, as the models do: one compile per function and shape
# instead of one per primitive (eager op-by-op), which made this file slow. Every test uses
# the same shapes: (BATCH, 3 N_BINS - 1) spline parameters and (BATCH, 4001) points, so each
# function compiles once for the file (its tests share one xdist worker).
pytestmark = pytest.mark.xdist_group("splines")
forward = jax.jit(rq_forward)
inverse = jax.jit(rq_inverse)
knots_of = jax.jit(rq_knots, static_argnums=1)
GRID = np.broadcast_to(np.linspace(-6, 6, 4001, dtype=np.float32), (BATCH, 4001))


def random_raw(seed, scale=2.0):
    return scale * jax.random.normal(jax.random.key(seed), (BATCH, 3 * N_BINS - 1))


def random_knots(seed, scale=2.0):
    return knots_of(random_raw(seed, scale), BOUND)


def test_identity_parameters_give_identity():
    knots = knots_of(np.tile(rq_identity_params(N_BINS), (BATCH, 1)), BOUND)
    x = 5.0 / 6.0 * GRID  # [-5, 5]: inside and outside [-B, B]
    y, logd = forward(x, knots)
    np.testing.assert_allclose(y, x, atol=1e-5)
    np.testing.assert_allclose(logd, 0.0, atol=1e-5)


@jax.jit
def diagonal(v, knots):
    """Elementwise map: a JVP with ones is the diagonal of the Jacobian."""
    return jax.jvp(lambda u: rq_forward(u, knots)[0], (v,), (jnp.ones_like(v),))[1]


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_round_trip_and_log_derivative(scale):
    knots = random_knots(0, scale=scale)
    # 500 points per map, then 3501 more in the (BATCH, 4001) array every test uses
    x = np.concatenate(
        [
            jax.random.uniform(jax.random.key(1), (BATCH, 500), minval=-4.0, maxval=4.0),
            jax.random.uniform(jax.random.key(6), (BATCH, 3501), minval=-4.0, maxval=4.0),
        ],
        axis=1,
    )
    y, logd = forward(x, knots)
    x_back, logd_inv = inverse(y, knots)
    y, logd, x_back, logd_inv = (np.asarray(a) for a in (y, logd, x_back, logd_inv))
    # float32 round-off in y, divided by the local slope, bounds the error in x
    np.testing.assert_allclose((x_back - x) * np.exp(logd), 0.0, atol=1e-5 * scale**2)
    np.testing.assert_allclose(forward(x_back, knots)[0], y, atol=1e-5 * scale**2)
    if scale == 1.0:  # well-conditioned: exact in x and in the log-derivative too (on the
        # first 500 points: among 16000, a rare one loses 2e-4 in the float32 log-derivative)
        np.testing.assert_allclose(x_back[:, :500], x[:, :500], atol=1e-4)
        np.testing.assert_allclose(logd_inv[:, :500], logd[:, :500], atol=1e-4)
    np.testing.assert_allclose(np.log(np.asarray(diagonal(x, knots))), logd, atol=1e-3)


def test_monotone_continuous_and_identity_outside():
    knots = random_knots(2, scale=3.0)
    x = GRID
    y = np.asarray(forward(x, knots)[0])
    assert np.all(np.diff(y, axis=-1) > 0)
    xk, yk, _ = (np.asarray(k) for k in knots)  # continuous: each knot maps onto its knot
    # from both sides; the knots +- 1e-4 are evaluated in one (BATCH, 4001) array
    at_knots = np.concatenate([xk - 1e-4, xk, xk + 1e-4], axis=1)
    padded = np.concatenate([at_knots, GRID[:, at_knots.shape[1] :]], axis=1)
    y_knots = np.asarray(forward(padded, knots)[0])[:, : at_knots.shape[1]]
    np.testing.assert_allclose(y_knots, np.tile(yk, 3), atol=1e-4 * 50)
    outside = np.abs(x) > BOUND
    np.testing.assert_allclose(np.where(outside, y - x, 0.0), 0.0, atol=1e-6)


def test_extreme_parameters_stay_finite_with_finite_gradients():
    """Saturated widths, heights and derivatives: finite values and gradients (through the
    hand-written JVP's transpose) and a finite inverse, also far outside [-B, B]."""
    raw = np.concatenate(
        [np.full((BATCH, N_BINS), 50.0), np.full((BATCH, N_BINS), -50.0)]
        + [np.full((BATCH, N_BINS - 1), -80.0)],
        axis=-1,
        dtype=np.float32,
    )
    x = 10.0 / 6.0 * GRID  # [-10, 10]
    (value, _), (grads, _), _ = derivatives(raw, x, (raw, x))  # the compiled function below
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    knots = knots_of(raw, BOUND)
    x_back, _ = inverse(forward(x, knots)[0], knots)
    assert np.all(np.isfinite(np.asarray(x_back)))


@pytest.mark.parametrize("n_knots", [4, 17])
def test_cubic_spline_basis_interpolates_and_reproduces_lines(n_knots):
    knots = np.linspace(0.0, 10.0, n_knots)
    values = np.random.default_rng(0).normal(size=n_knots)
    np.testing.assert_allclose(values @ cubic_spline_basis(knots, knots), values, atol=1e-10)
    pts = np.linspace(0, 10, 37)
    np.testing.assert_allclose(
        (2 * knots + 1) @ cubic_spline_basis(knots, pts), 2 * pts + 1, atol=1e-10
    )


def _loss(spline):
    def total(raw, x):
        y, logd = spline(x, rq_knots(raw, BOUND))
        return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(logd) * y)

    return total


@jax.jit  # one compile for the values and all four derivatives, shared by two tests
def derivatives(raw, x, tangents):
    """(values, grads, jvps), each (rq_forward's, plain autodiff's) of a scalar loss."""
    from fieldflow.splines import _rq_parts

    fast, plain = _loss(rq_forward), _loss(lambda v, k: _rq_parts(v, k)[0])
    values_and_grads = [jax.value_and_grad(f, argnums=(0, 1))(raw, x) for f in (fast, plain)]
    jvps = [jax.jvp(f, (raw, x), tangents)[1] for f in (fast, plain)]
    return tuple(v for v, _ in values_and_grads), tuple(g for _, g in values_and_grads), jvps


def test_hand_written_derivatives_match_autodiff():
    """rq_forward's closed-form JVP (and its transpose) against autodiff of the plain arithmetic."""
    raw = random_raw(3)
    x = jax.random.uniform(jax.random.key(4), GRID.shape, minval=-4.0, maxval=4.0)
    tangents = (jax.random.normal(jax.random.key(5), raw.shape), np.ones(x.shape, np.float32))
    _, (grad_fast, grad_plain), (jvp_fast, jvp_plain) = derivatives(raw, x, tangents)
    for got, want in zip(grad_fast, grad_plain, strict=True):
        want = np.asarray(want)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.max(np.abs(want)))
    np.testing.assert_allclose(jvp_fast, jvp_plain, rtol=1e-4)
