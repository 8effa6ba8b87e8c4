"""Sample-quality benchmark: flow samples against fresh simulations at several theta; prints JSON.

At each theta, ``--num`` flow samples against as many simulations never seen in training
(``fieldflow.evaluation.held_out_sims``: the data set's fiducial maps at the fiducial
theta, then new simulations of the data set's configuration) are compared with
``fieldflow.evaluation.sample_quality``: the ratio of the mean P(k) per k bin below the
Nyquist frequency (target: within 5%), the one-point PDF and the peak counts (target: within
the simulations' one-map scatter). With 4096 of each the ratio's statistical error is about
1% on 32^2 lognormal maps (256 give 4-6%, too noisy to test 5%). For GRF and lognormal data
the samples' P(k) is also compared with the exact expected spectrum.

Default theta: the fiducial (0.3, 0.8), the four points at 1/4 and 3/4 of the prior range
on each axis ("interior"), and two corners at 1/10 and 9/10 ("edge").

    python scripts/benchmark_samples.py RUN_DIR DATA_DIR [--num 4096] [--theta 0.3 0.8 ...]
        [--also OTHER_RUN ...]

``--temperature FILE`` also evaluates the tempered mocks of a fitted sampling temperature
(``fieldflow sample RUN OUT --fit-temperature DATA`` writes one to
``OUT/sampling_temperature.json``) against the same simulations; their rows go
under ``"tempered"``.

``--also`` evaluates further runs on the same data set against the same simulations (they are
simulated once); their results go under ``"also"``, keyed by run directory. ``--sims-cache DIR``
keeps the simulations on disk for later runs; ``--n-samples`` draws more samples than there are
simulations (e.g. 4096 samples against 512 cached simulations: samples are cheap, N-body
simulations are not).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("--num", type=int, default=4096, help="samples and simulations per theta")
    p.add_argument(
        "--theta",
        type=float,
        nargs=2,
        action="append",
        metavar=("OMEGA_M", "SIGMA_8"),
        help="a theta to test (repeatable; default: fiducial, interior and edge points)",
    )
    p.add_argument(
        "--n-samples",
        type=int,
        default=None,
        help="samples per theta (default --num); more than the simulations is allowed",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument(
        "--sims-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the simulations in DIR and reuse those already there (same data set only)",
    )
    p.add_argument(
        "--temperature",
        type=Path,
        default=None,
        metavar="FILE",
        help="also evaluate mocks tempered by this fitted sampling temperature (JSON)",
    )
    p.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="another run on the same data set, compared with the same simulations (repeatable)",
    )
    return p


def _same_size_model(run_dir: Path, shape) -> object:
    """The model of another run (the data set is already loaded); SystemExit unless its maps
    are ``shape``."""
    from fieldflow.checkpoint import load

    model = load(run_dir)
    if tuple(model.shape) != tuple(shape):
        raise SystemExit(f"{run_dir} is for {model.shape} maps, the first run for {shape}")
    return model


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.num < 2 or (args.n_samples is not None and args.n_samples < 2):
        raise SystemExit("--num and --n-samples must be at least 2")
    from fieldflow.evaluation import default_thetas, sample_quality_benchmark
    from fieldflow.io import write_json
    from fieldflow.sims_cache import open_cache
    from fieldflow.workflows import load_run_and_data

    cfg, model, splits = load_run_and_data(args.run_dir, args.data_dir, args.seed)
    thetas = [("given", tuple(t)) for t in args.theta] if args.theta else default_thetas(cfg)
    cache = open_cache(args.sims_cache, cfg) or {}  # {}: simulate once for every --also run

    temperature = None
    if args.temperature is not None:
        from fieldflow.sampling_temperature import SamplingTemperature

        temperature = SamplingTemperature.load(args.temperature)

    def bench_of(run_dir, model, temperature=None):
        print(f"{run_dir}{' (tempered)' if temperature else ''}:", file=sys.stderr)
        return sample_quality_benchmark(
            model,
            cfg,
            splits,
            thetas,
            args.num,
            args.seed,
            log=lambda s: print(s, file=sys.stderr),
            sims_cache=cache,
            n_samples=args.n_samples,
            temperature=temperature,
        )

    bench = bench_of(args.run_dir, model)
    also = {str(run): bench_of(run, _same_size_model(run, model.shape)) for run in args.also}
    result = {
        "run_dir": str(args.run_dir),
        "data_dir": str(args.data_dir),
        "simulator": cfg["simulator"],
        "n": cfg["n"],
        "num": args.num,
        "n_samples": args.num if args.n_samples is None else args.n_samples,
        **bench,
    }
    if temperature is not None:
        result["temperature_file"] = str(args.temperature)
        result["tempered"] = bench_of(args.run_dir, model, temperature)
    if also:
        result["also"] = also
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
