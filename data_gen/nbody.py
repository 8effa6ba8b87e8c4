"""Particle-mesh N-body slices with jaxpm: 2LPT initial conditions, KDK PM steps, CIC, slabs.

Pipeline for one simulation of theta = (Omega_m, sigma8), periodic box of side L:

1. Linear density at z = 0 on an n_mesh^3 grid with P_lin(k; theta) (jaxpm ``linear_field``;
   the spectrum is jax-cosmo's linear P(k), from the same Omega_m table as ``data_gen.power``).
2. 2LPT displacements and momenta of n_mesh^3 particles at a_init (jaxpm ``lpt``, order 2).
   A *fresh* jax-cosmo object is built inside the jitted function for jaxpm's growth
   functions (jax-cosmo's own power call fills the growth cache without jaxpm's
   second-order entries: ``KeyError: 'h'``).
3. ``n_steps`` kick-drift-kick steps, uniform in a from a_init to 1, of jaxpm's equations of
   motion (grid units, momentum p = a^3 E dx/da):

       dx/da = p / (a^3 E(a)),     dp/da = 3/2 Omega_m F(x) / (a^2 E(a)),

   with F the PM force on the same mesh; the time factors int da/(a^3 E) (drift) and
   int da/(a^2 E) (kick) are integrated exactly per (half-)step by Simpson's rule.
4. Particles CIC-painted on the n_mesh^3 mesh, rho / rho_bar - 1 averaged through
   ``n_slabs`` slabs of thickness L / n_slabs along z, block-averaged to n_map^2 pixels.

Output: (n_slabs, n_map, n_map) float32 maps per simulation, all > -1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from data_gen.cosmology import check_grid, make_cosmology
from data_gen.gaussian import prepare_theta
from data_gen.power import _LOGK3, DEFAULT_BOX, DEFAULT_N, _lin_weights, _p3d_table

__all__ = [
    "DEFAULT_MESH",
    "DEFAULT_STEPS",
    "DEFAULT_A_INIT",
    "DEFAULT_N_SLABS",
    "nbody",
    "nbody_simulation",
    "expected_linear_map_power",
]

DEFAULT_MESH = 64
DEFAULT_STEPS = 10
DEFAULT_A_INIT = 0.1
DEFAULT_N_SLABS = 4


def _linear_pk_fn(omega_m, sigma8):
    """k (h/Mpc) -> linear P_3D(k) at z = 0, interpolated from the Omega_m table (log-log)."""
    om, _, logp3 = _p3d_table(False)
    tab = jnp.asarray(logp3[:, 0], jnp.float32)
    i, t = _lin_weights(omega_m, om.astype(np.float32))
    row = (1 - t) * tab[i] + t * tab[i + 1]

    def pk(k):
        lk = jnp.log(jnp.maximum(k, 1e-30))
        p = jnp.exp(jnp.interp(lk, jnp.asarray(_LOGK3, jnp.float32), row)) * sigma8**2
        return jnp.where(k > 0, p, 0.0)

    return pk


def _time_integral(cosmo, a0, a1, power):
    """int_{a0}^{a1} da / (a^power E(a)) by Simpson's rule on 9 points."""
    import jax_cosmo as jc

    a = jnp.linspace(a0, a1, 9)
    f = 1.0 / (a**power * jnp.sqrt(jc.background.Esqr(cosmo, a)))
    h = (a1 - a0) / 8
    w = jnp.array([1, 4, 2, 4, 2, 4, 2, 4, 1], jnp.float32)
    return h / 3 * jnp.sum(w * f)


def _simulate_one(key, theta, n_mesh, box, n_steps, a_init, n_slabs, n_map, lpt_order):
    from jaxpm.painting import cic_paint
    from jaxpm.pm import linear_field, lpt, pm_forces

    omega_m, sigma8 = theta[0], theta[1]
    shape = (n_mesh,) * 3
    ic = linear_field(shape, (box,) * 3, _linear_pk_fn(omega_m, sigma8), seed=key)
    cosmo = make_cosmology(omega_m, sigma8)  # fresh object: jaxpm growth cache
    grid = jnp.stack(
        jnp.meshgrid(*[jnp.arange(n_mesh, dtype=jnp.float32)] * 3, indexing="ij"), axis=-1
    )
    dx, p, _ = lpt(cosmo, ic, grid, a=a_init, order=lpt_order)
    pos = grid + dx
    vel = p

    def force(x):
        return 1.5 * omega_m * pm_forces(x, mesh_shape=shape)

    if n_steps > 0:
        edges = jnp.linspace(a_init, 1.0, n_steps + 1)

        def step(carry, i):
            x, v, f = carry
            a0, a1 = edges[i], edges[i + 1]
            am = 0.5 * (a0 + a1)
            v = v + _time_integral(cosmo, a0, am, 2) * f
            x = x + _time_integral(cosmo, a0, a1, 3) * v
            f = force(x)
            v = v + _time_integral(cosmo, am, a1, 2) * f
            return (x, v, f), None

        (pos, vel, _), _ = jax.lax.scan(step, (pos, vel, force(pos)), jnp.arange(n_steps))

    rho = cic_paint(jnp.zeros(shape), pos)  # mean 1 per cell: one particle per cell
    delta = rho / jnp.mean(rho) - 1.0
    return _project(delta, n_slabs, n_map)


def _project(delta, n_slabs, n_map):
    """(n, n, n) mesh -> (n_slabs, n_map, n_map): mean along z (axis 2) in slabs, block mean."""
    n = delta.shape[0]
    slabs = delta.reshape(n, n, n_slabs, n // n_slabs).mean(axis=-1)  # (x, y, slab)
    maps = jnp.moveaxis(slabs, -1, 0)
    f = n // n_map
    maps = maps.reshape(n_slabs, n_map, f, n_map, f).mean(axis=(2, 4))
    return maps.astype(jnp.float32)


@functools.partial(
    jax.jit,
    static_argnames=("n_mesh", "box", "n_steps", "a_init", "n_slabs", "n_map", "lpt_order"),
)
def _nbody_keys(keys, theta, n_mesh, box, n_steps, a_init, n_slabs, n_map, lpt_order):
    fn = functools.partial(
        _simulate_one,
        n_mesh=n_mesh,
        box=box,
        n_steps=n_steps,
        a_init=a_init,
        n_slabs=n_slabs,
        n_map=n_map,
        lpt_order=lpt_order,
    )
    # One simulation at a time (lax.map): memory stays at one mesh.
    return jax.lax.map(lambda kt: fn(kt[0], kt[1]), (keys, theta))


def _check_nbody_args(n_mesh, box, n_steps, a_init, n_slabs, n_map, lpt_order):
    n_mesh, box = check_grid(n_mesh, box)
    n_map = n_mesh if n_map is None else n_map
    n_map, _ = check_grid(n_map, box)
    if n_mesh % n_map:
        raise ValueError(f"n_mesh = {n_mesh} must be a multiple of the map size n = {n_map}")
    if int(n_slabs) != n_slabs or n_slabs < 1 or n_mesh % int(n_slabs):
        raise ValueError(f"n_slabs = {n_slabs!r} must be a positive divisor of n_mesh = {n_mesh}")
    if int(n_steps) != n_steps or n_steps < 0:
        raise ValueError(f"n_steps must be an integer >= 0, got {n_steps!r}")
    if not 0 < float(a_init) < 1:
        raise ValueError(f"a_init must be in (0, 1), got {a_init!r}")
    if lpt_order not in (1, 2):
        raise ValueError(f"lpt_order must be 1 or 2, got {lpt_order!r}")
    return n_mesh, box, int(n_steps), float(a_init), int(n_slabs), n_map, int(lpt_order)


def nbody_simulation(
    keys: jax.Array,
    theta,
    n_mesh: int = DEFAULT_MESH,
    box: float = DEFAULT_BOX,
    n_steps: int = DEFAULT_STEPS,
    a_init: float = DEFAULT_A_INIT,
    n_slabs: int = DEFAULT_N_SLABS,
    n: int | None = None,
    lpt_order: int = 2,
) -> jnp.ndarray:
    """Run one PM simulation per key: keys (B,) and theta (B, 2) -> (B, n_slabs, n, n) float32.

    ``n`` (map pixels, default n_mesh) must divide n_mesh. ``n_steps = 0`` returns the 2LPT
    field at a_init (for checks against linear theory).
    """
    args = _check_nbody_args(n_mesh, box, n_steps, a_init, n_slabs, n, lpt_order)
    theta = prepare_theta(theta)
    if keys.shape[0] != theta.shape[0]:
        theta = jnp.broadcast_to(theta, (keys.shape[0], 2))
    return _nbody_keys(keys, theta, *args)


def nbody(
    key: jax.Array,
    theta,
    n: int = DEFAULT_N,
    box: float = DEFAULT_BOX,
    n_mesh: int | None = None,
    n_steps: int = DEFAULT_STEPS,
    a_init: float = DEFAULT_A_INIT,
    n_slabs: int = DEFAULT_N_SLABS,
    lpt_order: int = 2,
) -> jnp.ndarray:
    """PM slices, one simulation per theta row: (B * n_slabs, n, n) float32, sim-major order.

    Maps i * n_slabs .. (i + 1) * n_slabs - 1 come from simulation i, whose key is
    ``jax.random.split(key, B)[i]``. Slab thickness = box / n_slabs (default box / 4,
    as ``data_gen.power.default_slab``). n_mesh defaults to 2 n (:func:`default_mesh`).
    """
    theta = prepare_theta(theta)
    keys = jax.random.split(key, theta.shape[0])
    n_mesh = default_mesh(n) if n_mesh is None else n_mesh
    maps = nbody_simulation(keys, theta, n_mesh, box, n_steps, a_init, n_slabs, n, lpt_order)
    return maps.reshape(-1, *maps.shape[-2:])


def default_mesh(n: int) -> int:
    """Particles (and mesh cells) per side for n x n maps: 2 n.

    A map pixel then collects (n_mesh / n)^2 x n_mesh / n_slabs particles (64 for 32^2 maps
    from 4 slabs, against 8 with n_mesh = n): with n_mesh = n, near-empty void pixels (down to
    delta = -0.994) dominate single maps' likelihoods and scores; with 2 n the minimum is about
    -0.91. The CIC window of the finer mesh also suppresses the map's power near the pixel
    Nyquist frequency less (W_cic(k) = prod_i sinc^2(k_i L / 2 n_mesh); the maps are block
    averages of the mesh, so they carry the pixel window of the map grid in any case).
    """
    return 2 * int(n)


def particles_per_pixel(n: int, n_mesh: int, n_slabs: int = DEFAULT_N_SLABS) -> float:
    """Mean number of particles projected onto one pixel of an n x n map: n_mesh^3 / n_slabs /
    n^2."""
    return float(n_mesh) ** 3 / n_slabs / float(n) ** 2


@jax.jit
def _growth_factor(omega_m, sigma8, a):
    """jax-cosmo's linear growth factor D(a) (D(1) = 1) for a (M,), compiled once: op by op,
    its ODE solve compiles each of its many operations."""
    import jax_cosmo as jc

    return jc.background.growth_factor(make_cosmology(omega_m, sigma8), a)


def expected_linear_map_power(theta, n_mesh: int, box: float, n_slabs: int, a: float) -> np.ndarray:
    """Expected P(k) of the mesh-resolution maps of a *linear* field at scale factor a.

    Exact for the discrete pipeline in the linear regime: on the rfft2 half plane,

        P(k_x, k_y) = D(a)^2 / L sum_m P_lin(|k|) W_cic^2(k) |W_slab(k_m)|^2,
        |W_slab|^2 = sin^2(pi m n_z / n) / (n_z sin(pi m / n))^2,

    with k_m = 2 pi m / L the |m| <= n/2 modes of the mesh, n_z = n / n_slabs cells per
    slab, W_cic = prod_i sinc^2(k_i L / 2n). Returns (n, n//2+1) in (h^-1 Mpc)^2.
    """
    from data_gen.fourier import kgrid_half

    theta = np.asarray(prepare_theta(theta))[0]
    kx, ky = kgrid_half(n_mesh, box)
    m = np.fft.fftfreq(n_mesh, 1.0 / n_mesh)
    kz = 2 * np.pi * m / box
    nz = n_mesh // n_slabs
    with np.errstate(invalid="ignore", divide="ignore"):
        ws = np.where(
            m == 0,
            1.0,
            np.sin(np.pi * m * nz / n_mesh) ** 2 / (nz * np.sin(np.pi * m / n_mesh)) ** 2,
        )
    kk = np.sqrt(kx[..., None] ** 2 + ky[..., None] ** 2 + kz**2)
    pk = np.asarray(_linear_pk_fn(jnp.float32(theta[0]), jnp.float32(theta[1]))(jnp.asarray(kk)))
    cell = box / n_mesh
    c = cell / (2 * np.pi)
    wcic = (np.sinc(kx[..., None] * c) * np.sinc(ky[..., None] * c) * np.sinc(kz * c)) ** 2
    d = float(_growth_factor(jnp.float32(theta[0]), jnp.float32(theta[1]), jnp.atleast_1d(a))[0])
    return d**2 / box * np.sum(pk * wcic**2 * ws, axis=-1)
