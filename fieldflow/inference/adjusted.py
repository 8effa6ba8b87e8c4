"""The curvature-adjusted likelihood: honest posteriors from a misspecified (learned) likelihood.

A learned log-likelihood l(theta) = log q(x | theta) that breaks the information identity (see
:mod:`fieldflow.inference.calibration`) has the wrong curvature: its posterior covariance is
~ F^-1 (F = -E[H]) while its maximum-likelihood estimate scatters as the sandwich F^-1 C F^-1
(C = Cov(score)). The curvature adjustment (Ribatet, Cooley & Davison 2012; Pauli, Racugno &
Ventura 2011) keeps the shape of l but rescales it about the map's maximum theta_hat,

    l_A(theta) = l(theta_hat + A (theta - theta_hat)),   A = F^-1/2 G^1/2,   G = F C^-1 F,

so that -grad grad l_A = A^T F A = G at theta_hat: the adjusted posterior has the sandwich
covariance G^-1 = F^-1 C F^-1. F and C are estimated from simulations at a few theta
(:func:`estimate_adjustment`); A between them is an inverse-distance-weighted mean of their
A matrices in the normalised prior box (exact at the design points, a convex combination
elsewhere). The adjustment is tied to one model and one data set by a fingerprint and refused
for any other (:meth:`CurvatureAdjustment.load`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fieldflow.inference.calibration import score_and_hessian, score_test
from fieldflow.inference.grid import ThetaGrid
from fieldflow.inference.likelihoods import grid_log_likelihood
from fieldflow.inference.posterior import (
    MASSES,
    GridPosterior,
    posterior_from_loglike,
    posteriors_from_loglike,
)

__all__ = [
    "CurvatureAdjustment",
    "adjustment_matrix",
    "estimate_adjustment",
    "adjusted_posteriors",
    "adjusted_score_test",
    "fingerprint",
    "model_fingerprint",
]

FORMAT = "fieldflow-curvature-adjustment-1"
# the raw flow posterior counts as calibrated when its predicted 68% coverage is at least this
RAW_MIN_COVERAGE_68 = 0.62


def _sqrtm(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(0.5 * (m + m.T))
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def adjustment_matrix(fisher, score_cov) -> np.ndarray:
    """A = F^-1/2 G^1/2 with G = F C^-1 F, so that A^T F A = G. ValueError unless F and C are
    symmetric positive definite."""
    f = np.asarray(fisher, np.float64)
    c = np.asarray(score_cov, np.float64)
    for name, m in (("fisher", f), ("score_cov", c)):
        if m.shape != (2, 2) or not np.all(np.isfinite(m)) or np.linalg.eigvalsh(m).min() <= 0:
            raise ValueError(f"{name} must be a finite positive-definite 2 x 2 matrix, got {m}")
    g = f @ np.linalg.solve(c, f)
    return np.linalg.solve(_sqrtm(f), _sqrtm(g))


def fingerprint(description) -> str:
    """A short hash of a JSON-able description (a data set's manifest, a model's)."""
    blob = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def model_fingerprint(model) -> str:
    """:func:`fingerprint` of a model's type, configuration and parameter values (a checksum
    of each array), so a retrained run of the same configuration differs."""
    import jax
    from flax import nnx

    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    sums = [f"{float(np.abs(np.asarray(v, np.float64)).sum()):.9g}" for v in leaves]
    return fingerprint({"type": model.model_type, "config": model.config, "params": sums})


def read_calibration_json(path, fmt: str, *, model: str | None, data: str | None) -> dict:
    """A calibration file's contents; ValueError when it is not a ``fmt`` file, or when it was
    made for another model or data set than the fingerprints ``model`` / ``data`` (when
    given)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read calibration file {path}: {err}") from None
    found_fmt = d.get("format") if isinstance(d, dict) else None
    if isinstance(found_fmt, str) and found_fmt.rsplit("-", 1)[0] == fmt.rsplit("-", 1)[0]:
        if found_fmt != fmt:
            raise ValueError(
                f"{path} was written by another version of fieldflow (format {found_fmt}, "
                f"this one reads {fmt}): make it again with `fieldflow calibrate`"
            )
    elif found_fmt != fmt:
        raise ValueError(f"{path} is not a fieldflow calibration file ({fmt})")
    for what, expected in (("model", model), ("data set", data)):
        found = d["fingerprint"].get(what.split()[0])
        if expected is not None and found != expected:
            raise ValueError(
                f"{path} was made for another {what} (fingerprint {found}, this one is "
                f"{expected}): calibrate this one with `fieldflow calibrate`"
            )
    return d


class SavedAsJson:
    """``save(path)``: write ``self.to_json()`` (a calibration file) to ``path``."""

    def save(self, path) -> Path:
        from fieldflow.io import write_json

        return write_json(path, self.to_json())


@dataclasses.dataclass(frozen=True)
class CurvatureAdjustment(SavedAsJson):
    """Adjustment matrices A(theta_k) at design points theta_k and how they were measured.

    ``theta_low`` / ``theta_high`` normalise theta for the interpolation; ``tests`` keeps the
    score test of each design point (before adjustment); ``fingerprint`` names the model and
    data set it belongs to: ``{"model": model_fingerprint(model), "data": fingerprint(manifest)}``.
    """

    theta: np.ndarray  # (K, 2)
    matrices: np.ndarray  # (K, 2, 2)
    theta_low: tuple[float, float]
    theta_high: tuple[float, float]
    fingerprint: dict
    tests: tuple = ()

    def matrix(self, theta) -> np.ndarray:
        """A at each theta (T, 2) (or (2,)): (T, 2, 2), inverse-distance weighted (power 2)."""
        t = np.atleast_2d(np.asarray(theta, np.float64))
        span = np.asarray(self.theta_high) - np.asarray(self.theta_low)
        d2 = np.sum(((t[:, None, :] - self.theta[None]) / span) ** 2, axis=-1)  # (T, K)
        exact = d2 < 1e-12
        w = np.where(exact.any(axis=1, keepdims=True), exact, 1.0 / np.maximum(d2, 1e-12))
        w = w / w.sum(axis=1, keepdims=True)
        return np.einsum("tk,kij->tij", w, self.matrices)

    def raw_predicted_coverage(self, mass: float = 0.68) -> float | None:
        """The mean over the design points of the coverage of the raw posterior's ``mass``
        region that the score tests predict (:func:`predicted_coverage`); None when no test
        had a positive definite -E[H]."""
        covs = [
            t["predicted_coverage"][f"{mass:g}"]
            for t in self.tests
            if t.get("used") and t.get("predicted_coverage")
        ]
        return float(np.mean(covs)) if covs else None

    def raw_is_calibrated(self) -> bool:
        """Is the raw flow posterior honest by the score tests? Its predicted 68% coverage,
        averaged over the design points, is at least ``RAW_MIN_COVERAGE_68`` (the lower end
        of an honest 68% region)."""
        cov = self.raw_predicted_coverage(0.68)
        return cov is not None and cov >= RAW_MIN_COVERAGE_68

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "theta": self.theta.tolist(),
            "matrices": self.matrices.tolist(),
            "theta_low": list(self.theta_low),
            "theta_high": list(self.theta_high),
            "tests": list(self.tests),
        }

    @classmethod
    def load(cls, path, *, model: str | None = None, data: str | None = None):
        """Read a calibration file; ValueError when it is not one, or when it was made for
        another model or data set than the fingerprints ``model`` / ``data`` (when given)."""
        d = read_calibration_json(path, FORMAT, model=model, data=data)
        return cls(
            theta=np.asarray(d["theta"], np.float64),
            matrices=np.asarray(d["matrices"], np.float64),
            theta_low=tuple(d["theta_low"]),
            theta_high=tuple(d["theta_high"]),
            fingerprint=d["fingerprint"],
            tests=tuple(d.get("tests", ())),
        )


def estimate_adjustment(
    log_like: Callable,
    simulations: Sequence[tuple[Sequence[float], np.ndarray]],
    theta_low: Sequence[float],
    theta_high: Sequence[float],
    fingerprint: dict,
    *,
    chunk: int = 32,
) -> CurvatureAdjustment:
    """F and C from maps simulated at each design theta, ``simulations = [(theta_k, maps_k)]``,
    for the jax log-likelihood ``log_like(x (B, N, N), theta (B, 2)) -> (B,)``; returns the
    adjustment and keeps each point's score test. A point where F or C is not positive
    definite (the likelihood is not concave there, or too few maps) is left out with a warning
    and marked ``"used": False``; ValueError when no point is left."""
    thetas, mats, tests = [], [], []
    for theta_k, maps_k in simulations:
        t = np.asarray(theta_k, np.float64).ravel()
        s, h = score_and_hessian(log_like, maps_k, t, chunk=chunk)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported below, with theta
            test = {"theta": t.tolist(), **score_test(s, h)}
        try:
            mats.append(adjustment_matrix(test["fisher"], test["score_cov"]))
        except ValueError as err:
            warnings.warn(f"theta = {t.tolist()} left out of the adjustment: {err}", stacklevel=2)
            tests.append({**test, "used": False})
            continue
        thetas.append(t)
        tests.append({**test, "used": True})
    if not mats:
        raise ValueError(
            "the likelihood is not concave (or the maps too few) at every calibration theta "
            f"{[t['theta'] for t in tests]}: train the model longer or use more maps"
        )
    return CurvatureAdjustment(
        theta=np.stack(thetas),
        matrices=np.stack(mats),
        theta_low=tuple(float(v) for v in theta_low),
        theta_high=tuple(float(v) for v in theta_high),
        fingerprint=fingerprint,
        tests=tuple(tests),
    )


def _maxima(log_like, maps, grid, adjustment, raw_loglike, chunk, n=None, per_map=True):
    """``(number of maps, theta_hat, A(theta_hat))``: each map's (or, unless ``per_map``, the
    maps' joint) maximum of the raw log-likelihood on the grid, computed unless given as
    ``raw_loglike`` (M, n_om, n_s8), and the adjustment matrix there."""
    if raw_loglike is None:
        raw_loglike = grid_log_likelihood(log_like, maps, grid, chunk=chunk, per_map=True, n=n)
    raw = np.asarray(raw_loglike, np.float64).reshape(len(raw_loglike), -1)
    if not per_map:
        raw = raw.sum(axis=0, keepdims=True)
    hat = grid.points.astype(np.float64)[np.argmax(raw, axis=1)]  # (M, 2) or (1, 2)
    return len(raw_loglike), hat, adjustment.matrix(hat)


def adjusted_posteriors(
    log_like: Callable,
    maps,
    grid: ThetaGrid,
    adjustment: CurvatureAdjustment,
    *,
    per_map: bool = True,
    raw_loglike: np.ndarray | None = None,
    chunk: int = 4096,
    masses: Sequence[float] = MASSES,
    n: int | None = None,
) -> list[GridPosterior] | GridPosterior:
    """Curvature-adjusted posterior(s) of ``maps`` on ``grid`` (flat prior over the grid box).

    With ``per_map`` one posterior per map, otherwise the joint posterior of the independent
    maps (whose summed log-likelihood has M F and M C, hence the same A). theta_hat is the
    maximum of the raw log-likelihood on the grid (``raw_loglike`` (M, n_om, n_s8) when
    already computed); the warped points theta_hat + A (theta - theta_hat) are clipped to the
    grid box (the trained range) before ``log_like`` is taken there.
    """
    n_maps, hat, a = _maxima(log_like, maps, grid, adjustment, raw_loglike, chunk, n, per_map)
    pts = grid.points.astype(np.float64)
    warped = hat[:, None, :] + np.einsum("mij,tmj->mti", a, pts[:, None, :] - hat[None])
    warped = np.clip(warped, *grid.box)
    if not per_map:
        warped = np.repeat(warped, n_maps, axis=0)
    ll = grid_log_likelihood(log_like, maps, grid, chunk=chunk, per_map=per_map, n=n, points=warped)
    if per_map:
        return posteriors_from_loglike(ll, grid, masses=masses)
    return posterior_from_loglike(ll, grid, masses=masses)


def adjusted_score_test(
    log_like: Callable,
    maps,
    theta0,
    grid: ThetaGrid,
    adjustment: CurvatureAdjustment,
    *,
    raw_loglike: np.ndarray | None = None,
    chunk: int = 4096,
) -> dict:
    """The score test of the curvature-adjusted likelihood at the true ``theta0`` of ``maps``.

    For map m, l_A(theta) = l(clip(theta*)) with theta* = theta_hat + A (theta - theta_hat),
    clipped to the grid box as in :func:`adjusted_posteriors` (the likelihood that posterior
    uses), so its score at theta0 is A^T D s(clip(theta*)) and its Hessian
    A^T D H(clip(theta*)) D A, D = diag(1 where theta* is inside the box, 0 where clipped)
    (theta_hat from the raw grid log-likelihood).
    """
    _, hat, a = _maxima(log_like, maps, grid, adjustment, raw_loglike, chunk)
    t0 = np.asarray(theta0, np.float64).ravel()
    star = hat + np.einsum("mij,mj->mi", a, t0[None] - hat)
    lo, hi = grid.box
    inside = ((star >= lo) & (star <= hi)).astype(np.float64)  # (M, 2): the diagonal of D
    s, h = score_and_hessian(log_like, maps, np.clip(star, lo, hi))
    da = inside[:, :, None] * a  # D A
    return score_test(np.einsum("mji,mj->mi", da, s), np.einsum("mki,mkl,mlj->mij", da, h, da))
