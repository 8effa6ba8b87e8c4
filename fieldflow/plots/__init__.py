"""Every figure of the package, one submodule per subject.

matplotlib is imported inside each function and no backend is ever set here: scripts and
the command line get matplotlib's default (Agg on a machine without a display), notebooks
their inline backend. Each function returns a ``matplotlib.figure.Figure``.
"""

from fieldflow.plots.denoise import *  # noqa: F403
from fieldflow.plots.field_level import *  # noqa: F403
from fieldflow.plots.maps import *  # noqa: F403
from fieldflow.plots.posteriors import *  # noqa: F403
from fieldflow.plots.samples import *  # noqa: F403
