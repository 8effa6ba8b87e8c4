r"""Field-level benchmark: the flow's field-level posterior against the exact one, the Wiener
filter and the grid posterior (``scripts/benchmark_field_level.py``).

Per test map (lognormal, theta over the prior): a survey mask (``make_mask``) and white noise
of variance the map's pixel variance (S/N = 1 per pixel); the flow and the exact lognormal
field-level posteriors, both started from the Wiener filter at the prior centre. Reported:

* theta: |mean_flow - mean_exact| / std_exact per parameter, std_flow / std_exact, and the
  credible mass at the truth of the flow's (and exact) draws (``sample_credible_mass``: the
  HPD region of a kernel density estimate reflected at the prior's edges), whence the coverage
  of the 68% and 95% HPD regions (also that of the Gaussian 68% region of the draws' mean and
  covariance, Mahalanobis^2 <= 2.279, which a posterior cut by the prior's edge misjudges);
  the maps whose shift or ratio misses 0.2 sigma or 10% by more than twice its Monte Carlo
  error (``mc_errors``): the flow's misses, not the chains' length;
* field: pixel MSE and r(k) on the upper half of the k bins of the posterior mean against the
  Wiener filter at the true theta; the fraction of masked pixels whose truth lies within
  +-1 posterior std (0.683 only for Gaussian marginals: more for skewed ones, the exact
  posterior's included), within +-1 std of ln(1 + s) over the field draws (where the
  lognormal pixels' posteriors are nearly Gaussian) and within the central 68% interval of the
  field draws (0.683 for any calibrated posterior);
* clean map (no mask, noise std ``clean_noise`` x the map std, sampled in data coordinates by
  default): the field-level theta marginal
  and theta-only NUTS against the flow's grid posterior, |delta mean| / std_grid, and the same
  for the exact field-level marginal against the exact grid posterior: the shift the noise
  itself causes, which the flow's should match;
* convergence: R-hat, ESS per minute and per gradient evaluation of each sampler.

Each map's row is appended to ``rows_path`` (JSON lines) as it finishes, and maps already
there are not sampled again: a long run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import jax
import numpy as np

from fieldflow.field_level.api import (
    field_level_posterior,
    lognormal_field_level_posterior,
    theta_posterior_nuts,
)
from fieldflow.inference.coverage import mean_shift_and_std_ratio, posterior_agreement

__all__ = ["CHI2_68", "mc_errors", "theta_comparison", "field_quality", "run_benchmark"]

MASS_68 = 0.6827  # the credible mass of a "68%" region (one Gaussian sigma)
CHI2_68 = 2.2788  # chi^2_2 quantile of MASS_68


def _inside68_gaussian(result, theta_true) -> bool:
    s = result.samples.astype(np.float64)
    d = np.asarray(theta_true, np.float64) - s.mean(axis=0)
    return bool(d @ np.linalg.solve(np.cov(s.T), d) <= CHI2_68)


def theta_comparison(flow, exact, theta_true, prior_box=None) -> dict:
    """Flow vs exact field-level posterior of theta on one map (``prior_box`` the box both
    were sampled in, whose edges the HPD regions respect)."""
    shift, ratio = mean_shift_and_std_ratio(flow.mean, flow.std, exact.mean, exact.std)
    out = {"mean_shift_sigma": shift.tolist(), "std_ratio": ratio.tolist()}
    for name, result in (("flow", flow), ("exact", exact)):
        out[f"{name}_credible_mass"] = result.credible_mass_at(theta_true, prior_box)
        out[f"{name}_inside_68_gaussian"] = _inside68_gaussian(result, theta_true)
    return out


def field_quality(truth, result, wiener, mask, box: float) -> dict:
    """Posterior mean vs the Wiener filter (MSE, r(k) upper half) and std calibration."""
    from fieldflow.denoise.metrics import denoising_metrics

    fl = denoising_metrics(truth, result.field_mean, mask, box)
    wf = denoising_metrics(truth, wiener, mask, box)
    half = len(fl["r_k"]) // 2
    hidden = mask == 0
    return {
        "mse_mean": float(fl["mse_all"]),
        "mse_wiener": float(wf["mse_all"]),
        "r_k_upper_mean": float(np.mean(fl["r_k"][half:])),
        "r_k_upper_wiener": float(np.mean(wf["r_k"][half:])),
        "within_1std_masked": result.std_coverage(truth, hidden) if hidden.any() else None,
        "within_1std_all": result.std_coverage(truth),
        "within_1std_log_masked": result.masked_std_coverage(truth, mask),
        "within_central68_masked": result.masked_coverage(truth, mask),
    }


def mc_errors(row: dict) -> tuple[np.ndarray, np.ndarray]:
    r"""Monte Carlo standard errors of a row's ``mean_shift_sigma`` and ``std_ratio``, from
    each chain set's bulk ESS:

        se(shift) = sqrt(std_f^2 / ESS_f + std_e^2 / ESS_e) / std_e,
        se(ratio) = ratio sqrt(1 / (2 ESS_f) + 1 / (2 ESS_e))   (Gaussian marginals),

    so that a shift or ratio off target by more than twice its error is the model's, not the
    chains' finite length."""
    ess_f = np.asarray(row["flow_cost"]["ess"], np.float64)
    ess_e = np.asarray(row["exact_cost"]["ess"], np.float64)
    std_f, std_e = np.asarray(row["flow_std"]), np.asarray(row["exact_std"])
    shift = np.sqrt(std_f**2 / ess_f + std_e**2 / ess_e) / std_e
    ratio = np.asarray(row["std_ratio"]) * np.sqrt(0.5 / ess_f + 0.5 / ess_e)
    return shift, ratio


def _hpd_coverage(per_map) -> dict:
    """Coverage of the 68% and 95% HPD regions (and the Gaussian 68% region) of theta over
    the maps; rows written before the credible masses were recorded (their ``*_inside_68``
    was the Gaussian region's) give the Gaussian 68% coverage alone."""
    out = {}
    for name in ("flow", "exact"):
        masses = [r.get(f"{name}_credible_mass") for r in per_map]
        key = f"{name}_inside_68_gaussian"
        gaussian = [r[key] if key in r else r[f"{name}_inside_68"] for r in per_map]
        out[f"coverage68_gaussian_{name}"] = float(np.mean(gaussian))
        if None in masses:
            continue
        out[f"coverage68_{name}"] = float(np.mean(np.array(masses) <= MASS_68))
        out[f"coverage95_{name}"] = float(np.mean(np.array(masses) <= 0.95))
    return out


def _mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def map_fingerprint(field, theta) -> str:
    """A short hash of one test map and its theta (the bytes of both as float32)."""
    blob = np.asarray(field, np.float32).tobytes() + np.asarray(theta, np.float32).tobytes()
    return hashlib.sha256(blob).hexdigest()[:16]


def _load_rows(rows_path, n_maps: int, settings: dict, fingerprints=None) -> dict:
    """The rows of the first ``n_maps`` maps already done, {map index: row}, from a
    JSON-lines file (or {}); rows sampled with other ``settings``, or of another map than
    ``fingerprints[i]`` (``map_fingerprint`` of map i) when given, are refused."""
    if rows_path is None or not Path(rows_path).exists():
        return {}
    rows = {}
    for line in Path(rows_path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row["map"] >= n_maps:  # a longer run's: not this one's
                continue
            if row.get("settings") != settings:
                raise ValueError(
                    f"{rows_path} holds map {row['map']} sampled with {row.get('settings')},"
                    f" not {settings}: give another rows file"
                )
            if fingerprints is not None and row.get("map_fingerprint") != fingerprints[row["map"]]:
                raise ValueError(
                    f"{rows_path} holds another map {row['map']} than this data set's: give"
                    " another rows file"
                )
            rows[row["map"]] = row
    return rows


def _cost(r) -> dict:
    s = r.summary()
    keys = (
        "rhat",
        "ess",
        "ess_per_minute",
        "ess_per_grad",
        "seconds",
        "grad_evals",
        "warmup_grad_evals",
        "divergences",
        "converged",
    )
    return {k: s[k] for k in keys}


def run_benchmark(
    model,
    maps,
    theta,
    box: float,
    *,
    mask_fraction: float = 0.2,
    seed: int = 0,
    sampler: str = "nuts",
    num_chains: int = 4,
    num_warmup: int = 500,
    num_samples: int = 1000,
    clean_noise: float = 0.1,
    clean_coordinates: str = "data",
    compare_samplers: bool = True,
    grid_points: int = 60,
    field_draws: int = 200,
    extend_samples: int = 0,
    clean_map: bool = True,
    only=None,
    rows_path=None,
    progress: bool = False,
    log=print,
) -> dict:
    """The benchmark of the module docstring on ``maps`` (M, N, N) at ``theta`` (M, 2).

    ``field_draws`` thinned field draws per chain give the central-interval coverage;
    ``extend_samples`` more samples per chain are drawn while a run is unconverged; ``only``
    (indices into ``maps``) samples those maps alone, with the observations and keys they get
    in the whole run; ``clean_map`` False skips the clean-map check; ``rows_path`` (JSON lines)
    makes the per-map loop resumable (its rows must come from the same settings, model and
    maps: checked by fingerprints); ``clean_coordinates`` are the field-level coordinates of
    the clean-map check ('data' by default: see ``field_level_posterior``)."""
    from fieldflow import inference
    from fieldflow.denoise.benchmark import wiener_signal
    from fieldflow.denoise.observation import observe
    from fieldflow.denoise.wiener import wiener_filter
    from fieldflow.io import to_jsonable
    from fieldflow.masks import make_mask

    maps, theta = np.asarray(maps, np.float32), np.asarray(theta, np.float32)
    n = maps.shape[-1]
    mask = np.asarray(make_mask(jax.random.key(seed), n, mask_fraction))
    noise_var = np.var(maps, axis=(1, 2)).astype(np.float32)
    d = observe(maps, mask, noise_var[:, None, None], seed + 1)
    signal, _ = wiener_signal("lognormal", theta, n, box)
    kw = dict(
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        progress=progress,
        field_draws=field_draws,
        extend_samples=extend_samples,
    )
    settings = {
        **{k: v for k, v in kw.items() if k != "progress"},
        "sampler": sampler,
        "mask_fraction": mask_fraction,
        "seed": seed,
        "model": inference.model_fingerprint(model),
    }
    prior_box = inference.model_theta_range(model)
    fingerprints = [map_fingerprint(m, t) for m, t in zip(maps, theta, strict=True)]
    done = _load_rows(rows_path, len(maps), settings, fingerprints)
    per_map, t0 = [], time.perf_counter()
    for i in range(len(maps)) if only is None else sorted(set(only)):
        if i in done:
            per_map.append(done[i])
            continue
        wf = np.asarray(wiener_filter(d[i], mask, noise_var[i], signal[i]).field)
        key = jax.random.key(seed + 100 + i)
        flow = field_level_posterior(
            model, d[i], mask, noise_var[i], key=key, sampler=sampler, init_field=wf, **kw
        )
        exact = lognormal_field_level_posterior(
            d[i], mask, noise_var[i], box=box, key=key, sampler=sampler, init_field=wf, **kw
        )
        row = {
            "map": i,
            "map_fingerprint": fingerprints[i],
            "settings": settings,
            "theta_true": theta[i].tolist(),
            "flow_mean": flow.mean.tolist(),
            "flow_std": flow.std.tolist(),
            "exact_mean": exact.mean.tolist(),
            "exact_std": exact.std.tolist(),
            **theta_comparison(flow, exact, theta[i], prior_box),
            "field_flow": field_quality(maps[i], flow, wf, mask, box),
            "field_exact": field_quality(maps[i], exact, wf, mask, box),
            "flow_cost": _cost(flow),
            "exact_cost": _cost(exact),
        }
        per_map.append(row)
        if rows_path is not None:
            with open(rows_path, "a") as f:
                f.write(json.dumps(to_jsonable(row)) + "\n")
        log(
            f"[field_level] map {i}: flow {np.round(flow.mean, 3)} +- {np.round(flow.std, 3)}, "
            f"exact {np.round(exact.mean, 3)} +- {np.round(exact.std, 3)}, "
            f"{time.perf_counter() - t0:.0f} s"
        )
    out = {"per_map": per_map, "maps_seconds": time.perf_counter() - t0}

    def agg(path):
        vals = [r for r in per_map]
        for p in path:
            vals = [v[p] for v in vals]
        return vals

    shift, ratio = np.array(agg(["mean_shift_sigma"])), np.array(agg(["std_ratio"]))
    errors = [mc_errors(r) for r in per_map]
    shift_err, ratio_err = np.array([e[0] for e in errors]), np.array([e[1] for e in errors])
    out["summary"] = {
        "n_maps": len(per_map),
        **posterior_agreement(
            agg(["flow_mean"]), agg(["flow_std"]), agg(["exact_mean"]), agg(["exact_std"])
        ),
        "theta_mean_shift_mc_error_median": float(np.median(shift_err)),
        "theta_std_ratio_mc_error_median": float(np.median(ratio_err)),
        "maps_means_beyond_0.2_sigma_by_2_mc_errors": [
            per_map[i]["map"] for i in np.flatnonzero(np.any(shift - 2 * shift_err > 0.2, axis=1))
        ],
        "maps_stds_beyond_10pct_by_2_mc_errors": [
            per_map[i]["map"]
            for i in np.flatnonzero(np.any(np.abs(ratio - 1) - 2 * ratio_err > 0.1, axis=1))
        ],
        **_hpd_coverage(per_map),
        "mse_mean_over_wiener_flow": float(
            np.mean(agg(["field_flow", "mse_mean"])) / np.mean(agg(["field_flow", "mse_wiener"]))
        ),
        "mse_mean_over_wiener_exact": float(
            np.mean(agg(["field_exact", "mse_mean"])) / np.mean(agg(["field_exact", "mse_wiener"]))
        ),
        "r_k_upper_flow_minus_wiener": float(
            np.mean(agg(["field_flow", "r_k_upper_mean"]))
            - np.mean(agg(["field_flow", "r_k_upper_wiener"]))
        ),
        "within_1std_masked_flow": float(np.mean(agg(["field_flow", "within_1std_masked"]))),
        "within_1std_masked_exact": float(np.mean(agg(["field_exact", "within_1std_masked"]))),
        "within_1std_log_masked_flow": _mean_or_none(
            [r["field_flow"].get("within_1std_log_masked") for r in per_map]
        ),
        "within_1std_log_masked_exact": _mean_or_none(
            [r["field_exact"].get("within_1std_log_masked") for r in per_map]
        ),
        "within_central68_masked_flow": _mean_or_none(
            agg(["field_flow", "within_central68_masked"])
        ),
        "within_central68_masked_exact": _mean_or_none(
            agg(["field_exact", "within_central68_masked"])
        ),
        "rhat_max_flow": float(np.max(agg(["flow_cost", "rhat"]))),
        "rhat_max_exact": float(np.max(agg(["exact_cost", "rhat"]))),
        "ess_per_minute_theta_flow_median": float(np.median(agg(["flow_cost", "ess_per_minute"]))),
        "seconds_per_map_flow": float(np.mean(agg(["flow_cost", "seconds"]))),
        "seconds_per_map_exact": float(np.mean(agg(["exact_cost", "seconds"]))),
        "divergences_flow": int(np.sum(agg(["flow_cost", "divergences"]))),
        "unconverged_runs_flow": int(np.sum(~np.array(agg(["flow_cost", "converged"])))),
    }

    if not clean_map:
        return out
    # clean map: no mask, small noise; field-level marginal and theta-only NUTS vs the grid
    t1 = time.perf_counter()
    x, v = maps[0], float(clean_noise**2 * noise_var[0])
    dc = observe(x, np.ones_like(mask), v, seed + 2)
    wf = np.asarray(wiener_filter(dc, None, v, signal[0]).field)
    key = jax.random.key(seed + 7)
    ckw = {**kw, "sampler": sampler, "init_field": wf, "coordinates": clean_coordinates}
    clean = field_level_posterior(model, dc, None, v, key=key, **ckw)
    clean_exact = lognormal_field_level_posterior(dc, None, v, box=box, key=key, **ckw)
    om_r, s8_r = inference.model_theta_range(model)
    theta_grid = inference.theta_grid(grid_points, grid_points, om_r, s8_r)
    grid = inference.flow_posterior(model, x, theta_grid)
    grid_exact = inference.exact_lognormal_posterior(x, theta_grid, box=box)
    tnuts = theta_posterior_nuts(
        model,
        x[None],
        key=key,
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_samples=num_samples,
        progress=progress,
    )
    out["clean_map"] = {
        "noise_std_over_map_std": clean_noise,
        "coordinates": clean_coordinates,
        "grid_mean": grid.mean.tolist(),
        "grid_std": grid.std.tolist(),
        "field_level_mean": clean.mean.tolist(),
        "field_level_std": clean.std.tolist(),
        "field_level_shift_sigma": (np.abs(clean.mean - grid.mean) / grid.std).tolist(),
        "exact_grid_mean": grid_exact.mean.tolist(),
        "exact_grid_std": grid_exact.std.tolist(),
        "exact_field_level_mean": clean_exact.mean.tolist(),
        "exact_field_level_std": clean_exact.std.tolist(),
        "exact_field_level_shift_sigma": (
            np.abs(clean_exact.mean - grid_exact.mean) / grid_exact.std
        ).tolist(),
        "exact_field_level_cost": _cost(clean_exact),
        "theta_nuts_mean": tnuts.mean.tolist(),
        "theta_nuts_std": tnuts.std.tolist(),
        "theta_nuts_shift_sigma": (np.abs(tnuts.mean - grid.mean) / grid.std).tolist(),
        "field_level_cost": _cost(clean),
        "theta_nuts_cost": _cost(tnuts),
        "seconds": time.perf_counter() - t1,
    }

    if compare_samplers:  # effective samples per gradient evaluation, both samplers, map 0
        t2 = time.perf_counter()
        wf = np.asarray(wiener_filter(d[0], mask, noise_var[0], signal[0]).field)
        comp = {}
        for name in ("nuts", "mclmc"):
            r = field_level_posterior(
                model,
                d[0],
                mask,
                noise_var[0],
                key=jax.random.key(seed),
                sampler=name,
                init_field=wf,
                **kw,
            )
            comp[name] = {**_cost(r), "mean": r.mean.tolist(), "std": r.std.tolist()}
        comp["better_ess_per_grad"] = max(
            ("nuts", "mclmc"), key=lambda s: min(comp[s]["ess_per_grad"])
        )
        comp["seconds"] = time.perf_counter() - t2
        out["sampler_comparison"] = comp
    return out
