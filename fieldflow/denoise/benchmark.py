"""Denoising benchmark: flow MAPs against the Wiener filter (and the exact MAPs) over test maps.

Observation: one survey mask (``make_mask``) and white noise whose variance is the pixel
variance of each map (S/N = 1 per pixel). Estimators (none splices Wiener large scales into
another), described in :data:`ESTIMATORS`:

- ``wiener``: (S^-1 + M^T N^-1 M)^-1 M^T N^-1 d, per map with the signal power S_k at the
  map's theta (:func:`wiener_signal`);
- ``flow_map`` ("data-space MAP"): argmax_s [-1/2 |d - M s|^2_N + log p_flow(s | theta)],
  L-BFGS from the Wiener filter;
- ``flow_latent_map`` ("latent MAP"): argmax_z [-1/2 |d - M f^-1(z)|^2_N - 1/2 |z|^2],
  s = f^-1(z | theta), L-BFGS from z = f(Wiener) (the prior without log|det df/ds|);
- lognormal only, the exact lognormal prior: ``exact_map`` (data-space MAP in delta, with the
  -sum log(1 + delta) Jacobian) and ``exact_latent_map`` (MAP of the Gaussian
  g = log(1 + delta), ``jacobian=False``).

Per estimator (:func:`summarise`): the mean over maps of r(k) against the truth, residual
power, pixel MSE (all / observed / masked pixels), the fraction of maps at the gradient
tolerance. Targets (per flow estimator, :func:`versus_wiener`): r(k) above Wiener's on the
upper half of the k bins; never below it by more than 0.01; total MSE below Wiener's;
lognormal (:func:`versus_exact`): within 2% of the exact MAP of the same kind (relative MSE
difference and relative r(k) difference in every bin).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from fieldflow.denoise.field_map import flow_map
from fieldflow.denoise.latent_map import flow_latent_map
from fieldflow.denoise.metrics import denoising_metrics
from fieldflow.denoise.observation import observe, signal_power_from_pk
from fieldflow.denoise.priors import lognormal_log_prior
from fieldflow.denoise.wiener import wiener_filter

__all__ = [
    "ESTIMATORS",
    "summarise",
    "versus_wiener",
    "versus_exact",
    "wiener_signal",
    "compare_estimators",
]

ESTIMATORS = {
    "wiener": "Wiener filter (S^-1 + M^T N^-1 M)^-1 M^T N^-1 d with S at the map's theta",
    "flow_map": "data-space MAP: argmax_s [-|d - M s|^2_N / 2 + log p_flow(s | theta)]",
    "flow_latent_map": "latent MAP: s = f^-1(z_hat), z_hat = argmax_z "
    "[-|d - M f^-1(z)|^2_N / 2 - |z|^2 / 2] (no log-determinant)",
    "exact_map": "data-space MAP under the exact lognormal prior log p(delta | theta)",
    "exact_latent_map": "MAP of g = log(1 + delta) under its exact Gaussian prior, mapped to delta",
}


def summarise(met: dict, seconds: float, res=None) -> dict:
    """Means over maps of :func:`~fieldflow.denoise.denoising_metrics` ``met`` (per map),
    the wall time and, for a MAP result ``res``, its convergence."""
    n = len(met["mse_all"])
    out = {
        "k": np.asarray(met["k"]).tolist(),
        "r_k": np.mean(met["r_k"], axis=0).tolist(),
        "residual_pk": np.mean(met["residual_pk"], axis=0).tolist(),
        "truth_pk": np.mean(met["truth_pk"], axis=0).tolist(),
        "mse_all": float(np.mean(met["mse_all"])),
        "mse_observed": float(np.mean(met["mse_observed"])),
        "mse_masked": float(np.mean(met["mse_masked"])),
        "mse_all_stderr": float(np.std(met["mse_all"]) / np.sqrt(n)),
        "seconds": round(seconds, 2),
    }
    if res is not None:
        out.update(
            fraction_converged=float(np.mean(np.asarray(res.converged))),
            stopped=res.stopped,
            iterations=res.iterations,
            grad_norm_max=float(np.max(np.asarray(res.grad_norm))),
        )
    return out


def versus_wiener(met: dict, ref: dict) -> dict:
    """Targets of an estimator against the Wiener filter (per-map differences, then means)."""
    dr = np.asarray(met["r_k"]) - np.asarray(ref["r_k"])  # (B, n_bins)
    mean, err = dr.mean(0), dr.std(0) / np.sqrt(len(dr))
    upper = np.arange(len(mean)) >= len(mean) // 2
    k = np.asarray(met["k"])
    mse_ratio = float(np.mean(met["mse_all"]) / np.mean(ref["mse_all"]))
    return {
        "upper_half_k_from": float(k[upper][0]),
        "r_k_difference": mean.tolist(),
        "r_k_difference_stderr": err.tolist(),
        "r_k_above_on_upper_half": bool(np.all(mean[upper] > 0)),
        "r_k_min_difference": float(mean.min()),
        "r_k_min_difference_at_k": float(k[np.argmin(mean)]),
        "r_k_never_below_by_0.01": bool(mean.min() >= -0.01),
        "mse_ratio": mse_ratio,
        "mse_lower": mse_ratio < 1.0,
        "all_targets_met": bool(np.all(mean[upper] > 0) and mean.min() >= -0.01)
        and mse_ratio < 1.0,
    }


def versus_exact(flow: dict, exact: dict, tol: float = 0.02) -> dict:
    """A flow estimator's summary against the exact-prior MAP's of the same kind."""
    rf, re = np.asarray(flow["r_k"]), np.asarray(exact["r_k"])
    rel_r = np.abs(rf - re) / np.maximum(np.abs(re), 1e-3)
    dm = flow["mse_all"] / exact["mse_all"] - 1.0
    return {
        "mse_relative_difference": float(dm),
        "r_k_max_abs_difference": float(np.max(np.abs(rf - re))),
        "r_k_max_relative_difference": float(np.max(rel_r)),
        "within_2_percent": bool(abs(dm) <= tol and np.all(rel_r <= tol)),
    }


def wiener_signal(
    simulator: str, theta, n: int, box: float, *, slab=None, train=None
) -> tuple[np.ndarray, str]:
    """``(S_k per map (B, N, N//2+1), description)`` for the Wiener filter at each theta.

    Lognormal: the exact P_2D(k; theta) of the simulator (``data_gen.pixel_power_grid``).
    Otherwise an emulator of the training maps ``train = (maps, theta)``
    (:class:`fieldflow.inference.PowerSpectrumEmulator`, degree 2 in theta), piecewise
    constant over the modes of each bin, with the variance of the map mean at k = 0.
    """
    theta = np.asarray(theta, np.float32)
    if simulator == "lognormal":
        from data_gen.power import pixel_power_grid

        signal = n**2 * np.asarray(pixel_power_grid(theta, n, box, slab))
        return signal, "exact P_2D(k; theta) of the lognormal simulator, per map"
    if train is None:
        raise ValueError(f"the {simulator} Wiener signal needs training maps for its emulator")
    from fieldflow import metrics
    from fieldflow.inference import PowerSpectrumEmulator

    maps, train_theta = np.asarray(train[0], np.float32), np.asarray(train[1])
    emu = PowerSpectrumEmulator.fit(maps, train_theta, box, degree=2)
    k0 = box**2 * float(np.mean(np.mean(maps, axis=(1, 2)) ** 2))  # P(0) = L^2 <mean^2>
    signal = np.stack(
        [signal_power_from_pk(p, n, box, edges=emu.edges, k0_power=k0) for p in emu.mean(theta)]
    )
    pk = np.asarray(metrics.power_spectrum(maps, box, emu.edges))
    resid = np.log(np.maximum(pk, 1e-30)) - np.log(emu.mean(train_theta))
    rms = float(np.sqrt(np.mean(resid**2)))
    text = (
        "emulated: <P(k)> of the training maps fitted per k bin by exp(quadratic in theta) "
        f"(rms scatter of one map's log P(k) about the fit {rms:.3f}, mostly sample "
        "variance), per map"
    )
    return signal, text


def compare_estimators(
    truth,
    theta,
    model,
    box: float,
    signal,
    *,
    mask_fraction: float = 0.2,
    seed: int = 0,
    steps: int = 1000,
    gtol: float = 1e-4,
    exact: bool = False,
    verbose: bool = True,
) -> dict:
    """Every estimator of :data:`ESTIMATORS` on the maps ``truth`` (B, N, N) at ``theta``.

    The observation: ``make_mask(key(seed), N, mask_fraction)`` and white noise of each map's
    pixel variance (seed ``seed + 1``). ``signal`` holds S_k per map (:func:`wiener_signal`);
    ``exact`` adds the exact lognormal MAPs. Returns a dict: ``methods`` (summaries),
    ``targets`` (against Wiener and, with ``exact``, against the exact MAPs), the estimators'
    descriptions, the observation's settings, and (not JSON) ``fields`` (reconstructions),
    ``data`` and ``mask``.
    """
    import jax

    from fieldflow.masks import make_mask

    truth = np.asarray(truth, np.float32)
    theta = np.asarray(theta, np.float32)
    n = truth.shape[-1]
    mask = np.asarray(make_mask(jax.random.key(seed), n, mask_fraction))
    noise_var = np.var(truth, axis=(1, 2)).astype(np.float32)  # S/N = 1 per pixel, per map
    noise = np.broadcast_to(noise_var[:, None, None], truth.shape).astype(np.float32)
    d = observe(truth, mask, noise, seed + 1)

    fields, mets, results = {}, {}, {}

    def record(name, field, seconds, res=None):
        fields[name] = np.asarray(field)
        mets[name] = denoising_metrics(truth, fields[name], mask, box)
        results[name] = summarise(mets[name], seconds, res)
        if verbose:
            mse = results[name]["mse_all"]
            print(f"[benchmark_denoise] {name}: {mse:.4f} MSE, {seconds:.1f} s", file=sys.stderr)

    t0 = time.perf_counter()
    wf = np.stack(
        [
            np.asarray(wiener_filter(d[i], mask, noise_var[i], signal[i], tol=1e-6).field)
            for i in range(len(truth))
        ]
    )
    record("wiener", wf, time.perf_counter() - t0)

    kw = {"init": wf, "steps": steps, "gtol": gtol}
    t0 = time.perf_counter()
    res = flow_map(model.log_prob, d, mask, noise, cond=theta, **kw)
    record("flow_map", res.field, time.perf_counter() - t0, res)
    t0 = time.perf_counter()
    res = flow_latent_map(model, d, mask, noise, cond=theta, **kw)
    record("flow_latent_map", res.field, time.perf_counter() - t0, res)
    if exact:
        for name, jac in (("exact_map", True), ("exact_latent_map", False)):
            prior = lognormal_log_prior(theta, box, jacobian=jac)
            t0 = time.perf_counter()
            res = flow_map(prior, d, mask, noise, parametrization="log1p", **kw)
            record(name, res.field, time.perf_counter() - t0, res)

    targets = {
        f"{name}_vs_wiener": versus_wiener(mets[name], mets["wiener"])
        for name in results
        if name != "wiener"
    }
    if exact:
        targets["flow_map_vs_exact_map"] = versus_exact(results["flow_map"], results["exact_map"])
        targets["flow_latent_map_vs_exact_latent_map"] = versus_exact(
            results["flow_latent_map"], results["exact_latent_map"]
        )
    return {
        "n_maps": len(truth),
        "theta_range": [theta.min(0).tolist(), theta.max(0).tolist()],
        "mask_fraction": float(1 - mask.mean()),
        "noise": "white, variance = the pixel variance of each map",
        "signal_to_noise_per_pixel": float(np.mean(np.sqrt(np.var(truth, (1, 2)) / noise_var))),
        "optimiser": f"L-BFGS, at most {steps} steps, gtol {gtol}, from the Wiener "
        "filter; no Wiener large scales spliced in",
        "estimators": {k: v for k, v in ESTIMATORS.items() if k in results},
        "methods": results,
        "targets": targets,
        "fields": fields,
        "data": d,
        "mask": mask,
    }
