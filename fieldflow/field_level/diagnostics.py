r"""Convergence diagnostics of several chains: R-hat and ESS (ArviZ), divergences, stray chains.

* R-hat: ArviZ's rank-normalised split R-hat per parameter (Vehtari et al. 2021);
* ESS: ArviZ's bulk effective sample size per parameter, summed over chains;
* divergences: NUTS's divergent transitions, or MCLMC's steps with a non-finite energy;
* a chain *strays* when its mean of some parameter is further than ``stray_sigma`` pooled
  posterior standard deviations from the median of the chains' means (a chain stuck in
  another mode or not yet arrived).

A run is ``converged`` when every R-hat < ``rhat_max``, every ESS >= ``min_ess``, and no chain
diverged or strayed; otherwise the result carries the flags and a warning is issued.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["PARAM_NAMES", "inference_data", "chain_diagnostics"]

PARAM_NAMES = ("omega_m", "sigma_8")


def inference_data(theta: np.ndarray, *, logdensity=None, divergent=None, names=PARAM_NAMES):
    """ArviZ ``InferenceData`` of theta (C, S, P), with sample stats when given."""
    import arviz as az

    posterior = {name: np.asarray(theta[..., i]) for i, name in enumerate(names)}
    stats = {}
    if logdensity is not None:
        stats["lp"] = np.asarray(logdensity)
    if divergent is not None:
        stats["diverging"] = np.asarray(divergent, bool)
    return az.from_dict(posterior=posterior, sample_stats=stats or None)


def chain_diagnostics(
    theta: np.ndarray,
    divergent: np.ndarray,
    *,
    rhat_max: float = 1.01,
    min_ess: float = 100.0,
    stray_sigma: float = 0.5,
    names=PARAM_NAMES,
    warn: bool = True,
) -> dict:
    """R-hat, ESS, divergences and flags of theta chains (C, S, P); see the module docstring.

    Returns a dict: ``rhat`` and ``ess`` (P,), ``divergences`` (C,), ``divergent_chains`` and
    ``stray_chains`` (C,) bool, ``converged`` bool and ``problems`` (list of strings). Warns
    (RuntimeWarning) with the problems unless ``warn`` is False.
    """
    import arviz as az

    theta = np.asarray(theta, np.float64)
    idata = inference_data(theta, names=names)
    rhat = np.array([float(az.rhat(idata)[n]) for n in names[: theta.shape[-1]]])
    ess = np.array([float(az.ess(idata, method="bulk")[n]) for n in names[: theta.shape[-1]]])
    divergences = np.asarray(divergent, bool).sum(axis=1)
    means = theta.mean(axis=1)  # (C, P)
    sd = theta.reshape(-1, theta.shape[-1]).std(axis=0)
    off = np.abs(means - np.median(means, axis=0)) / np.where(sd > 0, sd, 1.0)
    stray = np.any(off > stray_sigma, axis=1) if theta.shape[0] > 2 else np.zeros(len(means), bool)
    problems = []
    if not np.all(np.isfinite(rhat)) or np.any(rhat >= rhat_max):
        problems.append(f"R-hat {np.round(rhat, 4).tolist()} (want < {rhat_max})")
    if not np.all(np.isfinite(ess)) or np.any(ess < min_ess):
        problems.append(f"ESS {np.round(ess, 1).tolist()} (want >= {min_ess:g})")
    if divergences.any():
        problems.append(f"divergent transitions in chains {np.flatnonzero(divergences).tolist()}")
    if stray.any():
        problems.append(f"stray chains {np.flatnonzero(stray).tolist()}")
    if problems and warn:
        warnings.warn(
            "the chains are not a trustworthy posterior: " + "; ".join(problems),
            RuntimeWarning,
            stacklevel=3,
        )
    return {
        "rhat": rhat,
        "ess": ess,
        "divergences": divergences,
        "divergent_chains": divergences > 0,
        "stray_chains": stray,
        "converged": not problems,
        "problems": problems,
    }
