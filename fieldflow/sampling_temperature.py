"""Sampling temperature: mock maps whose power matches the simulations they were trained on.

A flow fitted by maximum likelihood covers its data and a little more, and where a map's
power sits in rare high peaks (N-body maps, a log transform before the flow) that little is
amplified: a latent a few per cent too wide gives samples x = f^-1(z; theta), z ~ N(0, I),
with every P(k) bin several times as many per cent too high. Drawing the latent with a
temperature,

    z ~ N(0, T(theta)^2 I),    ln T(theta) = sum_j a_j phi_j(u),
    u = 2 (theta - low) / (high - low) - 1,

(phi: the monomials of u up to total ``degree``, ``inference.emulator.poly_features``;
low, high the model's trained range) brings the
power back. The coefficients a solve the moment equations, over training maps x_i at their
own theta_i and one latent z_i each (fixed: common random numbers),

    sum_i phi_j(u_i) [Q(f^-1(T(theta_i) z_i; theta_i)) - Q(x_i)] / Qhat(theta_i) = 0,

with Q(x) = sum_{k < k_Nyquist} P(k; x) / Pbar(k) the map's band power (Pbar the training
maps' mean spectrum: every bin weighs alike) and Qhat(theta) a quadratic fit of the maps'
Q(x_i): the samples' mean band power then follows the maps' over the trained range. Newton
steps, the Jacobian from one finite difference in ln T per step.

Tempered maps are *not* draws from the flow's density p(x | theta) (``log_prob`` is
unchanged): they are mocks calibrated on the training simulations' power. Check them
against fresh simulations (``scripts/benchmark_samples.py RUN DATA --temperature FILE``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "SamplingTemperature",
    "fit_sampling_temperature",
    "temperature_at",
    "TEMPERATURE_FILE",
]

TEMPERATURE_FILE = "sampling_temperature.json"
_FORMAT = "fieldflow.sampling_temperature/1"


def _unit_theta(theta, low, high) -> np.ndarray:
    """u = 2 (theta - low) / (high - low) - 1 of theta (M, 2) inside [low, high]."""
    from fieldflow.inference.emulator import unit_theta
    from fieldflow.validation import check_cond_range

    theta = np.atleast_2d(np.asarray(theta, np.float64))
    if theta.ndim != 2 or theta.shape[1] != 2:
        raise ValueError(f"theta must have shape (M, 2), got {theta.shape}")
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta contains NaN or inf values")
    check_cond_range(theta, low, high, "theta")
    return unit_theta(theta, np.asarray(low, np.float64), np.asarray(high, np.float64))


def _features(theta, low, high, degree: int) -> np.ndarray:
    """phi_j(u(theta)), (M, n_terms): the emulators' monomials of total ``degree``."""
    from fieldflow.inference.emulator import poly_features

    return poly_features(_unit_theta(theta, low, high), int(degree))


@dataclass(frozen=True)
class SamplingTemperature:
    """T(theta) = exp(sum_j coefficients_j phi_j(u)) over a model's trained range.

    Call it with theta (M, cond_dim) for T (M,). ``save`` / ``load`` write and read JSON
    (``TEMPERATURE_FILE``); ``fit_diagnostics`` records how the fit went."""

    coefficients: tuple[float, ...]
    degree: int
    theta_low: tuple[float, ...]
    theta_high: tuple[float, ...]
    fit_diagnostics: dict | None = None

    def __post_init__(self):
        n_terms = (self.degree + 1) * (self.degree + 2) // 2
        if len(self.theta_low) != 2 or len(self.theta_high) != 2 or self.degree < 0:
            raise ValueError("a sampling temperature is a function of (Omega_m, sigma_8)")
        if len(self.coefficients) != n_terms:
            raise ValueError(
                f"a degree-{self.degree} temperature has {n_terms} coefficients, "
                f"got {len(self.coefficients)}"
            )

    def __call__(self, theta) -> np.ndarray:
        """T at each row of theta, (M, 2): (M,)."""
        phi = _features(theta, self.theta_low, self.theta_high, self.degree)
        return np.exp(phi @ np.asarray(self.coefficients))

    def save(self, path) -> Path:
        from fieldflow.io import write_json

        return write_json(path, {"format": _FORMAT, **asdict(self)})

    @classmethod
    def load(cls, path) -> SamplingTemperature:
        """Read a file written by :meth:`save` (ValueError for anything else)."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read a sampling temperature from {path}: {err}") from None
        if not isinstance(payload, dict) or payload.pop("format", None) != _FORMAT:
            raise ValueError(f"{path} is not a fieldflow sampling-temperature file")
        return cls(
            coefficients=tuple(payload["coefficients"]),
            degree=int(payload["degree"]),
            theta_low=tuple(payload["theta_low"]),
            theta_high=tuple(payload["theta_high"]),
            fit_diagnostics=payload.get("fit_diagnostics"),
        )


def temperature_at(value, theta) -> tuple[float, str]:
    """``(T, where it came from)`` for a command line's ``--temperature`` at one theta (D,):
    None (T = 1, the flow's own samples), a number, or the path of a file written by
    :meth:`SamplingTemperature.save` (ValueError for anything else)."""
    if value is None:
        return 1.0, "none (the flow's own samples)"
    try:
        return float(value), "--temperature"
    except (TypeError, ValueError):
        fitted = SamplingTemperature.load(value)
    if theta is None:
        raise ValueError("a fitted sampling temperature needs a conditional model")
    return float(fitted(np.asarray(theta, np.float64)[None])[0]), str(value)


def _spectra_below_nyquist(maps, box: float, batch: int = 1024) -> np.ndarray:
    """P(k) of each map in the bins below the Nyquist frequency, (M, K) float64."""
    from fieldflow import fourier, metrics

    below = fourier.bins_below_nyquist(np.shape(maps)[-1], box)
    parts = [
        np.asarray(metrics.power_spectrum(maps[i : i + batch], box), np.float64)[:, below]
        for i in range(0, len(maps), batch)
    ]
    return np.concatenate(parts)


def fit_sampling_temperature(
    model,
    maps,
    theta,
    box: float,
    *,
    key=None,
    degree: int = 1,
    max_iterations: int = 6,
    tolerance: float = 1e-3,
    step: float = 0.01,
    batch: int = 256,
    progress: bool = True,
) -> SamplingTemperature:
    """Fit T(theta) so that the model's tempered samples match ``maps``' band power.

    Args:
        model: a conditional flow (``sample``-able; ``cond_low`` / ``cond_high`` its range).
        maps: training maps (M, N, N) at ``theta`` (M, cond_dim), inside the trained range.
        box: side of the maps in h^-1 Mpc (fixes the k bins).
        key: ``jax.random`` key of the latents z_i (default ``jax.random.key(0)``).
        degree: of ln T in theta (0: one temperature everywhere).
        max_iterations, tolerance: Newton steps until every moment equation, divided by the
            number of maps, is below ``tolerance`` (a relative band-power difference).
        step: the finite difference in ln T of the Jacobian.
        batch: maps per call of the inverse flow (the last call is padded: one compilation).

    Returns:
        A :class:`SamplingTemperature` whose ``fit_diagnostics`` hold the maps' number, the
        iterations, the final moment residuals, the samples' mean band power over the maps'
        before (T = 1) and after, and the fitted T's range over the maps' theta.
    """
    import time

    import jax
    from tqdm.auto import tqdm

    from fieldflow.validation import check_maps

    t0 = time.perf_counter()
    cond_dim = int(getattr(model, "cond_dim", 0))
    if cond_dim != 2:
        raise ValueError("a sampling temperature is fitted for a conditional model of theta (2,)")
    x, _ = check_maps(np.asarray(maps), int(model.shape[0]), "maps", allow_single=False)
    theta = np.asarray(theta, np.float64)
    if theta.shape != (len(x), cond_dim):
        raise ValueError(f"theta must have shape ({len(x)}, {cond_dim}), got {theta.shape}")
    if not (box > 0 and np.isfinite(box)):
        raise ValueError(f"box must be positive and finite, got {box}")
    if int(degree) < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    phi = _features(theta, model.cond_low, model.cond_high, degree)
    quad = _features(theta, model.cond_low, model.cond_high, 2)
    if len(x) < 4 * max(phi.shape[1], quad.shape[1]):
        raise ValueError(f"{len(x)} maps are too few to fit a degree-{degree} temperature")
    key = jax.random.key(0) if key is None else key

    pk_maps = _spectra_below_nyquist(x, box)
    pbar = pk_maps.mean(axis=0)
    if not np.all(pbar > 0):
        raise ValueError("the maps have no power in some k bin: nothing to match")
    q_maps = pk_maps @ (1.0 / pbar)
    q_hat = quad @ np.linalg.lstsq(quad, q_maps, rcond=None)[0]
    q_hat = np.maximum(q_hat, 0.1 * q_maps.mean())

    m, b = len(x), min(int(batch), len(x))
    pad = -(-m // b) * b
    z = np.asarray(jax.random.normal(key, (pad, *x.shape[1:]), dtype=np.float32))
    cond = np.resize(theta.astype(np.float32), (pad, cond_dim))
    bar = tqdm(desc="sampling temperature", unit="pass", disable=not progress)

    def band_power_of_samples(log_t: np.ndarray) -> np.ndarray:
        t = np.resize(np.exp(log_t), pad).astype(np.float32)
        out = []
        for i in range(0, pad, b):
            s = model.inverse(z[i : i + b] * t[i : i + b, None, None], cond[i : i + b])
            out.append(_spectra_below_nyquist(np.asarray(s), box) @ (1.0 / pbar))
        bar.update()
        q = np.concatenate(out)[:m]
        if not np.all(np.isfinite(q)):
            raise ValueError("the model's samples are not finite: no temperature can be fitted")
        return q

    a = np.zeros(phi.shape[1])
    q = band_power_of_samples(phi @ a)
    before = float(np.mean(q / q_hat) / np.mean(q_maps / q_hat))
    history = []
    for it in range(int(max_iterations) + 1):
        resid = phi.T @ ((q - q_maps) / q_hat) / m
        history.append(float(np.max(np.abs(resid))))
        if history[-1] < tolerance or it == int(max_iterations):
            break
        dq = (band_power_of_samples(phi @ a + step) - q) / step
        jac = phi.T @ (phi * (dq / q_hat)[:, None]) / m
        delta = -np.linalg.solve(jac, resid)
        largest = np.max(np.abs(phi @ delta))
        a = a + delta * min(1.0, 0.2 / largest) if largest > 0 else a
        q = band_power_of_samples(phi @ a)
    bar.close()
    if history[-1] >= tolerance:
        import warnings

        warnings.warn(
            f"the sampling temperature did not converge in {max_iterations} Newton steps "
            f"(moment residual {history[-1]:.2g} > {tolerance:g}): check fit_diagnostics",
            RuntimeWarning,
            stacklevel=2,
        )
    t_maps = np.exp(phi @ a)
    diagnostics = {
        "n_maps": m,
        "iterations": len(history) - 1,
        "max_abs_moment_residual": history[-1],
        "converged": bool(history[-1] < tolerance),
        "band_power_ratio_before": before,
        "band_power_ratio_after": float(np.mean(q / q_hat) / np.mean(q_maps / q_hat)),
        "temperature_min": float(t_maps.min()),
        "temperature_max": float(t_maps.max()),
        "seconds": time.perf_counter() - t0,
    }
    return SamplingTemperature(
        tuple(float(v) for v in a),
        int(degree),
        tuple(model.cond_low),
        tuple(model.cond_high),
        diagnostics,
    )
