"""Multi-step jobs shared by the command line, the scripts and the notebooks.

* :func:`train_run`: train a model on a data set directory and summarise it (validation and
  test NLL and, for lognormal data, the exact test NLL and the gap to it);
* :func:`ensure_dataset` / :func:`ensure_run`: reuse a finished data set or run, else
  generate / train it (resuming what an interruption left);
* :func:`load_run_and_data`: a trained run with the data set it is evaluated on.

jax and the models are imported inside the functions.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fieldflow.io import write_json

__all__ = ["train_run", "ensure_dataset", "ensure_run", "load_run_and_data", "check_prior_box"]


def train_run(
    data_dir,
    run_dir,
    model_type: str = "trenf",
    model_kwargs: dict | None = None,
    config=None,
    *,
    resume: bool = False,
    progress: bool = True,
    seed: int = 0,
    max_seconds: float | None = None,
) -> dict:
    """Train a ``model_type`` flow on a data set directory into ``run_dir``.

    Returns (and writes to ``run_dir/summary.json``) the run's summary: parameter count,
    steps, best validation NLL and the test NLL in nats per pixel; for lognormal data also
    the exact test NLL, -<log p(x | theta)> / N^2 of the same maps, and the gap to it.
    ``config`` is a ``TrainConfig`` (default ``TrainConfig(seed=seed)``).
    """
    import jax
    from flax import nnx

    from data_gen.dataset import theta_box
    from data_gen.lognormal import lognormal_log_likelihood
    from fieldflow.data import load_dataset, load_manifest
    from fieldflow.train import TrainConfig, fit, model_for_data, nll_per_pixel

    config = config or TrainConfig(seed=seed)
    manifest = load_manifest(data_dir)
    splits = load_dataset(data_dir, seed=seed)
    train, val, test = splits["train"], splits["val"], splits["test"]
    if len(train[0]) == 0 or len(val[0]) == 0:
        raise ValueError(f"{data_dir} has too few simulations for train/validation splits")
    (om_lo, om_hi), (s8_lo, s8_hi) = theta_box(manifest)
    box = {"cond_low": (om_lo, s8_lo), "cond_high": (om_hi, s8_hi)}  # the data set's prior
    model = model_for_data(model_type, train[0], seed=seed, **{**box, **(model_kwargs or {})})
    result = fit(
        model,
        train,
        val,
        config,
        run_dir=run_dir,
        resume=resume,
        progress=progress,
        max_seconds=max_seconds,
    )
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    summary = {
        "command": "train",
        "run_dir": str(run_dir),
        "data_dir": str(data_dir),
        "model_type": model_type,
        "model_config": model.config,
        "n_params": int(sum(np.size(p) for p in params)),
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
            log_like = lognormal_log_likelihood(
                test[0], test[1], box=manifest["box"], slab=manifest.get("slab")
            )
            exact = -float(np.asarray(log_like).mean()) / np.prod(test[0].shape[1:])
            summary["exact_test_nll_per_pixel"] = float(exact)
            summary["gap_nats_per_pixel"] = summary["test_nll_per_pixel"] - float(exact)
    if jax.process_index() == 0:  # one writer when training across processes
        write_json(Path(run_dir) / "summary.json", summary)
    return summary


def posterior_calibrate_run(
    run_dir, data_dir, config=None, *, out_dir=None, progress: bool = True, seed: int = 0
) -> dict:
    """Fine-tune the flow of ``run_dir`` on its posterior
    (``fieldflow.posterior_training.fine_tune``) with the data set's train / validation
    splits, and write it as a run in ``out_dir`` (default RUN_DIR/posterior_calibrated).
    Returns the fine-tuning report (validation losses before and after, history, wall time)
    with ``run_dir``."""
    from fieldflow.checkpoint import load
    from fieldflow.data import load_dataset
    from fieldflow.posterior_training import PosteriorTrainingConfig, fine_tune, save_run

    config = config or PosteriorTrainingConfig(seed=seed)
    out_dir = Path(out_dir or Path(run_dir) / "posterior_calibrated")
    splits = load_dataset(data_dir, seed=seed)
    model = load(run_dir)
    report = fine_tune(model, splits["train"], splits["val"], config, progress=progress)
    report = {"run_dir": str(out_dir), "trained_from": str(run_dir), **report}
    save_run(model, out_dir, report)
    return report


def _set_complete(directory: Path) -> bool:
    """Whether a data set directory holds its manifest and every shard it announces."""
    import json

    man = directory / "manifest.json"
    if not man.is_file():
        return False
    try:
        cfg = json.loads(man.read_text())
        n_shards = -(-int(cfg["n_sims"]) // int(cfg["shard_size"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((directory / f"shard_{j:05d}.npz").is_file() for j in range(n_shards))


def ensure_dataset(
    data_dir, simulator: str, n_sims: int, *, progress: bool = True, **generate_kwargs
) -> dict:
    """The manifest of a complete data set in ``data_dir``, generating what is missing.

    A directory holding every shard of its manifest (and of its ``fiducial/`` set when the
    manifest asks for one) is reused as it is, whatever its configuration; otherwise
    ``data_gen.generate_dataset(data_dir, simulator, n_sims, **generate_kwargs)`` generates
    it, resuming an interrupted generation (ValueError for another configuration on disk).
    """
    from data_gen.dataset import generate_dataset
    from fieldflow.data import load_manifest

    data_dir = Path(data_dir)
    if _set_complete(data_dir):
        cfg = load_manifest(data_dir)
        if int(cfg.get("n_fiducial", 0)) == 0 or _set_complete(data_dir / "fiducial"):
            return cfg
    return generate_dataset(data_dir, simulator, n_sims, progress=progress, **generate_kwargs)


def ensure_run(
    data_dir,
    run_dir,
    *,
    model_type: str = "trenf",
    model_kwargs: dict | None = None,
    config=None,
    progress: bool = True,
    seed: int = 0,
) -> tuple[dict, float]:
    """``(summary, train_seconds)`` of a finished run in ``run_dir``, training it if needed.

    A run with ``best/`` parameters and a ``summary.json`` is reused (``summary["reused"]``
    is True, 0 seconds); otherwise :func:`train_run` trains it, resuming from the
    checkpoints an interruption left.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if (run_dir / "best").is_dir() and summary_path.is_file():
        import json

        return {**json.loads(summary_path.read_text()), "reused": True}, 0.0
    checkpoints = run_dir / "checkpoints"
    resume = checkpoints.is_dir() and any(checkpoints.iterdir())
    t0 = time.perf_counter()
    summary = train_run(
        data_dir,
        run_dir,
        model_type,
        model_kwargs,
        config,
        resume=resume,
        progress=progress,
        seed=seed,
    )
    return {**summary, "reused": False}, time.perf_counter() - t0


def load_run_and_data(run_dir, data_dir, seed: int = 0) -> tuple[dict, object, dict]:
    """``(manifest, model, splits)`` of a trained run and a data set of the same map size.

    ``splits`` is :func:`fieldflow.data.load_dataset`'s dict; ValueError when the model's
    map size is not the data set's.
    """
    from fieldflow.checkpoint import load
    from fieldflow.data import load_dataset, load_manifest

    cfg = load_manifest(data_dir)
    model = load(run_dir)
    if tuple(model.shape) != (cfg["n"], cfg["n"]):
        raise ValueError(f"the model is for {model.shape} maps, the data set has n = {cfg['n']}")
    check_prior_box(model, cfg)
    return cfg, model, load_dataset(data_dir, seed=seed)


def check_prior_box(model, cfg: dict) -> None:
    """ValueError when the data set's prior box (``data_gen.theta_box``) leaves the range
    a conditional model was trained on: its posteriors could not reach the data's theta."""
    from data_gen.dataset import theta_box
    from fieldflow.inference import model_theta_range

    if int(getattr(model, "cond_dim", 0)) != 2:
        return
    data, trained = theta_box(cfg), model_theta_range(model)
    if any(d[0] < t[0] - 1e-6 or d[1] > t[1] + 1e-6 for d, t in zip(data, trained, strict=True)):
        raise ValueError(
            f"the data set's prior box Omega_m {list(data[0])}, sigma_8 {list(data[1])} leaves "
            f"the model's trained range Omega_m {list(trained[0])}, sigma_8 {list(trained[1])}: "
            "use the data set the model was trained on (or one inside its range)"
        )


def calibration_simulations(
    cfg: dict, splits: dict, thetas=None, num: int = 64, seed: int = 0, cache=None
) -> tuple[list, dict]:
    """Maps never used in training at each calibration theta, ``[(theta, maps (num, N, N))]``,
    and where they come from: the data set's fiducial maps, topped up with fresh simulations
    of its configuration ``cfg`` (``evaluation.held_out_sims``, which reads and fills
    ``cache``). ``thetas`` defaults to the fiducial theta and the four interior points of
    ``evaluation.default_thetas``."""
    from fieldflow.evaluation import default_thetas, held_out_sims

    if not thetas:
        thetas = [t for kind, t in default_thetas(cfg) if kind in ("fiducial", "interior")]
    sims, sources = [], {}
    for theta in thetas:
        maps, source = held_out_sims(cfg, splits, np.asarray(theta), int(num), seed, cache=cache)
        sims.append((tuple(float(v) for v in theta), maps))
        sources[f"{theta[0]:g},{theta[1]:g}"] = source
    return sims, sources


def independent_fiducial_maps(cfg: dict, n: int, seed: int = 0, cache=None) -> np.ndarray:
    """``n`` maps (n, N, N) at the fiducial theta from ``n`` fresh simulations of the data
    set's configuration ``cfg``, one slab of each (the slabs of one simulation are
    correlated, so ``n`` maps are ``n`` independent draws); ``cache`` as in
    ``evaluation.held_out_sims``."""
    import data_gen
    from fieldflow.evaluation import held_out_sims

    per = max(int(cfg.get("maps_per_sim", 1)), 1)
    theta = np.asarray(data_gen.FIDUCIAL_THETA, np.float64)
    maps, _ = held_out_sims(cfg, {}, theta, int(n) * per, seed, cache=cache)
    return maps[::per][: int(n)]
