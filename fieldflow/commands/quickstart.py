"""``fieldflow quickstart``: the whole small pipeline on CPU in minutes.

Generates a small lognormal data set, trains TRENF briefly, samples mock fields, computes
the posterior of (Ωm, σ8) of a held-out map (flow and exact lognormal) and denoises that
map (20% masked, S/N ~ 1: Wiener filter vs flow). Each step writes into a subdirectory of
OUT_DIR; ``summary.json`` there collects the results and lists the figures.
"""

from __future__ import annotations

import time
from pathlib import Path

from fieldflow.commands import run_command, subparser

HELP = "the whole small pipeline on CPU in minutes"
EXAMPLES = ["fieldflow quickstart out/quickstart"]


def add_parser(subparsers):
    p = subparser(subparsers, "quickstart", HELP, EXAMPLES, __doc__)
    p.add_argument("out_dir", type=Path, nargs="?", default=Path("out/quickstart"))
    p.add_argument("--n-sims", type=int, default=1024)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--box", type=float, default=128.0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--layers", type=int, default=5, help="TRENF layers")
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="TRENF MLP widths")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args) -> dict:
    import shutil

    from fieldflow.data import load_dataset
    from fieldflow.io import save_npz, write_json
    from fieldflow.train import TrainConfig
    from fieldflow.workflows import train_run

    out = Path(args.out_dir)
    data_dir, run_dir = out / "data", out / "run"
    progress = ["--no-progress"] if args.no_progress else []
    t0 = time.perf_counter()
    print(f"[1/5] generating {args.n_sims} lognormal {args.n}x{args.n} maps in {data_dir}")
    run_command(
        "generate",
        [data_dir, "--simulator", "lognormal", "--n-sims", args.n_sims, "--n", args.n,
         "--box", args.box, "--shard-size", 64, "--seed", args.seed, *progress],
    )  # fmt: skip

    print(f"[2/5] training TRENF for {args.steps} steps in {run_dir}")
    config = TrainConfig(
        steps=args.steps,
        batch_size=32,
        learning_rate=args.lr,
        warmup_steps=min(100, args.steps // 10),
        eval_every=max(args.steps // 10, 1),
        checkpoint_every=args.steps,
        patience=None,
        seed=args.seed,
    )
    shutil.rmtree(run_dir, ignore_errors=True)  # the quickstart's own earlier run
    train = train_run(
        data_dir,
        run_dir,
        "trenf",
        {"n_layers": args.layers, "hidden": tuple(args.hidden)},
        config,
        progress=not args.no_progress,
        seed=args.seed,
    )
    print(
        f"      test NLL {train['test_nll_per_pixel']:.4f} nats/pixel; exact lognormal "
        f"{train['exact_test_nll_per_pixel']:.4f}; gap {train['gap_nats_per_pixel']:.4f}"
    )

    print(f"[3/5] sampling mock fields at theta = (0.3, 0.8) in {out / 'samples'}")
    run_command(
        "sample",
        [run_dir, out / "samples", "--num", 8, "--theta", 0.3, 0.8, "--seed", args.seed],
    )

    test_maps, test_theta = load_dataset(data_dir, seed=args.seed)["test"]
    maps_file = save_npz(out / "test_maps.npz", maps=test_maps[:8], theta=test_theta[:8])
    print(
        f"[4/5] posterior of (Omega_m, sigma_8) for a held-out map (truth {test_theta[0, 0]:.3f},"
        f" {test_theta[0, 1]:.3f}) in {out / 'infer'}"
    )
    infer = run_command(
        "infer",
        [run_dir, maps_file, out / "infer", "--index", 0, "--grid", 50,
         "--lognormal-box", args.box],
    )  # fmt: skip

    print(f"[5/5] denoising that map (20% masked, S/N ~ 1): Wiener vs flow in {out / 'denoise'}")
    run_command(
        "denoise",
        [maps_file, "--out", out / "denoise", "--index", 0, "--model", run_dir,
         "--prior", "flow-latent", "--box", args.box, "--noise-fraction", 1.0,
         "--steps", 300],
    )  # fmt: skip

    figures = [
        run_dir / "loss.png",
        out / "samples" / "samples.png",
        out / "infer" / "posterior.png",
        out / "denoise" / "denoise.png",
    ]
    result = {
        "command": "quickstart",
        "train": train,
        "infer": infer["posteriors"],
        "seconds": time.perf_counter() - t0,
        "figures": [str(f) for f in figures],
    }
    write_json(out / "summary.json", result)
    print("figures: " + ", ".join(result["figures"]))
    return result
