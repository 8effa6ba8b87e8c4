"""The Gaussian likelihood of the binned power spectrum of a map, the classical baseline.

    log L(theta) = -1/2 (d - mu(theta))^T Psi (d - mu(theta)) + 1/2 log det(Psi / 2 pi),

d = P(k_b) of the map, mu(theta) the emulated mean (:class:`PowerSpectrumEmulator`) and
Psi = h C_hat^-1, with C_hat the sample covariance of d over fiducial simulations and h the
Hartlap factor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from data_gen.cosmology import OMEGA_M_RANGE, SIGMA8_RANGE
from fieldflow.inference.emulator import PowerSpectrumEmulator
from fieldflow.inference.gaussian import GaussianLikelihood, fiducial_covariance, hartlap_factor
from fieldflow.validation import check_maps

__all__ = ["hartlap_factor", "PowerSpectrumLikelihood"]  # hartlap_factor: re-exported


@dataclasses.dataclass(frozen=True, eq=False)
class PowerSpectrumLikelihood(GaussianLikelihood):
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
        edges = fourier.k_bin_edges_up_to(n, box, k_max)
        n_b = len(edges) - 1
        hartlap_factor(fiducial_maps.shape[0], n_b)  # enough fiducial maps, before the fit
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
        cov, precision, h = fiducial_covariance(pk_fid)
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

    def log_like_fn(self) -> Callable:
        """The same log L as a jax function of (map_b, theta_b) pairs,
        ``fn(x (B, N, N), theta (B, 2)) -> (B,)`` (float32), differentiable in theta (for the
        score test, :func:`fieldflow.inference.score_and_hessian`)."""
        from fieldflow import fourier

        box, edges = self.box, self.edges
        return self._jax_log_like(
            lambda x: fourier.power_spectrum(x, box, edges), self.emulator.mean_fn()
        )
