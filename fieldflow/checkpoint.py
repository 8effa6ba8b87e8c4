"""Checkpoints with orbax: a run directory holds the model's type and configuration
(``model.json``), and orbax step directories with the parameters, the optimiser state
and the training bookkeeping.

    run/
      model.json           {"model_type": ..., "config": {...}, "fieldflow_version": ...}
      checkpoints/<step>/  orbax items: params, opt_state, meta (JSON bookkeeping)
      best/<step>/         orbax items: params with the best validation loss, meta

``load(run)`` rebuilds a model ready for ``log_prob`` and ``sample`` without any
training code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from fieldflow.models import build_model

__all__ = ["write_model_json", "read_model_json", "CheckpointStore", "load"]

MODEL_JSON = "model.json"


def write_model_json(run_dir: str | os.PathLike, model: nnx.Module) -> None:
    """Write the model description atomically (temporary file, then rename)."""
    from fieldflow import __version__

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "model_type": model.model_type,
        "config": model.config,
        "fieldflow_version": __version__,
    }
    tmp = run_dir / (MODEL_JSON + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(run_dir / MODEL_JSON)


def read_model_json(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / MODEL_JSON
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a fieldflow run directory: {MODEL_JSON} is missing")
    try:
        payload = json.loads(path.read_text())
        return {"model_type": payload["model_type"], "config": dict(payload["config"])}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is corrupt: {err}") from None


def _pure(state: nnx.State) -> dict:
    return nnx.to_pure_dict(state)


class CheckpointStore:
    """Orbax managers for the latest training states and the best parameters of a run."""

    def __init__(self, run_dir: str | os.PathLike, max_to_keep: int = 2):
        self.run_dir = Path(run_dir).absolute()
        opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.latest = ocp.CheckpointManager(self.run_dir / "checkpoints", options=opts)
        self.best = ocp.CheckpointManager(
            self.run_dir / "best", options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        )

    def save(self, step: int, params: nnx.State, opt_state, meta: dict) -> None:
        self.latest.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(_pure(params)),
                opt_state=ocp.args.StandardSave(opt_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self.latest.wait_until_finished()

    def save_best(self, step: int, params: nnx.State, meta: dict) -> None:
        self.best.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(_pure(params)), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self.best.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, abstract_params: nnx.State, abstract_opt_state) -> tuple:
        """(params, opt_state, meta) of the latest training checkpoint."""
        step = self.latest.latest_step()
        if step is None:
            raise ValueError(f"no training checkpoint in {self.run_dir / 'checkpoints'}")
        restored = _restore(
            self.latest,
            step,
            ocp.args.Composite(
                params=ocp.args.StandardRestore(_pure(abstract_params)),
                opt_state=ocp.args.StandardRestore(abstract_opt_state),
                meta=ocp.args.JsonRestore(),
            ),
        )
        params = abstract_params
        nnx.replace_by_pure_dict(params, restored["params"])
        return params, restored["opt_state"], dict(restored["meta"])

    def restore_best(self, abstract_params: nnx.State) -> nnx.State:
        """Parameters of the best validation checkpoint."""
        step = self.best.latest_step()
        if step is None:
            raise ValueError(f"no best-parameter checkpoint in {self.run_dir / 'best'}")
        args = ocp.args.Composite(params=ocp.args.StandardRestore(_pure(abstract_params)))
        restored = _restore(self.best, step, args)
        params = jax.tree.map(lambda a: a, abstract_params)
        nnx.replace_by_pure_dict(params, restored["params"])
        return params

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _uncommitted(tree):
    """``tree`` with its arrays on one device made uncommitted, like the arrays of a model
    built in this process: orbax restores them committed to their device, and a jitted
    function called with committed parameters and uncommitted other arguments (an
    optimiser state built here, a batch) would compile twice, its outputs being committed.
    Arrays over several devices or processes are left as they are."""
    import numpy as np

    def one(a):
        if isinstance(a, jax.Array) and a.is_fully_addressable and len(a.devices()) == 1:
            return jax.device_put(np.asarray(a))
        return a

    return jax.tree.map(one, tree)


def _restore(manager: ocp.CheckpointManager, step: int, args):
    try:
        restored = manager.restore(step, args=args)
    except Exception as err:  # orbax raises many types for truncated or mismatched files
        raise ValueError(
            f"checkpoint {manager.directory}/{step} is truncated, corrupt or from another "
            f"model configuration: {type(err).__name__}: {str(err)[:300]}"
        ) from None
    if jax.process_count() > 1:
        return restored
    return {k: v if k == "meta" else _uncommitted(v) for k, v in restored.items()}


def _model_to_restore(desc: dict) -> nnx.Module:
    """The model of ``desc`` to restore parameters into: its abstract structure (no
    parameter initialised, nothing to compute or compile) where its construction can be
    traced, else (a model that draws its structure from concrete random numbers) built."""
    try:
        return nnx.eval_shape(lambda: build_model(desc["model_type"], desc["config"]))
    except jax.errors.JAXTypeError:
        return build_model(desc["model_type"], desc["config"])


def load(path: str | os.PathLike, which: str = "best") -> nnx.Module:
    """A trained model from a run directory, ready for ``log_prob`` and ``sample``.

    ``which='best'`` takes the parameters with the lowest validation loss (falling
    back to the latest checkpoint); ``'latest'`` the last training checkpoint.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    run_dir = Path(path).absolute()
    desc = read_model_json(run_dir)
    graphdef, params, rest = nnx.split(_model_to_restore(desc), nnx.Param, ...)
    for sub in ("best", "checkpoints") if which == "best" else ("checkpoints",):
        if not (run_dir / sub).is_dir():
            continue
        manager = ocp.CheckpointManager(run_dir / sub)
        step = manager.latest_step()
        if step is not None:
            args = ocp.args.Composite(params=ocp.args.StandardRestore(_pure(params)))
            restored = _restore(manager, step, args)
            manager.close()
            nnx.replace_by_pure_dict(params, restored["params"])
            return nnx.merge(graphdef, params, rest)
        manager.close()
    raise ValueError(f"no checkpoint found in {run_dir} (looked for best/ and checkpoints/)")
