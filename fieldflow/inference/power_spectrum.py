"""The Gaussian likelihood of the binned power spectrum of a map, the classical baseline.

    log L(theta) = -1/2 (d - mu(theta))^T Psi (d - mu(theta)) + 1/2 log det(Psi / 2 pi),

d = P(k_b) of the map, mu(theta) the emulated mean (:class:`PowerSpectrumEmulator`) and
Psi = h C_hat^-1, with C_hat the sample covariance of d over fiducial simulations and h the
Hartlap factor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from data_gen.cosmology import OMEGA_M_RANGE, SIGMA8_RANGE
from fieldflow.inference.emulator import PowerSpectrumEmulator
from fieldflow.inference.grid import ThetaGrid, clip_grid, theta_grid
from fieldflow.inference.likelihoods import grid_posterior
from fieldflow.inference.posterior import MASSES, GridPosterior
from fieldflow.validation import check_maps

__all__ = ["hartlap_factor", "PowerSpectrumLikelihood"]


def hartlap_factor(n_sims: int, n_bins: int) -> float:
    """Hartlap et al. (2007) de-biasing of an inverse sample covariance,

        C^-1 ~ (n_s - n_b - 2) / (n_s - 1) * C_hat^-1,

    for n_s simulations and n_b data points; ValueError unless n_s > n_b + 2.
    """
    n_sims, n_bins = int(n_sims), int(n_bins)
    if n_sims <= n_bins + 2:
        raise ValueError(
            f"the covariance of {n_bins} power-spectrum bins needs more than {n_bins + 2} "
            f"fiducial simulations, got {n_sims}"
        )
    return (n_sims - n_bins - 2) / (n_sims - 1)


@dataclasses.dataclass(frozen=True, eq=False)
class PowerSpectrumLikelihood:
    """Gaussian likelihood of the binned power spectrum of a map,

        log L(theta) = -1/2 (d - mu(theta))^T Psi (d - mu(theta)) + 1/2 log det(Psi / 2 pi),

    d = P(k) of the map (``fieldflow.metrics.power_spectrum``, bins up to ``k_max``),
    Psi = h C_hat^-1 with C_hat the sample covariance of d over fiducial simulations and h
    the Hartlap factor. The mean is a :class:`PowerSpectrumEmulator` fitted to simulations
    across the prior,

        mu_b(theta) = exp(sum_c a_bc phi_c(u)),   u = 2 (theta - lo) / (hi - lo) - 1,

    (a Gamma GLM with log link, so mu fits <P> and not <log P>). ``fit_report`` adds to the
    emulator's report its relative deviation from the fiducial simulations' mean P(k), also
    in units of that mean's standard error.
    """

    emulator: PowerSpectrumEmulator
    cov: np.ndarray
    precision: np.ndarray
    hartlap: float
    n_fiducial: int
    fit_report: dict

    # the emulator's description, under the names this class always had
    box = property(lambda self: self.emulator.box)
    n = property(lambda self: self.emulator.n)
    edges = property(lambda self: self.emulator.edges)
    coef = property(lambda self: self.emulator.coef)
    degree = property(lambda self: self.emulator.degree)
    theta_low = property(lambda self: self.emulator.theta_low)
    theta_high = property(lambda self: self.emulator.theta_high)

    @property
    def n_bins(self) -> int:
        return self.emulator.n_bins

    @property
    def k(self) -> np.ndarray:
        return self.emulator.k

    @classmethod
    def fit(
        cls,
        train_maps,
        train_theta,
        fiducial_maps,
        box: float,
        k_max: float | None = None,
        degree: int = 3,
        fiducial_theta: Sequence[float] = (0.3, 0.8),
        theta_low: Sequence[float] = (OMEGA_M_RANGE[0], SIGMA8_RANGE[0]),
        theta_high: Sequence[float] = (OMEGA_M_RANGE[1], SIGMA8_RANGE[1]),
        n_iter: int = 20,
    ) -> PowerSpectrumLikelihood:
        """Emulate mu(theta) from (train_maps, train_theta) and C from fiducial_maps.

        k_max (h/Mpc) drops the bins whose centre lies above it (default: all bins up to
        the Nyquist frequency). ValueError when the fiducial simulations do not outnumber
        the bins by at least 3 (Hartlap), or when there are fewer training maps than
        twice the emulator terms.
        """
        from fieldflow import fourier, metrics

        train_maps, _ = check_maps(np.asarray(train_maps), name="train_maps")
        n = train_maps.shape[-1]
        fiducial_maps, _ = check_maps(np.asarray(fiducial_maps), n, name="fiducial_maps")
        if np.shape(train_theta) != (train_maps.shape[0], 2):
            raise ValueError(
                f"train_theta must have shape ({train_maps.shape[0]}, 2), "
                f"got {np.shape(train_theta)}"
            )
        edges = fourier.k_bin_edges(n, box)
        if k_max is not None:
            centres = fourier.k_bin_centers(edges)
            keep = int(np.sum(centres <= float(k_max)))
            if keep < 1:
                raise ValueError(f"k_max = {k_max} h/Mpc leaves no bin (first at {centres[0]:.4g})")
            edges = edges[: keep + 1]
        n_b = len(edges) - 1
        h = hartlap_factor(fiducial_maps.shape[0], n_b)
        emulator = PowerSpectrumEmulator.fit(
            train_maps,
            train_theta,
            box,
            edges=edges,
            degree=degree,
            theta_low=theta_low,
            theta_high=theta_high,
            n_iter=n_iter,
        )
        pk_fid = np.asarray(metrics.power_spectrum(fiducial_maps, box, edges), np.float64)
        cov = np.cov(pk_fid, rowvar=False).reshape(n_b, n_b)
        precision = h * np.linalg.inv(cov)
        precision = 0.5 * (precision + precision.T)
        fid_mean = pk_fid.mean(axis=0)
        se = pk_fid.std(axis=0, ddof=1) / np.sqrt(pk_fid.shape[0])
        emu_fid = emulator.mean(fiducial_theta)[0]
        rep = emulator.fit_report
        report = {
            "emulator": rep["emulator"],
            "n_train": rep["n_train"],
            "n_fiducial": int(fiducial_maps.shape[0]),
            "n_bins": n_b,
            "hartlap": h,
            "fiducial_rel_dev": (emu_fid / fid_mean - 1).tolist(),
            "fiducial_dev_over_stderr": ((emu_fid - fid_mean) / se).tolist(),
            "train_mean_ratio": rep["train_mean_ratio"],
        }
        return cls(
            emulator=emulator,
            cov=cov,
            precision=precision,
            hartlap=h,
            n_fiducial=int(fiducial_maps.shape[0]),
            fit_report=report,
        )

    # ------------------------------------------------------------------ evaluation
    def mean(self, theta) -> np.ndarray:
        """Emulated mean P(k_b; theta), (T, n_bins) for theta (T, 2) or (2,)."""
        return self.emulator.mean(theta)

    def data_vector(self, maps) -> np.ndarray:
        """Binned P(k) of the maps, (M, n_bins)."""
        from fieldflow import metrics

        x, _ = check_maps(np.asarray(maps), self.n)
        return np.asarray(metrics.power_spectrum(x, self.box, self.edges), np.float64)

    def _norm(self) -> float:
        sign, logdet = np.linalg.slogdet(self.precision / (2 * np.pi))
        return 0.5 * logdet

    def _loglike(self, d: np.ndarray, mu: np.ndarray) -> np.ndarray:
        r = d - mu
        return -0.5 * np.einsum("...i,ij,...j->...", r, self.precision, r) + self._norm()

    def __call__(self, maps, theta) -> np.ndarray:
        """log L of (map_b, theta_b) pairs, (B,); a single map or theta broadcasts."""
        d = self.data_vector(maps)
        mu = self.mean(theta)
        if d.shape[0] != mu.shape[0] and 1 not in (d.shape[0], mu.shape[0]):
            raise ValueError(f"{d.shape[0]} maps and {mu.shape[0]} theta do not broadcast")
        return self._loglike(d, mu)

    def log_like_fn(self) -> Callable:
        """The same log L as a jax function of (map_b, theta_b) pairs,
        ``fn(x (B, N, N), theta (B, 2)) -> (B,)`` (float32), differentiable in theta (for the
        score test, :func:`fieldflow.inference.score_and_hessian`)."""
        from fieldflow import fourier
        from fieldflow.inference.emulator import poly_features

        emu = self.emulator
        coef = jnp.asarray(emu.coef, jnp.float32)
        low, high = (
            jnp.asarray(emu.theta_low, jnp.float32),
            jnp.asarray(emu.theta_high, jnp.float32),
        )
        precision = jnp.asarray(self.precision, jnp.float32)
        norm, box, edges, degree = self._norm(), self.box, self.edges, emu.degree

        def fn(x, theta):
            d = fourier.power_spectrum(jnp.asarray(x, jnp.float32), box, edges)
            u = 2 * (jnp.asarray(theta, jnp.float32) - low) / (high - low) - 1
            r = d - jnp.exp(poly_features(u, degree) @ coef)
            return -0.5 * jnp.einsum("bi,ij,bj->b", r, precision, r) + norm

        return fn

    def pairwise(self, maps, theta) -> np.ndarray:
        """log L of every (map, theta) pair, (M, T)."""
        d = self.data_vector(maps)
        mu = self.mean(theta)
        return self._loglike(d[:, None, :], mu[None, :, :])

    def posterior(
        self,
        maps,
        grid: ThetaGrid | None = None,
        *,
        per_map: bool = False,
        log_prior=None,
        masses: Sequence[float] = MASSES,
    ) -> GridPosterior | list[GridPosterior]:
        """Grid posterior of the maps under the power-spectrum likelihood.

        The grid is clipped (with a warning) to the emulator's range.
        """
        grid = theta_grid() if grid is None else grid
        grid = clip_grid(grid, self.theta_low, self.theta_high, what="the emulator's range")
        return grid_posterior(
            self.pairwise,
            maps,
            grid,
            per_map=per_map,
            log_prior=log_prior,
            masses=masses,
            chunk=1 << 16,
            pairwise=True,
            n=self.n,
        )
