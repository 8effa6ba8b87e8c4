"""Figure-of-merit benchmark: TRENF posterior vs power spectrum vs exact likelihood; prints JSON.

For each test map, the posterior of (Omega_m, sigma_8) on a grid over the prior under

* the trained TRENF (``fieldflow.inference.flow_posterior``),
* the Gaussian power-spectrum likelihood (emulated mean from the training split,
  Hartlap-corrected covariance from fiducial simulations),
* for lognormal maps, the exact likelihood (``data_gen``), the best any method can do,

and from them: FoM = 1 / area of the 68% HPD region (mean and median over maps), the
coverage of the true theta by the 68% and 95% regions (over the test split, theta spread over
the prior), and the FoM at the fiducial theta (held-out fiducial maps, not used for the
covariance). Pass criteria (lognormal): mean FoM(flow) >= 0.9 mean FoM(exact),
FoM(flow) > FoM(P(k)), |coverage_68 - 0.68| within 2 binomial sigma.

The data set is generated (or resumed / reused) with ``data_gen.generate_dataset`` and the
model trained with ``fieldflow.cli.train_run`` unless ``--run`` points at a trained run::

    python scripts/benchmark_fom.py                                  # lognormal 32^2 (~15 min)
    python scripts/benchmark_fom.py --run out/bench_fom/lognormal_n32/run
    python scripts/benchmark_fom.py --simulator nbody --n-sims 512 --n-fiducial 64
    python scripts/benchmark_fom.py --n-sims 256 --n-fiducial 64 --steps 200 --n-test 20 \\
        --grid 24 --workdir /tmp/fom_smoke                           # smoke test (~2 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

DEFAULTS = {
    "lognormal": {"n_sims": 2048, "n_fiducial": 256},
    "nbody": {"n_sims": 512, "n_fiducial": 64},  # x 4 slabs: 2048 and 256 maps
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--simulator", choices=("lognormal", "nbody", "grf"), default="lognormal")
    p.add_argument("--workdir", type=Path, default=Path("out/bench_fom"))
    p.add_argument("--data", type=Path, default=None,
                   help="data set directory (default WORKDIR/<simulator>_n<N>/data); "
                        "generated or resumed unless it already holds a manifest")
    p.add_argument("--run", type=Path, default=None, help="a trained run to reuse")
    p.add_argument("--n-sims", type=int, default=None, help="lognormal 2048, nbody 512")
    p.add_argument("--n-fiducial", type=int, default=None, help="lognormal 256, nbody 64")
    p.add_argument("--n", type=int, default=32, help="pixels per side")
    p.add_argument("--box", type=float, default=128.0, help="h^-1 Mpc")
    p.add_argument("--n-mesh", type=int, default=None, help="nbody: particles per side (N)")
    p.add_argument("--pm-steps", type=int, default=10, help="nbody: PM steps")
    p.add_argument("--n-slabs", type=int, default=4, help="nbody: slabs (maps) per simulation")
    p.add_argument("--steps", type=int, default=3000, help="training steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--n-test", type=int, default=100, help="test maps for FoM and coverage")
    p.add_argument("--n-fid-eval", type=int, default=64,
                   help="fiducial maps held out of the covariance for the fiducial FoM")
    p.add_argument("--grid", type=int, default=50, help="grid cells per axis over the prior")
    p.add_argument("--chunk", type=int, default=4096, help="(map, theta) pairs per flow call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON file (default in the workdir)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _ensure_data(args, data_dir: Path) -> dict:
    from data_gen import generate_dataset
    from fieldflow.data import load_manifest

    if (data_dir / "manifest.json").exists():
        cfg = load_manifest(data_dir)
        if (data_dir / "fiducial" / "manifest.json").exists() or cfg.get("n_fiducial", 0) == 0:
            return cfg
    d = DEFAULTS.get(args.simulator, DEFAULTS["lognormal"])
    kw = dict(n=args.n, box=args.box, seed=args.seed,
              n_fiducial=args.n_fiducial if args.n_fiducial is not None else d["n_fiducial"])
    if args.simulator == "nbody":
        kw.update(n_mesh=args.n_mesh, n_steps=args.pm_steps, n_slabs=args.n_slabs)
    n_sims = args.n_sims if args.n_sims is not None else d["n_sims"]
    return generate_dataset(data_dir, args.simulator, n_sims, progress=not args.no_progress, **kw)


def _ensure_run(args, data_dir: Path, run_dir: Path) -> tuple[dict, float]:
    from fieldflow.cli import train_run
    from fieldflow.train import TrainConfig

    summary_path = run_dir / "summary.json"
    if args.run is not None or ((run_dir / "best").is_dir() and summary_path.exists()):
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        return {"reused": True, **summary}, 0.0
    t0 = time.perf_counter()
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
        warmup_steps=min(100, args.steps // 10), eval_every=max(args.steps // 20, 1),
        checkpoint_every=max(args.steps // 4, 1), patience=None, seed=args.seed)
    summary = train_run(
        data_dir, run_dir, "trenf", {"n_layers": args.layers, "hidden": tuple(args.hidden)},
        config, resume=(run_dir / "checkpoints").is_dir(), progress=not args.no_progress,
        seed=args.seed)
    return {"reused": False, **summary}, time.perf_counter() - t0


def _stats(posts, theta_true) -> dict:
    from fieldflow.inference import contains

    fom = np.array([p.fom for p in posts])
    out = {"fom_mean": float(fom.mean()), "fom_median": float(np.median(fom)),
           "fom_std": float(fom.std()), "n_maps": len(posts)}
    if theta_true is not None:
        for m in (0.68, 0.95):
            hit = [contains(p, t, m) for p, t in zip(posts, theta_true, strict=True)]
            out[f"coverage_{int(m * 100)}"] = float(np.mean(hit))
        bias = np.array([(p.mean - t) / p.std for p, t in zip(posts, theta_true, strict=True)])
        out["mean_bias_over_std"] = bias.mean(axis=0).tolist()
    return out


def _touches_edge(post) -> bool:
    """Whether the 68% HPD region reaches a cell on the boundary of the grid (the prior)."""
    inside = post.post >= post.levels[0]
    return bool(inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any())


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    import data_gen
    from fieldflow import inference as inf
    from fieldflow.checkpoint import load
    from fieldflow.data import load_dataset

    tag = f"{args.simulator}_n{args.n}"
    base = args.workdir / tag
    data_dir = args.data or base / "data"
    t0 = time.perf_counter()
    cfg = _ensure_data(args, data_dir)
    t_data = time.perf_counter() - t0
    box, slab, sim = float(cfg["box"]), cfg.get("slab"), cfg["simulator"]
    run_dir = args.run or base / f"run_s{args.steps}_l{args.layers}"
    train_summary, t_train = _ensure_run(args, data_dir, run_dir)
    model = load(run_dir)

    splits = load_dataset(data_dir, seed=args.seed)
    if "fiducial" not in splits:
        raise SystemExit(f"{data_dir} has no fiducial/ set: generate with --n-fiducial > 0")
    test_maps, test_theta = splits["test"]
    if len(test_maps) < args.n_test:
        warnings.warn(f"only {len(test_maps)} test maps (asked for {args.n_test})", stacklevel=1)
    test_maps, test_theta = test_maps[: args.n_test], test_theta[: args.n_test]
    fid_maps = splits["fiducial"][0]
    per_sim = int(cfg.get("maps_per_sim", 1))
    n_fe = min(int(np.ceil(args.n_fid_eval / per_sim)) * per_sim, len(fid_maps) // 2 // per_sim
               * per_sim)
    fid_cov, fid_eval = fid_maps[: len(fid_maps) - n_fe], fid_maps[len(fid_maps) - n_fe:]
    fid_theta = np.asarray(data_gen.FIDUCIAL_THETA, np.float64)

    grid = inf.theta_grid(args.grid, args.grid)
    t0 = time.perf_counter()
    ps = inf.PowerSpectrumLikelihood.fit(*splits["train"], fid_cov, box,
                                         fiducial_theta=data_gen.FIDUCIAL_THETA)
    t_ps = time.perf_counter() - t0
    eval_sets = {"test": (test_maps, test_theta), "fiducial": (fid_eval, None)}
    results: dict = {}
    timings = {"data_s": t_data, "train_s": t_train, "ps_fit_s": t_ps}
    for name, (maps, theta) in eval_sets.items():
        if len(maps) == 0:
            continue
        res = {}
        t0 = time.perf_counter()
        flow = inf.flow_posterior(model, maps, grid, per_map=True, chunk=args.chunk)
        timings[f"flow_{name}_s"] = time.perf_counter() - t0
        truth = theta if theta is not None else np.tile(fid_theta, (len(maps), 1))
        res["flow"] = _stats(flow, truth)
        ps_posts = ps.posterior(maps, grid, per_map=True)
        res["power_spectrum"] = _stats(ps_posts, truth)
        if sim == "lognormal":
            t0 = time.perf_counter()
            exact = inf.exact_lognormal_posterior(maps, grid, box=box, slab=slab,
                                                  nonlinear=bool(cfg.get("nonlinear", False)),
                                                  per_map=True)
            timings[f"exact_{name}_s"] = time.perf_counter() - t0
            res["exact"] = _stats(exact, truth)
            res["exact"]["frac_hpd68_touching_prior_edge"] = float(np.mean(
                [_touches_edge(p) for p in exact]))
            ratio = np.array([f.fom / e.fom for f, e in zip(flow, exact, strict=True)])
            res["flow_over_exact_fom_mean"] = res["flow"]["fom_mean"] / res["exact"]["fom_mean"]
            res["flow_over_exact_fom_median_per_map"] = float(np.median(ratio))
        # a P(k) posterior piled against the prior boundary can be tiny (emulator
        # extrapolation): the mean FoM is then dominated by a few maps, the median is robust
        res["power_spectrum"]["frac_hpd68_touching_prior_edge"] = float(np.mean(
            [_touches_edge(p) for p in ps_posts]))
        res["flow"]["frac_hpd68_touching_prior_edge"] = float(np.mean(
            [_touches_edge(p) for p in flow]))
        res["flow_over_ps_fom_mean"] = res["flow"]["fom_mean"] / res["power_spectrum"]["fom_mean"]
        res["flow_over_ps_fom_median"] = (res["flow"]["fom_median"]
                                          / res["power_spectrum"]["fom_median"])
        results[name] = res

    test = results["test"]
    n_t = test["flow"]["n_maps"]
    sig = float(np.sqrt(0.68 * 0.32 / n_t))
    checks = {
        "flow_fom_gt_ps": test["flow_over_ps_fom_mean"] > 1.0,
        "flow_fom_gt_ps_median": test["flow_over_ps_fom_median"] > 1.0,
        "coverage_68_within_2sigma": abs(test["flow"]["coverage_68"] - 0.68) <= 2 * sig,
        "coverage_binomial_sigma": sig,
    }
    if sim == "lognormal":
        checks["flow_fom_ge_0.9_exact"] = test["flow_over_exact_fom_mean"] >= 0.9
        # accuracy of the P(k) emulator against the exact expected spectrum of lognormal maps
        th = np.asarray(splits["test"][1][:50], np.float64)
        expected = np.asarray(data_gen.power_2d_binned(th, cfg["n"], box, slab))
        rel = ps.mean(th) / expected - 1
        ps_report = {"emulator_max_abs_rel_error_test_theta": float(np.abs(rel).max()),
                     "emulator_rms_rel_error_test_theta": float(np.sqrt((rel**2).mean()))}
    else:
        ps_report = {}
    ps_report.update(
        n_bins=ps.n_bins, hartlap=ps.hartlap, n_fiducial_cov=ps.n_fiducial,
        emulator=ps.fit_report["emulator"],
        emulator_max_abs_rel_dev_at_fiducial=float(
            np.abs(ps.fit_report["fiducial_rel_dev"]).max()),
        emulator_max_abs_dev_over_stderr_at_fiducial=float(
            np.abs(ps.fit_report["fiducial_dev_over_stderr"]).max()),
    )
    keys = ("steps_done", "best_step", "val_nll_per_pixel", "test_nll_per_pixel",
            "exact_test_nll_per_pixel", "gap_nats_per_pixel", "n_params", "reused")
    timings["total_s"] = time.perf_counter() - t_start
    out = {
        "simulator": sim,
        "n": int(cfg["n"]),
        "box": box,
        "slab": slab,
        "data_dir": str(data_dir),
        "run_dir": str(run_dir),
        "n_train_maps": int(len(splits["train"][0])),
        "n_fiducial_cov": int(len(fid_cov)),
        "n_fiducial_eval": int(len(fid_eval)),
        "grid": grid.to_dict(),
        "fom_definition": "1 / area of the 68% HPD region on the grid (Omega_m x sigma_8)",
        "train": {k: train_summary[k] for k in keys if k in train_summary},
        "power_spectrum_likelihood": ps_report,
        "results": results,
        "checks": checks,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    text = json.dumps(out, indent=2, default=float)
    print(text)
    path = args.out or base / f"fom_{run_dir.name}_g{args.grid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
