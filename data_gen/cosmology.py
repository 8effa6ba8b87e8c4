"""Fiducial cosmology, the ranges of theta = (Omega_m, sigma8), and input checks.

The two free parameters are the total matter density Omega_m and the amplitude
sigma8 of linear fluctuations at z = 0. Everything else is held at Planck-2015-like
values (jax-cosmo's ``Planck15``): Omega_b = 0.0486, h = 0.6774, n_s = 0.9667,
flat, w0 = -1, wa = 0. Varying Omega_m varies Omega_c = Omega_m - Omega_b.

Two boxes of theta:

* the *supported* range, ``SUPPORTED_OMEGA_M_RANGE`` x ``SUPPORTED_SIGMA8_RANGE``
  = [0.1, 0.6] x [0.4, 1.4]: where the simulators' power-spectrum tables reach
  (:func:`check_theta` refuses anything else);
* a data set's *prior box*, the box its theta design covers and its models are trained
  on, by default ``OMEGA_M_RANGE`` x ``SIGMA8_RANGE`` = [0.2, 0.5] x [0.5, 1.1]
  (``fieldflow generate --omega-m-range LO HI --sigma8-range LO HI`` for another box
  inside the supported one; see :func:`check_theta_box`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "OMEGA_M_RANGE",
    "SIGMA8_RANGE",
    "SUPPORTED_OMEGA_M_RANGE",
    "SUPPORTED_SIGMA8_RANGE",
    "FIDUCIAL_THETA",
    "PLANCK_LIKE",
    "make_cosmology",
    "check_theta",
    "check_grid",
    "check_theta_box",
    "add_prior_box_arguments",
]

OMEGA_M_RANGE: tuple[float, float] = (0.2, 0.5)
SIGMA8_RANGE: tuple[float, float] = (0.5, 1.1)
SUPPORTED_OMEGA_M_RANGE: tuple[float, float] = (0.1, 0.6)
SUPPORTED_SIGMA8_RANGE: tuple[float, float] = (0.4, 1.4)
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

    Raises ``ValueError`` for a wrong shape, non-finite values, or values outside the
    supported range, Omega_m in SUPPORTED_OMEGA_M_RANGE, sigma8 in SUPPORTED_SIGMA8_RANGE.
    Must be called on concrete values (outside ``jit``).
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
    ranges = (("Omega_m", SUPPORTED_OMEGA_M_RANGE), ("sigma8", SUPPORTED_SIGMA8_RANGE))
    for j, (label, (lo, hi)) in enumerate(ranges):
        bad = (t[:, j] < lo - _RANGE_TOL) | (t[:, j] > hi + _RANGE_TOL)
        if np.any(bad):
            v = t[bad, j][0]
            raise ValueError(f"{name}: {label} = {v:g} is outside the supported range [{lo}, {hi}]")
    return t.astype(np.float32)


def check_theta_box(omega_m_range, sigma8_range) -> tuple[list[float], list[float]]:
    """Validate a prior box ([om_lo, om_hi], [s8_lo, s8_hi]) and return it as lists.

    ValueError unless each range is two finite numbers lo < hi inside the supported range
    and the box holds ``FIDUCIAL_THETA`` (every data set's fiducial simulations sit there).
    """
    out = []
    ranges = (
        ("omega_m_range", omega_m_range, SUPPORTED_OMEGA_M_RANGE),
        ("sigma8_range", sigma8_range, SUPPORTED_SIGMA8_RANGE),
    )
    for j, (name, r, (s_lo, s_hi)) in enumerate(ranges):
        try:
            lo, hi = (float(v) for v in r)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be two numbers (low, high), got {r!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"{name} must be finite with low < high, got {r!r}")
        if lo < s_lo - _RANGE_TOL or hi > s_hi + _RANGE_TOL:
            raise ValueError(f"{name} {[lo, hi]} leaves the supported range {list((s_lo, s_hi))}")
        if not lo <= FIDUCIAL_THETA[j] <= hi:
            raise ValueError(f"{name} {[lo, hi]} must hold the fiducial value {FIDUCIAL_THETA[j]}")
        out.append([lo, hi])
    return out[0], out[1]


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


def add_prior_box_arguments(parser) -> None:
    """``--omega-m-range LOW HIGH`` and ``--sigma8-range LOW HIGH`` (the prior box of a data
    set to generate; None when not given) on an ``argparse`` parser."""
    for flag, name, default, supported in (
        ("--omega-m-range", "Omega_m", OMEGA_M_RANGE, SUPPORTED_OMEGA_M_RANGE),
        ("--sigma8-range", "sigma_8", SIGMA8_RANGE, SUPPORTED_SIGMA8_RANGE),
    ):
        parser.add_argument(
            flag,
            type=float,
            nargs=2,
            metavar=("LOW", "HIGH"),
            help=f"the prior box's {name} range (default {default[0]} {default[1]}; "
            f"inside {supported[0]} {supported[1]})",
        )
