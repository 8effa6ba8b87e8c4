"""Throughput of the data_gen simulators on this machine; prints JSON.

    python scripts/benchmark_data.py [--quick]

Maps per second after compilation (compile time reported separately), at the defaults
(64^2 maps, 256 h^-1 Mpc box, PM 64^3) and at the TRENF paper's sizes (128^2 maps,
512 h^-1 Mpc box, 128 h^-1 Mpc slabs; PM 128^3 particles and mesh), plus the cost of the
exact lognormal likelihood on a 100 x 100 theta grid (``fieldflow.benchmarks``).
"""

from __future__ import annotations

import argparse
import json

from fieldflow.benchmarks import simulator_benchmark


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="skip the 128^3 PM case")
    result = simulator_benchmark(quick=p.parse_args(argv).quick)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
