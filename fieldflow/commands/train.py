"""``fieldflow train``: train a flow on a data set directory.

Maximum likelihood with Adam (warm-up, cosine decay), early stopping on the validation NLL
and checkpoints in RUN_DIR (``--resume`` continues an interrupted run). Writes
``summary.json`` (validation and test NLL in nats per pixel; for lognormal data the exact
test NLL and the gap to it), ``history.json`` and ``loss.png``.

``--model multiscale`` is the Haar-wavelet flow whose small scales follow the large ones
(``--prefix-layers`` full-resolution TRENF layers first, default 5; ``--levels``, default as
many as the map size allows up to 3; ``--detail-layers``); it is trained on randomly shifted,
rotated and reflected maps unless ``--no-augment``, since it lacks those symmetries.

``--distributed`` trains across processes (one per machine, e.g. ``--coordinator host0:12345
--num-processes 2 --process-id 0`` on host0 and ``--process-id 1`` on host1, or the variables
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID): one global mesh, each process
reading its part of every batch, the same result as one process with the same --batch-size.

``--calibrate STEPS`` then fine-tunes the trained flow on its posterior (Dai & Seljak's second
stage): the loss NLL per pixel + W * L_post, with L_post the cross-entropy of each map's own
theta among K other theta of its batch (``fieldflow.posterior_training``), so that
q(theta | x) is calibrated and not only q(x | theta) fitted. The fine-tuned flow is written as
a run of its own in RUN_DIR/posterior_calibrated (``fieldflow infer`` and ``fieldflow
calibrate`` take it like any run); the maximum-likelihood run is kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fieldflow import distributed
from fieldflow.commands import subparser

HELP = "train a flow on a data set directory"
EXAMPLES = [
    "fieldflow train data/ln32 runs/trenf --steps 4000",
    "fieldflow train data/nb32 runs/nb --log-offset 0.01",
    "fieldflow train data/nb32 runs/nb_cal --calibrate 500 --calibrate-contrast 7",
]


def add_parser(subparsers):
    p = subparser(subparsers, "train", HELP, EXAMPLES, __doc__)
    p.add_argument("data_dir", type=Path)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--model", choices=("trenf", "realnvp", "multiscale"), default="trenf")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--patience", type=int, default=10, help="evaluations; 0 disables")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train on randomly shifted, rotated and reflected maps (default: on for the "
        "multiscale flow, which lacks these symmetries; TRENF has them exactly)",
    )
    p.add_argument("--layers", type=int, default=5, help="TRENF layers")
    p.add_argument("--psi-bins", type=int, default=8, help="TRENF spline bins")
    p.add_argument("--t-knots", type=int, default=0, help="TRENF kernel knots (0: N/2+1)")
    p.add_argument(
        "--psi-bound",
        type=float,
        default=None,
        metavar="B",
        help="TRENF / multiscale: the splines act on [-B, B] of the standardised map and are "
        "the identity outside (default 5)",
    )
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="TRENF MLP widths")
    p.add_argument("--channels", type=int, default=32, help="RealNVP conv channels")
    p.add_argument(
        "--levels",
        type=int,
        default=None,
        help="multiscale: Haar levels (default: up to 3, as many as the map size allows)",
    )
    p.add_argument("--detail-layers", type=int, default=2, help="multiscale: detail layers")
    p.add_argument(
        "--prefix-layers",
        type=int,
        default=5,
        help="multiscale: full-resolution TRENF layers before the Haar split (0: none)",
    )
    p.add_argument("--detail-hidden", type=int, default=32, help="multiscale: detail MLP width")
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
    p.add_argument(
        "--calibrate",
        type=int,
        default=0,
        metavar="STEPS",
        help="then fine-tune on the posterior for STEPS steps (RUN_DIR/posterior_calibrated)",
    )
    p.add_argument("--calibrate-weight", type=float, default=1.0, help="W of L_post")
    p.add_argument("--calibrate-contrast", type=int, default=7, help="K other theta per map")
    p.add_argument("--calibrate-lr", type=float, default=2e-4, help="fine-tuning rate")
    distributed.add_arguments(p)
    return p


def model_kwargs(args) -> dict:
    """The model's keyword arguments from the parsed options."""
    if args.model == "trenf":
        kw = {"n_layers": args.layers, "n_psi_bins": args.psi_bins, "hidden": tuple(args.hidden)}
        if args.t_knots:
            kw["n_t_knots"] = args.t_knots
    elif args.model == "multiscale":  # --layers, --psi-bins, --hidden: its coarsest TRENF
        kw = {
            "n_levels": args.levels,
            "coarse_layers": args.layers,
            "coarse_psi_bins": args.psi_bins,
            "coarse_hidden": tuple(args.hidden),
            "detail_layers": args.detail_layers,
            "detail_hidden": args.detail_hidden,
            "prefix_layers": args.prefix_layers,
        }
    else:
        kw = {"hidden_channels": args.channels}
    if args.log_offset is not None:
        kw["log_offset"] = args.log_offset
    if args.psi_bound is not None:
        if args.model == "realnvp":
            raise ValueError("--psi-bound is an option of the TRENF and multiscale flows")
        kw["psi_bound"] = args.psi_bound
    return kw


def augment(args) -> bool:
    """--augment / --no-augment, else on for the multiscale flow only."""
    return args.model == "multiscale" if args.augment is None else args.augment


def run(args) -> dict:
    if args.calibrate and args.distributed:
        raise ValueError(
            "--calibrate fine-tunes on one process: train with --distributed, then run "
            "`fieldflow train ... --calibrate` on one machine (--resume reuses the run)"
        )
    distributed.setup_from_args(args)  # --distributed: join the group before jax starts
    from fieldflow.train import TrainConfig
    from fieldflow.workflows import train_run

    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=min(args.warmup, args.steps),
        eval_every=args.eval_every,
        patience=args.patience or None,
        checkpoint_every=args.checkpoint_every,
        augment=augment(args),
        seed=args.seed,
    )
    summary = train_run(
        args.data_dir,
        args.run_dir,
        args.model,
        model_kwargs(args),
        config,
        resume=args.resume,
        progress=not args.no_progress,
        seed=args.seed,
    )
    if args.calibrate:
        from fieldflow.posterior_training import PosteriorTrainingConfig
        from fieldflow.workflows import posterior_calibrate_run

        pconfig = PosteriorTrainingConfig(
            steps=args.calibrate,
            batch_size=args.batch_size,
            learning_rate=args.calibrate_lr,
            n_contrast=args.calibrate_contrast,
            weight=args.calibrate_weight,
            eval_every=max(args.calibrate // 10, 1),
            seed=args.seed,
        )
        summary["posterior_calibrated"] = posterior_calibrate_run(
            args.run_dir, args.data_dir, pconfig, progress=not args.no_progress, seed=args.seed
        )
    line = f"val NLL {summary['val_nll_per_pixel']:.4f} nats/pixel"
    if "gap_nats_per_pixel" in summary:
        line += (
            f"; test {summary['test_nll_per_pixel']:.4f} vs exact "
            f"{summary['exact_test_nll_per_pixel']:.4f} (gap {summary['gap_nats_per_pixel']:.4f})"
        )
    print(line)
    if args.calibrate:
        cal = summary["posterior_calibrated"]
        print(
            f"posterior-calibrated run {cal['run_dir']}: validation L_post "
            f"{cal['before']['val_posterior_loss']:.4f} -> {cal['after']['val_posterior_loss']:.4f}"
            f", NLL {cal['before']['val_nll_per_pixel']:.4f} -> "
            f"{cal['after']['val_nll_per_pixel']:.4f} nats/pixel"
        )
    return summary
