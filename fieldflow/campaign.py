"""End-to-end benchmark pipelines: data set -> trained TRENF -> posteriors, in one call.

* :func:`fom_benchmark`: generate (or resume, or reuse) a data set, train (or reuse) a TRENF
  and compare its posteriors with the power spectrum's and, on lognormal maps, the exact
  likelihood's (:func:`fieldflow.inference.fom_comparison`: FoM, coverage, calibrated
  variants);
* :func:`run_campaign`: the paper-size N-body campaign (``PRESETS["gpu"]``: 128^2 maps of a
  512 h^-1 Mpc box, 256^3 particles, 1024 + 128 simulations, 3000 training steps, sized for
  one GPU in about 10 minutes; ``PRESETS["tiny"]`` the same pipeline on CPU): the FoM
  benchmark, ``fieldflow calibrate`` and ``fieldflow evaluate``, every stage reusing what an
  interrupted campaign left in its work directory.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

__all__ = ["FOM_DEFAULTS", "PRESETS", "fom_benchmark", "run_campaign"]

FOM_DEFAULTS = {
    "lognormal": {"n_sims": 2048, "n_fiducial": 256},
    "nbody": {"n_sims": 512, "n_fiducial": 64},  # x 4 slabs: 2048 and 256 maps
}
TRAIN_KEYS = ("steps_done", "best_step", "val_nll_per_pixel", "test_nll_per_pixel")
TRAIN_KEYS += ("exact_test_nll_per_pixel", "gap_nats_per_pixel", "n_params", "reused")

PRESETS = {
    "gpu": dict(n=128, box=512.0, n_mesh=256, pm_steps=10, n_slabs=4, n_sims=1024,
                n_fiducial=128, steps=3000, lr=2e-3, batch_size=32, layers=5, hidden=[128, 128],
                n_test=200, n_fid_eval=64, grid=50, calibrate=128, eval_num=512,
                coverage_maps=200),
    "tiny": dict(n=16, box=64.0, n_mesh=16, pm_steps=5, n_slabs=4, n_sims=32, n_fiducial=8,
                 steps=100, lr=1e-2, batch_size=16, layers=2, hidden=[16], n_test=8, n_fid_eval=8,
                 grid=10, calibrate=8, eval_num=32, coverage_maps=8),
}  # fmt: skip


def fom_benchmark(
    simulator: str = "lognormal",
    *,
    workdir=Path("out/bench_fom"),
    data=None,
    run=None,
    n_sims: int | None = None,
    n_fiducial: int | None = None,
    n: int = 32,
    box: float = 128.0,
    n_mesh: int | None = None,
    pm_steps: int = 10,
    n_slabs: int = 4,
    steps: int = 3000,
    batch_size: int = 32,
    lr: float = 2e-3,
    layers: int = 5,
    hidden=(128, 128),
    log_offset: float | None = None,
    n_test: int = 100,
    n_fid_eval: int = 64,
    grid: int = 50,
    chunk: int = 4096,
    seed: int = 0,
    calibrate: int = 0,
    independent_fiducial: bool = False,
    sims_cache=None,
    progress: bool = True,
) -> dict:
    """Data set ``data`` (default WORKDIR/<simulator>_n<N>/data, made if incomplete), run
    ``run`` (default beside it, trained if absent), then ``fom_comparison`` on ``n_test`` test
    maps and ``n_fid_eval`` fiducial maps over a ``grid`` x ``grid`` prior grid; with
    ``calibrate`` > 0 also the curvature-adjusted flow and P(k) from that many held-out maps
    at each of 5 theta. With ``independent_fiducial`` the fiducial maps evaluated are
    ``n_fid_eval`` fresh simulations, one map each (independent draws; the data set's
    fiducial maps then all go to the covariances) instead of held-out slabs of the data set's
    fiducial simulations; ``sims_cache`` keeps fresh simulations for the next run. Returns
    the JSON-ready summary (timings included); a likelihood that cannot be calibrated is a
    ValueError."""
    from fieldflow import inference
    from fieldflow import workflows as wf
    from fieldflow.sims_cache import open_cache
    from fieldflow.train import TrainConfig

    t_start = time.perf_counter()
    base = Path(workdir) / f"{simulator}_n{n}"
    data_dir = Path(data) if data else base / "data"
    d = FOM_DEFAULTS.get(simulator, FOM_DEFAULTS["lognormal"])
    kw = dict(
        n=n, box=box, seed=seed, n_fiducial=d["n_fiducial"] if n_fiducial is None else n_fiducial
    )
    if simulator == "nbody":
        kw.update(n_mesh=n_mesh, n_steps=pm_steps, n_slabs=n_slabs)
    t0 = time.perf_counter()
    wf.ensure_dataset(data_dir, simulator, n_sims or d["n_sims"], progress=progress, **kw)
    t_data = time.perf_counter() - t0
    tag = "" if log_offset is None else f"_lo{log_offset:g}"
    run_dir = Path(run) if run else base / f"run_s{steps}_l{layers}{tag}"
    model_kwargs = {"n_layers": layers, "hidden": tuple(hidden)}
    if log_offset is not None:
        model_kwargs["log_offset"] = float(log_offset)
    config = TrainConfig(
        steps=steps, batch_size=batch_size, learning_rate=lr, patience=None,
        warmup_steps=min(100, steps // 10), eval_every=max(steps // 20, 1),
        checkpoint_every=max(steps // 4, 1), seed=seed,
    )  # fmt: skip
    train_summary, t_train = wf.ensure_run(
        data_dir, run_dir, model_kwargs=model_kwargs, config=config, progress=progress, seed=seed,
    )  # fmt: skip
    cfg, model, splits = wf.load_run_and_data(run_dir, data_dir, seed=seed)
    cache = open_cache(sims_cache, cfg)
    sims = fid_eval = None
    if calibrate:
        sims, _ = wf.calibration_simulations(cfg, splits, None, calibrate, seed + 1, cache)
    if independent_fiducial:
        fid_eval = wf.independent_fiducial_maps(cfg, n_fid_eval, seed + 3, cache)
    res = inference.fom_comparison(
        model, splits, cfg, inference.theta_grid(grid, grid), n_test=n_test,
        n_fid_eval=n_fid_eval, chunk=chunk, calibration_sims=sims, fiducial_eval_maps=fid_eval,
    )  # fmt: skip
    timings = {"data_s": t_data, "train_s": t_train, **res.pop("timings_s")}
    timings["total_s"] = time.perf_counter() - t_start
    head = ("n_train_maps", "n_fiducial_cov", "n_fiducial_eval", "grid", "fom_definition")
    return {
        **{k: cfg.get(k) for k in ("simulator", "n", "box", "slab")},
        **{"data_dir": str(data_dir), "run_dir": str(run_dir)},
        **{k: res.pop(k) for k in head},
        "train": {k: train_summary[k] for k in TRAIN_KEYS if k in train_summary},
        **res,  # power_spectrum_likelihood, results, checks
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }


def _stage(command: str, argv: list) -> tuple[dict, float]:
    """(summary, seconds) of ``fieldflow COMMAND ARGV``; a user-level failure (ValueError, e.g.
    a likelihood not concave enough to calibrate after a short training) is recorded as
    ``{"error": ...}`` so that the other stages still run."""
    from fieldflow.commands import run_command

    t0 = time.perf_counter()
    try:
        summary = run_command(command, [str(a) for a in argv])
    except ValueError as err:
        print(f"{command} failed: {err}", file=sys.stderr)
        summary = {"error": str(err)}
    return summary, time.perf_counter() - t0


def _pick(summary: dict, keys) -> dict:
    return {k: summary[k] for k in keys if k in summary}


def run_campaign(
    settings: dict, workdir, *, preset: str = "custom", seed: int = 0, progress: bool = True
) -> dict:
    """The N-body campaign with ``settings`` (a ``PRESETS`` entry, possibly changed) in
    ``workdir``: ``fom.json`` (FoM and coverage; retried without calibration if the flow is
    nowhere concave enough to calibrate), ``calibration/``, ``evaluate/`` (figures) and
    ``campaign.json`` (settings, device, wall time of every stage, headline numbers)."""
    import jax

    from fieldflow.io import write_json

    s, workdir = dict(settings), Path(workdir)
    t_start, timings = time.perf_counter(), {}
    fom_keys = ("n", "box", "n_mesh", "pm_steps", "n_slabs", "n_sims", "n_fiducial", "steps")
    fom_keys += ("batch_size", "lr", "layers", "hidden", "n_test", "n_fid_eval", "grid")
    fom_kw = {k: s[k] for k in fom_keys}
    fom_kw.update(workdir=workdir, seed=seed, progress=progress, calibrate=s["calibrate"])
    try:
        fom = fom_benchmark("nbody", **fom_kw)
    except ValueError as err:
        if not s["calibrate"]:
            raise
        print(f"FoM with calibration failed ({err}); again without", file=sys.stderr)
        fom = {
            **fom_benchmark("nbody", **{**fom_kw, "calibrate": 0}),
            "calibration_error": str(err),
        }
    write_json(workdir / "fom.json", fom)
    timings["data_train_fom_s"] = time.perf_counter() - t_start
    run_dir, data_dir = fom["run_dir"], fom["data_dir"]
    quiet = [] if progress else ["--no-progress"]
    calibration, timings["calibrate_s"] = _stage(
        "calibrate",
        [run_dir, data_dir, "--num", s["calibrate"], "--out", workdir / "calibration"]
        + ["--seed", seed + 1, *quiet],
    )
    evaluation, timings["evaluate_s"] = _stage(
        "evaluate",
        [run_dir, data_dir, workdir / "evaluate", "--num", s["eval_num"], "--grid", s["grid"]]
        + ["--coverage-maps", s["coverage_maps"], "--seed", seed, *quiet],
    )
    timings["total_s"] = time.perf_counter() - t_start
    out = {
        "preset": preset,
        "settings": s,
        "device": str(jax.devices()[0]),
        "data_dir": data_dir,
        "run_dir": run_dir,
        "train": fom["train"],
        "fom": {"file": str(workdir / "fom.json"), **_pick(fom, ("results", "calibration_error"))},
        "calibration": _pick(calibration, ("calibration_file", "score_tests", "error")),
        "evaluate": {
            "dir": str(workdir / "evaluate"),
            **_pick(evaluation, ("figures", "posterior", "calibration", "error")),
        },
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    write_json(workdir / "campaign.json", out)
    return out
