"""2D power spectrum of a slab-projected 3D matter field, from jax-cosmo at z = 0.

A map is the mean of the 3D overdensity through a slab of thickness L_z,
delta_2D(x) = (1/L_z) int_0^{L_z} delta_3D(x, z) dz. Its power spectrum is

    P_2D(k) = int dk_z / (2 pi) P_3D(sqrt(k^2 + k_z^2)) W^2(k_z L_z / 2),   W(u) = sin(u) / u,

(units (h^-1 Mpc)^2, k in h/Mpc), which tends to P_3D(k) / L_z for k L_z >> 1 and to the
finite value P_2D(0) = int dk_z/(2 pi) P_3D(|k_z|) W^2 at k = 0 (the slab mean fluctuates).

Speed: jax-cosmo is only called once per process, on a table of nodes.

* Linear spectrum: P_3D is proportional to sigma8^2, so it is tabulated at sigma8 = 1 on
  ``N_OMEGA_NODES`` = 201 values of Omega_m spanning the supported [0.1, 0.6] (step 0.0025).
  P_2D at a map's |k| values is interpolated linearly in log P between Omega_m nodes and multiplied
  by sigma8^2. Measured interpolation error against direct evaluation at the midpoints
  of the nodes: < 1e-4 relative (see ``tests/test_data_gen_power.py``).
* Halofit (``nonlinear=True``): not proportional to sigma8^2, so an 81 x 81 (Omega_m, sigma8)
  table over the supported range (steps 0.00625, 0.0125) is interpolated bilinearly in
  log P; error < 2e-3 relative (tested).

P_3D is tabulated on 400 log-spaced k in 1e-5..1e2 h/Mpc (log-log linear interpolation,
n_s power law below, 0 above); P_2D is integrated at every distinct |k| of the map grid.
The jax-cosmo table (about 8 s of compilation) is cached on disk in
``$FIELDFLOW_CACHE`` (default ``~/.cache/fieldflow``), keyed by the node layout, the fixed
parameters and the jax-cosmo version; delete the files to recompute. The k_z
integral uses the trapezoid rule on u = k_z L_z/2 in [0, 200 pi] (step pi/16) plus a
log-spaced tail with <W^2> = 1/(2u^2).

Inside ``jit`` theta is not checked: Omega_m (and, for halofit, sigma8) outside the table
are clamped to the nearest node. Public entry points check concrete theta.

The simulators use exactly the interpolated spectrum, so the log-likelihoods of
``data_gen.gaussian`` and ``data_gen.lognormal`` are exact for the simulated fields.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from data_gen.cosmology import (
    PLANCK_LIKE,
    SUPPORTED_OMEGA_M_RANGE,
    SUPPORTED_SIGMA8_RANGE,
    check_grid,
    make_cosmology,
)

__all__ = [
    "DEFAULT_N",
    "DEFAULT_BOX",
    "DEFAULT_SLAB_FRACTION",
    "default_slab",
    "power_3d",
    "power_2d",
    "power_2d_grid",
    "power_2d_binned",
    "pixel_power_grid",
]

DEFAULT_N: int = 64
DEFAULT_BOX: float = 256.0
DEFAULT_SLAB_FRACTION: float = 0.25

N_OMEGA_NODES = 201
N_OMEGA_NODES_NL = 81
N_SIGMA8_NODES_NL = 81
_LOGK3 = np.linspace(np.log(1e-5), np.log(1e2), 400)


def default_slab(box: float) -> float:
    """Default slab thickness L_z = box / 4 (the TRENF setup: 128 h^-1 Mpc slabs in a 512 box)."""
    return DEFAULT_SLAB_FRACTION * float(box)


def resolve_slab(box: float, slab: float | None) -> float:
    slab = default_slab(box) if slab is None else slab
    try:
        s = float(slab)
    except (TypeError, ValueError):
        raise ValueError(f"slab must be a positive thickness in h^-1 Mpc, got {slab!r}") from None
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"slab must be a positive finite thickness in h^-1 Mpc, got {slab!r}")
    return s


def power_3d(k, omega_m, sigma8, nonlinear: bool = False):
    """jax-cosmo matter power spectrum P_3D(k) at z = 0 in (h^-1 Mpc)^3, k in h/Mpc.

    Linear: Eisenstein & Hu transfer function, normalised to sigma8.
    Nonlinear: halofit (Takahashi et al. 2012). Builds a fresh cosmology object.
    """
    import jax_cosmo as jc

    cosmo = make_cosmology(omega_m, sigma8)
    k = jnp.asarray(k)
    if nonlinear:
        return jc.power.nonlinear_matter_power(cosmo, k, a=1.0)
    return jc.power.linear_matter_power(cosmo, k, a=1.0)


_power_3d_jit = jax.jit(power_3d, static_argnames=("nonlinear",))


def _cache_path(nonlinear: bool, om: np.ndarray, s8: np.ndarray) -> Path | None:
    import jax_cosmo

    root = os.environ.get(
        "FIELDFLOW_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fieldflow")
    )
    if not root:
        return None
    key = json.dumps(
        [
            getattr(jax_cosmo, "__version__", "?"),
            sorted(PLANCK_LIKE.items()),
            bool(nonlinear),
            om.tolist(),
            s8.tolist(),
            _LOGK3.tolist(),
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(root) / f"pk3d_{'nl' if nonlinear else 'lin'}_{digest}.npy"


@functools.lru_cache(maxsize=4)
def _p3d_table(nonlinear: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log P_3D on (Omega_m nodes, sigma8 nodes, _LOGK3); linear: one sigma8 node at 1."""
    om, s8 = _table_nodes(nonlinear)
    path = _cache_path(nonlinear, om, s8)
    if path is not None and path.exists():
        try:
            tab = np.load(path, allow_pickle=False)
            if tab.shape == (len(om), len(s8), len(_LOGK3)) and np.all(np.isfinite(tab)):
                return om, s8, tab
        except (OSError, ValueError):
            pass
    om, s8, tab = _p3d_table_compute(nonlinear)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, tab)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home is fine: no cache
    return om, s8, tab


def _table_nodes(nonlinear: bool) -> tuple[np.ndarray, np.ndarray]:
    if nonlinear:
        return (
            np.linspace(*SUPPORTED_OMEGA_M_RANGE, N_OMEGA_NODES_NL),
            np.linspace(*SUPPORTED_SIGMA8_RANGE, N_SIGMA8_NODES_NL),
        )
    return np.linspace(*SUPPORTED_OMEGA_M_RANGE, N_OMEGA_NODES), np.array([1.0])


def _p3d_table_compute(nonlinear: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = np.exp(_LOGK3).astype(np.float32)
    om, s8 = _table_nodes(nonlinear)
    oo, ss = np.meshgrid(om, s8, indexing="ij")
    # The table may be first requested while tracing a jitted simulator: evaluate it now.
    with jax.ensure_compile_time_eval():
        fn = jax.jit(jax.vmap(lambda o, s: power_3d(k, o, s, nonlinear)))
        pk = fn(jnp.asarray(oo.ravel(), jnp.float32), jnp.asarray(ss.ravel(), jnp.float32))
        pk = np.asarray(pk)
    pk = pk.astype(np.float64).reshape(len(om), len(s8), -1)
    return om, s8, np.log(np.maximum(pk, 1e-300))


def _interp_p3d(logk: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """P_3D at log k from log-log tables logp (M, nk): n_s power law below, 0 above the table.

    Returns (M, *logk.shape). The interpolation weights are shared by all M rows.
    """
    lk = np.clip(logk, _LOGK3[0], _LOGK3[-1])
    step = _LOGK3[1] - _LOGK3[0]
    pos = (lk - _LOGK3[0]) / step
    i = np.clip(np.floor(pos).astype(np.int64), 0, len(_LOGK3) - 2)
    f = pos - i
    out = (1 - f) * logp[:, i] + f * logp[:, i + 1]
    first = logp[:, 0].reshape((-1,) + (1,) * np.ndim(logk))
    out = np.where(logk < _LOGK3[0], first + PLANCK_LIKE["n_s"] * (logk - _LOGK3[0]), out)
    return np.where(logk > _LOGK3[-1], 0.0, np.exp(out))


def _slab_integral(kperp: np.ndarray, logp: np.ndarray, slab: float) -> np.ndarray:
    """P_2D(k_perp) = (2 / (pi L_z)) int_0^inf du P_3D(sqrt(k^2 + (2u/L_z)^2)) sinc^2(u).

    logp (M, nk) log P_3D tables -> (M, len(kperp)). Trapezoid rule on u in [0, 100 pi]
    (log-spaced nodes below 4 pi to resolve the turnover of P_3D near k_z = 0, step pi/8
    above), then a log-spaced tail where sinc^2 is replaced by its mean 1/(2u^2).
    """
    u = np.unique(
        np.concatenate(
            [
                [0.0],
                np.geomspace(1e-5, 4 * np.pi, 800),
                np.arange(4 * np.pi, 100 * np.pi + 1e-9, np.pi / 8),
            ]
        )
    )
    w = np.zeros(u.shape)
    w[1:] += np.diff(u) / 2
    w[:-1] += np.diff(u) / 2
    ut = np.geomspace(u[-1], u[-1] * 1e5, 200)
    wt = np.gradient(ut)
    wt[0] /= 2
    wt[-1] /= 2
    uu = np.concatenate([u, ut])
    ww = np.concatenate([w * np.sinc(u / np.pi) ** 2, wt / (2 * ut**2)])
    kp = np.asarray(kperp, np.float64)[:, None]
    kk = np.sqrt(kp**2 + (2 * uu / slab) ** 2)
    with np.errstate(divide="ignore"):
        p = _interp_p3d(np.log(np.maximum(kk, 1e-300)), logp)  # (M, nkp, nu)
    p = np.where(kk > 0, p, 0.0)
    return 2.0 / (np.pi * slab) * (p @ ww)


@functools.lru_cache(maxsize=16)
def _grid_table(n: int, box: float, slab: float, nonlinear: bool):
    """log of the *pixel* spectrum P_pix = P_2D N^2 / L^2 on the rfft2 half plane at each node.

    P_2D is integrated directly at each distinct |k| of the grid (no interpolation in k).
    """
    from data_gen.fourier import kmag_half

    om, s8, logp3 = _p3d_table(nonlinear)
    uniq, inv = np.unique(kmag_half(n, box), return_inverse=True)
    flat = logp3.reshape(-1, logp3.shape[-1])
    rows = []
    for i in range(0, len(flat), 8):
        rows.append(
            np.concatenate(
                [
                    _slab_integral(uniq[j : j + 256], flat[i : i + 8], slab)
                    for j in range(0, len(uniq), 256)
                ],
                axis=1,
            )
        )
    tab = np.log(np.concatenate(rows)).reshape(logp3.shape[:2] + uniq.shape)
    logp = tab[..., inv.ravel()].reshape(logp3.shape[:2] + (n, n // 2 + 1))
    logp = logp + np.log(n**2 / box**2)
    return om.astype(np.float32), s8.astype(np.float32), logp.astype(np.float32)


def _lin_weights(x, nodes: np.ndarray):
    """Index i and weight t so that f(x) = (1 - t) f[i] + t f[i + 1]; x clamped to the nodes."""
    x = jnp.clip(x, nodes[0], nodes[-1])
    step = (nodes[-1] - nodes[0]) / (len(nodes) - 1)
    pos = (x - nodes[0]) / step
    i = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, len(nodes) - 2)
    return i, pos - i


def pixel_power_grid(
    theta, n: int, box: float, slab: float | None = None, nonlinear: bool = False
) -> jnp.ndarray:
    """Pixel-unit spectrum P_pix(k) = P_2D(|k|; theta) N^2 / L^2 on the rfft2 half plane.

    theta (2,) or (B, 2) -> (B, N, N//2+1) float32. In these units the pixel variance is
    (1/N^2) sum_k P_pix(k) over all N^2 modes. Jit-able and differentiable in theta
    (piecewise-linear interpolation between table nodes; no checks on theta here).
    """
    n, box = check_grid(n, box)
    slab = resolve_slab(box, slab)
    om, s8, logp = _grid_table(n, box, slab, bool(nonlinear))
    logp = jnp.asarray(logp)
    theta = jnp.atleast_2d(jnp.asarray(theta, jnp.float32))
    i, t = _lin_weights(theta[:, 0], om)
    if not nonlinear:
        tab = logp[:, 0]
        lp = (1 - t)[:, None, None] * tab[i] + t[:, None, None] * tab[i + 1]
        return jnp.exp(lp) * theta[:, 1, None, None] ** 2
    j, s = _lin_weights(theta[:, 1], s8)
    a, b = (1 - t)[:, None, None], t[:, None, None]
    c, d = (1 - s)[:, None, None], s[:, None, None]
    lp = (
        a * c * logp[i, j]
        + b * c * logp[i + 1, j]
        + a * d * logp[i, j + 1]
        + b * d * logp[i + 1, j + 1]
    )
    return jnp.exp(lp)


def power_2d_grid(
    theta, n: int, box: float, slab: float | None = None, nonlinear: bool = False
) -> jnp.ndarray:
    """P_2D(|k|; theta) in (h^-1 Mpc)^2 on the rfft2 half plane of an N x N map: (B, N, N//2+1)."""
    return pixel_power_grid(theta, n, box, slab, nonlinear) * (float(box) ** 2 / n**2)


def power_2d_binned(
    theta,
    n: int,
    box: float,
    slab: float | None = None,
    nonlinear: bool = False,
    edges: np.ndarray | None = None,
) -> jnp.ndarray:
    """Expected binned spectrum of a map, on the bins of ``data_gen.fourier.power_spectrum``.

    The mode-weighted mean of P_2D over the modes of each bin, (B, n_bins), so that
    ``power_spectrum(grf(key, theta, n, box), box)`` scatters around it.
    """
    from data_gen.fourier import radial_average_half

    return radial_average_half(power_2d_grid(theta, n, box, slab, nonlinear), n, box, edges)


def power_2d(k, theta, slab: float, nonlinear: bool = False) -> np.ndarray:
    """P_2D(k) at arbitrary |k| (h/Mpc) for a slab of thickness ``slab`` by direct quadrature.

    theta (2,) or (B, 2) -> (B, len(k)) float64. Calls jax-cosmo for each theta (slow-ish,
    not jit-able); the reference against which the interpolated tables are tested.
    """
    from data_gen.cosmology import check_theta

    theta = check_theta(theta)
    slab = resolve_slab(1.0, slab)
    k = np.atleast_1d(np.asarray(k, np.float64))
    kk = jnp.exp(jnp.asarray(_LOGK3, jnp.float32))
    out = []
    for om, s8 in theta.astype(np.float64):
        pk = _power_3d_jit(kk, jnp.float32(om), jnp.float32(s8), nonlinear=bool(nonlinear))
        logp3 = np.log(np.maximum(np.asarray(pk, np.float64), 1e-300))
        out.append(_slab_integral(k, logp3[None], slab)[0])
    return np.stack(out)
