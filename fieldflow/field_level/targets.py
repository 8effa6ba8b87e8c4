r"""Sampling targets: hashable objects with a pure ``logdensity(params, data, position)``.

A target is static under jit (frozen dataclass); the arrays it needs (the flow's state
``params``, the data ``data``) are arguments, so one compilation serves every map of one shape.

* :class:`FieldTarget`: (theta, field) given a noisy, masked map, in latent coordinates z
  (:func:`log_posterior`) or data coordinates u (:func:`log_posterior_data`);
* :class:`ThetaTarget`: theta alone given clean maps x_1..M under a flow,
  log p(theta | x) = sum_m log p_flow(x_m | theta) + log p(theta) in the unconstrained t.

Both record theta and (field targets) the field s of every draw.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from fieldflow.field_level.posterior import (
    log_jacobian_t,
    log_posterior,
    log_posterior_data,
    theta_from_t,
)

__all__ = ["COORDINATES", "FieldTarget", "ThetaTarget"]


COORDINATES = ("latent", "data")


@dataclasses.dataclass(frozen=True)
class FieldTarget:
    """p(theta, field | d) with the field map ``field`` (FlowField or LognormalField), in
    ``coordinates`` 'latent' (position {"t", "z"}, :func:`log_posterior`) or 'data'
    ({"t", "u"}, :func:`log_posterior_data`)."""

    field: Any
    coordinates: str = "latent"

    def logdensity(self, params, data, position):
        fn = log_posterior if self.coordinates == "latent" else log_posterior_data
        return fn(self.field, params, position, data["d"], data["w"], data["low"], data["high"])

    def record(self, params, data, position):
        """(theta (2,), field s (N, N)) of one position."""
        theta = theta_from_t(position["t"], data["low"], data["high"])
        if self.coordinates == "latent":
            return theta, self.field.field(params, position["z"], theta)
        return theta, self.field.signal(params, position["u"])


@dataclasses.dataclass(frozen=True)
class ThetaTarget:
    r"""p(theta | x_1..M) of clean maps under a split flow (``graphdef`` static):

    log p(t | x) = sum_m log p_flow(x_m | theta(t)) + log |d theta / d t| + const.
    """

    graphdef: Any

    def logdensity(self, params, data, position):
        t = position["t"]
        theta = theta_from_t(t, data["low"], data["high"])
        x = data["x"]
        model = nnx.merge(self.graphdef, params)
        cond = jnp.broadcast_to(theta, (x.shape[0], theta.shape[-1]))
        return jnp.sum(model._log_prob(x, cond)) + log_jacobian_t(t, data["low"], data["high"])

    def record(self, params, data, position):
        return theta_from_t(position["t"], data["low"], data["high"]), None
