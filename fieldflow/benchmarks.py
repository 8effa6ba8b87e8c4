"""Speed of TRENF's hot paths against the bare FFT floor.

For each map size N: maps per second of jitted ``log_prob``, ``sample`` and one
training step (value, gradient and Adam update), and of the bare
``rfft2`` + ``irfft2`` pair on the same batch. Each TRENF layer needs one such
pair, so ``log_prob_per_layer_over_fft`` = t(log_prob) / (n_layers * t(fft pair))
is the cost of a layer in units of its FFT floor.

Also the throughput of the ``data_gen`` simulators (:func:`simulator_benchmark`): maps per
second after compilation, compile time apart; and of the training step sharded over the
processes of a ``jax.distributed`` group (:func:`sharded_training_rate`,
``scripts/benchmark_distributed.py``).

Command line: ``python scripts/benchmark.py --sizes 64 128 256`` or ``fieldflow benchmark``;
``python scripts/benchmark_data.py`` for the simulators.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fieldflow import TRENF
from fieldflow.train import TrainConfig, make_optimizer, make_train_step

__all__ = ["timeit", "bench_size", "speed_benchmark", "simulator_rate", "simulator_benchmark"]


def timeit(calls: dict, repeats: int = 10, min_time: float = 0.5, burst: int = 5) -> dict:
    """Median wall time in seconds of each ``fn(*args)`` in ``calls = {name: (fn, args)}``.

    Each is compiled and run once first; then the calls are timed in interleaved rounds,
    ``burst`` back-to-back calls of each per round (the first, with caches still holding
    the previous function's data, is dropped), for at least ``repeats`` rounds and
    ``min_time`` seconds. A drift in the machine's speed (other load, clock changes)
    then affects all of them alike, and their ratios stay meaningful.
    """
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in calls}
    t_start = time.perf_counter()
    rounds = 0
    while rounds < repeats or time.perf_counter() - t_start < min_time:
        for name, (fn, args) in calls.items():
            for i in range(burst):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(*args))
                if i:
                    times[name].append(time.perf_counter() - t0)
        rounds += 1
        if rounds >= 100:
            break
    return {name: statistics.median(t) for name, t in times.items()}


def bench_size(n: int, batch: int, n_layers: int, hidden: tuple[int, ...], repeats: int) -> dict:
    key = jax.random.key(0)
    model = TRENF((n, n), n_layers=n_layers, hidden=hidden, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(key, (batch, n, n), dtype=jnp.float32)
    cond = jnp.tile(jnp.array([[0.3, 0.8]], jnp.float32), (batch, 1))

    fft_pair = jax.jit(lambda v: jnp.fft.irfft2(jnp.fft.rfft2(v), s=(n, n)))
    log_prob = jax.jit(lambda p, v, c: nnx.merge(graphdef, p, rest).log_prob(v, c))
    sample = jax.jit(lambda p, k, c: nnx.merge(graphdef, p, rest).sample(k, c))
    config = TrainConfig(steps=1000)
    train_step = make_train_step(graphdef, rest, config)
    opt_state = make_optimizer(config).init(params)
    rate = np.float32(config.learning_rate)

    t = timeit(
        {
            "fft": (fft_pair, (x,)),
            "log_prob": (log_prob, (params, x, cond)),
            "sample": (sample, (params, key, cond)),
            "train": (train_step, (params, opt_state, x, cond, key, rate)),
        },
        repeats=repeats,
    )
    t_fft, t_lp, t_sample, t_train = t["fft"], t["log_prob"], t["sample"], t["train"]
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "peak_device_memory_mb": stats.get("peak_bytes_in_use", 0) / 2**20 or None,
        "n": n,
        "batch": batch,
        "n_layers": n_layers,
        "n_params": model.num_params(),
        "fft_pair_maps_per_s": batch / t_fft,
        "log_prob_maps_per_s": batch / t_lp,
        "sample_maps_per_s": batch / t_sample,
        "train_step_maps_per_s": batch / t_train,
        "fft_pair_ms": 1e3 * t_fft,
        "log_prob_ms": 1e3 * t_lp,
        "sample_ms": 1e3 * t_sample,
        "train_step_ms": 1e3 * t_train,
        "log_prob_per_layer_over_fft": t_lp / (n_layers * t_fft),
        "sample_per_layer_over_fft": t_sample / (n_layers * t_fft),
        "train_step_over_log_prob": t_train / t_lp,
    }


def speed_benchmark(
    sizes=(64, 128), batch: int = 32, n_layers: int = 5, hidden=(128, 128), repeats: int = 10
) -> dict:
    """Run :func:`bench_size` for every N in ``sizes``; returns a JSON-able dict."""
    return {
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "results": [bench_size(n, batch, n_layers, tuple(hidden), repeats) for n in sizes],
    }


def _rate(fn, n_maps_per_call: int, min_time: float = 2.0) -> tuple[float, float]:
    """(maps per second after compilation, compile seconds) of ``fn(i)``, i = 0, 1, ..."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(0))
    compile_s = time.perf_counter() - t0
    calls, t0 = 0, time.perf_counter()
    while True:
        jax.block_until_ready(fn(calls + 1))
        calls += 1
        if time.perf_counter() - t0 > min_time:
            break
    return n_maps_per_call * calls / (time.perf_counter() - t0), compile_s


def simulator_rate(
    simulator: str, n: int, box: float, batch: int, min_time: float = 2.0, **config
) -> dict:
    """Throughput of one simulator: ``batch`` simulations per call (``data_gen.dataset``'s
    ``simulate``, as data set generation runs them), theta from the Sobol design;
    ``config`` as for ``make_config`` (e.g. ``n_mesh``, ``n_steps`` for nbody)."""
    from data_gen.dataset import design_theta, make_config, simulate

    cfg = make_config(simulator, batch, n=n, box=box, **config)
    theta = design_theta(batch, 0)
    rate, comp = _rate(
        lambda i: simulate(cfg, np.arange(batch) + i * batch, theta),
        batch * cfg["maps_per_sim"],
        min_time,
    )
    out = {"simulator": simulator, "n": n, "box": box}
    if simulator == "nbody":
        per = cfg["maps_per_sim"]
        out.update(
            n_mesh=cfg["n_mesh"],
            n_steps=cfg["n_steps"],
            slab=cfg["slab"],
            maps_per_sim=per,
            maps_per_s=round(rate, 2),
            sims_per_s=round(rate / per, 3),
        )
    else:
        out.update(slab=cfg["slab"], batch=batch, maps_per_s=round(rate, 1))
    out["compile_s"] = round(comp, 1)
    return out


def simulator_benchmark(quick: bool = False) -> dict:
    """Simulator throughput at the defaults (64^2 maps, 256 h^-1 Mpc box, PM 64^3) and at the
    TRENF paper's sizes (128^2 maps, 512 h^-1 Mpc box, 128 h^-1 Mpc slabs; PM 128^3 unless
    ``quick``), and the seconds of the exact lognormal likelihood on a 100 x 100 theta grid."""
    from data_gen.likelihood import log_likelihood_grid
    from data_gen.lognormal import lognormal

    out = {
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "results": [],
    }
    for kind in ("grf", "lognormal"):
        out["results"].append(simulator_rate(kind, 64, 256.0, 256))
        out["results"].append(simulator_rate(kind, 128, 512.0, 64))
    out["results"].append(simulator_rate("nbody", 64, 256.0, 1, 3.0, n_mesh=64, n_steps=10))
    if not quick:
        out["results"].append(simulator_rate("nbody", 128, 512.0, 1, 1.0, n_mesh=128, n_steps=10))
    x = lognormal(jax.random.PRNGKey(0), (0.3, 0.8))
    om, s8 = np.linspace(0.2, 0.5, 100), np.linspace(0.5, 1.1, 100)
    log_likelihood_grid(x, om, s8)
    t0 = time.perf_counter()
    log_likelihood_grid(x, om, s8)
    out["lognormal_likelihood_grid_100x100_64sq_s"] = round(time.perf_counter() - t0, 2)
    return out


def sharded_training_rate(
    n: int, batch: int, n_layers: int, hidden: tuple[int, ...], steps: int
) -> dict:
    """Steps and maps per second of TRENF's training step on the global mesh of all processes
    (``fieldflow.distributed``; call after ``distributed.initialize``): the same global batch
    of ``batch`` N x N maps, each process placing its own rows, after 2 warm-up steps."""
    from fieldflow import distributed

    rng = np.random.default_rng(0)
    maps = rng.normal(size=(4 * batch, n, n)).astype(np.float32)
    theta = np.tile(np.float32([[0.3, 0.8]]), (len(maps), 1))
    model = TRENF((n, n), n_layers=n_layers, hidden=tuple(hidden), rngs=nnx.Rngs(0))
    config = TrainConfig(steps=steps + 2, batch_size=batch)
    batch_sharding, replicated = distributed.batch_shardings(config.batch_size)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = make_optimizer(config)
    opt_state = optimizer.init(params)
    if replicated is not None:
        params, opt_state, rest = jax.device_put((params, opt_state, rest), replicated)
    step = make_train_step(graphdef, rest, config)
    rate = np.float32(config.learning_rate)
    key = jax.random.key(0)

    def run(i, params, opt_state):
        idx = np.arange(i * batch, (i + 1) * batch) % len(maps)
        x = distributed.put_rows(maps, idx, batch_sharding)
        c = distributed.put_rows(theta, idx, batch_sharding)
        return step(params, opt_state, x, c, jax.random.fold_in(key, i), rate)

    t0 = time.perf_counter()
    for i in range(2):
        params, opt_state, loss = run(i, params, opt_state)
    jax.block_until_ready(loss)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(2, 2 + steps):
        params, opt_state, loss = run(i, params, opt_state)
    jax.block_until_ready(loss)
    elapsed = time.perf_counter() - t0
    return {
        "processes": jax.process_count(),
        "devices": len(jax.devices()),
        "compile_and_2_steps_s": round(warm, 2),
        "steps_per_s": round(steps / elapsed, 3),
        "maps_per_s": round(steps * batch / elapsed, 1),
        "final_loss": float(loss),
    }
