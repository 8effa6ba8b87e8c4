"""Which posterior ``fieldflow infer`` reports: the most informative one whose coverage is honest.

``fieldflow calibrate`` builds up to three posteriors of a run: the raw flow posterior, the
curvature-adjusted one and the score-compressed one. On M held-out maps with known theta_m
(the data set's validation split, spread over the prior) :func:`measure_posteriors` gives
each one's coverage of its 68% and 95% HPD regions,

    c_q = (1/M) sum_m [theta_m in HPD_q(p_m)],

(binomial error sqrt(q (1 - q) / M)) and its median figure of merit. :func:`choose_posterior`
then reports, among the posteriors whose coverage is in the honest ranges
(``COVERAGE_RANGES``: c_68 in [0.62, 0.74], c_95 in [0.91, 0.98]), the one with the largest
median FoM: honest first, then informative. When none is honest it reports the one nearest
nominal coverage, |c_68 - 0.68| + |c_95 - 0.95|, and says so. The choice and its evidence
are a :class:`PosteriorSelection`, saved beside the calibration files and tied, like them,
to one model and data set.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from fieldflow.inference.adjusted import (
    SavedAsJson,
    adjusted_posteriors,
    read_calibration_json,
)
from fieldflow.inference.calibration import MIN_MAPS
from fieldflow.inference.coverage import coverage_summary
from fieldflow.inference.likelihoods import flow_log_like_fn, grid_log_likelihood
from fieldflow.inference.posterior import posteriors_from_loglike

__all__ = [
    "COVERAGE_RANGES",
    "POSTERIOR_KINDS",
    "PosteriorSelection",
    "choose_posterior",
    "coverage_in_range",
    "measure_posteriors",
    "one_map_per_simulation",
]

FORMAT = "fieldflow-posterior-selection-1"
COVERAGE_RANGES = {"coverage_68": (0.62, 0.74), "coverage_95": (0.91, 0.98)}
# the posteriors a calibrated run has, by the names of `fieldflow infer --posterior`
POSTERIOR_KINDS = ("raw", "adjusted", "score")


def coverage_in_range(stats: dict) -> bool:
    """Whether the 68% and 95% coverage of ``stats`` (a :func:`coverage_summary`) are honest."""
    return all(lo <= stats[key] <= hi for key, (lo, hi) in COVERAGE_RANGES.items())


def _distance_to_nominal(stats: dict) -> float:
    return abs(stats["coverage_68"] - 0.68) + abs(stats["coverage_95"] - 0.95)


def choose_posterior(stats: dict[str, dict]) -> tuple[str, list[str], str]:
    """``(chosen, honest, reason)`` for the posteriors measured in ``stats`` ({kind:
    coverage_summary}): the honest one with the largest median FoM, else the one nearest
    nominal coverage."""
    if not stats:
        raise ValueError("choose_posterior needs the coverage of at least one posterior")
    honest = [k for k, s in stats.items() if coverage_in_range(s)]
    if honest:
        chosen = max(honest, key=lambda k: stats[k]["fom_median"])
        reason = "coverage in range; the largest median FoM of those in range"
    else:
        chosen = min(stats, key=lambda k: _distance_to_nominal(stats[k]))
        reason = "no posterior has its coverage in range: the one nearest nominal coverage"
    return chosen, honest, reason


def one_map_per_simulation(maps, theta, n: int, maps_per_sim: int = 1):
    """Up to ``n`` of ``maps`` (M, N, N) and their ``theta``, one per simulation first (the
    slabs of one simulation are correlated), then the other slabs in order."""
    per_sim = max(int(maps_per_sim), 1)
    order = np.concatenate([np.arange(start, len(maps), per_sim) for start in range(per_sim)])
    keep = np.sort(order[: int(n)])
    return maps[keep], theta[keep]


def measure_posteriors(
    model,
    maps,
    theta,
    grid,
    *,
    adjustment=None,
    score_likelihood=None,
    chunk: int = 32,
) -> dict[str, dict]:
    """Coverage and FoM statistics ({kind: :func:`coverage_summary`}) of the raw flow
    posterior of each of ``maps`` (M, N, N) with true ``theta`` (M, 2) on ``grid``, and of the
    curvature-adjusted (``adjustment``) and score-compressed (``score_likelihood``) ones when
    given. Warns below ``MIN_MAPS`` maps: the choice then rests on large error bars."""
    if len(maps) < MIN_MAPS:
        warnings.warn(
            f"coverage on {len(maps)} maps (< {MIN_MAPS}): its error bars are large, and so "
            "is the chance of choosing another posterior than more maps would",
            stacklevel=2,
        )
    log_like = flow_log_like_fn(model)
    n = int(model.shape[0])
    raw = grid_log_likelihood(log_like, maps, grid, per_map=True, chunk=chunk, n=n)
    stats = {"raw": coverage_summary(posteriors_from_loglike(raw, grid), theta)}
    if adjustment is not None:
        posts = adjusted_posteriors(
            log_like, maps, grid, adjustment, raw_loglike=raw, chunk=chunk, n=n
        )
        stats["adjusted"] = coverage_summary(posts, theta)
    if score_likelihood is not None:
        posts = score_likelihood.posterior(maps, grid, per_map=True)
        stats["score"] = coverage_summary(posts, theta)
    return stats


@dataclasses.dataclass(frozen=True)
class PosteriorSelection(SavedAsJson):
    """The posterior to report (``chosen``, one of ``POSTERIOR_KINDS``), the ones found honest,
    why, and the evidence: ``stats`` {kind: coverage_summary} on ``source`` maps."""

    chosen: str
    honest: tuple[str, ...]
    reason: str
    stats: dict
    source: str
    fingerprint: dict

    @classmethod
    def on_validation(
        cls, model, splits: dict, manifest: dict, n_maps: int, grid, fingerprint: dict, **posteriors
    ):
        """Measure (:func:`measure_posteriors`, keyword arguments ``adjustment`` and
        ``score_likelihood``) on up to ``n_maps`` maps of the validation split of ``splits``
        (:func:`one_map_per_simulation` with the data set ``manifest``'s ``maps_per_sim``;
        checked against a log transform's support) and choose (:func:`choose_posterior`);
        None when the data set has no validation maps."""
        maps, theta = splits["val"]
        if not len(maps):
            return None
        per_sim = int(manifest.get("maps_per_sim", 1))
        maps, theta = one_map_per_simulation(maps, theta, n_maps, per_sim)
        if hasattr(model, "check_support"):
            model.check_support(maps, "validation maps")
        stats = measure_posteriors(model, maps, theta, grid, **posteriors)
        chosen, honest, reason = choose_posterior(stats)
        source = f"{len(maps)} maps of the validation split"
        return cls(chosen, tuple(honest), reason, stats, source, fingerprint)

    def to_json(self) -> dict:
        return {"format": FORMAT, **dataclasses.asdict(self), "honest": list(self.honest)}

    @classmethod
    def load(cls, path, *, model: str | None = None, data: str | None = None):
        """Read a selection file; ValueError when it is not one, or when it was made for
        another model or data set than the fingerprints ``model`` / ``data`` (when given)."""
        d = read_calibration_json(path, FORMAT, model=model, data=data)
        if d.get("chosen") not in POSTERIOR_KINDS:
            raise ValueError(f"{path}: unknown posterior {d.get('chosen')!r}")
        return cls(
            chosen=d["chosen"],
            honest=tuple(d["honest"]),
            reason=d["reason"],
            stats=d["stats"],
            source=d["source"],
            fingerprint=d["fingerprint"],
        )

    def describe(self) -> str:
        """One line per posterior: its coverage and median FoM, the chosen one marked."""
        lines = []
        for kind, s in self.stats.items():
            mark = "*" if kind == self.chosen else " "
            lines.append(
                f"{mark} {kind:8s} 68%: {s['coverage_68']:.3f}  95%: {s['coverage_95']:.3f}  "
                f"median FoM {s['fom_median']:.0f}  ({s['n_maps']} maps)"
            )
        return "\n".join(lines)
