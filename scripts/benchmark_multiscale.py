"""Multiscale flow vs TRENF on one data set, each trained for the same wall time; prints JSON.

For each model: ``train_run`` with ``max_seconds``, the best checkpoint read back with
``fieldflow.load``, then on the held-out test maps

- the test NLL in nats per pixel (lognormal data: also the exact NLL and the gap to it);
- the power of w = z^2 - 1 of the latent maps at the lowest three |k| bins
  (``fieldflow.latent_diagnostics``: 2.0 for white unit-Gaussian z; clustering of the latent
  amplitude shows as excess power at low k);
- the multiscale model's NLL per pixel split into its terms (coarsest map, each level's
  details, standardisation);

and on the fiducial maps (simulated at theta_0) the score test of the information identity:
eigenvalues of F^-1 C (1 for a correct likelihood; lambda > 1: the posterior is too narrow by
sqrt(lambda)) and the coverage they predict for a Gaussian posterior.

    python scripts/benchmark_multiscale.py DATA_DIR OUT_DIR --seconds 240 [--log-offset 0.01]

By default each model's learning rate stays near its peak (a cosine schedule over 10^6 steps cut
by ``--seconds``); ``--steps N [N ...]`` (one per model) lets the schedule decay over N steps
instead, with ``--seconds`` as a cap — the fair "same wall time" comparison with N from each
model's measured step rate.

The multiscale flow has ``--prefix-layers`` (default 5) full-resolution TRENF layers before its
Haar split and is trained on randomly shifted, rotated and reflected maps (``--no-augment``:
not); ``--prefix-layers 0 --no-augment`` is the plain hierarchy.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

SUMMARY_KEYS = ("n_params", "steps_done", "best_step", "val_nll_per_pixel", "test_nll_per_pixel")
SUMMARY_KEYS += ("exact_test_nll_per_pixel", "gap_nats_per_pixel")


def model_kwargs(model_type: str, args) -> dict:
    kw = {"log_offset": args.log_offset} if args.log_offset is not None else {}
    if model_type == "trenf":
        kw.update(n_layers=args.trenf_layers, hidden=(64, 64))
    else:
        kw.update(
            n_levels=args.levels,
            coarse_layers=args.trenf_layers,
            coarse_hidden=(64, 64),
            detail_layers=args.detail_layers,
            detail_hidden=args.detail_hidden,
            prefix_layers=args.prefix_layers,
        )
    return kw


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--models", nargs="+", default=["trenf", "multiscale"])
    p.add_argument("--seconds", type=float, default=240.0, help="training wall time per model")
    p.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=None,
        help="training steps per model, in --models order: the learning rate decays over them",
    )
    p.add_argument("--log-offset", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--trenf-layers", type=int, default=5, help="TRENF / coarsest-level layers")
    p.add_argument("--levels", type=int, default=None, help="Haar levels (default: up to 3)")
    p.add_argument("--detail-layers", type=int, default=2)
    p.add_argument("--detail-hidden", type=int, default=32)
    p.add_argument("--prefix-layers", type=int, default=5, help="full-resolution TRENF layers")
    p.add_argument("--theta0", type=float, nargs=2, default=[0.3, 0.8])
    p.add_argument("--n-score", type=int, default=None, help="score-test maps (0: none)")
    p.add_argument(
        "--n-mixture",
        type=int,
        default=256,
        help="test maps for the group-mixture NLL (0: none; it costs 2 * 4^levels * 8 "
        "evaluations per map)",
    )
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="train the multiscale flow on the maps as they are, not randomly shifted, "
        "rotated and reflected (TRENF is invariant: it never needs it)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps is not None and (len(args.steps) != len(args.models) or min(args.steps) < 1):
        p.error(f"--steps needs one positive count per model ({len(args.models)})")

    import fieldflow
    from fieldflow.data import load_dataset
    from fieldflow.latent_diagnostics import model_diagnostics
    from fieldflow.train import TrainConfig
    from fieldflow.workflows import train_run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = load_dataset(args.data_dir, seed=args.seed)
    result = {"data_dir": str(args.data_dir), "seconds_per_model": args.seconds, "models": {}}
    for i, model_type in enumerate(args.models):
        run_dir = args.out_dir / model_type
        config = TrainConfig(
            steps=1_000_000 if args.steps is None else args.steps[i],
            batch_size=args.batch_size,
            learning_rate=args.lr,
            warmup_steps=100,
            eval_every=100,
            patience=None,
            checkpoint_every=1_000_000,
            augment=model_type == "multiscale" and not args.no_augment,
            seed=args.seed,
        )
        t0 = time.perf_counter()
        summary = train_run(
            args.data_dir,
            run_dir,
            model_type,
            model_kwargs(model_type, args),
            config,
            progress=False,
            seed=args.seed,
            max_seconds=args.seconds,
        )
        train_s = time.perf_counter() - t0
        model = fieldflow.load(run_dir)  # the best checkpoint, read back
        entry = {k: summary[k] for k in SUMMARY_KEYS if k in summary}
        entry["train_wall_s"] = train_s
        entry.update(
            model_diagnostics(model, splits, args.theta0, args.n_score, n_mixture=args.n_mixture)
        )
        result["models"][model_type] = entry
        print(json.dumps({model_type: entry}), flush=True)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
