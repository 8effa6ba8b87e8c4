"""Training throughput across local processes (jax.distributed, one CPU device each); prints JSON.

For each process count P, P local processes join one group (``fieldflow.distributed.
launch_local``) and run the training step of ``fieldflow.train`` on one global mesh: the same
global batch, each process reading its own rows (``distributed.put_rows``), gradients averaged
across processes. Reported: steps and maps per second after compilation, and the speed-up
over one process. On a machine with fewer cores than processes the processes share cores, so
expect no speed-up there: the numbers measure the overhead of the runtime, not the gain of
more machines.

    python scripts/benchmark_distributed.py                     # 1 and 2 processes
    python scripts/benchmark_distributed.py --processes 1 2 4 --n 64 --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--n", type=int, default=32, help="map pixels per side")
    p.add_argument("--batch", type=int, default=32, help="global batch (maps per step)")
    p.add_argument("--layers", type=int, default=3, help="TRENF layers")
    p.add_argument("--hidden", type=int, nargs="+", default=[32], help="TRENF MLP widths")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per process group")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def worker(args) -> dict:
    """One process of a group: join it, then time the sharded training step."""
    from fieldflow import distributed

    distributed.initialize(distributed.resolve_config(timeout_s=120))
    from fieldflow.benchmarks import sharded_training_rate

    return sharded_training_rate(args.n, args.batch, args.layers, tuple(args.hidden), args.steps)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.worker:
        report = worker(args)
        print(json.dumps(report))
        return report
    from fieldflow.distributed import launch_local

    forwarded = ["--n", str(args.n), "--batch", str(args.batch), "--layers", str(args.layers)]
    forwarded += ["--hidden", *map(str, args.hidden), "--steps", str(args.steps)]
    env = {"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    results = []
    for count in args.processes:
        procs = launch_local(
            [sys.executable, __file__, "--worker", *forwarded], count, env=env,
            timeout_s=args.timeout,
        )  # fmt: skip
        failed = [p for p in procs if p.returncode != 0]
        if failed:
            raise SystemExit(f"{count} processes: {failed[0].stderr[-2000:]}")
        results.append(json.loads(procs[0].stdout.strip().splitlines()[-1]))
    base = results[0]["maps_per_s"]
    for r in results:
        r["speedup_over_first"] = round(r["maps_per_s"] / base, 3)
    out = {
        "cpu_cores": os.cpu_count(),
        "map_size": args.n,
        "global_batch": args.batch,
        "model": {"type": "trenf", "n_layers": args.layers, "hidden": args.hidden},
        "timed_steps": args.steps,
        "results": results,
        "note": "one CPU device per process; processes beyond the core count share cores",
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
