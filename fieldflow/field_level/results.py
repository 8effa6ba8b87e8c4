r"""The result of a field-level (or theta-only) run and its outputs: ``.npz``, ArviZ
InferenceData (netCDF) and GetDist ``MCSamples``.

The field's posterior mean and standard deviation per pixel are
mean = <s>, std = sqrt(<s^2> - <s>^2) over all draws of all chains; with thinned draws of the
field kept, its per-pixel central intervals too (:meth:`FieldLevelResult.interval_coverage`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fieldflow.field_level.diagnostics import PARAM_NAMES, inference_data

__all__ = ["FieldLevelResult", "load_result", "sample_credible_mass"]

LABELS = {"omega_m": r"\Omega_m", "sigma_8": r"\sigma_8"}


def sample_credible_mass(samples, theta, box=None, max_draws: int = 2000) -> float:
    r"""Credible mass of the highest-density region whose edge passes through ``theta``,
    from draws (S, 2) of a posterior: the fraction of draws denser than ``theta``,

        c(theta) = (1/S) sum_s [ p_hat(theta_s) > p_hat(theta) ],

    with p_hat a Gaussian kernel density estimate (Scott's bandwidth, the draws' covariance;
    leave-one-out at the draws)
    reflected at the edges of the prior ``box`` ((om_lo, om_hi), (s8_lo, s8_hi)), so that a
    posterior cut by the prior is not smeared beyond it. ``theta`` lies inside the HPD region
    of mass q iff c(theta) <= q; for a calibrated posterior c is uniform over data sets. At
    most ``max_draws`` evenly spaced draws are used."""
    s = np.asarray(samples, np.float64)
    if s.ndim != 2 or s.shape[1] != 2 or len(s) < 10 or not np.all(np.isfinite(s)):
        raise ValueError(f"samples must be finite (S >= 10, 2), got shape {s.shape}")
    s = s[:: max(1, -(-len(s) // max_draws))]
    # the draws and, with a box, their mirror images in each edge, one axis at a time
    xs, ys = [s[:, 0]], [s[:, 1]]
    if box is not None:
        (om_lo, om_hi), (s8_lo, s8_hi) = np.asarray(box, np.float64)
        xs += [2 * om_lo - s[:, 0], 2 * om_hi - s[:, 0]]
        ys += [2 * s8_lo - s[:, 1], 2 * s8_hi - s[:, 1]]
    centres = np.concatenate([np.stack([x, y], axis=1) for x in xs for y in ys])
    bandwidth = np.cov(s.T) * len(s) ** (-2.0 / 6.0)  # Scott's factor n^(-1/(d + 4)), d = 2
    whiten = np.linalg.inv(np.linalg.cholesky(bandwidth))
    c_w = centres @ whiten.T
    c_sq = (c_w**2).sum(-1)

    def density(points):
        p_w = np.atleast_2d(points) @ whiten.T
        out = np.empty(len(p_w))
        for a in range(0, len(p_w), 512):
            p = p_w[a : a + 512]
            d2 = (p**2).sum(-1)[:, None] + c_sq[None] - 2.0 * p @ c_w.T
            out[a : a + 512] = np.exp(-0.5 * np.maximum(d2, 0.0)).sum(-1)
        return out

    # each draw's own kernel (exp(0) = 1) left out: leave-one-out densities of the draws
    return float(np.mean(density(s) - 1.0 > density(np.asarray(theta, np.float64))[0]))


@dataclasses.dataclass
class FieldLevelResult:
    """Chains of theta (C, S, 2), field moments (N, N) (None for theta-only runs), diagnostics.

    ``converged`` is False (and ``problems`` says why) when R-hat, ESS, divergences or a
    stray chain fail the checks of :func:`~fieldflow.field_level.diagnostics.chain_diagnostics`.
    """

    sampler: str
    theta: np.ndarray
    logdensity: np.ndarray
    divergent: np.ndarray
    field_mean: np.ndarray | None
    field_std: np.ndarray | None
    rhat: np.ndarray
    ess: np.ndarray
    divergent_chains: np.ndarray
    stray_chains: np.ndarray
    converged: bool
    problems: list
    grad_evals: int
    warmup_grad_evals: int
    seconds: float
    sample_seconds: float
    field_draws: np.ndarray | None = None
    coordinates: str | None = None  # 'latent' or 'data' for field-level runs

    @property
    def samples(self) -> np.ndarray:
        """All draws of theta, chains concatenated: (C S, 2)."""
        return self.theta.reshape(-1, self.theta.shape[-1])

    @property
    def mean(self) -> np.ndarray:
        return self.samples.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        return self.samples.std(axis=0, ddof=1)

    def credible_mass_at(self, theta, box=None) -> float:
        """Credible mass of the HPD region of theta's draws whose edge passes through
        ``theta`` (``sample_credible_mass``; ``box`` the prior box, for its edges)."""
        return sample_credible_mass(self.samples, theta, box)

    def interval_coverage(self, truth, pixels=None, level: float = 0.6827) -> float:
        """Fraction of ``pixels`` (a boolean (N, N) selection; default all) whose ``truth``
        lies inside the central ``level`` interval of the kept field draws: ``level`` for a
        calibrated posterior, whatever the shape of the pixels' marginals (unlike mean +- std,
        which covers more than 68% of a skewed one)."""
        if self.field_draws is None:
            raise ValueError("no field draws kept: sample with field_draws > 0")
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        draws = self.field_draws.reshape(-1, *self.field_draws.shape[-2:])
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        truth = np.asarray(truth)
        if truth.shape != lo.shape:
            raise ValueError(f"truth must have shape {lo.shape}, got {truth.shape}")
        inside = (truth >= lo) & (truth <= hi)
        return float(np.mean(inside if pixels is None else inside[np.asarray(pixels, bool)]))

    def _hidden_pixels(self, truth, mask) -> np.ndarray | None:
        """The masked pixels (``mask`` == 0), or None without kept draws, a truth or any."""
        hidden = np.asarray(mask) == 0
        if truth is None or self.field_draws is None or not hidden.any():
            return None
        return hidden

    def masked_coverage(self, truth, mask, level: float = 0.6827) -> float | None:
        """:meth:`interval_coverage` of the masked pixels (``mask`` == 0); None without kept
        draws, a truth or masked pixels."""
        hidden = self._hidden_pixels(truth, mask)
        return None if hidden is None else self.interval_coverage(truth, hidden, level)

    def log_moments(self, log_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel mean and std of u = ln(1 + log_offset + s) over the kept field draws:
        the moments of a lognormal-like field where its pixels' posteriors are nearly
        Gaussian. ValueError when a draw has s <= -1 - log_offset."""
        if self.field_draws is None:
            raise ValueError("no field draws kept: sample with field_draws > 0")
        draws = self.field_draws.reshape(-1, *self.field_draws.shape[-2:]).astype(np.float64)
        if np.any(draws <= -1.0 - log_offset):
            raise ValueError(f"field draws reach s <= -1 - {log_offset:g}: no ln(1 + c + s)")
        u = np.log1p(log_offset + draws)
        return u.mean(axis=0), u.std(axis=0, ddof=1)

    def std_coverage(self, truth, pixels=None, log_offset: float | None = None) -> float:
        """Fraction of ``pixels`` (boolean (N, N); default all) whose ``truth`` lies within
        +-1 posterior std of the posterior mean: of s itself (``log_offset`` None; 0.683 only
        for Gaussian marginals, more for skewed ones such as a lognormal field's), or of
        u = ln(1 + log_offset + s) over the kept draws (:meth:`log_moments`)."""
        truth = np.asarray(truth, np.float64)
        if log_offset is None:
            mean, std = self.field_mean, self.field_std
        else:
            if np.any(truth <= -1.0 - log_offset):
                raise ValueError(f"truth reaches s <= -1 - {log_offset:g}: no ln(1 + c + s)")
            mean, std = self.log_moments(log_offset)
            truth = np.log1p(log_offset + truth)
        if mean is None or truth.shape != mean.shape:
            raise ValueError(f"truth must be a field of shape {np.shape(mean)}")
        inside = np.abs(truth - mean) <= std
        return float(np.mean(inside if pixels is None else inside[np.asarray(pixels, bool)]))

    def masked_std_coverage(self, truth, mask, log_offset: float = 0.0) -> float | None:
        """:meth:`std_coverage` in u = ln(1 + log_offset + s) of the masked pixels; None
        without kept draws, a truth or masked pixels, or where the draws or the truth leave
        the log's domain."""
        hidden = self._hidden_pixels(truth, mask)
        if hidden is None:
            return None
        try:
            return self.std_coverage(truth, hidden, log_offset)
        except ValueError:
            return None

    def summary(self) -> dict:
        """JSON-able summary: moments, diagnostics, cost (ESS per gradient and per minute)."""
        s = self.samples
        minutes = max(self.seconds, 1e-9) / 60.0
        return {
            "sampler": self.sampler,
            "coordinates": self.coordinates,
            "chains": int(self.theta.shape[0]),
            "samples_per_chain": int(self.theta.shape[1]),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "corr": float(np.corrcoef(s.T)[0, 1]),
            "rhat": self.rhat.tolist(),
            "ess": self.ess.tolist(),
            "divergences": int(np.asarray(self.divergent).sum()),
            "divergent_chains": np.flatnonzero(self.divergent_chains).tolist(),
            "stray_chains": np.flatnonzero(self.stray_chains).tolist(),
            "converged": bool(self.converged),
            "problems": list(self.problems),
            "grad_evals": int(self.grad_evals),
            "warmup_grad_evals": int(self.warmup_grad_evals),
            "ess_per_grad": (self.ess / max(self.grad_evals, 1)).tolist(),
            "ess_per_minute": (self.ess / minutes).tolist(),
            "seconds": float(self.seconds),
            "sample_seconds": float(self.sample_seconds),
        }

    # ----------------------------------------------------------------- outputs
    def to_inference_data(self):
        """ArviZ ``InferenceData``: posterior omega_m, sigma_8 (chain, draw); lp, diverging."""
        return inference_data(self.theta, logdensity=self.logdensity, divergent=self.divergent)

    def to_getdist(self, label: str | None = None):
        """GetDist ``MCSamples`` of theta (one chain per sampler chain)."""
        from getdist import MCSamples

        return MCSamples(
            samples=[np.asarray(c, np.float64) for c in self.theta],
            names=list(PARAM_NAMES),
            labels=[LABELS[n] for n in PARAM_NAMES],
            label=label or self.sampler,
            settings={"ignore_rows": 0},
        )

    def save(self, out_dir, prefix: str = "field_level") -> list[str]:
        """Write ``PREFIX.npz`` (chains, field moments, diagnostics) and ``PREFIX.nc``
        (InferenceData); returns the file names."""
        from fieldflow.io import save_npz

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {
            k: np.asarray(v)
            for k, v in dataclasses.asdict(self).items()
            if v is not None and k not in ("problems", "sampler", "coordinates")
        }
        arrays["sampler"] = np.asarray(self.sampler)
        if self.coordinates is not None:
            arrays["coordinates"] = np.asarray(self.coordinates)
        arrays["problems"] = np.asarray("\n".join(self.problems))
        save_npz(out / f"{prefix}.npz", **arrays)
        self.to_inference_data().to_netcdf(str(out / f"{prefix}.nc"))
        return [f"{prefix}.npz", f"{prefix}.nc"]


def load_result(path) -> FieldLevelResult:
    """A :class:`FieldLevelResult` from the ``.npz`` that :meth:`FieldLevelResult.save` wrote."""
    with np.load(path) as f:
        a = {k: f[k] for k in f.files}
    kw = {}
    for field in dataclasses.fields(FieldLevelResult):
        v = a.get(field.name)
        if field.name == "sampler" or (field.name == "coordinates" and v is not None):
            v = str(v)
        elif field.name == "problems":
            v = [p for p in str(v).split("\n") if p]
        elif field.name == "converged":
            v = bool(v)
        elif field.name in ("grad_evals", "warmup_grad_evals"):
            v = int(v)
        elif field.name in ("seconds", "sample_seconds"):
            v = float(v)
        kw[field.name] = v
    return FieldLevelResult(**kw)
