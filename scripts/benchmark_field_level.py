"""Field-level inference benchmark: flow vs exact lognormal field-level posterior
of theta, coverage, posterior-mean field vs Wiener filter, per-pixel std calibration, the
clean-map check against the grid posterior, R-hat and ESS per minute; prints JSON.

Test maps: the first ``--n-maps`` of the data set's held-out ``test`` split (lognormal, theta
over the prior), a 20% mask and S/N = 1 per pixel. Logic: ``fieldflow.field_level.benchmark``.

    python scripts/benchmark_field_level.py --data DATA --run RUN --n-maps 100
    python scripts/benchmark_field_level.py --data DATA --run RUN --n-maps 4 --samples 400
    python scripts/benchmark_field_level.py --data DATA --run RUN --n-maps 100 --chains 2 \
        --warmup 300 --samples 500 --no-compare --no-clean --rows rows.jsonl   # resumable
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="lognormal data set directory")
    p.add_argument("--run", type=Path, required=True, help="trained conditional flow run")
    p.add_argument("--n-maps", type=int, default=100)
    p.add_argument("--sampler", choices=("mclmc", "nuts"), default=None)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--mask-fraction", type=float, default=0.2)
    p.add_argument("--clean-noise", type=float, default=0.1, help="noise std / map std, clean map")
    p.add_argument(
        "--clean-coordinates",
        choices=("latent", "data"),
        default="data",
        help="field-level coordinates of the clean-map check",
    )
    p.add_argument("--no-compare", action="store_true", help="skip the NUTS vs MCLMC comparison")
    p.add_argument("--no-clean", action="store_true", help="skip the clean-map check")
    p.add_argument(
        "--field-draws", type=int, default=200, help="field draws kept per chain (intervals)"
    )
    p.add_argument("--maps", type=int, nargs="+", help="only these of the --n-maps maps")
    p.add_argument("--extend", type=int, default=0, help="more samples per chain while unconverged")
    p.add_argument("--rows", type=Path, help="per-map rows (JSON lines): resume from, append to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the JSON here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import numpy as np

    from fieldflow.field_level import DEFAULT_SAMPLER
    from fieldflow.field_level.benchmark import run_benchmark
    from fieldflow.io import to_jsonable
    from fieldflow.workflows import load_run_and_data

    t0, c0 = time.perf_counter(), time.process_time()
    manifest, model, data = load_run_and_data(args.run, args.data, seed=args.seed)
    maps, theta = data["test"]
    maps, theta = np.asarray(maps[: args.n_maps]), np.asarray(theta[: args.n_maps])
    box = float(manifest.get("box", 128.0))
    res = run_benchmark(
        model,
        maps,
        theta,
        box,
        mask_fraction=args.mask_fraction,
        seed=args.seed,
        sampler=args.sampler or DEFAULT_SAMPLER,
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_samples=args.samples,
        clean_noise=args.clean_noise,
        clean_coordinates=args.clean_coordinates,
        compare_samplers=not args.no_compare,
        clean_map=not args.no_clean,
        field_draws=args.field_draws,
        extend_samples=args.extend,
        only=args.maps,
        rows_path=args.rows,
        log=lambda m: print(m, file=sys.stderr),
    )
    res["settings"] = {
        **{k: str(v) for k, v in vars(args).items()},
        "box": box,
        "n": int(maps.shape[-1]),
        "cpu_count": os.cpu_count(),
    }
    res["wall_seconds"] = time.perf_counter() - t0
    res["cpu_seconds"] = time.process_time() - c0
    out = to_jsonable(res)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return out


if __name__ == "__main__":
    main()
