"""``fieldflow infer``: the posterior of (Omega_m, sigma_8) given maps, with its contour plot.

The maps of MAP_FILE (an ``.npz`` with ``maps`` (M, N, N) or ``map`` (N, N), optionally
``theta``; or an ``.npy``) are taken as independent draws at one theta, and their joint
posterior under the trained flow is evaluated on a GRID x GRID grid over the model's
trained range (flat prior). ``--lognormal-box`` adds the exact lognormal posterior for
comparison.

Which posterior is reported: when the run has been calibrated (``fieldflow calibrate`` wrote
``RUN_DIR/calibration/``, or ``--calibration`` names its calibration.json), all three are
computed: the raw flow posterior, the score-compressed one (a Gaussian likelihood of the flow's
score at the fiducial theta, its mean and theta-dependent covariance emulated from
simulations) and the curvature-adjusted one (covariance F^-1 C F^-1). The default is the raw
posterior when the calibration's score tests find it honest (predicted 68% coverage >= 0.62,
averaged over the calibration theta), else the score-compressed one: on N-body maps its
coverage was the one in the nominal range. Without calibration files the raw flow posterior is
reported with a warning that its coverage is unchecked (learned likelihoods of N-body maps
are overconfident). ``--posterior`` chooses. Writes ``posterior.png`` (68% and 95% HPD contours; the
true theta when the file gives it for a single map), ``posterior.npz`` (the grid's ``om``,
``s8`` and each method's cell probabilities) and ``summary.json`` (means, standard
deviations, correlation, MAP, HPD areas and FoM = 1 / area of the 68% region).

With ``--mask`` or ``--noise``, the field-level posterior of one noisy, masked map instead:
theta and the field sampled jointly with the flow as prior (BlackJAX MCLMC or NUTS, several
chains, R-hat and ESS), see ``fieldflow.field_level.command``.
"""

from __future__ import annotations

from pathlib import Path

from fieldflow.commands import subparser
from fieldflow.commands.calibrate import default_calibration
from fieldflow.field_level import command as field_level

HELP = "posterior on (Ωm, σ8) of a map file, with its contour plot"
EXAMPLES = [
    "fieldflow infer runs/trenf data/lognormal/shard_00000.npz out/infer --index 0 "
    "--lognormal-box 128",
    "fieldflow infer runs/trenf data/lognormal/shard_00000.npz out/infer_joint --grid 20",
    "fieldflow infer runs/trenf data/lognormal/shard_00000.npz out/infer_field --index 0 "
    "--mask 0.2 --noise 0.3 --sampler nuts --chains 2 --warmup 30 --samples 40",
]


def add_parser(subparsers):
    p = subparser(subparsers, "infer", HELP, EXAMPLES, __doc__.split("\n", 2)[2])
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
        "--posterior",
        choices=("auto", "raw", "adjusted", "score"),
        default="auto",
        help="auto: after `fieldflow calibrate`, the one it chose (the most informative of "
        "those whose coverage on held-out maps is honest); raw without calibration files",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="calibration file (default RUN_DIR/calibration/calibration.json)",
    )
    p.add_argument(
        "--lognormal-box",
        type=float,
        default=None,
        help="also the exact lognormal posterior, for maps of this box size (h^-1 Mpc)",
    )
    field_level.add_arguments(p)
    return p


def run(args) -> dict:
    import matplotlib.pyplot as plt

    from fieldflow import inference
    from fieldflow.checkpoint import load
    from fieldflow.io import read_maps, save_npz, write_json
    from fieldflow.plots.posteriors import plot_posteriors

    model = load(args.run_dir)
    if not model.cond_dim:
        raise ValueError("inference needs a conditional model (trained on (Omega_m, sigma_8))")
    maps, theta, _ = read_maps(args.map_file, args.index)
    if field_level.wanted(args):
        return field_level.run_field_level(args, model, maps, theta)
    om_range, s8_range = inference.model_theta_range(model)
    grid = inference.theta_grid(args.grid, args.grid, om_range, s8_range)
    calibration = args.calibration or default_calibration(args.run_dir)
    posteriors, default = flow_posteriors(model, calibration, maps, grid, args.posterior)
    if args.lognormal_box:
        posteriors["exact lognormal"] = inference.exact_lognormal_posterior(
            maps, grid, box=args.lognormal_box
        )
    truth = None if theta is None or len(maps) != 1 else theta[0]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_posteriors(posteriors, theta_true=truth)
    fig.savefig(out / "posterior.png", dpi=120)
    plt.close(fig)
    save_npz(
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
        "default_posterior": default,
        "posteriors": {name: p.summary() for name, p in posteriors.items()},
        "files": ["posterior.png", "posterior.npz"],
    }
    write_json(out / "summary.json", summary)
    p = posteriors[default]
    print(
        f"{default}: Omega_m = {p.mean[0]:.4f} +- {p.std[0]:.4f}, sigma_8 = {p.mean[1]:.4f} +- "
        f"{p.std[1]:.4f}, corr {p.corr:+.2f}, FoM {p.fom:.0f}; figure {out / 'posterior.png'}"
    )
    return summary


def flow_posteriors(model, calibration, maps, grid, which: str = "auto") -> tuple[dict, str]:
    """The raw and (when the ``calibration`` file exists, or asked for) curvature-adjusted and
    score-compressed joint posteriors of the maps, and the name of the one to report: with
    ``which`` 'auto', the one ``fieldflow calibrate`` chose by its coverage on held-out maps
    (``selection.json``: :class:`~fieldflow.inference.PosteriorSelection`); for calibrations
    without that file, the raw one when the score tests find it honest
    (:meth:`~fieldflow.inference.CurvatureAdjustment.raw_is_calibrated`), else the
    score-compressed one (else the adjusted one)."""
    import warnings

    import numpy as np

    from fieldflow import inference
    from fieldflow.commands.calibrate import SCORE_FILE, SELECTION_FILE

    path = Path(calibration)
    score_path = path.with_name(SCORE_FILE)
    needed = {"adjusted": path, "score": score_path}.get(which)
    if needed is not None and not needed.is_file():
        raise ValueError(f"{needed} does not exist: run `fieldflow calibrate` first")
    if hasattr(model, "check_support"):
        model.check_support(np.asarray(maps), "maps")
    raw_only = which == "raw" or not (path.is_file() or score_path.is_file())
    adjustment = score = None
    if not raw_only:  # the calibration files (refused for another model) before any work
        fp = inference.model_fingerprint(model)
        if path.is_file():
            adjustment = inference.CurvatureAdjustment.load(path, model=fp)
        if score_path.is_file():
            score = inference.SummaryLikelihood.load(score_path, model, model_fingerprint=fp)
    log_like = inference.flow_log_like_fn(model)
    raw_ll = inference.grid_log_likelihood(log_like, maps, grid, per_map=True, n=model.shape[0])
    name = {"trenf": "TRENF", "realnvp": "RealNVP"}.get(model.model_type, model.model_type)
    posteriors = {name: inference.posterior_from_loglike(raw_ll.sum(axis=0), grid)}
    if raw_only:
        if which == "auto":
            warnings.warn(
                f"no {path}: the raw flow posterior's coverage is unchecked "
                "(run `fieldflow calibrate`)",
                stacklevel=2,
            )
        return posteriors, name
    names = {}
    if adjustment is not None:
        names["adjusted"] = f"{name} (curvature-adjusted)"
        posteriors[names["adjusted"]] = inference.adjusted_posteriors(
            log_like, maps, grid, adjustment, per_map=False, raw_loglike=raw_ll, n=model.shape[0]
        )
    if score is not None:
        names["score"] = f"{name} (score-compressed)"
        posteriors[names["score"]] = score.posterior(maps, grid)
    names["raw"] = name
    selection_path = path.with_name(SELECTION_FILE)
    if which == "auto" and selection_path.is_file():
        chosen = inference.PosteriorSelection.load(selection_path, model=fp).chosen
        if chosen in names:
            return posteriors, names[chosen]
    if which == "auto" and adjustment is not None and adjustment.raw_is_calibrated():
        return posteriors, name  # honest by the score tests: keep all its information
    # else score-compressed first: on N-body maps its coverage is the closest to nominal
    default = names.get(which) or names.get("score") or names["adjusted"]
    return posteriors, default
