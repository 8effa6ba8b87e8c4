"""Maximum-likelihood training of any fieldflow model with optax.

The loss is the mean negative log-likelihood in nats per pixel,

    L = -(1 / (B N^2)) sum_b log p(x_b | theta_b),

and bits per dimension are L / ln 2. Batches are drawn deterministically from
(seed, epoch), and augmentation keys from (seed, step), so a run resumed from a
checkpoint follows exactly the same trajectory as an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from fieldflow import distributed
from fieldflow.checkpoint import CheckpointStore, read_model_json, write_model_json
from fieldflow.validation import check_above, check_maps

__all__ = [
    "TrainConfig",
    "TrainResult",
    "make_optimizer",
    "make_loss_fn",
    "make_train_step",
    "adam_at",
    "learning_rates",
    "random_lattice_symmetry",
    "data_statistics",
    "nll_per_pixel",
    "model_for_data",
    "fit",
]

LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (all JSON-serialisable)."""

    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    final_lr_fraction: float = 0.02
    grad_clip: float = 1.0
    eval_every: int = 100
    patience: int | None = 10
    checkpoint_every: int = 500
    augment: bool = False
    seed: int = 0
    data_parallel: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be None or >= 1, got {self.patience}")


@dataclasses.dataclass
class TrainResult:
    """What ``fit`` returns: the model with its best parameters and the curves."""

    model: nnx.Module
    history: dict[str, list]
    best_val_nll: float
    best_step: int
    steps_done: int
    stopped_early: bool
    diverged: bool
    wall_time_s: float


def _schedule(config: TrainConfig) -> optax.Schedule:
    """The learning rate after a given number of updates: linear warm-up, cosine decay."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=min(config.warmup_steps, max(config.steps - 1, 0)),
        decay_steps=max(config.steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.final_lr_fraction,
    )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam with linear warm-up and cosine decay, after global-norm gradient clipping."""
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.adam(_schedule(config)))


def adam_at(learning_rate) -> optax.GradientTransformation:
    """optax Adam whose every update uses ``learning_rate`` (an array, e.g. the value of
    a schedule at this step): its state and arithmetic are those of ``optax.adam(schedule)``,
    so one compiled update serves every schedule when the rate is passed in."""
    return optax.adam(lambda count: learning_rate)


def learning_rates(schedule: optax.Schedule, steps: int) -> np.ndarray:
    """The schedule's value at updates 0 .. steps - 1 (float32), computed once by a jitted
    schedule: the learning rates a jitted ``optax.adam(schedule)`` would use, to the bit."""
    return np.asarray(jax.jit(schedule)(jnp.arange(steps, dtype=jnp.int32)), np.float32)


def make_loss_fn(graphdef: nnx.GraphDef, rest: nnx.State) -> Callable:
    """loss(params, x, cond) = mean NLL per pixel (nats) of the split model."""

    def loss(params, x, cond):
        model = nnx.merge(graphdef, params, rest)
        n_pix = x.shape[-1] * x.shape[-2]
        return -jnp.mean(model.log_prob(x, cond)) / n_pix

    return loss


def random_lattice_symmetry(key: jax.Array, x: jnp.ndarray) -> jnp.ndarray:
    """Apply to each map a random periodic shift and one of the 8 lattice symmetries."""

    def one(key, m):
        k_shift, k_rot, k_flip = jax.random.split(key, 3)
        n = m.shape[-1]
        shift = jax.random.randint(k_shift, (2,), 0, n)
        m = jnp.roll(m, shift, axis=(0, 1))
        m = jax.lax.switch(
            jax.random.randint(k_rot, (), 0, 4),
            [lambda a, k=k: jnp.rot90(a, k) for k in range(4)],
            m,
        )
        return jnp.where(jax.random.bernoulli(k_flip), m[:, ::-1], m)

    return jax.vmap(one)(jax.random.split(key, x.shape[0]), x)


def _train_step_fn(graphdef, augment, rest, grad_clip, params, opt_state, x, cond, key, rate):
    if augment:
        x = random_lattice_symmetry(key, x)
    loss, grads = jax.value_and_grad(make_loss_fn(graphdef, rest))(params, x, cond)
    optimizer = optax.chain(optax.clip_by_global_norm(grad_clip), adam_at(rate))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _nll_sum_fn(graphdef, rest, params, x, cond, weight):
    model = nnx.merge(graphdef, params, rest)
    return -jnp.sum(weight * model.log_prob(x, cond))


# compiled once per model structure and batch shape for the whole process, whatever the
# optimiser's settings: the learning rate and the clipping are arguments
_train_step = jax.jit(_train_step_fn, static_argnums=(0, 1))
_nll_sum = jax.jit(_nll_sum_fn, static_argnums=0)


def make_train_step(graphdef: nnx.GraphDef, rest: nnx.State, config: TrainConfig) -> Callable:
    """Jitted step(params, opt_state, x, cond, key, learning_rate) -> (params, opt_state,
    loss): one update of ``make_optimizer(config)`` (whose ``init`` gives ``opt_state``),
    at the learning rate given (the schedule's value at this step, see
    :func:`learning_rates`). Every step of the process with the same model structure and
    batch shape shares one compilation."""
    return functools.partial(
        _train_step, graphdef, bool(config.augment), rest, np.float32(config.grad_clip)
    )


def make_eval_fn(graphdef: nnx.GraphDef, rest: nnx.State) -> Callable:
    """Jitted sum of NLL (nats) over a weighted, fixed-size chunk of maps (one compilation
    per model structure and chunk shape, shared by every call of the process)."""
    return functools.partial(_nll_sum, graphdef, rest)


def data_statistics(maps: np.ndarray) -> tuple[float, float]:
    """(mean, std) of all pixels, for a model's fixed standardisation."""
    maps = np.asarray(maps, dtype=np.float64)
    return float(maps.mean()), float(maps.std())


def nll_per_pixel(model: nnx.Module, maps, theta=None, batch_size: int = 64) -> float:
    """Mean negative log-likelihood of ``maps`` in nats per pixel, in jitted chunks."""
    maps, theta = _check_split("maps", (maps, theta), tuple(model.shape), int(model.cond_dim))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    chunk = min(batch_size, maps.shape[0])

    def put(a, idx=None):
        return jnp.asarray(a if idx is None else a[idx])

    total = _evaluate(make_eval_fn(graphdef, rest), params, maps, theta, chunk, put)
    return total / (maps.shape[1] * maps.shape[2])


def model_for_data(model_type: str, maps: np.ndarray, seed: int = 0, **kwargs) -> nnx.Module:
    """A fresh model sized for ``maps`` (M, N, N), standardised by their mean and std
    (of log(1 + c + maps) when the model takes a ``log_offset`` c)."""
    from fieldflow.models import build_model

    log_offset = kwargs.get("log_offset")
    if log_offset is not None:
        check_above(maps, -1.0 - log_offset, "maps", f"log_offset {log_offset:g}: use a larger one")
        maps = np.log(np.asarray(maps, np.float64) + (1.0 + log_offset))
    shift, scale = data_statistics(maps)
    config = {"shape": tuple(maps.shape[1:]), "data_shift": shift, "data_scale": scale, **kwargs}
    return build_model(model_type, config, nnx.Rngs(seed))


def _check_split(name: str, data, shape, cond_dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(maps, theta) of one split as host float32 arrays, shapes and values checked."""
    if data is None or len(data) != 2:
        raise ValueError(f"{name} must be a pair (maps, theta)")
    maps, theta = data
    maps, _ = check_maps(np.asarray(maps), shape[0], f"{name} maps", allow_single=False)
    if not cond_dim:
        return maps, None
    theta = np.asarray(theta, dtype=np.float32)
    if theta.shape != (maps.shape[0], cond_dim):
        raise ValueError(
            f"{name} theta must have shape ({maps.shape[0]}, {cond_dim}), got {theta.shape}"
        )
    return maps, theta


def _batch_indices(n: int, batch: int, seed: int, step: int) -> np.ndarray:
    per_epoch = max(n // batch, 1)
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    if n < batch:
        perm = np.resize(perm, batch)
    return perm[i * batch : (i + 1) * batch]


def _evaluate(eval_fn, params, maps, theta, chunk: int, put) -> float:
    """Mean NLL per map (nats) over a whole split, in fixed-size padded chunks."""
    total = 0.0
    for start in range(0, maps.shape[0], chunk):
        idx = np.arange(start, start + chunk)
        weight = (idx < maps.shape[0]).astype(np.float32)
        idx = np.minimum(idx, maps.shape[0] - 1)
        c = None if theta is None else put(theta, idx)
        total += float(eval_fn(params, put(maps, idx), c, put(weight)))
    return total / maps.shape[0]


def _write_history(run_dir: Path, history: dict) -> None:
    tmp = run_dir / "history.json.tmp"
    tmp.write_text(json.dumps(history, indent=1))
    tmp.replace(run_dir / "history.json")
    rows = history["eval"]
    if rows:
        tmp = run_dir / "history.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(run_dir / "history.csv")


def fit(
    model: nnx.Module,
    train: tuple,
    val: tuple,
    config: TrainConfig = TrainConfig(),
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_at_step: int | None = None,
    max_seconds: float | None = None,
) -> TrainResult:
    """Train ``model`` by maximum likelihood; returns it with its best validation parameters.

    Args:
        model: a fieldflow model (TRENF, RealNVP); its parameters are updated in place.
        train, val: (maps (M, N, N), theta (M, cond_dim)) arrays.
        config: optimisation settings.
        run_dir: where checkpoints, ``history.json``/``.csv`` and ``loss.png`` go
            (nothing is written when None).
        resume: continue from the latest checkpoint in ``run_dir``.
        progress: show a tqdm bar with the running loss.
        stop_at_step: leave the loop after this step (with a checkpoint), as an
            interruption would; ``resume=True`` continues the same trajectory.
        max_seconds: likewise leave the loop once this much wall time has passed
            (for training-time comparisons; the step reached depends on the machine).
    """
    import time

    shape, cond_dim = tuple(model.shape), int(model.cond_dim)
    train_maps, train_theta = _check_split("train", train, shape, cond_dim)
    val_maps, val_theta = _check_split("val", val, shape, cond_dim)
    n_pix = shape[0] * shape[1]

    # one mesh over the devices of every process (fieldflow.distributed); each process
    # reads only its own rows of a batch, and process 0 alone writes the plain files
    batch_sharding, replicated = distributed.batch_shardings(
        config.batch_size, config.data_parallel
    )
    primary = distributed.is_primary()

    def put(a, idx=None):
        return distributed.put_rows(a, idx, batch_sharding)

    optimizer = make_optimizer(config)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = optimizer.init(params)
    if replicated is not None:
        params, opt_state, rest = jax.device_put((params, opt_state, rest), replicated)
    step_fn = make_train_step(graphdef, rest, config)
    rates = learning_rates(_schedule(config), config.steps)

    eval_fn = make_eval_fn(graphdef, rest)

    history: dict[str, Any] = {"train": [], "eval": [], "config": dataclasses.asdict(config)}
    best = {"val_nll": math.inf, "step": 0, "bad_evals": 0}
    best_params = params
    running = None
    start_step = 0
    store = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        if resume:
            desc = read_model_json(run_dir)
            if desc["model_type"] != model.model_type or desc["config"] != model.config:
                raise ValueError(
                    f"cannot resume: {run_dir} holds a {desc['model_type']} with config "
                    f"{desc['config']}, not this {model.model_type} with {model.config}"
                )
        elif (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
            raise ValueError(f"{run_dir} already holds checkpoints: pass resume=True or a new dir")
        if primary:
            write_model_json(run_dir, model)
        store = CheckpointStore(run_dir)
        if resume:
            params, opt_state, meta = store.restore(params, opt_state)
            if meta.get("train_config") != dataclasses.asdict(config):
                raise ValueError(
                    f"cannot resume: {run_dir} was trained with {meta.get('train_config')}, "
                    f"not {dataclasses.asdict(config)}"
                )
            start_step = int(meta["step"])
            history, best, running = meta["history"], meta["best"], meta["running"]
            best_params = store.restore_best(params) if best["step"] else params
            if replicated is not None:
                params, opt_state, best_params = jax.device_put(
                    (params, opt_state, best_params), replicated
                )

    def meta(step: int) -> dict:
        return {
            "step": step,
            "history": history,
            "best": best,
            "running": running,
            "train_config": dataclasses.asdict(config),
        }

    base_key = jax.random.key(config.seed)
    last_good = (params, opt_state)
    stopped_early = diverged = False
    t0 = time.perf_counter()
    bar = tqdm(
        total=config.steps,
        initial=start_step,
        disable=not (progress and primary),
        desc="train",
        dynamic_ncols=True,
    )
    step = start_step
    while step < config.steps:
        idx = _batch_indices(train_maps.shape[0], config.batch_size, config.seed, step)
        cond = None if train_theta is None else put(train_theta, idx)
        key = jax.random.fold_in(base_key, step)
        x = put(train_maps, idx)
        params, opt_state, loss = step_fn(params, opt_state, x, cond, key, rates[step])
        step += 1
        if step % 10 == 0 or step == config.steps or step % config.eval_every == 0:
            loss = float(loss)
            if not math.isfinite(loss):
                diverged = True
                params, opt_state = last_good
                warnings.warn(
                    f"training diverged at step {step} (loss {loss}); stopped and kept the "
                    "last good parameters — lower the learning rate",
                    stacklevel=2,
                )
                break
            last_good = (params, opt_state)
            running = loss if running is None else 0.9 * running + 0.1 * loss
            history["train"].append({"step": step, "nll_per_pixel": loss})
            bar.set_postfix(loss=f"{running:.4f}")
        bar.update(1)
        out_of_time = max_seconds is not None and time.perf_counter() - t0 >= max_seconds
        if step % config.eval_every == 0 or step == config.steps or out_of_time:
            val_nll = _evaluate(eval_fn, params, val_maps, val_theta, config.batch_size, put)
            if not math.isfinite(val_nll):
                diverged = True
                params, opt_state = last_good
                warnings.warn(f"validation NLL is {val_nll} at step {step}; stopped", stacklevel=2)
                break
            per_pix = val_nll / n_pix
            history["eval"].append(
                {
                    "step": step,
                    "train_nll_per_pixel": running,
                    "val_nll_per_pixel": per_pix,
                    "val_bits_per_dim": per_pix / LN2,
                }
            )
            if val_nll < best["val_nll"] - 1e-6 * abs(val_nll):
                best.update(val_nll=val_nll, step=step, bad_evals=0)
                best_params = params
                if store is not None:
                    store.save_best(step, params, {"step": step, "val_nll": val_nll})
            else:
                best["bad_evals"] += 1
            # an evaluation can come before the first logged loss (max_seconds)
            bar.set_postfix(
                loss="n/a" if running is None else f"{running:.4f}", val=f"{per_pix:.4f}"
            )
            if config.patience is not None and best["bad_evals"] >= config.patience:
                stopped_early = True
        interrupted = (stop_at_step is not None and step >= stop_at_step) or out_of_time
        if store is not None and (
            step % config.checkpoint_every == 0
            or step == config.steps
            or stopped_early
            or interrupted
        ):
            store.save(step, params, opt_state, meta(step))
            if primary:
                _write_history(run_dir, history)
        if stopped_early or interrupted:
            break
    bar.close()
    wall = time.perf_counter() - t0
    if store is not None:
        if diverged:
            history["diverged_at"] = step
            # the last good parameters, so that a run that diverged before its first
            # evaluation still loads (and can be resumed with a lower learning rate)
            store.save(step, params, opt_state, meta(step))
        store.close()
        if primary:
            _write_history(run_dir, history)
            _plot_history(run_dir, history)

    if best["step"] == 0:  # no evaluation happened: keep the current parameters
        best_params = params
    nnx.update(model, jax.device_get(best_params))
    return TrainResult(
        model=model,
        history=history,
        best_val_nll=best["val_nll"] / n_pix,
        best_step=int(best["step"]),
        steps_done=step,
        stopped_early=stopped_early,
        diverged=diverged,
        wall_time_s=wall,
    )


def _plot_history(run_dir: Path, history: dict) -> None:
    from fieldflow.plots import plot_loss_curves

    fig = plot_loss_curves(history)
    fig.savefig(run_dir / "loss.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
