"""The latent MAP of a flow: for a Gaussian (linear) flow it is the Wiener filter."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fieldflow import TRENF
from fieldflow.denoise import flow_latent_map, wiener_filter
from fieldflow.masks import make_mask


def test_latent_map_of_a_gaussian_flow_is_the_wiener_filter():
    n = 16
    # Psi = identity (no noise on the spline parameters), T a random positive radial kernel:
    # x = F^-1[F z / T], a Gaussian field with S_k = <|FFT x|^2> = N^2 / T(k)^2
    model = TRENF((n, n), n_layers=1, cond_dim=0, n_t_knots=6, init_noise=0.0, rngs=nnx.Rngs(0))
    values = 0.5 * jax.random.normal(jax.random.key(1), (1, 6)) - 1.0
    state = nnx.state(model, nnx.Param)
    base = state["conditioner"]["base"]
    base[...] = base[...].at[0, :6].set(values[0])
    nnx.update(model, state)
    log_t = model._grid.log_t(values)[0]
    signal = n**2 * np.exp(-2.0 * np.asarray(log_t))

    rng = np.random.default_rng(0)
    truth = np.asarray(model.sample(jax.random.key(2), num=3))
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
    assert jnp.all(jnp.isfinite(latent.objective))


def test_maps_of_a_log_transformed_flow_stay_in_its_support():
    """A flow on log(1 + c + x): a start below -1 - c is raised into the support (latent MAP)
    and the data-space MAP optimises log(1 + s) by default; both end finite and > -1 - c."""
    from fieldflow.denoise import flow_map

    n, c = 16, 0.01
    model = TRENF((n, n), n_layers=1, cond_dim=0, log_offset=c, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    truth = np.exp(0.6 * rng.normal(size=(2, n, n)) - 0.18).astype(np.float32) - 1.0
    mask = np.asarray(make_mask(jax.random.key(3), n, 0.2))
    d = (mask * (truth + 0.5 * rng.normal(size=truth.shape))).astype(np.float32)
    init = d.copy()
    init[:, 0, 0] = -3.0  # outside the support: forward(init) would be NaN
    latent = flow_latent_map(model, d, mask, 0.25, init=init, steps=50)
    field = flow_map(model.log_prob, d, mask, 0.25, init=init, steps=50)
    for res in (latent, field):
        s = np.asarray(res.field)
        assert np.all(np.isfinite(s)) and np.all(s > -1.0 - c)
        assert np.all(np.isfinite(np.asarray(res.objective)))
