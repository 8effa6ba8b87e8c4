"""Training loop, checkpoints, resume and data parallelism, on tiny maps."""

import contextlib
import json
import logging
import os
import shutil
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from conftest import rbg_rngs
from flax import nnx

import fieldflow
from fieldflow import TRENF
from fieldflow.checkpoint import CheckpointStore, load
from fieldflow.train import TrainConfig, fit, nll_per_pixel, random_lattice_symmetry

# one worker runs this module: its module fixtures are built once
pytestmark = pytest.mark.xdist_group("train")

N = 8
# the names under which jax.log_compiles reports the shared training step and NLL sum
STEP, NLL = "jit(_train_step_fn)", "jit(_nll_sum_fn)"


def toy_data(m=48, seed=0):
    """Maps whose amplitude grows with sigma_8, so the condition matters."""
    rng = np.random.default_rng(seed)
    theta = np.stack([rng.uniform(0.2, 0.5, m), rng.uniform(0.5, 1.1, m)], 1).astype(np.float32)
    maps = (theta[:, 1, None, None] * rng.normal(size=(m, N, N)) + 0.5).astype(np.float32)
    return maps, theta


def small_model(seed=0, **kw):
    kw = {"data_shift": 0.5, "data_scale": 0.8, **kw}
    return TRENF((N, N), n_layers=2, hidden=(16,), n_t_knots=4, rngs=rbg_rngs(seed), **kw)


CFG = TrainConfig(
    steps=30,
    batch_size=8,
    eval_every=10,
    checkpoint_every=10,
    learning_rate=1e-2,
    warmup_steps=5,
    patience=None,
)


def _params(model) -> list[np.ndarray]:
    return [np.asarray(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param))]


def splits():
    maps, theta = toy_data()
    return (maps[:40], theta[:40]), (maps[40:], theta[40:])


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def logged_compilations():
    """Yield the list that collects the messages of the XLA compilations in the block."""
    log = _Messages()
    logger = logging.getLogger("jax._src.dispatch")
    logger.addHandler(log)
    jax.config.update("jax_log_compiles", True)
    compiled = []
    try:
        yield compiled
    finally:
        jax.config.update("jax_log_compiles", False)
        logger.removeHandler(log)
        compiled += [m for m in log.messages if "compilation of" in m]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 30-step run, shared (read-only) by the tests below; the XLA
    compilations during ``fit`` (the first of this model in the process: later fits reuse
    its compiled step and evaluation, whatever their optimiser settings) are logged."""
    train, val = splits()
    run_dir = tmp_path_factory.mktemp("full")
    with logged_compilations() as compiled:
        result = fit(small_model(), train, val, CFG, run_dir=run_dir, progress=False)
    before = nll_per_pixel(small_model(), *val)  # through fit's compiled evaluation
    return SimpleNamespace(result=result, run_dir=run_dir, before=before, compiled=compiled)


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """The same run stopped after step 20 (as an interruption would); tests copy it before
    resuming."""
    train, val = splits()
    run_dir = tmp_path_factory.mktemp("part")
    result = fit(small_model(), train, val, CFG, run_dir=run_dir, progress=False, stop_at_step=20)
    return SimpleNamespace(result=result, run_dir=run_dir)


def test_fit_lowers_validation_nll_and_writes_run(full_run):
    maps, theta = toy_data()
    result, run_dir, model = full_run.result, full_run.run_dir, full_run.result.model
    assert result.best_val_nll < full_run.before - 0.01
    assert result.steps_done == 30 and not result.diverged
    for name in ("model.json", "history.json", "history.csv", "loss.png"):
        assert (run_dir / name).is_file(), name
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["step"] for r in history["eval"]] == [10, 20, 30]
    assert np.isclose(
        history["eval"][0]["val_bits_per_dim"], history["eval"][0]["val_nll_per_pixel"] / np.log(2)
    )
    # the returned model holds the best parameters, and load() gives the same model back
    # (the validation NLL through fit's own compiled evaluation)
    loaded = fieldflow.load(run_dir)
    for a, b in zip(_params(loaded), _params(model), strict=True):
        np.testing.assert_array_equal(a, b)
    val_nll = nll_per_pixel(model, maps[40:], theta[40:])
    assert np.isclose(nll_per_pixel(loaded, maps[40:], theta[40:]), val_nll, rtol=1e-6)
    assert np.isclose(val_nll, result.best_val_nll, rtol=1e-5)


def test_resume_reaches_the_same_result_as_an_uninterrupted_run(
    full_run, interrupted_run, tmp_path
):
    train, val = splits()
    full = full_run.result
    assert interrupted_run.result.steps_done == 20
    part_dir = tmp_path / "part"
    shutil.copytree(interrupted_run.run_dir, part_dir)
    with logged_compilations() as compiled:  # the restored state: the same compiled step
        resumed = fit(small_model(), train, val, CFG, run_dir=part_dir, resume=True, progress=False)
    assert not any(STEP in m or NLL in m for m in compiled), compiled
    assert resumed.steps_done == 30
    assert resumed.history["eval"] == full.history["eval"]
    for a, b in zip(
        jax.tree.leaves(nnx.state(full.model, nnx.Param)),
        jax.tree.leaves(nnx.state(resumed.model, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_resume_refuses_another_configuration_and_fresh_run_refuses_old_dir(interrupted_run):
    train, val = splits()
    run_dir = interrupted_run.run_dir
    with pytest.raises(ValueError, match="cannot resume"):
        fit(
            small_model(n_psi_bins=4),
            train,
            val,
            CFG,
            run_dir=run_dir,
            resume=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="already holds checkpoints"):
        fit(small_model(), train, val, CFG, run_dir=run_dir, progress=False)


def test_load_refuses_truncated_or_foreign_directories(full_run, tmp_path):
    with pytest.raises(ValueError, match="not a fieldflow run directory"):
        load(tmp_path)
    run_dir = tmp_path / "run"
    shutil.copytree(full_run.run_dir, run_dir)
    # truncate: remove the array data of every checkpoint
    for root, _, files in os.walk(run_dir):
        for f in files:
            if root != str(run_dir) and not f.endswith(".json"):
                os.remove(os.path.join(root, f))
    with pytest.raises(ValueError, match="truncated, corrupt"):
        load(run_dir)
    (run_dir / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load(run_dir)


def test_train_and_eval_steps_compile_once(full_run):
    compiled = full_run.compiled
    assert sum(STEP in m for m in compiled) == 1, compiled
    assert sum(NLL in m for m in compiled) == 1, compiled


def test_divergence_stops_and_keeps_last_good_parameters(tmp_path):
    maps, theta = toy_data()
    cfg = TrainConfig(
        steps=40, batch_size=8, eval_every=10, learning_rate=1e9, warmup_steps=0, grad_clip=1e12
    )
    model = small_model()
    with pytest.warns(UserWarning, match="diverged|NaN|nan"):
        result = fit(
            model,
            (maps[:40], theta[:40]),
            (maps[40:], theta[40:]),
            cfg,
            run_dir=tmp_path,
            progress=False,
        )
    assert result.diverged and result.steps_done < 40
    assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(nnx.state(model)))
    # a finite sum of the log-likelihoods: every one finite
    assert np.isfinite(nll_per_pixel(model, maps[:8], theta[:8]))
    # the last good parameters are on disk: a run that diverged early still loads
    store = CheckpointStore(tmp_path)
    assert store.latest_step() == result.steps_done
    store.close()


@pytest.mark.parametrize(
    "train, match",
    [
        ((np.zeros((0, N, N)), np.zeros((0, 2))), "empty"),
        ((np.zeros((4, N, N + 1)), np.zeros((4, 2))), "shape|square"),
        ((np.zeros((4, N, N)), np.zeros((3, 2))), "theta"),
        ((np.full((4, N, N), np.nan), np.zeros((4, 2))), "NaN"),
    ],
)
def test_bad_data_raises(train, match):
    maps, theta = toy_data()
    with pytest.raises(ValueError, match=match):
        fit(small_model(), train, (maps, theta), CFG, progress=False)


def test_bad_train_config_raises():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_lattice_augmentation_permutes_pixels():
    x = np.random.default_rng(0).standard_normal((6, N, N)).astype(np.float32)
    y = np.asarray(jax.jit(random_lattice_symmetry)(jax.random.key(1), x))  # as in training
    assert y.shape == x.shape
    np.testing.assert_allclose(np.sort(y.reshape(6, -1), 1), np.sort(x.reshape(6, -1), 1))
    assert float(np.max(np.abs(y - x))) > 0.1
