r"""Entry points: field-level posteriors of a noisy, masked map (flow prior or the exact
lognormal prior) and the theta-only posterior of clean maps, sampled with BlackJAX.

    log p(theta, z | d) = log p(theta) - 1/2 |z|^2 - 1/2 (d - M s)^T N^-1 (d - M s),
    s = f^-1(z; theta)  (flow)   or   s = exp(g - sigma_g^2/2) - 1, g = C_g(theta)^1/2 z  (exact),

with a flat prior on theta over a box (default: the flow's trained range, or the simulators'
range for the exact prior). The default sampler is NUTS (window adaptation): on a 32^2 lognormal
map with a 20% mask at S/N = 1 and a few hundred steps per chain it gave 0.015 effective samples
of theta per gradient evaluation with R-hat < 1.01, where MCLMC (its L and step-size tuner) gave
0.003 with R-hat ~2 (``scripts/benchmark_field_level.py``); ``sampler="mclmc"`` remains
available for longer runs, where its tuning has room.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fieldflow.field_level.diagnostics import chain_diagnostics
from fieldflow.field_level.posterior import (
    FlowField,
    LognormalField,
    auto_coordinates,
    check_theta_start,
    make_observation,
    t_from_theta,
)
from fieldflow.field_level.results import FieldLevelResult
from fieldflow.field_level.sampler import run_chains
from fieldflow.field_level.targets import COORDINATES, FieldTarget, ThetaTarget

__all__ = [
    "DEFAULT_SAMPLER",
    "field_level_posterior",
    "lognormal_field_level_posterior",
    "theta_posterior_nuts",
]

DEFAULT_SAMPLER = "nuts"


def _box(prior_box) -> tuple[np.ndarray, np.ndarray]:
    low = np.array([prior_box[0][0], prior_box[1][0]], np.float32)
    high = np.array([prior_box[0][1], prior_box[1][1]], np.float32)
    if not np.all(np.isfinite(low)) or not np.all(high > low):
        raise ValueError(f"prior_box must be ((om_lo, om_hi), (s8_lo, s8_hi)), got {prior_box}")
    return low, high


def _flow_box(model) -> tuple[tuple[float, float], tuple[float, float]]:
    from fieldflow.inference import model_theta_range

    return model_theta_range(model)


def _finish(run: dict, sampler: str, rhat_max: float, min_ess: float) -> FieldLevelResult:
    diag = chain_diagnostics(run["theta"], run["divergent"], rhat_max=rhat_max, min_ess=min_ess)
    mean = std = None
    if run["field_sum"] is not None:
        n = run["theta"].shape[0] * run["theta"].shape[1]
        m = run["field_sum"] / n
        mean = m.astype(np.float32)
        std = np.sqrt(np.maximum(run["field_sq"] / n - m * m, 0.0)).astype(np.float32)
    return FieldLevelResult(
        sampler=sampler,
        theta=run["theta"],
        logdensity=run["logdensity"],
        divergent=run["divergent"],
        field_mean=mean,
        field_std=std,
        rhat=diag["rhat"],
        ess=diag["ess"],
        divergent_chains=diag["divergent_chains"],
        stray_chains=diag["stray_chains"],
        converged=diag["converged"],
        problems=diag["problems"],
        grad_evals=int(run["grad_evals"].sum()),
        warmup_grad_evals=int(run["warmup_grad_evals"].sum()),
        seconds=float(run["seconds"]),
        sample_seconds=float(run["sample_seconds"]),
        field_draws=run.get("field_draws"),
    )


# the sampler settings the two field-level samplers pass on to run_chains / _finish
SAMPLER_SETTINGS = ("sampler", "num_chains", "num_warmup", "num_samples", "init_scale")
SAMPLER_SETTINGS += ("progress", "rhat_max", "min_ess", "field_draws", "extend_samples")
SAMPLER_SETTINGS += ("coordinates",)


def _sampler_settings(arguments: dict, n: int) -> dict:
    """The ``SAMPLER_SETTINGS`` of a sampler's ``arguments`` (its ``locals()``), with the
    map size ``n``."""
    return {**{k: arguments[k] for k in SAMPLER_SETTINGS}, "_n": n}


def _run_field(field, params, key, d, mask, noise_var, prior_box, theta_start, init_field, kw):
    coordinates = kw.pop("coordinates")
    if coordinates not in ("auto", *COORDINATES):
        raise ValueError(f"coordinates must be 'auto' or one of {COORDINATES}, got {coordinates!r}")
    obs = make_observation(d, mask, noise_var)
    if coordinates == "auto":
        coordinates = auto_coordinates(obs)
    if obs.d.shape != (field_n := kw.pop("_n"), field_n):
        raise ValueError(f"d must be a ({field_n}, {field_n}) map, got {obs.d.shape}")
    low, high = _box(prior_box)
    theta0 = check_theta_start((low + high) / 2 if theta_start is None else theta_start, low, high)
    if init_field is None and coordinates == "latent":
        x0 = jnp.zeros(obs.d.shape, jnp.float32)
    else:
        init = np.zeros(obs.d.shape, np.float32) if init_field is None else init_field
        init = np.asarray(init, np.float32)
        if init.shape != obs.d.shape:
            raise ValueError(f"init_field must have shape {obs.d.shape}, got {init.shape}")
        if coordinates == "latent":
            x0 = jax.jit(field.latent)(params, jnp.asarray(init), jnp.asarray(theta0))
        else:
            x0 = jax.jit(field.data_coordinate)(params, jnp.asarray(init))
        if not np.all(np.isfinite(np.asarray(x0))):
            raise ValueError(f"init_field maps to a non-finite {coordinates} coordinate")
    name = "z" if coordinates == "latent" else "u"
    start = {"t": t_from_theta(jnp.asarray(theta0), low, high), name: x0}
    data = {"d": jnp.asarray(obs.d), "w": jnp.asarray(obs.w), "low": low, "high": high}
    rhat_max, min_ess = kw.pop("rhat_max"), kw.pop("min_ess")

    def enough(theta) -> bool:
        diag = chain_diagnostics(theta, np.zeros(theta.shape[:2], bool), warn=False)
        return bool(np.all(diag["rhat"] < rhat_max) and np.all(diag["ess"] >= min_ess))

    target = FieldTarget(field, coordinates)
    run = run_chains(key, target, params, data, start, enough=enough, **kw)
    return dataclasses.replace(
        _finish(run, kw["sampler"], rhat_max, min_ess), coordinates=coordinates
    )


def field_level_posterior(
    model,
    d,
    mask=None,
    noise_var=1.0,
    *,
    key: jax.Array,
    sampler: str = DEFAULT_SAMPLER,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    theta_start=None,
    init_field=None,
    prior_box=None,
    init_scale: float = 0.3,
    rhat_max: float = 1.01,
    min_ess: float = 100.0,
    progress: bool = True,
    field_draws: int = 0,
    extend_samples: int = 0,
    coordinates: str = "auto",
) -> FieldLevelResult:
    r"""Sample p(theta, z | d) with a conditional flow as the prior on the field.

        log p(theta, z | d) = log p(theta) - 1/2 |z|^2 - 1/2 sum_pixels W (d - f^-1(z; theta))^2

    Args:
        model: a conditional fieldflow flow (theta = (Omega_m, sigma_8)).
        d: the observed map (N, N), the model's size; masked pixels are ignored.
        mask: (N, N) 0/1, 1 = observed (None: all observed); not all 0.
        noise_var: sigma_n^2 > 0 and finite, a scalar or (N, N).
        key: jax PRNG key.
        sampler: 'nuts' (default) or 'mclmc'.
        num_chains, num_warmup, num_samples: chains (vmapped), adaptation steps, samples per
            chain.
        theta_start: centre of the chains' starting theta (default the prior box centre);
            outside the prior box is a ValueError.
        init_field: a field (e.g. the Wiener filter) whose latent f(s; theta_start) is the
            centre of the starting z (default z = 0); pixels below the support of a flow
            with a log transform (delta > -1 - c) are raised into it first.
        prior_box: ((om_lo, om_hi), (s8_lo, s8_hi)) of the flat prior (default: the model's
            trained range).
        init_scale: jitter of the chains' starts in (t, z).
        rhat_max, min_ess: convergence thresholds (:func:`chain_diagnostics`).
        progress: tqdm progress bar.
        field_draws: keep this many thinned draws of the field per chain
            (``FieldLevelResult.field_draws``, for per-pixel intervals); 0 keeps none.
        extend_samples: up to this many more samples per chain, drawn while R-hat >=
            ``rhat_max`` or ESS < ``min_ess`` (0: a fixed length).
        coordinates: 'latent' samples (theta, z), best where the noise is comparable to
            the signal; 'data' samples (theta, u), u the model's pointwise coordinate of s
            (s, or ln(1 + c + s) with a log transform) under the prior log p_flow(s | theta)
            + log |ds/du|, best for low noise, where the latent posterior is a thin curved
            ridge that NUTS crosses slowly (at S/N 30 per pixel it did not converge in
            latent coordinates). 'auto' (default) takes 'data' when the observed pixels'
            signal-to-noise per pixel is >= ``DATA_COORDINATES_SNR`` (2.5), else 'latent';
            ``FieldLevelResult.coordinates`` says which ran.

    Returns:
        :class:`FieldLevelResult`; unconverged or divergent chains are flagged and warned about.
    """
    if not callable(getattr(model, "_inverse", None)) or not isinstance(model, nnx.Module):
        raise ValueError("field_level_posterior needs a fieldflow flow (an NNX model)")
    box = _flow_box(model) if prior_box is None else prior_box
    graphdef, state = nnx.split(model)
    kw = _sampler_settings(locals(), int(model.shape[0]))
    return _run_field(
        FlowField(graphdef), state, key, d, mask, noise_var, box, theta_start, init_field, kw
    )


def lognormal_field_level_posterior(
    d,
    mask=None,
    noise_var=1.0,
    *,
    box: float,
    key: jax.Array,
    slab: float | None = None,
    sampler: str = DEFAULT_SAMPLER,
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    theta_start=None,
    init_field=None,
    prior_box=None,
    init_scale: float = 0.3,
    rhat_max: float = 1.01,
    min_ess: float = 100.0,
    progress: bool = True,
    field_draws: int = 0,
    extend_samples: int = 0,
    coordinates: str = "auto",
) -> FieldLevelResult:
    r"""Sample the exact field-level posterior of a lognormal map (the yardstick).

        g = F^-1[sqrt(P_g(k; theta)) F z],  delta = exp(g - sigma_g^2/2) - 1,
        log p(theta, z | d) = log p(theta) - 1/2 |z|^2 - 1/2 sum_pixels W (d - delta)^2.

    Arguments as :func:`field_level_posterior`, with ``box`` the map side in h^-1 Mpc (and the
    slab thickness ``slab``, default box / 4) in place of a model; the default prior box is the
    simulators' range.
    """
    from data_gen.cosmology import check_grid
    from fieldflow.inference import OMEGA_M_RANGE, SIGMA8_RANGE

    d_arr = np.asarray(d)
    n = d_arr.shape[-1]
    _, box = check_grid(n, box)
    prior_box = (OMEGA_M_RANGE, SIGMA8_RANGE) if prior_box is None else prior_box
    kw = _sampler_settings(locals(), n)
    field = LognormalField(int(n), float(box), None if slab is None else float(slab))
    return _run_field(field, None, key, d, mask, noise_var, prior_box, theta_start, init_field, kw)


def theta_posterior_nuts(
    model,
    maps,
    *,
    key: jax.Array,
    num_chains: int = 4,
    num_warmup: int = 300,
    num_samples: int = 500,
    theta_start=None,
    prior_box=None,
    init_scale: float = 0.3,
    rhat_max: float = 1.01,
    min_ess: float = 100.0,
    progress: bool = True,
) -> FieldLevelResult:
    r"""NUTS on theta alone for clean maps x_1..M (independent given theta), with the flow's
    gradient d log p(x | theta) / d theta:

        log p(theta | x) = sum_m log p_flow(x_m | theta) + log p(theta) + const.

    The route beyond two parameters, where grids stop scaling; checked against the grid
    posterior (``fieldflow.inference.flow_posterior``). Returns a :class:`FieldLevelResult`
    without field moments.
    """
    from fieldflow.validation import check_maps

    box = _flow_box(model) if prior_box is None else prior_box
    x, _ = check_maps(np.asarray(maps), name="maps")
    if tuple(x.shape[-2:]) != tuple(model.shape):
        raise ValueError(f"maps must be {tuple(model.shape)}, got {tuple(x.shape[-2:])}")
    if hasattr(model, "check_support"):
        model.check_support(x, "maps")
    low, high = _box(box)
    theta0 = check_theta_start((low + high) / 2 if theta_start is None else theta_start, low, high)
    graphdef, state = nnx.split(model)
    data = {"x": jnp.asarray(x, jnp.float32), "low": low, "high": high}
    start = {"t": t_from_theta(jnp.asarray(theta0), low, high)}
    run = run_chains(
        key,
        ThetaTarget(graphdef),
        state,
        data,
        start,
        sampler="nuts",
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        init_scale=init_scale,
        progress=progress,
    )
    return _finish(run, "nuts", rhat_max, min_ess)
