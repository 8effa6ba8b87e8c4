r"""Field-level inference from noisy, masked maps: sample (theta, z) jointly with a flow (or the
exact lognormal model) as the prior on the field, on BlackJAX.

For d = M s + n, n ~ N(0, N), and s = f^-1(z; theta) with z ~ N(0, I),

    log p(theta, z | d) = log p(theta) - 1/2 |z|^2 - 1/2 (d - M f^-1(z; theta))^T N^-1 (...) + c,

a smooth density in N^2 + 2 dimensions: its samples give the posterior of theta marginalised
over the unseen field and the posterior mean and standard deviation of every pixel (and, with
``field_draws``, thinned draws of the field for per-pixel credible intervals).

Modules, one job each:

* :mod:`~fieldflow.field_level.posterior`: the observation checks, the fields z -> s
  (``FlowField``, ``LognormalField``), the theta transform, ``log_posterior`` (latent
  coordinates z) and ``log_posterior_data`` (data coordinates u, for nearly clean maps);
* :mod:`~fieldflow.field_level.targets`: the hashable sampling targets (field, theta-only);
* :mod:`~fieldflow.field_level.sampler`: ``run_chains``, BlackJAX NUTS / MCLMC, vmapped
  chains, jitted chunks, progress bar;
* :mod:`~fieldflow.field_level.diagnostics`: R-hat and ESS (ArviZ), divergences, stray chains;
* :mod:`~fieldflow.field_level.results`: ``FieldLevelResult`` (.npz, netCDF, GetDist,
  ``interval_coverage``);
* :mod:`~fieldflow.field_level.api`: ``field_level_posterior``,
  ``lognormal_field_level_posterior``, ``theta_posterior_nuts``.

The figure is :func:`fieldflow.plots.field_level.plot_field_level`.
"""

import importlib

# name -> submodule; imported on first use, so that ``fieldflow.field_level.command`` (the
# command-line options) does not import jax and blackjax
_EXPORTS = {
    "DEFAULT_SAMPLER": "api",
    "field_level_posterior": "api",
    "lognormal_field_level_posterior": "api",
    "theta_posterior_nuts": "api",
    "chain_diagnostics": "diagnostics",
    "inference_data": "diagnostics",
    "FlowField": "posterior",
    "LognormalField": "posterior",
    "log_posterior": "posterior",
    "log_posterior_data": "posterior",
    "make_observation": "posterior",
    "FieldLevelResult": "results",
    "load_result": "results",
    "SAMPLERS": "sampler",
    "run_chains": "sampler",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"fieldflow.field_level.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fieldflow.field_level' has no attribute {name!r}")
