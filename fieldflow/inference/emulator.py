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
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from data_gen.cosmology import OMEGA_M_RANGE, SIGMA8_RANGE
from fieldflow.validation import check_maps

__all__ = ["PowerSpectrumEmulator", "SummaryEmulator", "poly_features"]


def poly_features(u, degree: int):
    """Monomials u_0^i u_1^j with i + j <= ``degree`` of u (T, 2): (T, n_terms).

    numpy in, numpy out; a jax array (or tracer) gives a jax array, so the emulator can be
    differentiated in theta."""
    xp = np if isinstance(u, np.ndarray) else jnp
    cols = [u[:, 0] ** a * u[:, 1] ** b for a in range(degree + 1) for b in range(degree + 1 - a)]
    return xp.stack(cols, axis=-1)


def unit_theta(theta, low, high):
    """u = 2 (theta - lo) / (hi - lo) - 1: the prior box mapped to [-1, 1]^2."""
    return 2 * (theta - low) / (high - low) - 1


def _polynomial_mean_fn(coef, degree: int, low, high, log_link) -> Callable:
    """jax ``fn(theta (T, 2)) -> mu (T, D)``, float32: exp of the polynomial where
    ``log_link``, the polynomial itself elsewhere."""
    coef, low, high = (jnp.asarray(a, jnp.float32) for a in (coef, low, high))
    log_link = jnp.asarray(log_link, bool)

    def fn(theta):
        eta = poly_features(unit_theta(theta, low, high), degree) @ coef
        return jnp.where(log_link, jnp.exp(jnp.where(log_link, eta, 0.0)), eta)

    return fn


def _gamma_deviance(phi: np.ndarray, y: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Gamma deviance per column, 2 sum_i [(y - mu) / mu - log(y / mu)], mu = exp(phi coef);
    inf where mu overflows."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        eta = phi @ coef
        ratio = y * np.exp(-eta)
        dev = 2.0 * np.sum(ratio - 1.0 - np.log(ratio), axis=0)
    return np.where(np.isfinite(dev), dev, np.inf)


def _gamma_glm_log_link(phi: np.ndarray, y: np.ndarray, n_iter: int) -> np.ndarray:
    """Coefficients a (n_terms, n_bins) of the Gamma GLM y ~ exp(phi a), fitted by IRLS.

    Starts from least squares on log y; each step regresses the working response
    z = eta + (y - mu) / mu on phi (unit weights for a Gamma model with log link), halving the
    step of a column while it would raise that column's deviance (heavy-tailed y, such as
    squared residuals, can otherwise send the plain iteration to overflow), until the
    coefficients move by less than 1e-10 or after ``n_iter`` steps.
    """
    coef = np.linalg.lstsq(phi, np.log(y), rcond=None)[0]
    dev = _gamma_deviance(phi, y, coef)
    for _ in range(int(n_iter)):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            z = phi @ coef + y * np.exp(-(phi @ coef)) - 1.0
        step = np.linalg.lstsq(phi, np.where(np.isfinite(z), z, 0.0), rcond=None)[0] - coef
        for _ in range(40):
            new_dev = _gamma_deviance(phi, y, coef + step)
            worse = ~(new_dev <= dev)
            if not worse.any():
                break
            step[:, worse] *= 0.5
        step[:, ~(new_dev <= dev)] = 0.0
        coef = coef + step
        dev = np.minimum(dev, new_dev)
        if np.max(np.abs(step)) < 1e-10:
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
        low, high = _check_range(theta_low, theta_high)
        edges = fourier.k_bin_edges(n, box) if edges is None else edges
        edges = np.asarray(edges, np.float64)
        degree = int(degree)
        phi = _design(theta, low, high, degree)
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
        u = unit_theta(t, self.theta_low, self.theta_high)
        return np.exp(poly_features(u, self.degree) @ self.coef)

    def mean_fn(self) -> Callable:
        """The mean as a jax function of theta (T, 2) -> (T, n_bins), differentiable."""
        log_link = np.ones(self.n_bins, bool)
        return _polynomial_mean_fn(
            self.coef, self.degree, self.theta_low, self.theta_high, log_link
        )


def _check_range(theta_low, theta_high) -> tuple[np.ndarray, np.ndarray]:
    low = np.asarray(theta_low, np.float64)
    high = np.asarray(theta_high, np.float64)
    if low.shape != (2,) or high.shape != (2,) or not np.all(high > low):
        raise ValueError(
            f"theta_low {tuple(low)} and theta_high {tuple(high)} must be two values "
            "each with high > low"
        )
    return low, high


def _design(theta: np.ndarray, low, high, degree: int) -> np.ndarray:
    """The monomials of u(theta), (M, n_terms); ValueError for fewer than 2 maps per term."""
    phi = poly_features(unit_theta(theta, low, high), degree)
    if phi.shape[0] < 2 * phi.shape[1]:
        raise ValueError(
            f"{phi.shape[0]} training maps are too few for a degree-{degree} "
            f"emulator ({phi.shape[1]} terms per component)"
        )
    return phi


@dataclasses.dataclass(frozen=True, eq=False)
class SummaryEmulator:
    """The mean of a summary t(x) in D components as a function of theta,

        mu_j(theta) = g_j(sum_c a_cj phi_c(u)),   u = 2 (theta - lo) / (hi - lo) - 1,

    with g_j = exp where ``log_link[j]`` (positive components such as P(k): a Gamma GLM, as
    :class:`PowerSpectrumEmulator`) and the identity elsewhere (components of either sign,
    such as a score: least squares). Build it with :meth:`fit`.
    """

    coef: np.ndarray
    degree: int
    log_link: np.ndarray
    theta_low: np.ndarray
    theta_high: np.ndarray
    fit_report: dict

    @classmethod
    def fit(
        cls,
        values,
        theta,
        log_link,
        *,
        degree: int = 3,
        theta_low: Sequence[float] = (OMEGA_M_RANGE[0], SIGMA8_RANGE[0]),
        theta_high: Sequence[float] = (OMEGA_M_RANGE[1], SIGMA8_RANGE[1]),
        n_iter: int = 20,
    ) -> SummaryEmulator:
        """Fit to the summaries ``values`` (M, D) of maps simulated at ``theta`` (M, 2).

        ValueError for mismatched shapes, non-finite values, a non-positive value of a
        log-link component, or fewer than two maps per emulator term.
        """
        y = np.asarray(values, np.float64)
        theta = np.asarray(theta, np.float64)
        log_link = np.broadcast_to(np.asarray(log_link, bool), y.shape[-1:]).copy()
        if y.ndim != 2 or theta.shape != (y.shape[0], 2):
            raise ValueError(
                f"values (M, D) and theta (M, 2) must agree, got {y.shape} and {theta.shape}"
            )
        if not np.all(np.isfinite(y)):
            raise ValueError("values contain NaN or inf")
        if np.any(y[:, log_link] <= 0):
            raise ValueError("a log-link component has a value <= 0")
        low, high = _check_range(theta_low, theta_high)
        phi = _design(theta, low, high, int(degree))
        coef = np.linalg.lstsq(phi, y, rcond=None)[0]
        if log_link.any():
            coef[:, log_link] = _gamma_glm_log_link(phi, y[:, log_link], n_iter)
        emu = cls(coef, int(degree), log_link, low, high, {})
        resid = y - emu.mean(theta)
        report = {
            "emulator": f"polynomial of degree {degree} in theta (exp of it where log-link)",
            "n_train": int(y.shape[0]),
            "residual_over_std": (resid.std(axis=0) / y.std(axis=0)).tolist(),
        }
        return dataclasses.replace(emu, fit_report=report)

    @property
    def dim(self) -> int:
        return len(self.log_link)

    def mean(self, theta) -> np.ndarray:
        """mu(theta), (T, D) for theta (T, 2) or (2,)."""
        t = np.atleast_2d(np.asarray(theta, np.float64))
        if t.ndim != 2 or t.shape[1] != 2:
            raise ValueError(f"theta must have shape (T, 2) or (2,), got {np.shape(theta)}")
        eta = poly_features(unit_theta(t, self.theta_low, self.theta_high), self.degree)
        eta = eta @ self.coef
        return np.where(self.log_link, np.exp(np.where(self.log_link, eta, 0.0)), eta)

    def mean_fn(self) -> Callable:
        """The mean as a jax function of theta (T, 2) -> (T, D), differentiable."""
        return _polynomial_mean_fn(
            self.coef, self.degree, self.theta_low, self.theta_high, self.log_link
        )
