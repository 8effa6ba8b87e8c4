"""fieldflow: exact likelihoods of 2D cosmological density maps with symmetric normalizing flows."""

from fieldflow.models import TRENF

__all__ = ["TRENF", "RealNVP", "load"]
__version__ = "0.1.0"


def __getattr__(name):
    # imported on first use: orbax and the baseline are not needed to evaluate a TRENF
    if name == "load":
        from fieldflow.checkpoint import load

        return load
    if name == "RealNVP":
        from fieldflow.models import model_class

        return model_class("realnvp")
    raise AttributeError(f"module 'fieldflow' has no attribute {name!r}")
