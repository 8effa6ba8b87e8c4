"""An emulator of the mean binned power spectrum of maps as a function of theta.

    mu_b(theta) = exp(sum_c a_bc phi_c(u)),   u = 2 (theta - lo) / (hi - lo) - 1,

with phi_c the monomials u_0^i u_1^j of total degree i + j <= ``degree`` (degree 3: 10 terms
per bin) and [lo, hi] the (Omega_m, sigma_8) box the simulations cover. The coefficients are
the maximum-likelihood fit of a Gamma model with log link to the binned P(k) of single
simulations (iteratively reweighted least squares), so mu fits <P> itself and not <log P>,
which would be biased low by the scatter of a bin with few modes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from data_gen.cosmology import OMEGA_M_RANGE, SIGMA8_RANGE
from fieldflow.validation import check_maps

__all__ = ["PowerSpectrumEmulator", "poly_features"]


def poly_features(u, degree: int):
    """Monomials u_0^i u_1^j with i + j <= ``degree`` of u (T, 2): (T, n_terms).

    numpy in, numpy out; a jax array (or tracer) gives a jax array, so the emulator can be
    differentiated in theta."""
    xp = np if isinstance(u, np.ndarray) else jnp
    cols = [u[:, 0] ** a * u[:, 1] ** b for a in range(degree + 1) for b in range(degree + 1 - a)]
    return xp.stack(cols, axis=-1)


def _gamma_glm_log_link(phi: np.ndarray, y: np.ndarray, n_iter: int) -> np.ndarray:
    """Coefficients a (n_terms, n_bins) of the Gamma GLM y ~ exp(phi a), fitted by IRLS.

    Starts from least squares on log y; each step regresses the working response
    z = eta + (y - mu) / mu on phi (unit weights for a Gamma model with log link) until the
    coefficients move by less than 1e-10 or after ``n_iter`` steps.
    """
    coef = np.linalg.lstsq(phi, np.log(y), rcond=None)[0]
    for _ in range(int(n_iter)):
        eta = phi @ coef
        z = eta + y / np.exp(eta) - 1.0
        new = np.linalg.lstsq(phi, z, rcond=None)[0]
        done = np.max(np.abs(new - coef)) < 1e-10
        coef = new
        if done:
            break
    return coef


@dataclasses.dataclass(frozen=True, eq=False)
class PowerSpectrumEmulator:
    """The mean binned power spectrum of maps of side ``box`` (h^-1 Mpc) and ``n`` pixels,

        mu_b(theta) = exp(sum_c a_bc phi_c(u)),   u = 2 (theta - lo) / (hi - lo) - 1,

    phi_c the monomials of total degree <= ``degree`` in u, a = ``coef`` (n_terms, n_bins),
    lo / hi = ``theta_low`` / ``theta_high``. Bins follow ``fieldflow.metrics.power_spectrum``
    with ``edges`` (h/Mpc). Build it with :meth:`fit`; ``fit_report`` records the training
    set and the mean ratio of the training spectra to the emulator per bin.
    """

    box: float
    n: int
    edges: np.ndarray
    coef: np.ndarray
    degree: int
    theta_low: np.ndarray
    theta_high: np.ndarray
    fit_report: dict

    @property
    def n_bins(self) -> int:
        """Number of k bins."""
        return len(self.edges) - 1

    @property
    def k(self) -> np.ndarray:
        """Bin centres (h/Mpc), (n_bins,)."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @classmethod
    def fit(
        cls,
        maps,
        theta,
        box: float,
        *,
        edges=None,
        degree: int = 3,
        theta_low: Sequence[float] = (OMEGA_M_RANGE[0], SIGMA8_RANGE[0]),
        theta_high: Sequence[float] = (OMEGA_M_RANGE[1], SIGMA8_RANGE[1]),
        n_iter: int = 20,
    ) -> PowerSpectrumEmulator:
        """Fit the emulator to maps (M, N, N) simulated at theta (M, 2).

        ``edges`` default to ``fieldflow.fourier.k_bin_edges(N, box)`` (bins up to Nyquist).
        ValueError for bad maps or theta, a box with high <= low, fewer than twice as many
        maps as emulator terms, or a map with an empty (zero-power) bin.
        """
        from fieldflow import fourier, metrics

        maps, _ = check_maps(maps, name="maps")
        n = maps.shape[-1]
        theta = np.asarray(theta, np.float64)
        if theta.shape != (maps.shape[0], 2):
            raise ValueError(f"theta must have shape ({maps.shape[0]}, 2), got {theta.shape}")
        low = np.asarray(theta_low, np.float64)
        high = np.asarray(theta_high, np.float64)
        if low.shape != (2,) or high.shape != (2,) or not np.all(high > low):
            raise ValueError(
                f"theta_low {tuple(low)} and theta_high {tuple(high)} must be two values "
                "each with high > low"
            )
        edges = fourier.k_bin_edges(n, box) if edges is None else edges
        edges = np.asarray(edges, np.float64)
        degree = int(degree)
        phi = poly_features(2 * (theta - low) / (high - low) - 1, degree)
        if phi.shape[0] < 2 * phi.shape[1]:
            raise ValueError(
                f"{phi.shape[0]} training maps are too few for a degree-{degree} "
                f"emulator ({phi.shape[1]} terms per bin)"
            )
        pk = np.asarray(metrics.power_spectrum(maps, box, edges), np.float64)
        if np.any(pk <= 0):
            raise ValueError("a training map has an empty (zero-power) bin")
        coef = _gamma_glm_log_link(phi, pk, n_iter)
        report = {
            "emulator": f"exp(polynomial of degree {degree} in theta), Gamma-GLM fit",
            "n_train": int(maps.shape[0]),
            "n_bins": len(edges) - 1,
            "train_mean_ratio": (pk / np.exp(phi @ coef)).mean(axis=0).tolist(),
        }
        return cls(
            box=float(box),
            n=n,
            edges=edges,
            coef=coef,
            degree=degree,
            theta_low=low,
            theta_high=high,
            fit_report=report,
        )

    def mean(self, theta) -> np.ndarray:
        """Emulated mean P(k_b; theta) in (h^-1 Mpc)^2, (T, n_bins) for theta (T, 2) or (2,)."""
        t = np.atleast_2d(np.asarray(theta, np.float64))
        if t.ndim != 2 or t.shape[1] != 2:
            raise ValueError(f"theta must have shape (T, 2) or (2,), got {np.shape(theta)}")
        u = 2 * (t - self.theta_low) / (self.theta_high - self.theta_low) - 1
        return np.exp(poly_features(u, self.degree) @ self.coef)
