"""Past one process: training across 2 local CPU processes (jax.distributed) equals one
process, data sets written by several workers equal a one-process run, and bad input fails
clearly."""

import dataclasses
import fcntl
import json
import shutil
import socket
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from data_gen.__main__ import main as data_gen_main
from data_gen.dataset import generate_dataset, verify_dataset, write_shard
from fieldflow import TRENF
from fieldflow.checkpoint import CheckpointStore
from fieldflow.cli import main as cli_main
from fieldflow.distributed import (
    DistributedConfig,
    check_global_batch,
    free_port,
    initialize,
    launch_local,
    resolve_config,
)
from fieldflow.train import TrainConfig, fit, make_optimizer

# a tiny TRENF trained for 4 steps, checkpointed at steps 2 and 4, evaluated at step 4
CFG = dict(steps=4, batch_size=8, eval_every=4, checkpoint_every=2, warmup_steps=1, patience=None)
# each of the 2 processes: join the group (the JAX_* variables launch_local sets), refuse a
# batch that does not split over the processes, train, report
WORKER = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from fieldflow.distributed import initialize, resolve_config
initialize(resolve_config(timeout_s=60))
import jax, numpy as np
from flax import nnx
from test_distributed import CFG, data, model
from fieldflow.train import TrainConfig, fit
out = Path(sys.argv[1])
train, val = data()
report = {{"processes": jax.process_count(), "devices": len(jax.devices())}}
try:
    fit(model(), train, val, TrainConfig(**dict(CFG, batch_size=7)), run_dir=out / "bad")
except ValueError as err:
    report["batch_error"] = str(err)
result = fit(model(), train, val, TrainConfig(**CFG), run_dir=out / "run", progress=False)
report["val_nll"] = result.best_val_nll
if jax.process_index() == 0:
    leaves = jax.tree.leaves(nnx.state(result.model, nnx.Param))
    np.savez(out / "params.npz", *[np.asarray(p) for p in leaves])
print(json.dumps(report))
"""


def data():
    """32 maps of 8 x 8 whose amplitude follows sigma_8: 24 to train on, 8 to validate."""
    rng = np.random.default_rng(0)
    theta = np.stack([rng.uniform(0.2, 0.5, 32), rng.uniform(0.5, 1.1, 32)], 1)
    maps = theta[:, 1, None, None] * rng.normal(size=(32, 8, 8)) + 0.5
    maps, theta = maps.astype(np.float32), theta.astype(np.float32)
    return (maps[:24], theta[:24]), (maps[24:], theta[24:])


def model():
    # "rbg" keys: their initialisers compile ~10x faster than threefry's on CPU
    rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))
    return TRENF((8, 8), n_layers=1, hidden=(8,), n_t_knots=4, rngs=rngs)


def _params(model) -> list[np.ndarray]:
    return [np.asarray(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_two_processes_train_like_one_and_checkpoint_for_any_count(tmp_path):
    env = {  # one CPU device per process; XLA's expensive passes off, as in conftest.py
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    }
    procs = launch_local([sys.executable, "-c", WORKER, str(tmp_path)], 2, env=env, timeout_s=240)
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(p.stdout.strip().splitlines()[-1]) for p in procs]
    assert all(r["processes"] == 2 and r["devices"] == 2 for r in reports)
    assert "multiple of the 2 devices of the 2 processes" in reports[0]["batch_error"]
    assert not (tmp_path / "bad").exists()
    with np.load(tmp_path / "params.npz") as z:
        two = [z[f"arr_{i}"] for i in range(len(z.files))]

    # the same run in this one process (one device): the same parameters
    train, val = data()
    one = fit(model(), train, val, TrainConfig(**CFG), progress=False)
    assert reports[0]["val_nll"] == reports[1]["val_nll"]
    np.testing.assert_allclose(reports[0]["val_nll"], one.best_val_nll, rtol=1e-6)
    for a, b in zip(two, _params(one.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # the checkpoints were written once and hold whole arrays: one process restores the
    # training state two wrote (what fit(resume=True) reads; resuming is test_train's)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2", "4"]
    assert (run / "history.json").is_file() and not list(run.rglob("*.tmp"))
    params = nnx.state(model(), nnx.Param)
    store = CheckpointStore(run)
    params, opt_state, meta = store.restore(params, make_optimizer(TrainConfig(**CFG)).init(params))
    store.close()
    assert meta["step"] == 4 and meta["train_config"] == dataclasses.asdict(TrainConfig(**CFG))
    assert int(jax.tree.leaves(opt_state)[0]) == 4  # the clipping / Adam step count
    for a, b in zip(jax.tree.leaves(params), two, strict=True):
        np.testing.assert_array_equal(a, b)


GEN = dict(n=8, box=64.0, shard_size=3, seed=5, n_fiducial=2)
GEN_ARGS = ["--simulator", "lognormal", "--n-sims", "8", "--n", "8", "--box", "64"]
GEN_ARGS += ["--shard-size", "3", "--seed", "5", "--n-fiducial", "2", "--no-progress"]


def _shards(d: Path) -> dict:
    files = sorted(p for p in d.rglob("*") if p.is_file() and "summary" not in p.name)
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in files}


def test_workers_write_the_shards_of_one_process(tmp_path, capsys):
    ref = tmp_path / "one"
    generate_dataset(ref, "lognormal", 8, progress=False, **GEN)
    assert verify_dataset(ref)["complete"] and len(_shards(ref)) == 6  # 3 + 1 shards, manifests

    # worker 1 of 2 (fieldflow generate), then worker 0 (python -m data_gen)
    split = tmp_path / "split"
    assert cli_main(["generate", str(split), *GEN_ARGS, "--worker", "1", "--workers", "2"]) == 0
    assert sorted(p.name for p in split.glob("shard_*")) == ["shard_00001.npz"]
    summary = json.loads((split / "summary_worker1.json").read_text())
    assert summary["complete"] is False and summary["missing_shards"] == 3
    assert data_gen_main([str(split), *GEN_ARGS, "--worker", "0", "--workers", "2"]) == 0
    assert "done: 8 lognormal" in capsys.readouterr().out
    assert _shards(split) == _shards(ref)

    # one worker, then a plain rerun completes the set
    rerun = tmp_path / "rerun"
    generate_dataset(rerun, "lognormal", 8, progress=False, worker=0, workers=2, **GEN)
    assert not verify_dataset(rerun)["complete"]
    generate_dataset(rerun, "lognormal", 8, progress=False, **GEN)
    assert _shards(rerun) == _shards(ref)

    # a shard of another position is caught by the verification
    shutil.copy(ref / "shard_00000.npz", rerun / "shard_00001.npz")
    with pytest.raises(ValueError, match="shard_00001.npz does not belong"):
        verify_dataset(rerun)


def test_bad_worker_and_two_writers_of_one_shard(tmp_path, capsys):
    with pytest.raises(ValueError, match="worker index 2 is out of range for 2 workers"):
        generate_dataset(tmp_path / "w", "lognormal", 8, progress=False, worker=2, workers=2)
    assert cli_main(["generate", str(tmp_path / "w"), "--worker", "-1", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fieldflow: error: worker must be")
    assert not (tmp_path / "w").exists()

    arrays = {"maps": np.zeros((1, 4, 4), np.float32)}
    path = tmp_path / "shard_00000.npz"
    with open(path.with_name(path.name + ".tmp"), "wb") as other:  # another writer, live
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="being written by another process"):
            write_shard(path, arrays)
    assert not path.exists()
    write_shard(path, arrays)  # the lock is gone: the stale temporary file is reused
    before = path.read_bytes()
    with pytest.raises(ValueError, match="written by another process meanwhile"):
        write_shard(path, {"maps": np.ones((1, 4, 4), np.float32)}, overwrite=False)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_bad_distributed_settings(tmp_path, capsys):
    with pytest.raises(ValueError, match="multiple of the 4 devices of the 2 processes"):
        check_global_batch(6, 4, 2)
    with pytest.raises(ValueError, match="set JAX_NUM_PROCESSES, JAX_PROCESS_ID"):
        resolve_config(env={"JAX_COORDINATOR_ADDRESS": "host0:1234"})
    with pytest.raises(ValueError, match="process id 2 is out of range for 2"):
        resolve_config(
            env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}
        )
    with pytest.raises(ValueError, match="HOST:PORT"):
        DistributedConfig("host0", 2, 0)
    # process 1 finds no coordinator within the timeout: one error line, exit status 2, and
    # the runtime (which would abort the process) is never started
    port = free_port()
    argv = ["train", str(tmp_path / "data"), str(tmp_path / "run"), "--distributed"]
    argv += ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", "1"]
    assert cli_main([*argv, "--distributed-timeout", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not reach the coordinator at localhost:" in err[0]
    assert not (tmp_path / "run").exists() and not jax.distributed.is_initialized()
    initialize(DistributedConfig(f"localhost:{port}", 1, 0))  # one process: nothing to join
    with socket.socket() as taken:  # process 0 cannot host the coordinator on a taken port
        taken.bind(("", 0))
        taken.listen()
        address = f"localhost:{taken.getsockname()[1]}"
        with pytest.raises(ValueError, match="cannot start the coordinator .* not free"):
            initialize(DistributedConfig(address, 2, 0))
    assert not jax.distributed.is_initialized()
