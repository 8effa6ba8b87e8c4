"""The speed benchmark's timer (no timing assertions: benchmarks are not tests)."""

import jax
import jax.numpy as jnp

from fieldflow.benchmarks import timeit


def test_timeit_runs_every_call_and_returns_positive_medians():
    counts = {"a": 0, "b": 0}

    def counted(name, fn):
        def run(x):
            counts[name] += 1
            return fn(x)

        return run

    square = jax.jit(lambda x: x * x)
    calls = {"a": (counted("a", square), (jnp.ones(4),)), "b": (counted("b", jnp.sin), (2.0,))}
    t = timeit(calls, repeats=3, min_time=0.0, burst=2)
    assert set(t) == {"a", "b"} and all(v > 0 for v in t.values())
    assert counts == {"a": 1 + 3 * 2, "b": 1 + 3 * 2}  # warm-up, then 3 rounds of 2
