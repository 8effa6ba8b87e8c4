"""The Gaussian likelihood of a data vector d(x) with a theta-dependent mean and a
simulation-estimated covariance,

    log L(theta) = -1/2 r^T Psi r + 1/2 log det(Psi / 2 pi),   r = d - mu(theta),

with Psi = h C_hat^-1, C_hat the sample covariance of d over fiducial simulations and h the
Hartlap factor: the classical form. The machinery is shared by the power-spectrum likelihood
and the likelihoods of other summaries (the flow's score, P(k) and the score together), which
may instead give r a distribution that follows theta
(:class:`~fieldflow.inference.residuals.ResidualModel`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fieldflow.inference.coverage import coverage_summary
from fieldflow.inference.grid import ThetaGrid, clip_grid, theta_grid
from fieldflow.inference.likelihoods import grid_posterior, nan_to_minus_inf
from fieldflow.inference.posterior import MASSES, GridPosterior, posteriors_from_loglike

__all__ = ["hartlap_factor", "fiducial_covariance", "GaussianLikelihood", "DataVectorLogLike"]


def hartlap_factor(n_sims: int, n_bins: int) -> float:
    """Hartlap et al. (2007) de-biasing of an inverse sample covariance,

        C^-1 ~ (n_s - n_b - 2) / (n_s - 1) * C_hat^-1,

    for n_s simulations and n_b data points; ValueError unless n_s > n_b + 2.
    """
    n_sims, n_bins = int(n_sims), int(n_bins)
    if n_sims <= n_bins + 2:
        raise ValueError(
            f"the covariance of {n_bins} data points needs more than {n_bins + 2} "
            f"fiducial simulations, got {n_sims}"
        )
    return (n_sims - n_bins - 2) / (n_sims - 1)


def fiducial_covariance(vectors) -> tuple[np.ndarray, np.ndarray, float]:
    """(C_hat, Psi = h C_hat^-1 symmetrised, h) of data vectors (S, D) of S fiducial
    simulations (``hartlap_factor``)."""
    v = np.asarray(vectors, np.float64)
    n_s, n_d = v.shape
    h = hartlap_factor(n_s, n_d)
    cov = np.cov(v, rowvar=False).reshape(n_d, n_d)
    precision = h * np.linalg.inv(cov)
    return cov, 0.5 * (precision + precision.T), h


class DataVectorLogLike:
    """``fn(x (B, N, N), theta (B, 2)) -> log L (B,)`` of a likelihood of a data vector d(x),
    kept in its two parts: ``data_fn(x) -> d (B, D)`` (jax), ``of_data(d (B, D), theta
    (B, 2)) -> (B,)`` (the theta-dependent part) and ``data_vectors(maps) -> (M, D)``
    (numpy, chunked). Derivatives in theta need d(x) once per map, so
    :func:`~fieldflow.inference.score_and_hessian` differentiates ``of_data`` alone and never
    compiles the summary into them (a flow's score is itself a gradient through the flow)."""

    def __init__(self, data_fn: Callable, of_data: Callable, data_vectors: Callable):
        self.data_fn, self.of_data, self.data_vectors = data_fn, of_data, data_vectors
        # called on whole batches (grid evaluation): one compilation per shape, not one
        # dispatch per operation
        self._jitted = jax.jit(lambda x, theta: of_data(data_fn(x), theta))

    def __call__(self, x, theta):
        return self._jitted(jnp.asarray(x, jnp.float32), theta)


class GaussianLikelihood:
    """Evaluation of the Gaussian likelihood (module doc) for subclasses that provide
    ``data_vector(maps) -> (M, D)``, ``mean(theta) -> (T, D)``, ``precision`` (D, D), ``n``
    (pixels per side) and ``theta_low`` / ``theta_high`` (the emulator's range). A subclass
    whose residual distribution follows theta overrides ``_log_density`` and
    ``_log_density_fn`` (the summary likelihoods' emulated covariance)."""

    def _norm(self) -> float:
        _, logdet = np.linalg.slogdet(self.precision / (2 * np.pi))
        return 0.5 * logdet

    def _log_density(self, r: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """log p(r | theta) of residuals r = d - mu(theta), (..., T, D), theta (T, 2)."""
        return -0.5 * np.einsum("...i,ij,...j->...", r, self.precision, r) + self._norm()

    def _log_density_fn(self) -> Callable:
        """``_log_density`` in jax, ``fn(r (B, D), theta (B, 2)) -> (B,)``, float32."""
        precision, norm = jnp.asarray(self.precision, jnp.float32), self._norm()
        return lambda r, theta: -0.5 * jnp.einsum("bi,ij,bj->b", r, precision, r) + norm

    def __call__(self, maps, theta) -> np.ndarray:
        """log L of (map_b, theta_b) pairs, (B,); a single map or theta broadcasts."""
        d = self.data_vector(maps)
        theta = np.atleast_2d(np.asarray(theta, np.float64))
        mu = self.mean(theta)
        if d.shape[0] != mu.shape[0] and 1 not in (d.shape[0], mu.shape[0]):
            raise ValueError(f"{d.shape[0]} maps and {mu.shape[0]} theta do not broadcast")
        r = d - mu
        return self._log_density(r, np.broadcast_to(theta, (len(r), theta.shape[-1])))

    def _jax_log_like(self, data_fn: Callable, mean_fn: Callable) -> DataVectorLogLike:
        """``fn(x (B, N, N), theta (B, 2)) -> log L (B,)`` (float32, differentiable in theta)
        from jax forms of the data vector ``data_fn(x) -> (B, D)`` and the mean
        ``mean_fn(theta) -> (B, D)``."""
        log_density = self._log_density_fn()

        def of_data(d, theta):
            theta = jnp.asarray(theta, jnp.float32)
            return log_density(jnp.asarray(d, jnp.float32) - mean_fn(theta), theta)

        return DataVectorLogLike(data_fn, of_data, self.data_vector)

    def _sample_residuals(self, key: jax.Array, theta: np.ndarray, n: int) -> np.ndarray:
        """r = d - mu(theta) drawn from N(0, Psi^-1), (T, n, D) for theta (T, 2)."""
        chol = np.linalg.cholesky(np.linalg.inv(self.precision))
        z = np.asarray(jax.random.normal(key, (len(theta), n, len(chol))), np.float64)
        return z @ chol.T

    def sample(self, key: jax.Array, theta, n: int) -> np.ndarray:
        """``n`` data vectors drawn from this likelihood at each theta (T, 2) (or (2,)):
        d = mu(theta) + r, (T, n, D), float64."""
        theta = np.atleast_2d(np.asarray(theta, np.float64))
        if theta.shape[-1] != 2 or int(n) < 1:
            raise ValueError(f"theta (T, 2) and n >= 1 expected, got {theta.shape}, n={n}")
        return self.mean(theta)[:, None, :] + self._sample_residuals(key, theta, int(n))

    def reference_coverage(
        self, key: jax.Array, theta, n: int = 1000, grid: ThetaGrid | None = None
    ) -> dict:
        """Coverage and mean bias of this likelihood's own posteriors on ``n`` data vectors
        drawn from it at ``theta`` (2,): what a likelihood of this summary that is exactly
        right gets at that theta under the grid's uniform prior. It differs from the nominal
        mass where posteriors reach the prior's edge (a degeneracy cut by the box), so the
        coverage of real maps at a fixed theta is judged against it as well as the nominal
        mass. Averaged over theta drawn from the prior it is nominal."""
        theta = np.asarray(theta, np.float64).reshape(-1)
        draws = self.sample(key, theta, n)[0]
        stats = coverage_summary(
            self.posterior_of_data_vectors(draws, grid), np.tile(theta, (len(draws), 1))
        )
        return {"n_draws": int(n), "theta": theta.tolist(), **stats}

    def pairwise(self, maps, theta) -> np.ndarray:
        """log L of every (map, theta) pair, (M, T)."""
        return self.pairwise_of_data_vectors(self.data_vector(maps), theta)

    def pairwise_of_data_vectors(self, vectors, theta) -> np.ndarray:
        """log L of every pair of a data vector computed before (M, D) and a theta, (M, T)."""
        theta = np.atleast_2d(np.asarray(theta, np.float64))
        r = np.asarray(vectors, np.float64)[:, None, :] - self.mean(theta)[None, :, :]
        return self._log_density(r, theta)

    def posterior_of_data_vectors(
        self,
        vectors,
        grid: ThetaGrid | None = None,
        *,
        log_prior=None,
        masses: Sequence[float] = MASSES,
    ) -> list[GridPosterior]:
        """One grid posterior per data vector computed before, (M, D) (``data_vector``
        once, then several likelihoods of the same summary); the grid clipped as in
        :meth:`posterior`."""
        d = np.asarray(vectors, np.float64)
        if d.ndim != 2 or not np.all(np.isfinite(d)):
            raise ValueError(f"data vectors must be finite (M, D), got shape {d.shape}")
        grid = theta_grid() if grid is None else grid
        grid = clip_grid(grid, self.theta_low, self.theta_high, what="the emulator's range")
        ll = self.pairwise_of_data_vectors(d, grid.points)
        ll = nan_to_minus_inf(ll).reshape(len(d), *grid.shape)
        return posteriors_from_loglike(ll, grid, log_prior, masses)

    def posterior(
        self,
        maps,
        grid: ThetaGrid | None = None,
        *,
        per_map: bool = False,
        log_prior=None,
        masses: Sequence[float] = MASSES,
    ) -> GridPosterior | list[GridPosterior]:
        """Grid posterior of the maps under this likelihood.

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
