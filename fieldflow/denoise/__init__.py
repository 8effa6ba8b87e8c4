r"""Reconstruction of a masked, noisy map: Wiener filter and flow MAP.

Observation model, on periodic N x N maps: d = M s + n, n ~ N(0, diag(sigma_n^2)), with M the
binary mask (1 = observed). Estimators of s:

* the Wiener filter s_WF = (C^-1 + M^T N^-1 M)^-1 M^T N^-1 d, closed form or preconditioned
  CG (:func:`wiener_filter`), with the signal power S_k = N^4 P(k) / L^2 per FFT mode
  (:func:`signal_power_from_pk`);
* the data-space MAP argmax_s [-1/2 |d - M s|^2_N + log p(s | theta)] under any prior, e.g.
  a flow's ``log_prob`` (:func:`flow_map`);
* the latent MAP of a flow s = f^-1(z_MAP), z_MAP = argmax_z [-1/2 |d - M f^-1(z)|^2_N -
  1/2 |z|^2] (:func:`flow_latent_map`).

Modules, one job each:

* :mod:`~fieldflow.denoise.observation`: checks of d, mask, noise and S_k; the Fourier units;
  ``signal_power_from_pk``, ``sample_gaussian_field``, ``observe``;
* :mod:`~fieldflow.denoise.wiener`: ``wiener_filter``, ``wiener_filter_fourier``;
* :mod:`~fieldflow.denoise.solver`: the one compiled, cached L-BFGS / Adam loop of both MAPs
  and ``MAPResult``;
* :mod:`~fieldflow.denoise.field_map`: ``flow_map``; :mod:`~fieldflow.denoise.latent_map`:
  ``flow_latent_map``;
* :mod:`~fieldflow.denoise.priors`: ``gaussian_log_prior``, ``lognormal_log_prior``;
* :mod:`~fieldflow.denoise.metrics`: ``denoising_metrics`` (r(k), residual P(k), pixel MSE);
* :mod:`~fieldflow.denoise.reconstruct`: one reconstruction of a map file, as
  ``fieldflow denoise`` runs it;
* :mod:`~fieldflow.denoise.benchmark`: every estimator over test maps against the truth
  (``scripts/benchmark_denoise.py``).

The figures are in :mod:`fieldflow.plots.denoise`.
"""

from fieldflow.denoise.field_map import flow_map
from fieldflow.denoise.latent_map import flow_latent_map
from fieldflow.denoise.metrics import denoising_metrics
from fieldflow.denoise.observation import observe, sample_gaussian_field, signal_power_from_pk
from fieldflow.denoise.priors import gaussian_log_prior, lognormal_log_prior
from fieldflow.denoise.solver import MAPResult
from fieldflow.denoise.wiener import WienerResult, wiener_filter, wiener_filter_fourier

__all__ = [
    "WienerResult",
    "MAPResult",
    "signal_power_from_pk",
    "sample_gaussian_field",
    "observe",
    "gaussian_log_prior",
    "wiener_filter",
    "wiener_filter_fourier",
    "flow_map",
    "flow_latent_map",
    "lognormal_log_prior",
    "denoising_metrics",
]
