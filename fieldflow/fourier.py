"""Fourier conventions of the package: k-grids, rfft2 multiplicities, radial bins, P(k).

They live in :mod:`data_gen.fourier`, the bottom layer that the simulators share (``data_gen``
never imports ``fieldflow``); this module re-exports them under the library's name.
"""

from data_gen.fourier import *  # noqa: F403
from data_gen.fourier import __all__  # noqa: F401
