"""fieldflow: exact likelihoods of 2D cosmological density maps with symmetric normalizing flows."""

from fieldflow.models.trenf import TRENF

__all__ = ["TRENF"]
__version__ = "0.1.0"
