r"""Several chains of BlackJAX's NUTS (window adaptation) or MCLMC (its L and step-size tuner)
on a target of :mod:`fieldflow.field_level.targets`, vmapped over chains and jitted.

Both samplers work in the unconstrained position {"t": (P,), "z": (N, N)} (or {"t"} alone).
The chains start from dispersed points around a given start (jitter ``init_scale`` in t and
z), adapt independently (``num_warmup`` steps: NUTS's Stan-style windows; MCLMC's three
tuning stages), then draw ``num_samples`` samples in jitted chunks of ``lax.scan`` steps, one
progress-bar update per chunk. Each draw records theta and, for field targets, the running
sums of the field s and s^2 (the posterior mean and standard deviation per pixel), so the
memory does not grow with the number of samples; ``field_draws`` > 0 also keeps that many
evenly thinned draws of s per chain (for per-pixel quantiles).

Cost is counted in gradient evaluations of log p: NUTS uses ``num_integration_steps`` per
transition, MCLMC's isokinetic McLachlan integrator two per step.
"""

from __future__ import annotations

import functools
import math
import time

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SAMPLERS", "run_chains"]

SAMPLERS = ("mclmc", "nuts")
MCLMC_GRADS_PER_STEP = 2


def _logdensity(target, params, data):
    return functools.partial(target.logdensity, params, data)


@functools.partial(jax.jit, static_argnames=("target", "sampler", "num_warmup"))
def _warmup(target, sampler, num_warmup, params, data, keys, positions):
    """Adapt every chain: (states, tuned parameters, warmup gradient evaluations)."""
    logdensity = _logdensity(target, params, data)

    def nuts(key, position):
        warmup = blackjax.window_adaptation(blackjax.nuts, logdensity)
        (state, tuned), info = warmup.run(key, position, num_steps=num_warmup)
        return state, dict(tuned), jnp.sum(info.info.num_integration_steps)

    def mclmc(key, position):
        k_init, k_tune = jax.random.split(key)
        state = blackjax.mcmc.mclmc.init(position, logdensity, k_init)
        state, p, n_steps = blackjax.mclmc_find_L_and_step_size(
            mclmc_kernel=blackjax.mcmc.mclmc.build_kernel(),
            num_steps=num_warmup,
            state=state,
            rng_key=k_tune,
            logdensity_fn=logdensity,
            frac_tune1=0.4,
            frac_tune2=0.3,
            frac_tune3=0.3,
            diagonal_preconditioning=True,
        )
        tuned = {"L": p.L, "step_size": p.step_size, "inverse_mass_matrix": p.inverse_mass_matrix}
        return state, tuned, jnp.asarray(n_steps * MCLMC_GRADS_PER_STEP)

    return jax.vmap(nuts if sampler == "nuts" else mclmc)(keys, positions)


@functools.partial(jax.jit, static_argnames=("target", "sampler", "num_steps", "keep_fields"))
def _chunk(target, sampler, num_steps, params, data, keys, states, tuned, keep_fields=False):
    """``num_steps`` transitions of every chain: (states, field sums, trace); the trace holds
    every step's field s too when ``keep_fields``."""
    logdensity = _logdensity(target, params, data)

    def one(key, state, tuned):
        if sampler == "nuts":
            kernel = blackjax.nuts(logdensity, **tuned).step
        else:
            kernel = blackjax.mclmc(logdensity, **tuned).step
        _, s0 = target.record(params, data, state.position)
        zero = None if s0 is None else jnp.zeros_like(s0)

        def body(carry, key):
            state, s_sum, s_sq = carry
            state, info = kernel(key, state)
            theta, s = target.record(params, data, state.position)
            if sampler == "nuts":
                bad, grads = info.is_divergent, info.num_integration_steps
            else:
                bad = ~(info.nonans & jnp.isfinite(info.energy_change))
                grads = jnp.asarray(MCLMC_GRADS_PER_STEP)
            if s is not None:
                s_sum, s_sq = s_sum + s, s_sq + s * s
            kept = s if keep_fields else None
            return (state, s_sum, s_sq), (theta, state.logdensity, bad, grads, kept)

        (state, s_sum, s_sq), trace = jax.lax.scan(
            body, (state, zero, zero), jax.random.split(key, num_steps)
        )
        return state, s_sum, s_sq, trace

    return jax.vmap(one)(keys, states, tuned)


def run_chains(
    key: jax.Array,
    target,
    params,
    data: dict,
    start: dict,
    *,
    sampler: str = "mclmc",
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    init_scale: float = 0.3,
    progress: bool = True,
    n_chunks: int = 10,
    field_draws: int = 0,
    extend_samples: int = 0,
    enough=None,
) -> dict:
    """Run ``num_chains`` chains of ``sampler`` on ``target``; numpy results.

    Args:
        key: jax PRNG key (split into start jitter, warmup and sampling keys).
        target: a target of :mod:`~fieldflow.field_level.targets` (static under jit).
        params: the pytree of arrays the target needs (a flow's state, or None).
        data: dict of arrays (the data, the prior box ``low``/``high``).
        start: the centre of the starting points, {"t": (P,)[, "z": (N, N)]}.
        sampler: 'mclmc' or 'nuts'.
        num_chains, num_warmup, num_samples: chains, adaptation steps, samples per chain
            (rounded up to a multiple of the ``n_chunks`` progress-bar chunks).
        init_scale: standard deviation of the Gaussian jitter of each chain's start.
        progress: show a tqdm progress bar (stderr).
        field_draws: keep this many evenly spaced draws of the field per chain (field
            targets; at most the number of samples), from the first ``num_samples`` samples.
        extend_samples: up to this many more samples per chain (whole chunks), drawn while
            ``enough(theta)`` (theta (C, S, P) so far) is False.
        enough: the convergence test that stops the extension (required with
            ``extend_samples``).

    Returns:
        dict: ``theta`` (C, S, P), ``logdensity`` (C, S), ``divergent`` (C, S) bool,
        ``field_sum``/``field_sq`` (N, N) float64 sums over all draws (or None),
        ``field_draws`` (C, D, N, N) float32 thinned draws (or None),
        ``grad_evals`` (C,) in the sampling phase, ``warmup_grad_evals`` (C,),
        ``tuned`` (the adapted parameters, numpy), ``seconds`` (wall time of warmup and
        sampling, compilation included) and ``sample_seconds``.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    for name, v in (("num_chains", num_chains), ("num_warmup", num_warmup)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if int(num_samples) < 4:
        raise ValueError(f"num_samples must be >= 4, got {num_samples}")
    if int(field_draws) < 0:
        raise ValueError(f"field_draws must be >= 0, got {field_draws}")
    if int(extend_samples) < 0:
        raise ValueError(f"extend_samples must be >= 0, got {extend_samples}")
    if extend_samples and enough is None:
        raise ValueError("extend_samples needs the convergence test enough(theta)")
    n_chunks = max(1, min(int(n_chunks), int(num_samples)))
    chunk = math.ceil(int(num_samples) / n_chunks)
    keep = np.unique(np.linspace(0, chunk * n_chunks - 1, int(field_draws)).round().astype(int))
    k_init, k_warm, k_run = jax.random.split(key, 3)
    leaves, treedef = jax.tree.flatten(start)
    init_keys = jax.random.split(k_init, len(leaves))
    positions = jax.tree.unflatten(
        treedef,
        [
            jnp.asarray(x, jnp.float32)[None]
            + init_scale * jax.random.normal(k, (num_chains, *jnp.shape(x)), jnp.float32)
            for x, k in zip(leaves, init_keys, strict=True)
        ],
    )
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_chunks + 1, desc=f"{sampler} warmup", unit="chunk", leave=False)
    states, tuned, warm_grads = _warmup(
        target,
        sampler,
        int(num_warmup),
        params,
        data,
        jax.random.split(k_warm, num_chains),
        positions,
    )
    jax.block_until_ready(states)
    t1 = time.perf_counter()
    if bar is not None:
        bar.set_description(f"{sampler} sampling")
        bar.update(1)
    n_extra = math.ceil(int(extend_samples) / chunk)
    traces, s_sum, s_sq, draws = [], None, None, []
    for j, k in enumerate(jax.random.split(k_run, n_chunks + n_extra)):
        if j >= n_chunks:
            if enough(np.concatenate([t[0] for t in traces], axis=1)):
                break
            if bar is not None:
                bar.total += 1
                bar.set_description(f"{sampler} extending")
        states, c_sum, c_sq, trace = _chunk(
            target,
            sampler,
            chunk,
            params,
            data,
            jax.random.split(k, num_chains),
            states,
            tuned,
            keep_fields=keep.size > 0,
        )
        *trace, fields = trace
        if fields is not None and j < n_chunks:
            here = keep[(keep >= j * chunk) & (keep < (j + 1) * chunk)] - j * chunk
            draws.append(np.asarray(fields[:, here], np.float32))
        traces.append(jax.tree.map(np.asarray, tuple(trace)))
        if c_sum is not None:
            c_sum = np.asarray(c_sum, np.float64).sum(axis=0)
            c_sq = np.asarray(c_sq, np.float64).sum(axis=0)
            s_sum = c_sum if s_sum is None else s_sum + c_sum
            s_sq = c_sq if s_sq is None else s_sq + c_sq
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    t2 = time.perf_counter()
    theta, logdensity, bad, grads = (np.concatenate(x, axis=1) for x in zip(*traces, strict=True))
    return {
        "theta": theta.astype(np.float32),
        "logdensity": logdensity.astype(np.float32),
        "divergent": bad.astype(bool),
        "field_sum": s_sum,
        "field_sq": s_sq,
        "field_draws": np.concatenate(draws, axis=1) if draws else None,
        "grad_evals": grads.astype(np.int64).sum(axis=1),
        "warmup_grad_evals": np.asarray(warm_grads, np.int64),
        "tuned": jax.tree.map(np.asarray, tuned),
        "seconds": t2 - t0,
        "warmup_seconds": t1 - t0,
        "sample_seconds": t2 - t1,
    }
