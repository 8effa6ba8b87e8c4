r"""The data-space MAP of a field under any prior (Rouhiainen & Muenchmeyer, arXiv:2211.15161):

    s_MAP = argmax_s  [ -1/2 (d - M s)^T N^-1 (d - M s) + log p(s | theta) ]

with any log-prior callable ``log_prior(s, cond) -> (B,)`` in nats (e.g. ``model.log_prob``
of a trained flow, :func:`~fieldflow.denoise.gaussian_log_prior`, or the exact lognormal
density), by L-BFGS or Adam (optax) from the Wiener filter, in the one compiled loop of
:mod:`fieldflow.denoise.solver`. For a Gaussian prior with covariance C the MAP is the
Wiener filter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fieldflow.denoise.observation import (
    check_batch_cond,
    check_data,
    check_mask,
    check_noise,
    noise_weights,
)
from fieldflow.denoise.solver import (
    MAPResult,
    PlainCallable,
    check_solver_settings,
    domain_floor,
    module_method,
    run_solver,
    start_field,
)

__all__ = ["flow_map"]


@dataclasses.dataclass(frozen=True)
class FieldObjective:
    """Per map: -1/2 |d - M s|^2_N + log_prior(s, theta) with s = s(u) and, when theta is
    fitted, theta = lo + (hi - lo) sigmoid(t).

    ``log_prior`` is a pure ``fn(state, s, cond)`` (:mod:`~fieldflow.denoise.solver`);
    ``parametrization`` "identity" optimises u = s, "log1p" u = log(1 + s).
    """

    log_prior: Callable
    parametrization: str = "identity"
    theta_low: tuple[float, ...] | None = None
    theta_high: tuple[float, ...] | None = None

    def field(self, params):
        u = params["u"]
        return jnp.expm1(u) if self.parametrization == "log1p" else u

    def theta(self, params):
        if "t" not in params:
            return None
        lo = jnp.asarray(self.theta_low, jnp.float32)
        hi = jnp.asarray(self.theta_high, jnp.float32)
        return lo + (hi - lo) * jax.nn.sigmoid(params["t"])

    def per_map(self, params, state, d, w, cond):
        s = self.field(params)
        c = cond if "t" not in params else self.theta(params)
        loglike = -0.5 * jnp.sum(w * (d - s) ** 2, axis=(-2, -1))
        return loglike + self.log_prior(state, s, c)

    def evaluate(self, params, state, d, w, cond):
        """(objective per map, field) at the solution."""
        return self.per_map(params, state, d, w, cond), self.field(params)


def _theta_start(cond, log_prior, theta_bounds) -> tuple[tuple, tuple, np.ndarray]:
    """(lo, hi, logits t) of the starting theta for ``fit_theta``."""
    if cond is None:
        raise ValueError("fit_theta needs a starting cond (B, P)")
    if theta_bounds is None:
        owner = getattr(log_prior, "__self__", None)
        lo, hi = getattr(owner, "cond_low", None), getattr(owner, "cond_high", None)
        if lo is None or hi is None:
            raise ValueError("fit_theta needs theta_bounds=(lo, hi)")
    else:
        lo, hi = theta_bounds
    lo = tuple(float(x) for x in np.ravel(lo))
    hi = tuple(float(x) for x in np.ravel(hi))
    p = cond.shape[1]
    if len(lo) != p or len(hi) != p or not np.all(np.array(hi) > np.array(lo)):
        raise ValueError(f"theta_bounds must give lo < hi for each of {p} params")
    frac = (cond - np.asarray(lo)) / (np.asarray(hi) - np.asarray(lo))
    frac = np.clip(frac, 1e-3, 1 - 1e-3)
    return lo, hi, np.log(frac) - np.log1p(-frac)


def flow_map(
    log_prior: Callable,
    d,
    mask,
    noise_var,
    *,
    init=None,
    cond=None,
    signal_power_half=None,
    steps: int = 1000,
    gtol: float = 1e-4,
    optimizer: str = "lbfgs",
    learning_rate: float = 1e-2,
    fit_theta: bool = False,
    theta_bounds=None,
    gtol_theta: float = 1e-4,
    parametrization: str | None = None,
    patience: int = 25,
) -> MAPResult:
    """MAP field argmax_s [-1/2 (d - M s)^T N^-1 (d - M s) + log_prior(s, cond)].

    The objective is in nats; the B maps are optimised jointly (their objectives
    add, their gradients are independent) in one jitted ``lax.while_loop``, so the
    optimiser step compiles once per call; a method of a flax NNX module (e.g.
    ``model.log_prob``) is split into graph and state so repeated calls with the
    same model structure and shapes reuse the compiled solver.

    Args:
        log_prior: ``log_prior(s, cond) -> (B,)`` nats for s (B, N, N): a flow's
            ``log_prob``, ``gaussian_log_prior``, ``lognormal_log_prior``, ...
        d, mask, noise_var: the data, as in :func:`~fieldflow.denoise.wiener_filter`.
        init: starting field (same shape as d). Default: the Wiener filter when
            ``signal_power_half`` is given, else the masked data M d.
        cond: conditions theta (B, P) passed to ``log_prior`` (None if unconditional);
            with ``fit_theta`` the starting point of theta.
        signal_power_half: S_k for the Wiener-filter start.
        steps: most optimiser steps.
        gtol: stop when every map has ||grad_s|| <= gtol ||M^T N^-1 d|| (the CG
            residual of the Gaussian case). The float32 floor is ~1e-5: below it the
            line search stalls and ``patience`` ends the run with converged=False.
        optimizer: "lbfgs" (optax L-BFGS with zoom line search) or "adam".
        learning_rate: Adam's step size (ignored by L-BFGS).
        fit_theta: also maximise over theta, as theta = lo + (hi - lo) sigmoid(t).
            Caution: the joint maximum of p(d | s) p(s | theta) is degenerate for a
            parameter that sets the amplitude of the field (sigma_8): s -> 0 with
            the amplitude -> 0 drives log p(s | theta) to +infinity, so the fit runs
            to the lower bound. It is well posed for parameters that leave the
            normalisation unchanged (e.g. a mean); use the marginal posterior for theta.
        theta_bounds: (lo, hi) sequences for fit_theta; default the model's
            ``cond_low``/``cond_high`` when ``log_prior`` is a model method.
        gtol_theta: with fit_theta, also require max |d objective / d t| / N^2 <=
            gtol_theta (nats per pixel per unit of the logit t; the float32 floor is
            ~1e-5).
        parametrization: "identity" optimises s; "log1p" optimises u = log(1 + s),
            keeping s > -1 (for the lognormal prior; the argmax is the same). Default:
            "log1p" for a flow with a log transform (``log_offset``), whose density
            vanishes below -1 - c, else "identity".
        patience: stop after this many steps without a decrease of the objective
            (a stalled line search at the float32 floor).

    Returns:
        :class:`~fieldflow.denoise.MAPResult`: ``objective`` is log-likelihood + log-prior.
    """
    d_b, single = check_data(d)
    b = d_b.shape[0]
    m = check_mask(mask, d_b.shape)
    v = check_noise(noise_var, d_b.shape)
    if not callable(log_prior):
        raise ValueError("log_prior must be a callable log_prior(s, cond) -> (B,)")
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    owner = getattr(log_prior, "__self__", None)
    if parametrization is None:
        parametrization = "identity" if domain_floor(owner) is None else "log1p"
    if parametrization not in ("identity", "log1p"):
        raise ValueError(f"parametrization must be 'identity' or 'log1p', got {parametrization!r}")
    check_solver_settings(steps, gtol, patience)
    w = noise_weights(m, v, d_b.shape)

    s0 = start_field(init, d_b, m, v, signal_power_half)
    u0 = np.log1p(np.maximum(s0, -1.0 + 1e-3)) if parametrization == "log1p" else s0
    params = {"u": jnp.asarray(u0, dtype=jnp.float32)}

    cond = check_batch_cond(cond, b)
    if cond is not None:
        low, high = getattr(owner, "cond_low", None), getattr(owner, "cond_high", None)
        if low is not None and high is not None and len(low) == cond.shape[1]:
            # inside the jitted solver the model cannot refuse a traced condition
            from fieldflow.validation import check_cond_range

            check_cond_range(cond, low, high)

    lo = hi = None
    if fit_theta:
        lo, hi, t0 = _theta_start(cond, log_prior, theta_bounds)
        params["t"] = jnp.asarray(t0, dtype=jnp.float32)

    name = getattr(getattr(log_prior, "__func__", None), "__name__", None)
    split = module_method(owner, name) if name is not None else None
    fn, state = split if split is not None else (PlainCallable(log_prior), None)
    objective = FieldObjective(fn, parametrization, lo, hi)
    return run_solver(
        objective,
        params,
        state,
        d_b,
        w,
        cond,
        single=single,
        steps=steps,
        gtol=gtol,
        gtol_theta=gtol_theta,
        optimizer=optimizer,
        learning_rate=learning_rate,
        patience=patience,
    )
