"""Speed of TRENF's hot paths against the bare FFT floor.

For each map size N: maps per second of jitted ``log_prob``, ``sample`` and one
training step (value, gradient and Adam update), and of the bare
``rfft2`` + ``irfft2`` pair on the same batch. Each TRENF layer needs one such
pair, so ``log_prob_per_layer_over_fft`` = t(log_prob) / (n_layers * t(fft pair))
is the cost of a layer in units of its FFT floor.

Command line: ``python scripts/benchmark.py --sizes 64 128 256`` or ``fieldflow benchmark``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from fieldflow import TRENF
from fieldflow.train import TrainConfig, make_optimizer, make_train_step


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
    optimizer = make_optimizer(TrainConfig(steps=1000))
    train_step = make_train_step(graphdef, rest, optimizer)
    opt_state = optimizer.init(params)

    t = timeit(
        {
            "fft": (fft_pair, (x,)),
            "log_prob": (log_prob, (params, x, cond)),
            "sample": (sample, (params, key, cond)),
            "train": (train_step, (params, opt_state, x, cond, key)),
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
