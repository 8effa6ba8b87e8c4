"""The ``fieldflow`` command line: generate, train, sample, infer, denoise, evaluate, benchmark,
and ``quickstart`` (the whole small pipeline on CPU).

Every subcommand writes its outputs and a ``summary.json`` into an output directory.
A user mistake (a missing file, a bad option value) ends with one ``fieldflow: error:``
line and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser"]

EXAMPLES = {
    "generate": "fieldflow generate data/lognormal --simulator lognormal --n-sims 512 --n 32",
    "train": "fieldflow train data/lognormal runs/trenf --steps 2000",
    "sample": "fieldflow sample runs/trenf out/samples --theta 0.3 0.8 --num 8",
    "infer": "fieldflow infer runs/trenf maps.npz out/infer --index 0",
    "denoise": "fieldflow denoise runs/trenf maps.npz out/denoise --mask-fraction 0.2",
    "evaluate": "fieldflow evaluate runs/trenf data/lognormal out/eval",
    "benchmark": "fieldflow benchmark --sizes 64 128",
    "quickstart": "fieldflow quickstart out/quickstart",
}


class UserError(Exception):
    """A mistake in the command line or its inputs: reported in one line."""


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default))
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    if hasattr(o, "tolist"):
        return np.asarray(o).tolist()
    return str(o)


def _save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


# ----------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> dict:
    from data_gen.dataset import generate_dataset

    kw = dict(
        n=args.n,
        box=args.box,
        shard_size=args.shard_size,
        seed=args.seed,
        n_fiducial=args.n_fiducial,
    )
    if args.simulator == "nbody":
        kw.update(n_mesh=args.n_mesh, n_steps=args.n_steps, n_slabs=args.n_slabs)
    cfg = generate_dataset(
        args.out_dir, args.simulator, args.n_sims, progress=not args.no_progress, **kw
    )
    summary = {"command": "generate", "out_dir": str(args.out_dir), "config": cfg}
    print(f"wrote {cfg['n_sims']} {cfg['simulator']} simulations to {args.out_dir}")
    return summary


# -------------------------------------------------------------------------------- train
def _model_kwargs(args: argparse.Namespace) -> dict:
    if args.model == "trenf":
        kw = {"n_layers": args.layers, "n_psi_bins": args.psi_bins, "hidden": tuple(args.hidden)}
        if args.t_knots:
            kw["n_t_knots"] = args.t_knots
    else:
        kw = {"hidden_channels": args.channels}
    if args.log_offset is not None:
        kw["log_offset"] = args.log_offset
    return kw


def train_run(
    data_dir,
    out_dir,
    model_type="trenf",
    model_kwargs=None,
    config=None,
    resume=False,
    progress=True,
    seed=0,
    max_seconds=None,
) -> dict:
    """Train a model on a data set directory; returns a summary with validation and test NLL."""
    from data_gen.lognormal import lognormal_log_likelihood
    from fieldflow.data import load_dataset, load_manifest
    from fieldflow.train import TrainConfig, fit, model_for_data, nll_per_pixel

    config = config or TrainConfig(seed=seed)
    manifest = load_manifest(data_dir)
    splits = load_dataset(data_dir, seed=seed)
    train, val, test = splits["train"], splits["val"], splits["test"]
    if len(train[0]) == 0 or len(val[0]) == 0:
        raise UserError(f"{data_dir} has too few simulations for train/validation splits")
    model = model_for_data(model_type, train[0], seed=seed, **(model_kwargs or {}))
    result = fit(
        model,
        train,
        val,
        config,
        run_dir=out_dir,
        resume=resume,
        progress=progress,
        max_seconds=max_seconds,
    )
    summary = {
        "command": "train",
        "run_dir": str(out_dir),
        "data_dir": str(data_dir),
        "model_type": model_type,
        "model_config": model.config,
        "n_params": int(sum(np.size(p) for p in _params(model))),
        "steps_done": result.steps_done,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "diverged": result.diverged,
        "wall_time_s": result.wall_time_s,
        "val_nll_per_pixel": result.best_val_nll,
    }
    if len(test[0]):
        summary["test_nll_per_pixel"] = nll_per_pixel(model, *test)
        if manifest.get("simulator") == "lognormal":
            exact = -np.asarray(
                lognormal_log_likelihood(
                    test[0], test[1], box=manifest["box"], slab=manifest.get("slab")
                )
            ).mean() / np.prod(test[0].shape[1:])
            summary["exact_test_nll_per_pixel"] = float(exact)
            summary["gap_nats_per_pixel"] = summary["test_nll_per_pixel"] - float(exact)
    _write_json(Path(out_dir) / "summary.json", summary)
    return summary


def _params(model):
    import jax
    from flax import nnx

    return jax.tree.leaves(nnx.state(model, nnx.Param))


def cmd_train(args: argparse.Namespace) -> dict:
    from fieldflow.train import TrainConfig

    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=min(args.warmup, args.steps),
        eval_every=args.eval_every,
        patience=args.patience or None,
        checkpoint_every=args.checkpoint_every,
        augment=args.augment,
        seed=args.seed,
    )
    summary = train_run(
        args.data_dir,
        args.run_dir,
        args.model,
        _model_kwargs(args),
        config,
        resume=args.resume,
        progress=not args.no_progress,
        seed=args.seed,
    )
    line = f"val NLL {summary['val_nll_per_pixel']:.4f} nats/pixel"
    if "gap_nats_per_pixel" in summary:
        line += (
            f"; test {summary['test_nll_per_pixel']:.4f} vs exact "
            f"{summary['exact_test_nll_per_pixel']:.4f} (gap {summary['gap_nats_per_pixel']:.4f})"
        )
    print(line)
    return summary


# ------------------------------------------------------------------------------- sample
def _load_model(run_dir):
    from fieldflow.checkpoint import load

    return load(run_dir)


def cmd_sample(args: argparse.Namespace) -> dict:
    import jax

    from fieldflow.plots import plot_maps

    model = _load_model(args.run_dir)
    key = jax.random.key(args.seed)
    cond = None
    if model.cond_dim:
        if args.theta is None:
            raise UserError("--theta OMEGA_M SIGMA_8 is required for a conditional model")
        cond = np.tile(np.asarray(args.theta, np.float32), (args.num, 1))
    t0 = time.perf_counter()
    maps = model.sample(key, cond) if cond is not None else model.sample(key, num=args.num)
    maps = np.asarray(jax.block_until_ready(maps))
    elapsed = time.perf_counter() - t0
    out = Path(args.out_dir)
    _save_npz(
        out / "samples.npz",
        maps=maps,
        theta=np.zeros((args.num, 0)) if cond is None else cond,
        seed=args.seed,
    )
    fig = plot_maps(maps[: min(8, args.num)])
    fig.savefig(out / "samples.png", dpi=110)
    summary = {
        "command": "sample",
        "num": args.num,
        "theta": args.theta,
        "seed": args.seed,
        "seconds_incl_compile": elapsed,
        "files": ["samples.npz", "samples.png"],
    }
    print(f"wrote {args.num} samples to {out / 'samples.npz'} and {out / 'samples.png'}")
    return summary


# -------------------------------------------------------------------------------- infer
def read_maps(path, index=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Maps (M, N, N) and their theta (or None) from an .npz with 'maps' or 'map', or a .npy."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"map file {path} does not exist")
    try:
        data = np.load(path)
    except Exception as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if isinstance(data, np.ndarray):
        maps, theta = data, None
    else:
        key = "maps" if "maps" in data.files else "map" if "map" in data.files else None
        if key is None:
            raise UserError(f"{path} holds {data.files}; expected an array named 'maps' or 'map'")
        maps = data[key]
        theta = data["theta"] if "theta" in data.files else None
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 2:
        maps = maps[None]
        theta = None if theta is None else np.asarray(theta).reshape(1, -1)
    if maps.ndim != 3:
        raise UserError(f"maps in {path} must be (N, N) or (M, N, N), got {maps.shape}")
    if index is not None:
        if not -len(maps) <= index < len(maps):
            raise UserError(f"--index {index} is out of range for {len(maps)} maps")
        maps = maps[index : index + 1]
        theta = None if theta is None else theta[index : index + 1]
    return maps, theta


def cmd_infer(args: argparse.Namespace) -> dict:
    from fieldflow import inference
    from fieldflow.evaluation import plot_posteriors

    model = _load_model(args.run_dir)
    if not model.cond_dim:
        raise UserError("inference needs a conditional model (trained on (Omega_m, sigma_8))")
    maps, theta = read_maps(args.map_file, args.index)
    grid = inference.theta_grid(
        args.grid,
        args.grid,
        om_range=(model.cond_low[0], model.cond_high[0]),
        s8_range=(model.cond_low[1], model.cond_high[1]),
    )
    posteriors = {"TRENF": inference.flow_posterior(model, maps, grid)}
    if args.lognormal_box:
        posteriors["exact lognormal"] = inference.exact_lognormal_posterior(
            maps, grid, box=args.lognormal_box
        )
    truth = None if theta is None or len(maps) != 1 else theta[0]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_posteriors(posteriors, theta_true=truth)
    fig.savefig(out / "posterior.png", dpi=120)
    _save_npz(
        out / "posterior.npz",
        om=grid.om,
        s8=grid.s8,
        **{name.replace(" ", "_"): p.post for name, p in posteriors.items()},
    )
    summary = {
        "command": "infer",
        "map_file": str(args.map_file),
        "n_maps": len(maps),
        "theta_true": None if truth is None else truth.tolist(),
        "posteriors": {name: p.summary() for name, p in posteriors.items()},
        "files": ["posterior.png", "posterior.npz"],
    }
    p = posteriors["TRENF"]
    print(
        f"Omega_m = {p.mean[0]:.4f} +- {p.std[0]:.4f}, sigma_8 = {p.mean[1]:.4f} +- "
        f"{p.std[1]:.4f}, corr {p.corr:+.2f}, FoM {p.fom:.0f}; figure {out / 'posterior.png'}"
    )
    return summary


# --------------------------------------------------------------------------- benchmark
def cmd_benchmark(args: argparse.Namespace) -> dict:
    from fieldflow.benchmarks import speed_benchmark

    result = speed_benchmark(sizes=args.sizes, batch=args.batch, n_layers=args.layers)
    print(json.dumps(result, indent=2))
    return result


# --------------------------------------------------------------------------- quickstart
def cmd_quickstart(args: argparse.Namespace) -> dict:
    """Generate a small lognormal set, train TRENF briefly, sample, infer and denoise a
    held-out map."""
    import shutil

    from fieldflow.data import load_dataset
    from fieldflow.train import TrainConfig

    out = Path(args.out_dir)
    data_dir, run_dir = out / "data", out / "run"
    t0 = time.perf_counter()
    print(f"[1/5] generating {args.n_sims} lognormal {args.n}x{args.n} maps in {data_dir}")
    cmd_generate(
        argparse.Namespace(
            out_dir=data_dir,
            simulator="lognormal",
            n_sims=args.n_sims,
            n=args.n,
            box=args.box,
            shard_size=64,
            seed=args.seed,
            n_fiducial=0,
            no_progress=args.no_progress,
        )
    )

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
        {"n_layers": 5, "hidden": (64, 64)},
        config,
        progress=not args.no_progress,
        seed=args.seed,
    )
    print(
        f"      test NLL {train['test_nll_per_pixel']:.4f} nats/pixel; exact lognormal "
        f"{train['exact_test_nll_per_pixel']:.4f}; gap {train['gap_nats_per_pixel']:.4f}"
    )

    print(f"[3/5] sampling mock fields at theta = (0.3, 0.8) in {out / 'samples'}")
    sample = cmd_sample(
        argparse.Namespace(
            run_dir=run_dir, out_dir=out / "samples", num=8, theta=[0.3, 0.8], seed=args.seed
        )
    )
    _write_json(out / "samples" / "summary.json", sample)

    test_maps, test_theta = load_dataset(data_dir, seed=args.seed)["test"]
    _save_npz(out / "test_maps.npz", maps=test_maps[:8], theta=test_theta[:8])
    print(
        f"[4/5] posterior of (Omega_m, sigma_8) for a held-out map (truth {test_theta[0, 0]:.3f},"
        f" {test_theta[0, 1]:.3f}) in {out / 'infer'}"
    )
    infer = cmd_infer(
        argparse.Namespace(
            run_dir=run_dir,
            map_file=out / "test_maps.npz",
            out_dir=out / "infer",
            index=0,
            grid=50,
            lognormal_box=args.box,
        )
    )
    _write_json(out / "infer" / "summary.json", infer)

    print(f"[5/5] denoising that map (20% masked, S/N ~ 1): Wiener vs flow in {out / 'denoise'}")
    from fieldflow.commands.denoise import main as denoise_main

    denoise_main(
        [
            str(out / "test_maps.npz"),
            "--out",
            str(out / "denoise"),
            "--index",
            "0",
            "--model",
            str(run_dir),
            "--prior",
            "flow-latent",
            "--box",
            str(args.box),
            "--noise-fraction",
            "1.0",
            "--steps",
            "300",
        ]
    )

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
    print("figures: " + ", ".join(result["figures"]))
    return result


# -------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldflow",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, help_text):
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        return p

    p = add("generate", "simulate a data set of maps (sharded .npz, resumable)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--simulator", choices=("grf", "lognormal", "nbody"), default="lognormal")
    p.add_argument("--n-sims", type=int, default=512)
    p.add_argument("--n-fiducial", type=int, default=0, help="extra simulations at the fiducial θ")
    p.add_argument("--n", type=int, default=32, help="pixels per side")
    p.add_argument("--box", type=float, default=128.0, help="side of the map in h^-1 Mpc")
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-mesh", type=int, default=None, help="nbody: particles per side")
    p.add_argument("--n-steps", type=int, default=10, help="nbody: PM steps")
    p.add_argument("--n-slabs", type=int, default=4, help="nbody: slabs per simulation")

    p = add("train", "train a flow on a data set directory")
    p.add_argument("data_dir", type=Path)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--model", choices=("trenf", "realnvp"), default="trenf")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--patience", type=int, default=10, help="evaluations; 0 disables")
    p.add_argument("--augment", action="store_true", help="random shifts and lattice rotations")
    p.add_argument("--layers", type=int, default=5, help="TRENF layers")
    p.add_argument("--psi-bins", type=int, default=8, help="TRENF spline bins")
    p.add_argument("--t-knots", type=int, default=0, help="TRENF kernel knots (0: N/2+1)")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="TRENF MLP widths")
    p.add_argument("--channels", type=int, default=32, help="RealNVP conv channels")
    p.add_argument(
        "--log-offset",
        type=float,
        default=None,
        metavar="C",
        help="model log(1 + C + x) instead of x: for heavy-tailed maps such as N-body "
        "(try 0.01); maps must be > -1 - C",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")

    p = add("sample", "draw mock fields at given (Ωm, σ8) to .npz and PNG")
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--theta", type=float, nargs=2, metavar=("OMEGA_M", "SIGMA_8"))
    p.add_argument("--num", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)

    p = add("infer", "posterior on (Ωm, σ8) of a map file, with its contour plot")
    p.add_argument("run_dir", type=Path)
    p.add_argument("map_file", type=Path, help=".npz with 'maps' (M, N, N) or 'map'; or .npy")
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--index",
        type=int,
        default=None,
        help="one map of the file (default: all, as independent maps)",
    )
    p.add_argument("--grid", type=int, default=60, help="grid points per parameter")
    p.add_argument(
        "--lognormal-box",
        type=float,
        default=None,
        help="also the exact lognormal posterior, for maps of this box size",
    )

    for name, help_text in PASS_THROUGH.items():
        p = sub.add_parser(
            name,
            help=help_text,
            add_help=False,
            description=f"{help_text}; see `fieldflow {name} --help`",
        )
        p.add_argument("args", nargs=argparse.REMAINDER)

    p = add("benchmark", "speed of log_prob, sample and a training step (JSON)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--out-dir", type=Path, default=None)

    p = add("quickstart", "the whole small pipeline on CPU in minutes")
    p.add_argument("out_dir", type=Path, nargs="?", default=Path("out/quickstart"))
    p.add_argument("--n-sims", type=int, default=1024)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--box", type=float, default=128.0)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    return parser


# subcommands whose module owns its argument parser: fieldflow NAME ... == module.main([...])
PASS_THROUGH = {
    "denoise": "Wiener filter and flow MAP reconstructions of noisy, masked maps",
    "evaluate": "sample quality (P(k), PDF, peaks) and posteriors of a run vs held-out sims",
}

COMMANDS = {
    "generate": cmd_generate,
    "train": cmd_train,
    "sample": cmd_sample,
    "infer": cmd_infer,
    "benchmark": cmd_benchmark,
    "quickstart": cmd_quickstart,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASS_THROUGH:
        import importlib

        module = importlib.import_module(f"fieldflow.commands.{argv[0]}")
        try:
            result = module.main(argv[1:])
        except (UserError, ValueError, FileNotFoundError, NotADirectoryError) as err:
            print(f"fieldflow: error: {err}", file=sys.stderr)
            return 2
        return result if isinstance(result, int) else 0
    args = build_parser().parse_args(argv)
    out_dir = getattr(args, "out_dir", None) or getattr(args, "run_dir", None)
    try:
        summary = COMMANDS[args.command](args)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"fieldflow: error: {err}", file=sys.stderr)
        return 2
    if out_dir is not None and args.command not in ("train",):
        _write_json(Path(out_dir) / "summary.json", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
