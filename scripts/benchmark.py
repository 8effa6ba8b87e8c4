"""Speed of TRENF's hot paths against the bare FFT floor; prints JSON.

For each map size N: maps per second of jitted ``log_prob``, ``sample`` and one
training step, and of the bare ``rfft2`` + ``irfft2`` pair on the same batch;
``log_prob_per_layer_over_fft`` = t(log_prob) / (n_layers * t(fft pair)).

    python scripts/benchmark.py                      # N = 64, 128; batch 32
    python scripts/benchmark.py --sizes 64 128 256 --batch 32 --layers 5
"""

from __future__ import annotations

import argparse
import json

from fieldflow.benchmarks import speed_benchmark


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    result = speed_benchmark(args.sizes, args.batch, args.layers, args.hidden, args.repeats)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
