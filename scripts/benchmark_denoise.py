"""Denoising benchmark: flow MAPs against the Wiener filter (and the exact MAPs); prints JSON.

Test maps: the first ``--n-maps`` of the data set's held-out ``test`` split (theta varies
over the prior); a 20% survey mask and white noise at S/N = 1 per pixel. Estimators,
metrics and targets: ``fieldflow.denoise.benchmark`` (Wiener signal: lognormal, the exact
P_2D(k; theta); nbody, an emulator of the training maps' P(k)). Writes ``summary.json``,
``r_k_residual.png`` and ``example_<estimator>.png`` to ``--out/<simulator>``.

    python scripts/benchmark_denoise.py                        # lognormal 32^2 (~5 min)
    python scripts/benchmark_denoise.py --simulator nbody      # generates 256 PM sims
    python scripts/benchmark_denoise.py --simulator nbody --data DIR --run RUN --n-maps 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TRAIN_KEYS = ("steps_done", "wall_time_s", "val_nll_per_pixel", "test_nll_per_pixel")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--simulator", choices=("lognormal", "nbody"), default="lognormal")
    p.add_argument("--out", type=Path, default=Path("runs/benchmark_denoise"))
    p.add_argument("--data", type=Path, help="data set directory (default: generated in --out)")
    p.add_argument("--run", type=Path, help="trained run directory (default: trained in --out)")
    p.add_argument("--n", type=int, default=32, help="map side when generating")
    p.add_argument("--box", type=float, default=128.0, help="box side when generating")
    p.add_argument("--n-sims", type=int, help="simulations (default 2048 lognormal, 256 nbody)")
    p.add_argument("--n-mesh", type=int, default=32, help="PM mesh when generating nbody")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--n-maps", type=int, default=64)
    p.add_argument("--steps", type=int, default=1000, help="most L-BFGS steps of each MAP")
    p.add_argument("--gtol", type=float, default=1e-4)
    p.add_argument("--mask-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import matplotlib.pyplot as plt

    from fieldflow.denoise import benchmark as bench
    from fieldflow.io import to_jsonable, write_json
    from fieldflow.plots import plot_denoising, plot_denoising_comparison
    from fieldflow.train import TrainConfig
    from fieldflow.workflows import ensure_dataset, ensure_run, load_run_and_data

    if args.n_maps < 1 or args.steps < 0:
        raise ValueError("--n-maps must be >= 1 and --steps >= 0")
    out, t_start = args.out / args.simulator, time.perf_counter()
    data_dir, run_dir, train_summary = args.data or out / "data", args.run or out / "run", None
    if args.data is None:
        kw = {"n": args.n, "box": args.box, "seed": args.seed}
        kw.update({"n_mesh": args.n_mesh} if args.simulator == "nbody" else {})
        n_sims = args.n_sims or (2048 if args.simulator == "lognormal" else 256)
        ensure_dataset(data_dir, args.simulator, n_sims, progress=False, **kw)
    if args.run is None:
        config = TrainConfig(
            steps=args.train_steps, eval_every=250, patience=None, learning_rate=3e-3
        )
        kw = {"model_kwargs": {"n_layers": 5, "hidden": (64, 64)}, "progress": False}
        summary, _ = ensure_run(data_dir, run_dir, config=config, **kw)
        if not summary.get("reused"):
            train_summary = {k: summary.get(k) for k in (*TRAIN_KEYS, "gap_nats_per_pixel")}
    cfg, model, splits = load_run_and_data(run_dir, data_dir, seed=0)  # test is held out
    if cfg["simulator"] != args.simulator:
        raise ValueError(f"{data_dir} holds {cfg['simulator']} maps, not {args.simulator}")
    t_train = time.perf_counter() - t_start

    test_maps, test_theta = splits["test"]
    if len(test_maps) < args.n_maps:
        raise ValueError(f"{data_dir} has only {len(test_maps)} test maps (--n-maps)")
    truth, theta = test_maps[: args.n_maps], test_theta[: args.n_maps]
    box, n = float(cfg["box"]), int(cfg["n"])
    signal, signal_source = bench.wiener_signal(
        args.simulator, theta, n, box, slab=cfg.get("slab"), train=splits["train"]
    )
    res = bench.compare_estimators(
        truth, theta, model, box, signal, mask_fraction=args.mask_fraction, seed=args.seed,
        steps=args.steps, gtol=args.gtol, exact=args.simulator == "lognormal",
    )  # fmt: skip
    fields, d, mask = res.pop("fields"), res.pop("data"), res.pop("mask")
    report = {
        "simulator": args.simulator,
        "command": "python scripts/benchmark_denoise.py " + " ".join(argv or sys.argv[1:]),
        **{"n": n, "box": box, **res, "wiener_signal": signal_source},
        **{"data": str(data_dir), "run": str(run_dir), "train_summary": train_summary},
        "seconds_total": round(time.perf_counter() - t_start, 1),
        "seconds_data_and_training": round(t_train, 1),
    }

    out.mkdir(parents=True, exist_ok=True)
    fig = plot_denoising_comparison(report["methods"])
    fig.savefig(out / "r_k_residual.png", dpi=110)
    plt.close(fig)
    for name in ("flow_map", "flow_latent_map"):
        fig = plot_denoising(
            truth[0], d[0], mask, fields["wiener"][0], fields[name][0], box=box,
            path=out / f"example_{name}.png", labels=("Wiener", name),
            title=f"theta = {theta[0].round(3).tolist()}",
        )  # fmt: skip
        plt.close(fig)
    write_json(out / "summary.json", report)
    print(json.dumps(to_jsonable(report), indent=2))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        print(f"benchmark_denoise: error: {err}", file=sys.stderr)
        sys.exit(2)
