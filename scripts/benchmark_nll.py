"""Test NLL of TRENF and RealNVP against the exact lognormal likelihood; prints JSON.

Generates (or reuses) a lognormal data set, trains a conditional TRENF for a number
of steps, then a RealNVP for at least the same wall time, and reports for each the
test NLL in nats per pixel, the exact NLL of the same test maps under the lognormal
model at their true theta, the gap, parameter counts, wall time and steps.
With ``--simulator nbody`` it trains TRENF on PM slices (no exact likelihood).

    python scripts/benchmark_nll.py                          # 32^2 maps, CPU, ~10 min
    python scripts/benchmark_nll.py --n 64 --box 256 --trenf-steps 6000   # GPU
    python scripts/benchmark_nll.py --simulator nbody --n 32 --n-sims 256 --skip-realnvp
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from fieldflow.train import TrainConfig
from fieldflow.workflows import ensure_dataset, train_run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/benchmark_nll"))
    p.add_argument("--simulator", choices=("lognormal", "nbody"), default="lognormal")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--box", type=float, default=128.0)
    p.add_argument("--n-sims", type=int, default=2048)
    p.add_argument("--n-mesh", type=int, default=None, help="nbody: particles per side")
    p.add_argument("--trenf-steps", type=int, default=4000)
    p.add_argument("--trenf-layers", type=int, default=5)
    p.add_argument(
        "--realnvp-steps",
        type=int,
        default=100000,
        help="upper bound; RealNVP stops at TRENF's wall time x --time-factor",
    )
    p.add_argument("--time-factor", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--skip-realnvp", action="store_true")
    p.add_argument("--fresh", action="store_true", help="delete earlier runs in --out first")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    data_dir = args.out / f"data_{args.simulator}_{args.n}"
    extra = {"n_mesh": args.n_mesh} if args.simulator == "nbody" else {}
    ensure_dataset(
        data_dir, args.simulator, args.n_sims, n=args.n, box=args.box, seed=args.seed, **extra
    )
    if args.fresh:
        for name in ("trenf", "realnvp"):
            shutil.rmtree(args.out / f"{name}_{args.simulator}_{args.n}", ignore_errors=True)

    keys = ("test_nll_per_pixel", "exact_test_nll_per_pixel", "gap_nats_per_pixel",
            "val_nll_per_pixel", "n_params", "wall_time_s", "steps_done", "run_dir")  # fmt: skip

    def run(name, steps, kwargs, max_seconds=None):
        cfg = TrainConfig(steps=steps, batch_size=args.batch_size, learning_rate=args.lr,
                          warmup_steps=100, eval_every=250, checkpoint_every=1000, patience=None,
                          seed=args.seed)  # fmt: skip
        run_dir = args.out / f"{name}_{args.simulator}_{args.n}"
        shutil.rmtree(run_dir, ignore_errors=True)
        s = train_run(data_dir, run_dir, name, kwargs, cfg, progress=False, seed=args.seed,
                      max_seconds=max_seconds)  # fmt: skip
        return {k: s[k] for k in keys if k in s}

    result = {"simulator": args.simulator, "n": args.n, "box": args.box, "n_sims": args.n_sims}
    result["trenf"] = run(
        "trenf", args.trenf_steps, {"n_layers": args.trenf_layers, "hidden": (64, 64)}
    )
    if not args.skip_realnvp:
        budget = result["trenf"]["wall_time_s"] * args.time_factor
        result["realnvp"] = run(
            "realnvp", args.realnvp_steps, {"hidden_channels": 32}, max_seconds=budget
        )
    if "gap_nats_per_pixel" in result["trenf"]:
        result["trenf_gap_target_met"] = result["trenf"]["gap_nats_per_pixel"] <= (
            0.001 if args.n <= 32 else 0.002
        )
        if "realnvp" in result:
            result["trenf_beats_realnvp"] = (
                result["trenf"]["gap_nats_per_pixel"] < result["realnvp"]["gap_nats_per_pixel"]
            )
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
