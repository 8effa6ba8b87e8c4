"""``fieldflow evaluate``: sample quality and posteriors of a trained run vs held-out sims.

At theta (default the fiducial (0.3, 0.8)): ``--num`` flow samples against as many held-out
simulations (the data set's ``fiducial/`` maps when theta is fiducial, topped up with fresh
simulations of the data set's configuration with seeds outside it). Writes ``summary.json``
(P(k) ratio per k bin, PDF, peak counts, pass flags; see ``fieldflow.evaluation``; for GRF and
lognormal data also the samples' P(k) over the exact expected spectrum) and the
figures ``maps.png``, ``power_spectrum.png``, ``pdf.png``, ``peaks.png`` and
``posterior.png``: the 68/95% contours of the flow, the power-spectrum likelihood and (for
lognormal data) the exact likelihood for one test map (``--index``) on a ``--grid`` grid.

``--temperature`` draws the samples at a latent temperature (a number, or the file of
``fieldflow sample --fit-temperature``): tempered mocks against the same simulations.

Calibration diagnostics of the same likelihoods (``summary.json`` ``calibration``, figure
``coverage.png``): the score test at theta on the held-out simulations (for a correct
likelihood E[s] = 0 and Cov(s) = -E[Hessian]; eigenvalues of F^-1 C above 1 say the posterior
is too narrow by their square root), and the coverage of the HPD regions of every credibility
over ``--coverage-maps`` test maps spread over the prior (on the diagonal when calibrated).
Fewer than 50 maps give a warning: the error bars are then large.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fieldflow.commands import subparser

HELP = "sample quality (P(k), PDF, peaks) and posteriors of a run vs held-out sims"
EXAMPLES = [
    "fieldflow evaluate runs/trenf data/ln32 out/eval",
    "fieldflow evaluate runs/trenf data/ln32 out/eval_edge --theta 0.45 1.0 --num 2048",
]


def add_parser(subparsers):
    p = subparser(subparsers, "evaluate", HELP, EXAMPLES, __doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--theta",
        type=float,
        nargs=2,
        default=None,
        metavar=("OMEGA_M", "SIGMA_8"),
        help="default: the fiducial theta",
    )
    p.add_argument(
        "--num",
        type=int,
        default=1024,
        help="samples and simulations to compare (~2000 for a 2%% P(k) ratio error)",
    )
    p.add_argument("--index", type=int, default=0, help="test map for the posterior figure")
    p.add_argument(
        "--posterior-fiducial",
        action="store_true",
        help="posterior of a held-out fiducial map instead of a test map",
    )
    p.add_argument("--grid", type=int, default=60, help="grid cells per axis over the prior")
    p.add_argument(
        "--coverage-maps",
        type=int,
        default=100,
        help="test maps of the coverage diagnostics (0: no calibration diagnostics)",
    )
    p.add_argument(
        "--temperature",
        default=None,
        metavar="T_OR_FILE",
        help="sample at this latent temperature: a number, or a sampling_temperature.json of "
        "`fieldflow sample --fit-temperature` (default 1: the flow's own samples)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args) -> dict:
    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    import data_gen
    from fieldflow import evaluation as ev
    from fieldflow import inference as inf
    from fieldflow import plots
    from fieldflow.io import write_json
    from fieldflow.sampling_temperature import temperature_at
    from fieldflow.workflows import load_run_and_data

    cfg, model, splits = load_run_and_data(args.run_dir, args.data_dir, args.seed)
    theta = np.asarray(args.theta if args.theta else data_gen.FIDUCIAL_THETA, np.float64)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # the map of the posterior figure: a test map, or a held-out fiducial map
    fid = splits.get("fiducial", (np.zeros((0,)),))[0]
    from_fid = args.posterior_fiducial and len(fid)
    count = len(fid) if from_fid else len(splits["test"][0])
    if not -count <= args.index < count:
        what = "fiducial" if from_fid else "test"
        raise ValueError(f"--index {args.index} is out of range for {count} {what} maps")
    if from_fid:
        x, truth = fid[-1 - args.index], np.asarray(data_gen.FIDUCIAL_THETA)
    else:
        x, truth = splits["test"][0][args.index], splits["test"][1][args.index]

    sims, source = ev.held_out_sims(cfg, splits, theta, args.num, args.seed)
    temperature, temperature_source = temperature_at(args.temperature, theta)
    samples = ev.sample_maps(
        model, theta, len(sims), jax.random.key(args.seed), temperature=temperature
    )
    stats = ev.sample_quality(samples, sims, float(cfg["box"]))
    theory = ev.theory_check(cfg, theta, stats)

    # posterior contours for that map: flow, P(k) likelihood, exact (lognormal)
    # covariance from the fiducial maps, leaving out the one plotted
    cov_maps = None
    if len(fid) > 8:
        cov_maps = fid[: -1 - args.index] if args.posterior_fiducial else fid
    grid = inf.theta_grid(args.grid, args.grid, *inf.model_theta_range(model))
    posts, notes = ev.map_posteriors(model, cfg, splits, x, grid, cov_maps)

    calibration, curves = None, {}
    if args.coverage_maps > 0:
        calibration, curves = ev.calibration_diagnostics(
            model, cfg, splits, theta, sims, grid, args.coverage_maps, cov_maps
        )
    figs = {
        "maps.png": plots.plot_maps_side_by_side(sims, samples, n=4),
        "power_spectrum.png": plots.plot_power_spectra(stats),
        "pdf.png": plots.plot_pdf(stats),
        "peaks.png": plots.plot_peaks(stats),
        "posterior.png": plots.plot_posteriors(posts, theta_true=truth),
    }
    if curves:
        figs["coverage.png"] = plots.plot_coverage(curves)
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    summary = {
        "command": "evaluate",
        "run_dir": str(args.run_dir),
        "data_dir": str(args.data_dir),
        "theta": theta.tolist(),
        "simulations": source,
        "temperature": temperature,
        "temperature_from": temperature_source,
        "sample_quality": stats,
        "power_spectrum_vs_theory": theory,
        "posterior": {
            "theta_true": np.asarray(truth).tolist(),
            "grid": grid.to_dict(),
            **{k: p.summary() for k, p in posts.items()},
        },
        "calibration": calibration,
        "notes": notes,
        "figures": sorted(figs),
    }
    write_json(out / "summary.json", summary)
    pk = stats["power_spectrum"]
    print(
        f"P(k) max |ratio - 1| below Nyquist {pk['max_abs_ratio_dev_below_nyquist']:.3f} "
        f"({'pass' if pk['passed'] else 'FAIL'}); PDF max |dev|/scatter "
        f"{stats['pdf']['max_abs_dev_over_scatter']:.2f}; peaks "
        f"{stats['peaks']['max_abs_dev_over_scatter']:.2f}; FoM "
        + ", ".join(f"{k} {p.fom:.0f}" for k, p in posts.items())
    )
    for name, diag in (calibration or {}).items():
        if name != "notes" and "eigenvalues" in diag["score_test"]:
            eig = ", ".join(f"{v:.2f}" for v in diag["score_test"]["eigenvalues"])
            print(
                f"{name}: score-test eigenvalues {eig} (1 = honest); 68% coverage "
                f"{diag['coverage']['coverage_68']:.2f} over {diag['coverage']['n_maps']} maps"
            )
    print(f"wrote {out / 'summary.json'} and {len(figs)} figures", file=sys.stderr)
    return summary
