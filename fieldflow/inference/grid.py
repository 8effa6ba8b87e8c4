"""Regular (Omega_m, sigma_8) grids of equal cells tiling a box of the prior.

A grid of n_om x n_s8 cells over [om_lo, om_hi] x [s8_lo, s8_hi] has cell centres

    om_i = om_lo + (i + 1/2) (om_hi - om_lo) / n_om   (likewise s8_j),

and every cell the area dOm ds8 = (om_hi - om_lo) (s8_hi - s8_lo) / (n_om n_s8), so a
posterior evaluated at the centres gives cell probabilities P_ij that sum to one.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np

from data_gen.cosmology import OMEGA_M_RANGE, SIGMA8_RANGE

__all__ = ["OMEGA_M_RANGE", "SIGMA8_RANGE", "ThetaGrid", "theta_grid", "clip_grid"]

_RANGE_TOL = 1e-6


@dataclasses.dataclass(frozen=True, eq=False)
class ThetaGrid:
    """A regular (Omega_m, sigma_8) grid of ``n_om x n_s8`` cells tiling a box.

    ``om[i]`` and ``s8[j]`` are the cell centres; every cell has area ``d_om * d_s8``.
    Arrays over the grid are indexed ``[i, j]`` (Omega_m first).
    """

    om: np.ndarray
    s8: np.ndarray
    om_range: tuple[float, float]
    s8_range: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.om), len(self.s8))

    @property
    def size(self) -> int:
        return len(self.om) * len(self.s8)

    @property
    def d_om(self) -> float:
        return (self.om_range[1] - self.om_range[0]) / len(self.om)

    @property
    def d_s8(self) -> float:
        return (self.s8_range[1] - self.s8_range[0]) / len(self.s8)

    @property
    def cell_area(self) -> float:
        """dOm * ds8, the area of one cell."""
        return self.d_om * self.d_s8

    @property
    def points(self) -> np.ndarray:
        """All cell centres, float32 (n_om * n_s8, 2), Omega_m varying slowest."""
        om, s8 = np.meshgrid(self.om, self.s8, indexing="ij")
        return np.stack([om.ravel(), s8.ravel()], axis=-1).astype(np.float32)

    @property
    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """The lower and upper corners of the box, (Omega_m, sigma_8) each, float64."""
        return (
            np.array([self.om_range[0], self.s8_range[0]], np.float64),
            np.array([self.om_range[1], self.s8_range[1]], np.float64),
        )

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(om_lo, om_hi, s8_lo, s8_hi) of the box, for ``imshow``."""
        return (*self.om_range, *self.s8_range)

    def to_dict(self) -> dict:
        """JSON-able description."""
        return {
            "n_om": len(self.om),
            "n_s8": len(self.s8),
            "om_range": list(self.om_range),
            "s8_range": list(self.s8_range),
            "cell_area": self.cell_area,
        }


def _check_range(name: str, r) -> tuple[float, float]:
    lo, hi = (float(v) for v in r)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"{name} must be (low, high) with low < high, got {tuple(r)}")
    return lo, hi


def theta_grid(
    n_om: int = 100,
    n_s8: int = 100,
    om_range: Sequence[float] = OMEGA_M_RANGE,
    s8_range: Sequence[float] = SIGMA8_RANGE,
) -> ThetaGrid:
    """A grid of ``n_om x n_s8`` equal cells tiling ``om_range x s8_range``.

    Cell centres om_i = lo + (i + 1/2) (hi - lo) / n_om (likewise for sigma_8), so the
    points never sit on the prior boundary and the cells tile the prior box exactly.
    """
    for name, v in (("n_om", n_om), ("n_s8", n_s8)):
        if isinstance(v, bool) or int(v) != v or v < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
    om_range = _check_range("om_range", om_range)
    s8_range = _check_range("s8_range", s8_range)

    def centres(r, n):
        return (r[0] + (np.arange(n) + 0.5) * (r[1] - r[0]) / n).astype(np.float64)

    return ThetaGrid(centres(om_range, int(n_om)), centres(s8_range, int(n_s8)), om_range, s8_range)


def clip_grid(
    grid: ThetaGrid,
    low: Sequence[float],
    high: Sequence[float],
    what: str = "the trained range of the model",
) -> ThetaGrid:
    """The grid itself if it lies in [low, high]; otherwise a warning and a clipped grid.

    The clipped grid has the same number of cells over the intersection of the grid's box
    with [low, high] (so its cell size shrinks). ValueError if they do not overlap.
    """
    low = [float(v) for v in low]
    high = [float(v) for v in high]
    ranges = [grid.om_range, grid.s8_range]
    new = []
    clipped = []
    for j, (name, (lo, hi)) in enumerate(zip(("Omega_m", "sigma_8"), ranges, strict=True)):
        tol = _RANGE_TOL * (high[j] - low[j])
        nlo = lo if lo >= low[j] - tol else low[j]
        nhi = hi if hi <= high[j] + tol else high[j]
        if nhi <= nlo:
            raise ValueError(
                f"the theta grid's {name} range [{lo:g}, {hi:g}] does not overlap "
                f"{what} [{low[j]:g}, {high[j]:g}]"
            )
        if (nlo, nhi) != (lo, hi):
            clipped.append(f"{name} [{lo:g}, {hi:g}] -> [{nlo:g}, {nhi:g}]")
        new.append((nlo, nhi))
    if not clipped:
        return grid
    warnings.warn(
        f"theta grid extends outside {what} (Omega_m [{low[0]:g}, {high[0]:g}], "
        f"sigma_8 [{low[1]:g}, {high[1]:g}]); clipped to it: "
        + "; ".join(clipped)
        + f" (same {grid.shape[0]} x {grid.shape[1]} cells)",
        UserWarning,
        stacklevel=2,
    )
    return theta_grid(grid.shape[0], grid.shape[1], new[0], new[1])
