"""Particle-mesh slices: end to end on 16^3, 2LPT, growth of the large scales, linear theory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_gen import expected_linear_map_power, nbody, nbody_simulation
from data_gen.nbody import _growth_factor
from fieldflow.fourier import cross_power_spectrum, power_spectrum, radial_average_half

BOX = 256.0
# Every 16^3 run below (and the N-body data set of test_data_gen_dataset.py) uses these
# static settings and 2 simulations per call: one compiled simulator for all of them, in
# one worker (the xdist group)
PM16 = dict(n_mesh=16, box=BOX, n_steps=10)
pytestmark = pytest.mark.xdist_group("nbody")
# spectra compiled once per shape, not once per operation
power = jax.jit(power_spectrum, static_argnums=1)
cross_power = jax.jit(cross_power_spectrum, static_argnums=2)


def test_nbody_end_to_end_16():
    maps = nbody(jax.random.PRNGKey(0), [[0.3, 0.8], [0.45, 1.0]], n=16, **PM16)
    assert maps.shape == (8, 16, 16) and maps.dtype == jnp.float32
    maps = np.asarray(maps)
    assert np.all(np.isfinite(maps)) and float(maps.min()) > -1.0
    assert abs(float(maps.mean())) < 1e-4  # particles conserved
    # same initial phases, sigma8 doubled: the (mostly linear) 16 h^-1 Mpc pixels roughly double
    key = np.asarray(jax.random.PRNGKey(3))
    pair = np.asarray(nbody_simulation(np.stack([key, key]), [[0.3, 0.5], [0.3, 1.0]], **PM16))
    assert 1.7 < float(pair[1].std()) / float(pair[0].std()) < 2.4
    again = nbody(jax.random.PRNGKey(0), [[0.3, 0.8], [0.45, 1.0]], n=16, **PM16)
    np.testing.assert_array_equal(np.asarray(maps), np.asarray(again))


def test_lpt2_runs_and_large_scales_grow_linearly():
    """Same seeds at a_init (2LPT only) and at a = 1: cross ratio = D(1) / D(a_init) at low k."""
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    early = np.asarray(nbody_simulation(keys, (0.3, 0.8), n_mesh=16, box=BOX, n_steps=0))
    late = np.asarray(nbody_simulation(keys, (0.3, 0.8), **PM16))
    early, late = early.reshape(-1, 16, 16), late.reshape(-1, 16, 16)
    cross, auto = np.asarray(cross_power(late, early, BOX)), np.asarray(power(early, BOX))
    ratio = cross.mean(0) / auto.mean(0)
    # D(a) as expected_linear_map_power computes it (one compiled function)
    d = [
        float(_growth_factor(np.float32(0.3), np.float32(0.8), np.float32([a]))[0])
        for a in (0.1, 1.0)
    ]
    # converged in n_steps; the PM force of a 16^3 mesh (no CIC deconvolution) slows growth by
    # ~9% at k = k_Nyquist / 8 (measured: 6% on 32^3, 3.5% on 64^3)
    np.testing.assert_allclose(ratio[0], d[1] / d[0], rtol=0.1)
    assert ratio[0] < d[1] / d[0] * 1.02


def test_early_time_power_matches_linear_theory():
    n = 32
    keys = jax.random.split(jax.random.PRNGKey(2), 6)
    maps = np.asarray(nbody_simulation(keys, (0.3, 0.8), n_mesh=n, box=BOX, n_steps=0))
    pk = np.asarray(power(maps.reshape(-1, n, n), BOX)).mean(0)
    ref = np.asarray(
        jax.jit(radial_average_half, static_argnums=(1, 2))(
            np.asarray(expected_linear_map_power((0.3, 0.8), n, BOX, 4, 0.1), np.float32), n, BOX
        )
    )
    low = slice(0, 6)  # k <= 0.15 h/Mpc, well below the mesh Nyquist frequency
    assert abs(np.mean(pk[low] / ref[low]) - 1) < 0.05, pk[low] / ref[low]


def test_nbody_bad_arguments():
    with pytest.raises(ValueError, match="n_slabs"):
        nbody(jax.random.PRNGKey(0), (0.3, 0.8), n=16, n_slabs=3)
    with pytest.raises(ValueError, match="multiple"):
        nbody(jax.random.PRNGKey(0), (0.3, 0.8), n=12, n_mesh=16)
    with pytest.raises(ValueError, match="sigma8"):
        nbody(jax.random.PRNGKey(0), (0.3, 1.5), n=16)
