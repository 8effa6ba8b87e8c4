"""The halofit (nonlinear) option of the simulators' spectra; prints JSON.

Too slow for the test suite (the nonlinear table takes ~80 s on 2 CPU cores): checks that the
nonlinear P_2D is boosted over the linear one on small scales (k > 0.5 h/Mpc, > 1.2x) and that
the interpolation table matches direct quadrature there (rtol 5e-3)::

    python scripts/check_halofit.py
"""

import json

import numpy as np

from data_gen import power_2d, power_2d_grid
from data_gen.fourier import kmag_half


def main() -> dict:
    lin = np.asarray(power_2d_grid((0.3, 0.8), 16, 64.0))[0]
    nl = np.asarray(power_2d_grid((0.3, 0.8), 16, 64.0, nonlinear=True))[0]
    hi = kmag_half(16, 64.0) > 0.5
    direct = np.asarray(power_2d(kmag_half(16, 64.0)[hi], (0.3125, 0.8), 16.0, nonlinear=True))[0]
    table = np.asarray(power_2d_grid((0.3125, 0.8), 16, 64.0, nonlinear=True))[0][hi]
    boost = float((nl[hi] / lin[hi]).min())
    rel = float(np.abs(table / direct - 1).max())
    out = {"min_nonlinear_boost_k_gt_0.5": boost, "max_rel_table_vs_direct": rel}
    out["passed"] = boost > 1.2 and rel < 5e-3
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
