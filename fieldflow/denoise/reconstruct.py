"""One reconstruction of a set of maps, as ``fieldflow denoise`` runs it.

:func:`prepare_observation` turns true maps into a synthetic observation (survey mask and
white noise) or takes the maps as the observation; :func:`wiener_signal_power` gives S_k for
the Wiener filter (from a P(k) file or from theta); :func:`reconstruct` runs the Wiener
filter and a MAP under one of :data:`PRIORS`; :func:`reconstruction_summary` is the JSON
summary. Mistakes in the input raise ValueError (or FileNotFoundError) with one line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fieldflow.denoise.field_map import flow_map
from fieldflow.denoise.latent_map import flow_latent_map
from fieldflow.denoise.metrics import denoising_metrics
from fieldflow.denoise.observation import observe, signal_power_from_pk
from fieldflow.denoise.priors import gaussian_log_prior, lognormal_log_prior
from fieldflow.denoise.solver import MAPResult
from fieldflow.denoise.wiener import WienerResult, wiener_filter

__all__ = [
    "PRIORS",
    "Reconstruction",
    "prepare_observation",
    "wiener_signal_power",
    "reconstruct",
    "reconstruction_summary",
]

#: MAP priors: a flow's density ("flow"), its latent ("flow-latent"), the exact lognormal
#: density in delta or of g = log(1 + delta), the Gaussian of the Wiener filter, or no MAP.
PRIORS = ("flow", "flow-latent", "lognormal", "lognormal-latent", "gaussian", "none")


class Reconstruction(NamedTuple):
    """The Wiener filter, the MAP (None for ``prior="none"``) and their wall times (s)."""

    wiener: WienerResult
    map: MAPResult | None
    seconds_wiener: float
    seconds_map: float | None


def _read_npz(path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in f.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {what} {path}: {err}") from None


def prepare_observation(
    maps: np.ndarray,
    *,
    observed: bool = False,
    mask_file=None,
    masked_fraction: float = 0.2,
    mask_seed: int = 0,
    noise_sigma: float | None = None,
    noise_fraction: float = 0.5,
    noise_seed: int = 1,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """``(truth or None, data, mask, noise_var)`` for maps (B, N, N).

    The mask (and optionally ``noise_var``) come from ``mask_file`` (an .npz with ``mask``
    (N, N), 1 = observed), else from ``fieldflow.masks.make_mask`` with ``masked_fraction``
    and ``mask_seed``. Without a noise_var in the file, the noise standard deviation is
    ``noise_sigma``, else ``noise_fraction`` times the maps' pixel std. ``observed`` maps are
    the data d themselves (no truth); otherwise d = M (s + n) with noise seed ``noise_seed``.
    """
    n = maps.shape[-1]
    noise_var = None
    if mask_file is not None:
        f = _read_npz(mask_file, "mask file")
        if "mask" not in f:
            raise ValueError(f"{mask_file} has no 'mask' (keys: {sorted(f)})")
        mask = f["mask"].astype(np.float32)
        if "noise_var" in f:
            noise_var = f["noise_var"].astype(np.float32)
    else:
        import jax

        from fieldflow.masks import make_mask

        mask = np.asarray(make_mask(jax.random.key(mask_seed), n, masked_fraction))
    if noise_var is None:
        sigma = noise_fraction * float(maps.std()) if noise_sigma is None else noise_sigma
        noise_var = np.float32(sigma**2)
    if observed:
        return None, maps, mask, noise_var
    return maps, observe(maps, mask, noise_var, noise_seed), mask, noise_var


def wiener_signal_power(n: int, box: float, *, pk_file=None, theta=None) -> np.ndarray:
    """S_k (N, N//2+1) for the Wiener filter: from ``pk_file`` (an .npz with ``pk`` binned on
    ``fieldflow.fourier.k_bin_edges`` or ``pk_half`` on the rfft2 half plane, in
    (h^-1 Mpc)^2), else from the simulator's P_2D at the first row of ``theta``."""
    if pk_file is not None:
        f = _read_npz(pk_file, "P(k) file")
        if "pk_half" in f:
            return signal_power_from_pk(f["pk_half"], n, box)
        if "pk" in f:
            return signal_power_from_pk(f["pk"].ravel(), n, box)
        raise ValueError(f"{pk_file} has neither 'pk' nor 'pk_half'")
    if theta is None:
        raise ValueError(
            "need --theta (or theta in the map file) or --pk-file for the Wiener filter"
        )
    from data_gen import power_2d_grid

    pk_half = np.asarray(power_2d_grid(np.asarray(theta[0]), n, box))[0]
    return signal_power_from_pk(pk_half, n, box)


def _map_prior(prior: str, model, theta, box: float, signal_power_half, fit_theta: bool):
    """(log_prior, cond, extra flow_map keywords) of a MAP prior."""
    kwargs: dict = {}
    cond = None
    if prior in ("flow", "flow-latent"):
        if model is None:
            raise ValueError(f"--prior {prior} needs --model RUN_DIR")
        log_prior = model.log_prob
        if getattr(model, "cond_dim", 0):
            if theta is None:
                raise ValueError("the flow is conditional: give --theta")
            cond = theta
    elif prior.startswith("lognormal"):
        if theta is None:
            raise ValueError("the lognormal prior needs --theta")
        log_prior = lognormal_log_prior(theta, box, jacobian=prior == "lognormal")
        cond = theta if fit_theta else None
        kwargs["parametrization"] = "log1p"
    else:
        log_prior = gaussian_log_prior(signal_power_half)
    if fit_theta:
        if cond is None:
            raise ValueError("--fit-theta needs a conditional prior and a starting theta")
        if prior.startswith("lognormal"):
            from data_gen import SUPPORTED_OMEGA_M_RANGE, SUPPORTED_SIGMA8_RANGE

            om, s8 = SUPPORTED_OMEGA_M_RANGE, SUPPORTED_SIGMA8_RANGE  # the simulator's range
            kwargs["theta_bounds"] = ((om[0], s8[0]), (om[1], s8[1]))
    return log_prior, cond, kwargs


def reconstruct(
    data,
    mask,
    noise_var,
    signal_power_half,
    *,
    prior: str = "none",
    model=None,
    theta=None,
    box: float = 256.0,
    steps: int = 1000,
    gtol: float = 1e-4,
    optimizer: str = "lbfgs",
    learning_rate: float = 1e-2,
    fit_theta: bool = False,
    cg_tol: float = 1e-6,
    cg_max_iter: int = 1000,
) -> Reconstruction:
    """The Wiener filter of ``data`` and, unless ``prior == "none"``, the MAP from it.

    ``prior`` is one of :data:`PRIORS`: "flow" (:func:`flow_map` with ``model.log_prob``),
    "flow-latent" (:func:`flow_latent_map` of ``model``), "lognormal" / "lognormal-latent"
    (the exact lognormal prior with / without its Jacobian, at ``theta``), "gaussian" (the
    Gaussian of ``signal_power_half``: its MAP is the Wiener filter). ``theta`` (B, 2) is
    the flow's condition; ``fit_theta`` also maximises over it.
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
    t0 = time.perf_counter()
    wf = wiener_filter(data, mask, noise_var, signal_power_half, tol=cg_tol, max_iter=cg_max_iter)
    t_wf = time.perf_counter() - t0
    if prior == "none":
        return Reconstruction(wf, None, t_wf, None)
    log_prior, cond, kwargs = _map_prior(prior, model, theta, box, signal_power_half, fit_theta)
    t0 = time.perf_counter()
    if prior == "flow-latent":
        res = flow_latent_map(
            model, data, mask, noise_var, cond=cond, init=wf.field, steps=steps, gtol=gtol
        )
    else:
        res = flow_map(
            log_prior,
            data,
            mask,
            noise_var,
            init=wf.field,
            cond=cond,
            steps=steps,
            gtol=gtol,
            optimizer=optimizer,
            learning_rate=learning_rate,
            fit_theta=fit_theta,
            **kwargs,
        )
    return Reconstruction(wf, res, t_wf, time.perf_counter() - t0)


def reconstruction_summary(
    rec: Reconstruction, truth, mask, noise_var, *, box: float, theta=None, prior: str
) -> dict:
    """Settings, convergence and (with a truth) r(k), residual P(k) and pixel MSE inside and
    outside the mask of a :class:`Reconstruction`, as JSON-ready values."""
    wf, res = rec.wiener, rec.map
    b, n = np.shape(wf.field)[0], np.shape(wf.field)[-1]
    summary = {
        "n_maps": int(b),
        "n": int(n),
        "box": box,
        "theta": None if theta is None else np.asarray(theta).tolist(),
        "masked_fraction": float(1.0 - np.mean(mask)),
        "noise_var": np.asarray(noise_var).mean().item(),
        "prior": prior,
        "wiener": {
            "iterations": np.asarray(wf.iterations).tolist(),
            "residual": np.asarray(wf.residual).tolist(),
            "converged": np.asarray(wf.converged).tolist(),
            "seconds": rec.seconds_wiener,
        },
    }
    if res is not None:
        summary["map"] = {
            "iterations": res.iterations,
            "stopped": res.stopped,
            "grad_norm": np.asarray(res.grad_norm).tolist(),
            "converged": np.asarray(res.converged).tolist(),
            "objective_nats": np.asarray(res.objective).tolist(),
            "seconds": rec.seconds_map,
            "theta": None if res.theta is None else np.asarray(res.theta).tolist(),
        }
    if truth is not None:
        summary["metrics"] = {"wiener": denoising_metrics(truth, wf.field, mask, box)}
        if res is not None:
            summary["metrics"]["map"] = denoising_metrics(truth, res.field, mask, box)
    return summary
