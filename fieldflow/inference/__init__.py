"""Cosmological inference on a grid: posteriors p(theta | x) of (Omega_m, sigma_8), figures of
merit, baselines and their comparison.

For maps x_1 .. x_M independent given theta,
log p(theta | x_1..M) = sum_m log p(x_m | theta) + log p(theta) - log Z on a regular grid of
cells tiling the prior box, normalised to cell probabilities that sum to one. Modules:

* :mod:`~fieldflow.inference.grid`: ``ThetaGrid``, ``theta_grid``, ``clip_grid``;
* :mod:`~fieldflow.inference.posterior`: ``GridPosterior`` (moments, HPD regions,
  FoM = 1 / area of the 68% region), ``posterior_from_loglike``, ``contains``, ...;
* :mod:`~fieldflow.inference.likelihoods`: ``grid_log_likelihood`` (the one chunked loop over
  maps x theta), ``grid_posterior``, the flow likelihood (``flow_posterior``,
  ``grad_log_prob_theta``) and the exact lognormal one (``exact_lognormal_posterior``);
* :mod:`~fieldflow.inference.emulator`: ``PowerSpectrumEmulator``, the mean P(k; theta);
* :mod:`~fieldflow.inference.gaussian`: the Gaussian likelihood of a data vector with an
  emulated mean and a Hartlap-corrected covariance (``hartlap_factor``), shared by:
* :mod:`~fieldflow.inference.power_spectrum`: ``PowerSpectrumLikelihood``, the likelihood of
  the binned P(k);
* :mod:`~fieldflow.inference.summary`: ``SummaryLikelihood`` of any ``Summary`` (P(k), the
  flow's score at the fiducial theta, both: score compression, ``score_compressed_likelihood``),
  with a fixed covariance or a residual distribution that follows theta:
* :mod:`~fieldflow.inference.residuals`: ``ResidualModel``, a Gaussian (or Student-t) whose
  spreads and correlations are polynomials in theta, fitted by maximum likelihood;
* :mod:`~fieldflow.inference.residual_flow`: ``ResidualFlow``, that Gaussian reshaped by
  splines with Student-t tails whose weight follows theta (heavy-tailed summaries);
* :mod:`~fieldflow.inference.coverage`: FoM statistics and coverage of many posteriors;
* :mod:`~fieldflow.inference.calibration`: is a likelihood honest? the score
  (information-identity) test and coverage against credibility;
* :mod:`~fieldflow.inference.adjusted`: the curvature-adjusted likelihood, whose posterior
  has the sandwich covariance (honest where the learned likelihood is overconfident);
* :mod:`~fieldflow.inference.selection`: which posterior to report: the most informative of
  those whose coverage on held-out maps is honest (``PosteriorSelection``);
* :mod:`~fieldflow.inference.benchmark`: ``fom_comparison``, flow vs P(k) vs exact.
"""

from fieldflow.inference.adjusted import (
    CurvatureAdjustment,
    adjusted_posteriors,
    adjusted_score_test,
    adjustment_matrix,
    estimate_adjustment,
    fingerprint,
    model_fingerprint,
)
from fieldflow.inference.benchmark import fom_comparison
from fieldflow.inference.calibration import (
    MIN_MAPS,
    coverage_curve,
    data_vector_score_and_hessian,
    eigenvalue_interval,
    predicted_coverage,
    score_and_hessian,
    score_test,
)
from fieldflow.inference.coverage import (
    COVERAGE_MASSES,
    coverage_summary,
    fraction_touching_edge,
    hpd_touches_edge,
    mean_shift_and_std_ratio,
    posterior_agreement,
)
from fieldflow.inference.emulator import PowerSpectrumEmulator, SummaryEmulator
from fieldflow.inference.gaussian import fiducial_covariance, hartlap_factor
from fieldflow.inference.grid import OMEGA_M_RANGE, SIGMA8_RANGE, ThetaGrid, clip_grid, theta_grid
from fieldflow.inference.likelihoods import (
    exact_lognormal_posterior,
    flow_log_like_fn,
    flow_posterior,
    grad_log_prob_theta,
    grid_log_likelihood,
    grid_posterior,
    lognormal_log_like_fn,
    model_theta_box,
    model_theta_range,
)
from fieldflow.inference.posterior import (
    MASSES,
    GridPosterior,
    contains,
    credible_mass_at,
    figure_of_merit,
    hpd_area,
    hpd_threshold,
    posterior_from_loglike,
    posteriors_from_loglike,
)
from fieldflow.inference.power_spectrum import PowerSpectrumLikelihood
from fieldflow.inference.residual_flow import ResidualFlow
from fieldflow.inference.residuals import ResidualModel
from fieldflow.inference.selection import (
    COVERAGE_RANGES,
    PosteriorSelection,
    choose_posterior,
    coverage_in_range,
    measure_posteriors,
    one_map_per_simulation,
)
from fieldflow.inference.summary import (
    SCORE_CORR_DEGREE,
    Summary,
    SummaryLikelihood,
    concatenate_summaries,
    flow_score_summary,
    log_power_spectrum_summary,
    power_spectrum_summary,
    score_compressed_likelihood,
    summary_from_spec,
)
from fieldflow.validation import check_maps

__all__ = [
    "OMEGA_M_RANGE",
    "SIGMA8_RANGE",
    "MASSES",
    "COVERAGE_MASSES",
    "ThetaGrid",
    "theta_grid",
    "clip_grid",
    "check_maps",
    "grid_log_likelihood",
    "grid_posterior",
    "GridPosterior",
    "posterior_from_loglike",
    "posteriors_from_loglike",
    "hpd_threshold",
    "hpd_area",
    "figure_of_merit",
    "contains",
    "credible_mass_at",
    "flow_log_like_fn",
    "flow_posterior",
    "grad_log_prob_theta",
    "model_theta_range",
    "model_theta_box",
    "lognormal_log_like_fn",
    "exact_lognormal_posterior",
    "PowerSpectrumEmulator",
    "PowerSpectrumLikelihood",
    "SummaryEmulator",
    "ResidualFlow",
    "ResidualModel",
    "SCORE_CORR_DEGREE",
    "Summary",
    "SummaryLikelihood",
    "concatenate_summaries",
    "flow_score_summary",
    "score_compressed_likelihood",
    "power_spectrum_summary",
    "log_power_spectrum_summary",
    "summary_from_spec",
    "fiducial_covariance",
    "hartlap_factor",
    "coverage_summary",
    "hpd_touches_edge",
    "mean_shift_and_std_ratio",
    "posterior_agreement",
    "fraction_touching_edge",
    "fom_comparison",
    "MIN_MAPS",
    "score_and_hessian",
    "data_vector_score_and_hessian",
    "score_test",
    "eigenvalue_interval",
    "predicted_coverage",
    "coverage_curve",
    "CurvatureAdjustment",
    "adjustment_matrix",
    "estimate_adjustment",
    "adjusted_posteriors",
    "adjusted_score_test",
    "fingerprint",
    "model_fingerprint",
    "COVERAGE_RANGES",
    "PosteriorSelection",
    "choose_posterior",
    "coverage_in_range",
    "measure_posteriors",
    "one_map_per_simulation",
]
