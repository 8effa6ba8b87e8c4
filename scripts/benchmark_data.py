"""Throughput of the data_gen simulators on this machine; prints JSON.

    python scripts/benchmark_data.py [--quick]

Maps per second after compilation (compile time reported separately), at the defaults
(64^2 maps, 256 h^-1 Mpc box, PM 64^3) and at the TRENF paper's sizes (128^2 maps,
512 h^-1 Mpc box, 128 h^-1 Mpc slabs; PM 128^3 particles and mesh), plus the cost of the
exact lognormal likelihood on a 100 x 100 theta grid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from data_gen.dataset import design_theta  # noqa: E402
from data_gen.gaussian import _grf_keys  # noqa: E402
from data_gen.likelihood import log_likelihood_grid  # noqa: E402
from data_gen.lognormal import _lognormal_keys, lognormal  # noqa: E402
from data_gen.nbody import _nbody_keys  # noqa: E402


def _rate(fn, n_maps_per_call: int, min_time: float = 2.0) -> tuple[float, float]:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(0))
    compile_s = time.perf_counter() - t0
    calls, t0 = 0, time.perf_counter()
    while True:
        jax.block_until_ready(fn(calls + 1))
        calls += 1
        if time.perf_counter() - t0 > min_time:
            break
    return n_maps_per_call * calls / (time.perf_counter() - t0), compile_s


def field_case(kind, n, box, batch):
    theta = design_theta(batch, 0)
    f = _grf_keys if kind == "grf" else _lognormal_keys

    def run(i):
        keys = jax.random.split(jax.random.PRNGKey(i), batch)
        return f(keys, theta, n, box, box / 4, False)

    rate, comp = _rate(run, batch)
    return {"simulator": kind, "n": n, "box": box, "slab": box / 4, "batch": batch,
            "maps_per_s": round(rate, 1), "compile_s": round(comp, 1)}


def nbody_case(n_mesh, n, box, n_steps, sims, min_time):
    theta = design_theta(sims, 0)

    def run(i):
        keys = jax.random.split(jax.random.PRNGKey(i), sims)
        return _nbody_keys(keys, theta, n_mesh, box, n_steps, 0.1, 4, n, 2)

    rate, comp = _rate(run, 4 * sims, min_time)
    return {"simulator": "nbody", "n": n, "box": box, "n_mesh": n_mesh, "n_steps": n_steps,
            "slab": box / 4, "maps_per_sim": 4, "maps_per_s": round(rate, 2),
            "sims_per_s": round(rate / 4, 3), "compile_s": round(comp, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="skip the 128^3 PM case")
    a = p.parse_args()
    out = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "jax": jax.__version__, "results": []}
    for kind in ("grf", "lognormal"):
        out["results"].append(field_case(kind, 64, 256.0, 256))
        out["results"].append(field_case(kind, 128, 512.0, 64))
    out["results"].append(nbody_case(64, 64, 256.0, 10, 1, 3.0))
    if not a.quick:
        out["results"].append(nbody_case(128, 128, 512.0, 10, 1, 1.0))
    x = lognormal(jax.random.PRNGKey(0), (0.3, 0.8))
    om, s8 = np.linspace(0.2, 0.5, 100), np.linspace(0.5, 1.1, 100)
    log_likelihood_grid(x, om, s8)
    t0 = time.perf_counter()
    log_likelihood_grid(x, om, s8)
    out["lognormal_likelihood_grid_100x100_64sq_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
