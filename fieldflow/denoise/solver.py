"""The one compiled optimiser behind both MAP estimators, and its one cache.

Both :func:`~fieldflow.denoise.flow_map` and :func:`~fieldflow.denoise.flow_latent_map`
maximise a sum over maps of an objective ``per_map(params, state, d, w, cond) -> (B,)`` in
nats; ``evaluate`` gives it with the field at the solution, ``theta`` the fitted conditions
(their objectives, :class:`~fieldflow.denoise.field_map.FieldObjective` and
:class:`~fieldflow.denoise.latent_map.LatentObjective`, are small frozen dataclasses). The
whole optimisation (L-BFGS with a zoom line search, or Adam) runs in one jitted
``lax.while_loop``; :func:`compiled_solver` builds it once per objective, optimiser and
patience (``functools.lru_cache``), so a second call with the same model structure and shapes
reuses the compiled code.

A flax NNX model enters as :class:`ModuleMethod`, its graph definition and a method name: two
models of the same structure share one compiled solver, and their parameters travel as the
``state`` argument, so it stays valid after further training. Any other callable enters as
:class:`PlainCallable` and is cached by identity, as ``jax.jit`` does (arrays it closes over
are constants of the compiled solver).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fieldflow.denoise.observation import check_data
from fieldflow.denoise.wiener import wiener_filter

__all__ = ["MAPResult"]


class MAPResult(NamedTuple):
    """Result of :func:`~fieldflow.denoise.flow_map` and
    :func:`~fieldflow.denoise.flow_latent_map`.

    field: s_MAP, same shape as ``d``.
    iterations: optimiser steps taken (shared by the batch, which is optimised jointly).
    grad_norm: per map ||d objective / d u|| / ||M^T N^-1 d||, (B,), with u the optimised
        variable: s, u = log(1 + s) (the "log1p" parametrization, d/du = (1 + s) d/ds), or
        the latent z.
    converged: (B,) bool, grad_norm <= gtol (and the theta gradient small, if fitted).
    objective: per map objective in nats at the solution, (B,).
    theta: fitted conditions (B, P) when ``fit_theta=True``, else None.
    stopped: why the loop ended: "gtol" (every map converged), "stalled" (no decrease
        of the objective for ``patience`` steps: the float32 floor, or a kink of the
        prior such as the knots of a rational-quadratic spline, whose log-derivative
        makes log p only piecewise smooth) or "max_steps".
    """

    field: jnp.ndarray
    iterations: int
    grad_norm: jnp.ndarray
    converged: jnp.ndarray
    objective: jnp.ndarray
    theta: jnp.ndarray | None = None
    stopped: str = "gtol"


# ----------------------------------------------------------- pure, hashable callables
@dataclasses.dataclass(frozen=True)
class ModuleMethod:
    """Method ``name`` of an NNX module as a pure ``fn(state, x, cond)``.

    Hashed by the graph definition (structure and static attributes) and the name; the
    parameters are the ``state`` argument of the call.
    """

    graphdef: Any
    name: str

    def __call__(self, state, x, cond):
        from flax import nnx

        return getattr(nnx.merge(self.graphdef, state), self.name)(x, cond)


@dataclasses.dataclass(frozen=True)
class PlainCallable:
    """A callable ``fn(x, cond)`` as ``fn(state, x, cond)`` (no state), hashed by identity."""

    fn: Callable

    def __call__(self, state, x, cond):
        return self.fn(x, cond)


def module_method(module, name: str) -> tuple[ModuleMethod, Any] | None:
    """``(ModuleMethod, state)`` of ``module.name`` for an NNX module, else None."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(module, nnx.Module):
        return None
    graphdef, state = nnx.split(module)
    return ModuleMethod(graphdef, name), state


# ------------------------------------------------------------------ compiled solver
@functools.lru_cache(maxsize=32)
def compiled_solver(objective, optimizer: str, learning_rate: float | None, patience: int):
    """The jitted MAP loop for ``objective`` (cached on all four arguments).

    Returns ``solve(params, state, d, w, cond, steps, gtol, gtol_theta) -> (field, theta,
    iterations, grad_norm, converged, objective, stalled)``. ``params`` is a dict with the
    optimised maps ``"u"`` (B, N, N) and, when theta is fitted, its logits ``"t"`` (B, P).
    """
    if optimizer == "lbfgs":
        opt = optax.lbfgs(memory_size=20)
    else:
        opt = optax.adam(learning_rate)

    @jax.jit
    def solve(params, state, d, w, cond, steps, gtol, gtol_theta):
        def loss(p):
            return -jnp.sum(objective.per_map(p, state, d, w, cond))

        scale = jnp.sqrt(jnp.sum((w * d) ** 2, axis=(-2, -1)))
        scale = jnp.where(scale > 0, scale, 1.0)

        def measure(g):
            gnorm = jnp.sqrt(jnp.sum(g["u"] ** 2, axis=(-2, -1))) / scale
            ok = gnorm <= gtol
            if "t" in g:
                n_pix = d.shape[-1] * d.shape[-2]
                ok = ok & (jnp.max(jnp.abs(g["t"]), axis=-1) / n_pix <= gtol_theta)
            return gnorm, ok

        vg = jax.value_and_grad(loss)

        # the carry holds the value and gradient at the current params: at the start the
        # ones computed here, then those at each new step (for L-BFGS the ones its zoom line
        # search computed at the accepted step and left in its state: read, not recomputed,
        # so the objective is compiled once less)
        value, grad = vg(params)
        gnorm, ok = measure(grad)

        def cond_fn(c):
            *_, it, _, ok, _, since = c
            return (it < steps) & ~jnp.all(ok) & (since < patience)

        def body_fn(c):
            params, opt_state, value, grad, it, gnorm, ok, best, since = c
            if optimizer == "lbfgs":
                updates, opt_state = opt.update(
                    grad, opt_state, params, value=value, grad=grad, value_fn=loss
                )
            else:
                updates, opt_state = opt.update(grad, opt_state, params)
            params = optax.apply_updates(params, updates)
            if optimizer == "lbfgs":
                value = optax.tree.get(opt_state, "value")
                grad = optax.tree.get(opt_state, "grad")
            else:
                value, grad = vg(params)
            gnorm, ok = measure(grad)
            improved = value < best - 1e-7 * jnp.abs(best)
            since = jnp.where(improved, 0, since + 1)
            best = jnp.minimum(value, best)
            return params, opt_state, value, grad, it + 1, gnorm, ok, best, since

        zero = jnp.int32(0)
        init = (params, opt.init(params), value, grad, zero, gnorm, ok, value, zero)
        params, *_, it, gnorm, ok, _, since = jax.lax.while_loop(cond_fn, body_fn, init)
        obj, field = objective.evaluate(params, state, d, w, cond)
        return field, objective.theta(params), it, gnorm, ok, obj, since >= patience

    return solve


def solver_for(objective, optimizer: str = "lbfgs", learning_rate=None, patience: int = 25):
    """:func:`compiled_solver`, from the cache when ``objective`` is hashable.

    ``learning_rate`` only matters to Adam (L-BFGS ignores it, so it is not part of its key).
    """
    lr = float(learning_rate) if optimizer == "adam" else None
    key = (objective, optimizer, lr, int(patience))
    try:
        hash(key)
    except TypeError:  # e.g. a callable object defining __eq__ without __hash__
        return compiled_solver.__wrapped__(*key)
    return compiled_solver(*key)


def run_solver(
    objective,
    params: dict,
    state,
    d: np.ndarray,
    w: np.ndarray,
    cond,
    *,
    single: bool,
    steps: int,
    gtol: float,
    gtol_theta: float = 1e-4,
    optimizer: str = "lbfgs",
    learning_rate=None,
    patience: int = 25,
) -> MAPResult:
    """Run the compiled solver of ``objective`` from ``params``; see :class:`MAPResult`."""
    solve = solver_for(objective, optimizer, learning_rate, patience)
    field, theta, it, gnorm, ok, obj, stalled = solve(
        params, state, d, w, cond, np.int32(steps), np.float32(gtol), np.float32(gtol_theta)
    )
    if single:
        field = field[0]
    if bool(np.all(np.asarray(ok))):
        stopped = "gtol"
    else:
        stopped = "stalled" if bool(stalled) else "max_steps"
    return MAPResult(field, int(it), gnorm, ok, obj, theta, stopped)


def check_solver_settings(steps: int, gtol: float, patience: int) -> None:
    """ValueError unless steps >= 0, gtol > 0 and patience >= 1."""
    if int(steps) < 0 or not gtol > 0 or int(patience) < 1:
        raise ValueError("need steps >= 0, gtol > 0 and patience >= 1")


# ------------------------------------------------------ where both MAPs start
def domain_floor(model) -> float | None:
    """A field value just inside the domain x > -1 - c of a model with a log transform."""
    c = getattr(model, "log_offset", None)
    return None if c is None else -1.0 - c + 1e-2 * (1.0 + c)


def start_field(init, d_b, m, v, signal_power_half) -> np.ndarray:
    """Where a MAP starts: ``init`` (one map broadcasts over the batch), else the Wiener
    filter when a signal power is given, else the masked data M d."""
    if init is None:
        if signal_power_half is not None:
            return np.asarray(wiener_filter(d_b, m, v, signal_power_half).field)
        return m * d_b
    s0, _ = check_data(init, "init")
    if s0.shape[0] == 1 and d_b.shape[0] > 1:
        s0 = np.broadcast_to(s0, d_b.shape)
    if s0.shape != d_b.shape:
        raise ValueError(f"init must have the shape of d, got {s0.shape} vs {d_b.shape}")
    return s0
