"""Simulators of 2D cosmological density maps for fieldflow.

Gaussian random fields and lognormal fields with exact log-likelihoods, and particle-mesh
N-body slices (jaxpm), all with the slab power spectrum P_2D(k; Omega_m, sigma8) from
jax-cosmo; sharded data sets on disk with resume. See ``data_gen/README`` in the docstrings
of each module for the equations.

Defaults: 64 x 64 maps of a 256 h^-1 Mpc box, slabs of box / 4 = 64 h^-1 Mpc; at the
fiducial theta = (0.3, 0.8) the pixel standard deviation of the fields is 0.68 (lognormal
maps visibly skewed, minimum near -0.95).
"""

from data_gen.cosmology import (
    FIDUCIAL_THETA,
    OMEGA_M_RANGE,
    SIGMA8_RANGE,
    SUPPORTED_OMEGA_M_RANGE,
    SUPPORTED_SIGMA8_RANGE,
    check_theta,
    check_theta_box,
    make_cosmology,
)
from data_gen.dataset import design_theta, generate_dataset, make_config, theta_box
from data_gen.gaussian import grf, grf_log_likelihood
from data_gen.likelihood import log_likelihood_grid
from data_gen.lognormal import lognormal, lognormal_log_likelihood
from data_gen.nbody import expected_linear_map_power, nbody, nbody_simulation
from data_gen.power import (
    DEFAULT_BOX,
    DEFAULT_N,
    default_slab,
    pixel_power_grid,
    power_2d,
    power_2d_binned,
    power_2d_grid,
    power_3d,
)

__version__ = "0.1.0"

__all__ = [
    "FIDUCIAL_THETA",
    "OMEGA_M_RANGE",
    "SIGMA8_RANGE",
    "SUPPORTED_OMEGA_M_RANGE",
    "SUPPORTED_SIGMA8_RANGE",
    "DEFAULT_BOX",
    "DEFAULT_N",
    "check_theta",
    "check_theta_box",
    "make_cosmology",
    "default_slab",
    "power_3d",
    "power_2d",
    "power_2d_grid",
    "power_2d_binned",
    "pixel_power_grid",
    "grf",
    "grf_log_likelihood",
    "lognormal",
    "lognormal_log_likelihood",
    "log_likelihood_grid",
    "nbody",
    "nbody_simulation",
    "expected_linear_map_power",
    "design_theta",
    "theta_box",
    "generate_dataset",
    "make_config",
]
