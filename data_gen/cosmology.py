"""Fiducial cosmology, the supported range of theta = (Omega_m, sigma8), and input checks.

The two free parameters are the total matter density Omega_m and the amplitude
sigma8 of linear fluctuations at z = 0. Everything else is held at Planck-2015-like
values (jax-cosmo's ``Planck15``): Omega_b = 0.0486, h = 0.6774, n_s = 0.9667,
flat, w0 = -1, wa = 0. Varying Omega_m varies Omega_c = Omega_m - Omega_b.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "OMEGA_M_RANGE",
    "SIGMA8_RANGE",
    "FIDUCIAL_THETA",
    "PLANCK_LIKE",
    "make_cosmology",
    "check_theta",
    "check_grid",
]

OMEGA_M_RANGE: tuple[float, float] = (0.2, 0.5)
SIGMA8_RANGE: tuple[float, float] = (0.5, 1.1)
FIDUCIAL_THETA: tuple[float, float] = (0.3, 0.8)

PLANCK_LIKE: dict[str, float] = {
    "Omega_b": 0.0486,
    "h": 0.6774,
    "n_s": 0.9667,
    "Omega_k": 0.0,
    "w0": -1.0,
    "wa": 0.0,
}

# Round-off slack when checking the range (float32 theta read back from disk).
_RANGE_TOL = 1e-6


def make_cosmology(omega_m, sigma8):
    """A fresh ``jax_cosmo.Cosmology`` with Omega_c = Omega_m - Omega_b, other values Planck-like.

    Always build a *new* object per use: jax-cosmo caches growth tables in
    ``cosmo._workspace`` and jaxpm's 2LPT needs entries that
    ``linear_matter_power`` does not write (``KeyError: 'h'``).
    """
    import jax_cosmo as jc

    p = PLANCK_LIKE
    return jc.Cosmology(
        Omega_c=omega_m - p["Omega_b"],
        Omega_b=p["Omega_b"],
        h=p["h"],
        n_s=p["n_s"],
        sigma8=sigma8,
        Omega_k=p["Omega_k"],
        w0=p["w0"],
        wa=p["wa"],
    )


def check_theta(theta, name: str = "theta") -> np.ndarray:
    """Validate concrete theta of shape (2,) or (B, 2) and return it as float32 (B, 2).

    Raises ``ValueError`` for a wrong shape, non-finite values, or values outside
    Omega_m in OMEGA_M_RANGE, sigma8 in SIGMA8_RANGE. Must be called on concrete
    values (outside ``jit``).
    """
    t = np.asarray(theta, dtype=np.float64)
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2 or t.shape[1] != 2 or t.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (2,) or (B, 2) = (Omega_m, sigma8), got {np.shape(theta)}"
        )
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{name} contains NaN or inf values")
    for j, (label, (lo, hi)) in enumerate((("Omega_m", OMEGA_M_RANGE), ("sigma8", SIGMA8_RANGE))):
        bad = (t[:, j] < lo - _RANGE_TOL) | (t[:, j] > hi + _RANGE_TOL)
        if np.any(bad):
            v = t[bad, j][0]
            raise ValueError(f"{name}: {label} = {v:g} is outside the supported range [{lo}, {hi}]")
    return t.astype(np.float32)


def check_grid(n, box) -> tuple[int, float]:
    """Validate a map size n (integer >= 4) and a box side (positive finite, h^-1 Mpc)."""
    if isinstance(n, bool) or not float(n).is_integer() or int(n) < 4:
        raise ValueError(f"n (pixels per side) must be an integer >= 4, got {n!r}")
    try:
        b = float(box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be a positive length in h^-1 Mpc, got {box!r}") from None
    if not np.isfinite(b) or b <= 0:
        raise ValueError(f"box must be a positive finite length in h^-1 Mpc, got {box!r}")
    return int(n), b
