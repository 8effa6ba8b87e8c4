"""Normalizing-flow models sharing the protocol forward / inverse / log_prob / sample.

Every model stores its constructor arguments in ``model.config`` (JSON-able), so
``build_model(model.model_type, model.config, rngs)`` rebuilds the architecture.
"""

from __future__ import annotations

import importlib

from flax import nnx

from fieldflow.models.trenf import TRENF

__all__ = ["TRENF", "MODEL_TYPES", "model_class", "build_model"]

MODEL_TYPES = {
    "trenf": "fieldflow.models.trenf:TRENF",
    "realnvp": "fieldflow.models.realnvp:RealNVP",
    "multiscale": "fieldflow.models.multiscale:MultiscaleFlow",
}


def model_class(model_type: str) -> type:
    """The class registered under ``model_type`` ('trenf', 'realnvp' or 'multiscale')."""
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"unknown model type {model_type!r}; expected one of {sorted(MODEL_TYPES)}"
        )
    module, name = MODEL_TYPES[model_type].split(":")
    return getattr(importlib.import_module(module), name)


def build_model(model_type: str, config: dict, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Instantiate a model from its type and ``config`` dict."""
    return model_class(model_type)(**config, rngs=rngs if rngs is not None else nnx.Rngs(0))


def __getattr__(name):
    if name == "RealNVP":
        return model_class("realnvp")
    raise AttributeError(name)
