"""Posterior-calibrated fine-tuning of a trained conditional flow (the second stage of Dai &
Seljak's Multiscale Flow, arXiv:2306.04689).

Maximum likelihood makes q(x | theta) close to p(x | theta) on average over maps, but a
small error that varies with theta can make the posterior q(theta | x) ∝ q(x | theta) p(theta)
far too narrow. Fine-tuning minimises the posterior's own loss, normalised over a
contrastive set: for a batch of (x_i, theta_i) and K other theta of the batch,

    L_post = -(1/B) sum_i [ l_i,i - log sum_{k=0..K} exp l_i,i+k ],   l_i,j = log q(x_i | theta_j),

(indices mod B) — the cross-entropy of picking each map's own theta among K + 1 candidates,
which is minimised by the true posterior restricted to them (a uniform prior over the
batch's theta, drawn from the prior). The loss minimised is

    L = NLL per pixel + weight * L_post,

so the density stays a good model of the maps while its theta-dependence is corrected.
A model that ignores theta scores L_post = log(K + 1); ``information_nats`` reports
log(K + 1) - L_post on the validation maps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

__all__ = ["PosteriorTrainingConfig", "contrastive_posterior_loss", "fine_tune", "save_run"]


@dataclasses.dataclass(frozen=True)
class PosteriorTrainingConfig:
    """Settings of the fine-tuning stage (JSON-serialisable)."""

    steps: int = 500
    batch_size: int = 32
    learning_rate: float = 2e-4
    n_contrast: int = 7
    weight: float = 1.0
    eval_every: int = 50
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "n_contrast", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_contrast >= self.batch_size:
            raise ValueError(
                f"n_contrast ({self.n_contrast}) must be smaller than batch_size "
                f"({self.batch_size}): the contrastive theta are the batch's others"
            )
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ValueError(f"weight must be >= 0, got {self.weight}")


def contrastive_posterior_loss(log_prob: Callable, x, theta, n_contrast: int):
    """(L_post, NLL per pixel) of a batch (module doc); ``log_prob(x (B, N, N), theta (B, 2))
    -> (B,)``."""
    candidates = jnp.stack([jnp.roll(theta, -k, axis=0) for k in range(n_contrast + 1)])
    ll = jax.vmap(lambda t: log_prob(x, t))(candidates)  # (K + 1, B): l_i,i+k
    post = -jnp.mean(ll[0] - jax.scipy.special.logsumexp(ll, axis=0))
    return post, -jnp.mean(ll[0]) / (x.shape[-1] * x.shape[-2])


def _losses_fn(graphdef, rest, n_contrast: int) -> Callable:
    def losses(params, x, theta):
        model = nnx.merge(graphdef, params, rest)
        method = model._log_prob if hasattr(model, "_log_prob") else model.log_prob
        return contrastive_posterior_loss(method, x, theta, n_contrast)

    return losses


def fine_tune(
    model: nnx.Module,
    train: tuple,
    val: tuple,
    config: PosteriorTrainingConfig = PosteriorTrainingConfig(),
    *,
    progress: bool = True,
) -> dict:
    """Fine-tune ``model`` (in place) on L = NLL per pixel + weight * L_post (module doc).

    ``train`` / ``val``: (maps (M, N, N), theta (M, 2)). Every ``eval_every`` steps the
    validation maps (in fixed batches) give L_post and the NLL; the parameters with the
    lowest validation L are kept. A split smaller than ``batch_size`` is used whole as a
    batch. Returns the history, the validation losses before and after and the wall time.
    ValueError for an unconditional model or a split of no more than ``n_contrast`` maps.
    """
    from fieldflow.train import _check_split

    if int(getattr(model, "cond_dim", 0)) < 1:
        raise ValueError("posterior training needs a conditional model")
    shape = tuple(model.shape)
    train_maps, train_theta = _check_split("train", train, shape, model.cond_dim)
    val_maps, val_theta = _check_split("val", val, shape, model.cond_dim)
    b = min(config.batch_size, len(train_maps))  # small data sets: the whole set
    b_val = min(config.batch_size, len(val_maps))
    if min(b, b_val) <= config.n_contrast:
        raise ValueError(
            f"posterior training with n_contrast = {config.n_contrast} needs more than that "
            f"many training and validation maps, got {len(train_maps)} and {len(val_maps)}"
        )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    losses = _losses_fn(graphdef, rest, config.n_contrast)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(config.learning_rate))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, theta):
        def total(p):
            post, nll = losses(p, x, theta)
            return nll + config.weight * post, (post, nll)

        (loss, aux), grads = jax.value_and_grad(total, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    evaluate_batch = jax.jit(losses)
    n_val = len(val_maps) // b_val * b_val

    def evaluate(params) -> dict:
        post, nll = zip(
            *(
                evaluate_batch(params, val_maps[i : i + b_val], val_theta[i : i + b_val])
                for i in range(0, n_val, b_val)
            ),
            strict=True,
        )
        post, nll = float(np.mean(post)), float(np.mean(nll))
        return {
            "val_posterior_loss": post,
            "val_nll_per_pixel": nll,
            "val_loss": nll + config.weight * post,
            "information_nats": math.log(config.n_contrast + 1) - post,
        }

    rng = np.random.default_rng(config.seed)
    before = evaluate(params)
    history = [{"step": 0, **before}]
    best = (before["val_loss"], params)
    t0 = time.perf_counter()
    for s in tqdm(range(1, config.steps + 1), desc="posterior", disable=not progress):
        idx = rng.choice(len(train_maps), b, replace=False)
        params, opt_state, loss, _ = step(params, opt_state, train_maps[idx], train_theta[idx])
        if s % config.eval_every == 0 or s == config.steps:
            if not math.isfinite(float(loss)):
                raise ValueError(f"posterior training diverged at step {s}: lower the rate")
            row = {"step": s, "train_loss": float(loss), **evaluate(params)}
            history.append(row)
            if row["val_loss"] < best[0]:
                best = (row["val_loss"], params)
    nnx.update(model, jax.device_get(best[1]))
    after = min(history, key=lambda r: r["val_loss"])
    return {
        "config": dataclasses.asdict(config),
        "before": before,
        "after": after,
        "history": history,
        "wall_time_s": time.perf_counter() - t0,
    }


def save_run(model: nnx.Module, run_dir, report: dict) -> Path:
    """Write ``model`` as a run directory (``fieldflow.load`` reads it) with ``report`` as
    ``summary.json``."""
    from fieldflow.checkpoint import CheckpointStore, write_model_json
    from fieldflow.io import write_json

    run_dir = Path(run_dir)
    if (run_dir / "best").exists():
        raise ValueError(f"{run_dir} already holds a model: choose a new directory")
    write_model_json(run_dir, model)
    store = CheckpointStore(run_dir)
    step = int(report["after"]["step"])
    store.save_best(step, nnx.state(model, nnx.Param), {"step": step})
    store.close()
    write_json(run_dir / "summary.json", report)
    return run_dir
