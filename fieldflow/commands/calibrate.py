"""``fieldflow calibrate``: test how honest a run's likelihood is, and write its adjustment.

At each calibration theta (default: the fiducial theta and four interior points of the prior;
``--theta`` replaces them), NUM maps never used in training (the data set's ``fiducial/`` maps
at the fiducial theta, topped up with fresh simulations of the data set's configuration) give
the score test: for a correct likelihood the score s = grad_theta log q(x | theta) has mean 0
and covariance C = F = -E[Hessian]; the eigenvalues of F^-1 C say by how much the posterior is
too narrow (sqrt per direction). From F and C the curvature adjustment of the likelihood is
written to ``RUN_DIR/calibration/calibration.json`` (with ``summary.json``: every score test);
``fieldflow infer`` then reports the adjusted
posterior, whose covariance is the sandwich F^-1 C F^-1, beside the raw one. It also writes
``score_compressed.json``: the score-compressed likelihood of the flow's score at the
fiducial theta, its mean, spreads and correlations emulated over the training maps and its
shape a spline-reshaped Student-t (a Gaussian where the training maps are too few), which
``fieldflow infer`` reports too. Last, on COVERAGE_MAPS
held-out maps of the data set's validation split (spread over the prior, never fitted to) it
measures the coverage of the 68% and 95% regions of the raw, adjusted and score-compressed
posteriors and writes ``selection.json``: the one ``fieldflow infer`` reports by default,
the most informative (largest median FoM) of those whose coverage is honest (68% in
[0.62, 0.74], 95% in [0.91, 0.98]), else the one nearest nominal coverage. The files are tied
to this model and data set and refused for any other.
"""

from __future__ import annotations

from pathlib import Path

from fieldflow.commands import subparser

HELP = "score test of a run's likelihood and its curvature adjustment (calibration.json)"
EXAMPLES = ["fieldflow calibrate runs/trenf data/lognormal --theta 0.3 0.8 --num 64"]
CALIBRATION_FILE = "calibration.json"
SCORE_FILE = "score_compressed.json"
SELECTION_FILE = "selection.json"
CALIBRATION_DIR = "calibration"


def default_calibration(run_dir) -> Path:
    """Where ``fieldflow calibrate RUN_DIR DATA`` writes, and ``fieldflow infer`` looks."""
    return Path(run_dir) / CALIBRATION_DIR / CALIBRATION_FILE


def add_parser(subparsers):
    p = subparser(subparsers, "calibrate", HELP, EXAMPLES, __doc__.split("\n", 2)[2])
    p.add_argument("run_dir", type=Path)
    p.add_argument("data_dir", type=Path, help="the data set the run was trained on")
    p.add_argument(
        "--theta",
        type=float,
        nargs=2,
        action="append",
        metavar=("OMEGA_M", "SIGMA_8"),
        help="a calibration point (repeatable; default: fiducial + 4 interior points)",
    )
    p.add_argument("--num", type=int, default=64, help="maps per calibration point")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where calibration.json and summary.json go (default RUN_DIR/calibration)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh simulations")
    p.add_argument(
        "--sims-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the held-out simulations in DIR and reuse those already there "
        "(same data set only)",
    )
    p.add_argument(
        "--coverage-maps",
        type=int,
        default=200,
        help="validation maps on which the posteriors' coverage chooses the default one "
        "(0: keep the score tests' rule)",
    )
    p.add_argument("--grid", type=int, default=40, help="grid points per parameter (coverage)")
    return p


def run(args) -> dict:
    import numpy as np

    from fieldflow import inference
    from fieldflow.io import write_json
    from fieldflow.sims_cache import open_cache
    from fieldflow.validation import check_cond_range
    from fieldflow.workflows import calibration_simulations, load_run_and_data

    if args.num < 8:
        raise ValueError(f"--num must be >= 8 maps per calibration point, got {args.num}")
    if args.coverage_maps < 0 or args.grid < 8:
        raise ValueError("need --coverage-maps >= 0 and --grid >= 8")
    cfg, model, splits = load_run_and_data(args.run_dir, args.data_dir)
    om_range, s8_range = inference.model_theta_range(model)
    low, high = inference.model_theta_box(model)
    for theta in args.theta or []:
        check_cond_range(np.asarray([theta]), model.cond_low, model.cond_high, "--theta")
    cache = open_cache(args.sims_cache, cfg)
    sims, sources = calibration_simulations(cfg, splits, args.theta, args.num, args.seed, cache)
    if hasattr(model, "check_support"):
        for _, maps in sims:
            model.check_support(maps, "calibration maps")
    fp = {"model": inference.model_fingerprint(model), "data": inference.fingerprint(cfg)}
    adjustment = inference.estimate_adjustment(
        inference.flow_log_like_fn(model),
        sims,
        low,
        high,
        fp,
    )
    out = Path(args.out) if args.out else default_calibration(args.run_dir).parent
    path = adjustment.save(out / CALIBRATION_FILE)
    score_path = None
    if "fiducial" in splits:
        score = inference.score_compressed_likelihood(
            model,
            *splits["train"],
            splits["fiducial"][0],
            theta_low=low,
            theta_high=high,
        )
        score_path = score.save(out / SCORE_FILE, fp)
    selection = None
    if args.coverage_maps:
        selection = inference.PosteriorSelection.on_validation(
            model,
            splits,
            cfg,
            args.coverage_maps,
            inference.theta_grid(args.grid, args.grid, om_range, s8_range),
            fp,
            adjustment=adjustment,
            score_likelihood=score if score_path is not None else None,
        )
    if selection is not None:
        selection.save(out / SELECTION_FILE)
    summary = {
        "command": "calibrate",
        "run_dir": str(args.run_dir),
        "data_dir": str(args.data_dir),
        "calibration_file": str(path),
        "score_compressed_file": None if score_path is None else str(score_path),
        "maps": sources,
        "score_tests": list(adjustment.tests),
        "selection": None if selection is None else selection.to_json(),
    }
    write_json(out / "summary.json", summary)
    for test in adjustment.tests:
        eig = ", ".join(f"{v:.2f}" for v in test.get("eigenvalues", []))
        print(
            f"theta = ({test['theta'][0]:.3f}, {test['theta'][1]:.3f}): eigenvalues of F^-1 C "
            f"{eig or 'n/a'} (1 = honest; > 1 overconfident)"
        )
    if selection is not None:
        print(f"coverage on {selection.source} (* reported by default: {selection.reason}):")
        print(selection.describe())
    print(f"wrote {path}" + ("" if score_path is None else f" and {score_path}"))
    return summary
