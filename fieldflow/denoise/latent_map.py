r"""The latent MAP of a flow: the MAP of its Gaussian latent z, mapped to the field.

With s = f^-1(z | theta) and z ~ N(0, I),

    z_MAP = argmax_z  [ -1/2 (d - M s(z))^T N^-1 (d - M s(z)) - 1/2 |z|^2 ],

returned as s(z_MAP). It drops the log-determinant of f from the prior. For a
lognormal field and a flow whose first layer is ~log(1 + delta) it is the analogue of
the exact MAP of the Gaussian g = log(1 + delta) (``lognormal_log_prior(...,
jacobian=False)``), which beats the Wiener filter, whereas the data-space MAP
(:mod:`fieldflow.denoise.field_map`), like the exact MAP in delta, is pulled towards the
mode of the one-point PDF (delta -> -1 in the masked, noisy pixels) and loses to it. For a
Gaussian flow both are the Wiener filter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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

__all__ = ["flow_latent_map"]


@dataclasses.dataclass(frozen=True)
class LatentObjective:
    """Per map: -1/2 |d - M f^-1(z)|^2_N - 1/2 |z|^2, z = ``params["u"]``.

    ``inverse`` is a pure ``fn(state, z, cond)`` (:mod:`~fieldflow.denoise.solver`).
    """

    inverse: Callable

    def theta(self, params):
        return None

    def evaluate(self, params, state, d, w, cond):
        """(objective per map, field s = f^-1(z)) at the solution."""
        z = params["u"]
        s = self.inverse(state, z, cond)
        loglike = -0.5 * jnp.sum(w * (d - s) ** 2, axis=(-2, -1))
        return loglike - 0.5 * jnp.sum(z * z, axis=(-2, -1)), s

    def per_map(self, params, state, d, w, cond):
        return self.evaluate(params, state, d, w, cond)[0]


def _flow_parts(model) -> tuple[Callable, Callable, object]:
    """(forward callable, pure inverse fn(state, z, cond), state) of a flow.

    An NNX flow with a pure ``_inverse`` (every fieldflow model) is split into graph and
    state, so the compiled solver is shared by models of one structure and stays valid after
    further training. Anything else with ``forward``/``inverse`` methods, or a pair
    ``(forward, inverse)`` of callables, is traced as it is and cached by identity.
    """
    if isinstance(model, tuple):
        if len(model) != 2 or not all(callable(f) for f in model):
            raise ValueError("model must be a flow or a pair (forward, inverse) of callables")
        forward, inverse = model
    elif callable(getattr(model, "forward", None)) and callable(getattr(model, "inverse", None)):
        forward, inverse = model.forward, model.inverse
    else:
        raise ValueError(
            "flow_latent_map needs a flow with forward(x, cond) -> (z, logdet) and "
            "inverse(z, cond) -> x, or a pair (forward, inverse) of callables"
        )
    split = module_method(model, "_inverse") if hasattr(model, "_inverse") else None
    if split is not None:
        return forward, *split
    return forward, PlainCallable(inverse), None


def flow_latent_map(
    model,
    d,
    mask,
    noise_var,
    *,
    cond=None,
    init=None,
    signal_power_half=None,
    steps: int = 1000,
    gtol: float = 1e-4,
    patience: int = 25,
) -> MAPResult:
    r"""Latent MAP of a flow: the MAP of its Gaussian latent z, mapped to the field.

        z_hat = argmax_z [ -1/2 (d - M s(z))^T N^-1 (d - M s(z)) - 1/2 |z|^2 ],
        s(z) = f^-1(z | theta),      returns  s_hat = f^-1(z_hat | theta).

    **Not** the "data-space MAP" of the field (:func:`~fieldflow.denoise.flow_map` with
    ``model.log_prob``), argmax_s [-1/2 |d - M s|^2_N + log p_flow(s | theta)]: the
    two differ by the flow's log-determinant log|det df/ds| in the prior, which this
    estimator leaves out (equivalently, it is the data-space MAP with the prior density
    taken with respect to the measure that f pushes to N(0, I)). Why: for a lognormal
    field the log-determinant of f(delta) ~ log(1 + delta) is -sum log(1 + delta), which
    sinks the weakly constrained (masked, noisy) pixels towards the mode of the
    one-point PDF, below the mean (``lognormal_log_prior``); a TRENF whose first
    Psi ~ log(1 + delta) then makes this estimator the analogue of the exact MAP of
    g = log(1 + delta) (``lognormal_log_prior(..., jacobian=False)``). For a linear
    (Gaussian) flow, log|det| is a constant and both estimators are the Wiener filter.
    The estimator depends on the flow's parametrisation of the latent, not only on the
    density p(s | theta): it is a practical estimator, not the mode of the posterior.

    Args:
        model: the flow: an object with ``forward(x, cond) -> (z, logdet)`` and
            ``inverse(z, cond) -> x`` (every fieldflow model; an NNX model is split
            into graph and state so the compiled solver is reused across calls and
            training), or a pair ``(forward, inverse)`` of callables; ``inverse`` must
            be traceable by jax (it runs inside the jitted loop).
        d, mask, noise_var: the data, as in :func:`~fieldflow.denoise.wiener_filter`.
        cond: conditions theta (B, P) or (P,) for a conditional flow, else None.
        init: starting field; default the Wiener filter when ``signal_power_half`` is
            given, else M d. The optimisation starts from z = f(init), with init raised
            into the support x > -1 - c of a flow with a log transform.
        signal_power_half: S_k for the Wiener-filter start.
        steps: most L-BFGS steps (the B maps are optimised jointly in one jitted loop).
        gtol: stop when every map has ||d objective / d z|| <= gtol ||M^T N^-1 d||.
        patience: stop after this many steps without a decrease of the objective (the
            float32 floor, or the kinks of the spline Psi): ``stopped="stalled"``.

    Returns:
        :class:`~fieldflow.denoise.MAPResult`: ``field`` s_hat, ``grad_norm`` the relative
        latent gradient above, ``objective`` log-likelihood - |z|^2 / 2 (nats, without the
        constant -N^2/2 log 2 pi), ``theta`` None.
    """
    d_b, single = check_data(d)
    m = check_mask(mask, d_b.shape)
    v = check_noise(noise_var, d_b.shape)
    check_solver_settings(steps, gtol, patience)
    forward, inverse, state = _flow_parts(model)
    w = noise_weights(m, v, d_b.shape)
    s0 = start_field(init, d_b, m, v, signal_power_half)
    floor = domain_floor(model)
    if floor is not None:  # a Wiener start can dip below the flow's support
        s0 = np.maximum(s0, floor)
    cond = check_batch_cond(cond, d_b.shape[0])
    z0 = jnp.asarray(forward(np.ascontiguousarray(s0, dtype=np.float32), cond)[0], jnp.float32)
    if not np.all(np.isfinite(np.asarray(z0))):  # numpy: no eager op to compile
        raise ValueError("the flow maps the starting field to a non-finite latent")
    return run_solver(
        LatentObjective(inverse),
        {"u": z0},
        state,
        d_b,
        w,
        cond,
        single=single,
        steps=steps,
        gtol=gtol,
        patience=patience,
    )
