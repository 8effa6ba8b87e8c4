"""Sample quality and posteriors of a trained run against held-out simulations.

    python scripts/evaluate.py RUN_DIR DATA_DIR OUT_DIR [--theta 0.3 0.8] [--num 1024]

At theta (default the fiducial (0.3, 0.8)): ``--num`` flow samples against as many held-out
simulations (the data set's ``fiducial/`` maps when theta is fiducial, topped up with fresh
simulations of the data set's configuration with seeds outside it). Writes ``summary.json``
(P(k) ratio per k bin, PDF, peak counts, pass flags; see ``fieldflow.evaluation``; for GRF and
lognormal data also the samples' P(k) over the exact expected spectrum) and the
figures ``maps.png``, ``power_spectrum.png``, ``pdf.png``, ``peaks.png`` and
``posterior.png``: the 68/95% contours of the flow, the power-spectrum likelihood and (for
lognormal data) the exact likelihood for one test map (``--index``) on a ``--grid`` grid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    p.add_argument("--seed", type=int, default=0)
    return p


def load_run_and_data(run_dir, data_dir, seed: int = 0) -> tuple[dict, object, dict]:
    """(manifest, model, splits) of a trained run and a data set of the same map size."""
    from fieldflow.checkpoint import load
    from fieldflow.data import load_dataset, load_manifest

    cfg = load_manifest(data_dir)
    model = load(run_dir)
    if tuple(model.shape) != (cfg["n"], cfg["n"]):
        raise SystemExit(f"the model is for {model.shape} maps, the data set has n = {cfg['n']}")
    return cfg, model, load_dataset(data_dir, seed=seed)


def held_out_sims(
    cfg: dict, splits: dict, theta: np.ndarray, num: int, seed: int, batch: int = 64
):
    """``num`` simulations at theta never used in training: the data set's fiducial/ maps
    (when theta is fiducial), topped up with fresh simulations (data set configuration,
    seeds outside the data set)."""
    import data_gen
    from data_gen.dataset import sim_seeds, simulate

    parts, maps = [], []
    if np.allclose(theta, data_gen.FIDUCIAL_THETA) and "fiducial" in splits:
        fid = splits["fiducial"][0][:num]
        maps.append(fid)
        parts.append(f"{len(fid)} maps of the data set's fiducial/ set")
    need = num - sum(len(m) for m in maps)
    if need > 0:
        per = int(cfg.get("maps_per_sim", 1))
        n_sims = -(-need // per)
        seeds = sim_seeds(int(cfg.get("seed", 0)) + 1000 + seed, 7, 0, n_sims)
        th = np.tile(theta.astype(np.float32), (batch, 1))
        for i in range(0, n_sims, batch):  # fixed batch: one compilation
            s = np.resize(seeds[i : i + batch], batch)
            maps.append(simulate(cfg, s, th)[: min(batch, n_sims - i) * per])
        parts.append(f"{n_sims} new {cfg['simulator']} simulations ({n_sims * per} maps)")
    return np.concatenate(maps)[:num], "; ".join(parts)


def theory_check(cfg: dict, theta: np.ndarray, stats: dict) -> dict | None:
    """Samples' and simulations' mean P(k) over the exact expected spectrum (GRF, lognormal)."""
    if cfg["simulator"] not in ("grf", "lognormal"):
        return None
    import data_gen

    expected = np.asarray(
        data_gen.power_2d_binned(
            theta[None], cfg["n"], cfg["box"], cfg.get("slab"), bool(cfg.get("nonlinear", False))
        )
    )[0]
    pk = stats["power_spectrum"]
    below = np.asarray(pk["below_nyquist"])
    s_ratio = np.asarray(pk["samples_mean"]) / expected
    s_err = np.asarray(pk["samples_std"]) / np.sqrt(stats["n_samples"]) / expected
    return {
        "expected_pk": expected.tolist(),
        "samples_over_theory": s_ratio.tolist(),
        "samples_over_theory_err": s_err.tolist(),
        "sims_over_theory": (np.asarray(pk["sims_mean"]) / expected).tolist(),
        "max_abs_samples_dev_below_nyquist": float(np.abs(s_ratio[below] - 1).max()),
    }


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    import jax

    import data_gen
    from fieldflow import evaluation as ev
    from fieldflow import inference as inf

    cfg, model, splits = load_run_and_data(args.run_dir, args.data_dir, args.seed)
    box, slab = float(cfg["box"]), cfg.get("slab")
    theta = np.asarray(args.theta if args.theta else data_gen.FIDUCIAL_THETA, np.float64)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    sims, source = held_out_sims(cfg, splits, theta, args.num, args.seed)
    samples = ev.sample_maps(model, theta, len(sims), jax.random.key(args.seed))
    stats = ev.sample_quality(samples, sims, box)
    theory = theory_check(cfg, theta, stats)
    figs = {
        "maps.png": ev.plot_maps_side_by_side(sims, samples, n=4),
        "power_spectrum.png": ev.plot_power_spectra(stats),
        "pdf.png": ev.plot_pdf(stats),
        "peaks.png": ev.plot_peaks(stats),
    }

    # posterior contours for one map: flow, P(k) likelihood, exact (lognormal)
    fid = splits.get("fiducial", (np.zeros((0,)),))[0]
    if args.posterior_fiducial and len(fid):
        x, truth = fid[-1 - args.index], np.asarray(data_gen.FIDUCIAL_THETA)
    else:
        x, truth = splits["test"][0][args.index], splits["test"][1][args.index]
    grid = inf.theta_grid(args.grid, args.grid)
    posts = {"TRENF": inf.flow_posterior(model, x, grid)}
    notes = []
    if len(fid) > 8:  # covariance from the fiducial maps, leaving out the one plotted
        cov_maps = fid[: -1 - args.index] if args.posterior_fiducial else fid
        try:
            ps = inf.PowerSpectrumLikelihood.fit(*splits["train"], cov_maps, box)
            posts["P(k)"] = ps.posterior(x, grid)
        except ValueError as err:
            notes.append(f"no power-spectrum posterior: {err}")
    else:
        notes.append("no power-spectrum posterior: the data set has no fiducial/ set")
    if cfg["simulator"] == "lognormal":
        posts["exact"] = inf.exact_lognormal_posterior(
            x, grid, box=box, slab=slab, nonlinear=bool(cfg.get("nonlinear", False))
        )
    figs["posterior.png"] = ev.plot_posteriors(posts, theta_true=truth)
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=110)

    summary = {
        "command": "evaluate",
        "run_dir": str(args.run_dir),
        "data_dir": str(args.data_dir),
        "theta": theta.tolist(),
        "simulations": source,
        "sample_quality": stats,
        "power_spectrum_vs_theory": theory,
        "posterior": {
            "theta_true": np.asarray(truth).tolist(),
            "grid": grid.to_dict(),
            **{k: p.summary() for k, p in posts.items()},
        },
        "notes": notes,
        "figures": sorted(figs),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    pk = stats["power_spectrum"]
    print(
        f"P(k) max |ratio - 1| below Nyquist {pk['max_abs_ratio_dev_below_nyquist']:.3f} "
        f"({'pass' if pk['passed'] else 'FAIL'}); PDF max |dev|/scatter "
        f"{stats['pdf']['max_abs_dev_over_scatter']:.2f}; peaks "
        f"{stats['peaks']['max_abs_dev_over_scatter']:.2f}; FoM "
        + ", ".join(f"{k} {p.fom:.0f}" for k, p in posts.items())
    )
    print(f"wrote {out / 'summary.json'} and {len(figs)} figures", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
