"""The distribution of a summary's residual r = t - mu(theta) as a small conditional flow: the
Gaussian :class:`~fieldflow.inference.residuals.ResidualModel` whitens it, monotone splines
reshape its core, and Student-t tails whose weight follows theta take the rare far maps,

    u = L(theta)^-1 r                          (L: the Gaussian residual model's Cholesky factor)
    v = g_J o ... o g_1(u),   g_j changes coordinate a = j mod D only:
        v_a = Psi(u_a; knots linear in (tanh(u_b / 2) for b != a, 1))
    log p(r | theta) = sum_d log t_nu(theta)(v_d) + sum_j log Psi_j'(u_a) - log det L(theta),
    nu(theta) = 2 + exp(c_0 + c . theta_unit),

Psi a rational-quadratic spline on [-B, B] (the identity outside; B = 6 by default) and t_nu
the one-dimensional Student-t density. The splines' shape is the same at every theta: the
location, spread and correlations follow theta through mu and L, the weight of the tails
through nu. ``theta_penalty`` (finite) lets the knots be linear in theta as well, with a ridge
on those weights. The knots are linear in their inputs (no hidden layer): the score
d log p / d theta of a density whose shape wiggles with theta is noisy, and the score test
punishes it.

Why: on 32^2 PM maps the flow scores are heavy-tailed with a kurtosis that grows with sigma_8.
A Gaussian residual model covers the 68% / 95% regions well but its score test is set by the
rare far maps (eigenvalues up to 4.2 over 512 maps per theta); one Student-t has the right
tails but a core too narrow (68% coverage 0.57 at the fiducial theta). This model keeps both:
on 512-1024 maps at each of 5 theta its eigenvalues are 0.71-1.32, its 68% coverage per theta
0.58-0.73. With splines on [-4, 4] the far maps fell to the Student-t alone and the largest
eigenvalue was 1.76 (1024 maps at (0.425, 0.95)); knots that follow theta gave 0.92-1.73 (512
maps), an MLP conditioner up to 30.
It is fitted by maximum likelihood with the Gaussian model fixed, on 90% of the residuals,
keeping the step of the best likelihood of the other 10%.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from fieldflow.inference.emulator import unit_theta
from fieldflow.inference.residuals import ResidualModel
from fieldflow.splines import rq_forward, rq_identity_params, rq_inverse, rq_knots, rq_num_params

__all__ = ["ResidualFlow"]

MAPS_PER_PARAMETER = 10  # residual components (maps x D) per fitted number
N_BINS = 4  # spline bins of a residual flow, by default
LOG_PROB_CHUNK = 2048  # residuals per call of log_prob (the last one padded): one shape


def _student_logpdf(v, nu):
    return (
        gammaln((nu + 1) / 2)
        - gammaln(nu / 2)
        - 0.5 * jnp.log(nu * jnp.pi)
        - 0.5 * (nu + 1) * jnp.log1p(v * v / nu)
    )


def n_parameters(dim: int, n_layers: int, n_bins: int, shape_follows_theta: bool = False) -> int:
    """Fitted numbers of a residual flow: the spline weights (with or without their theta
    inputs) and nu's three coefficients."""
    n_inputs = dim + 2 if shape_follows_theta else dim
    return n_layers * n_inputs * rq_num_params(n_bins) + 3


def enough_residuals(
    m: int,
    dim: int,
    n_layers: int | None = None,
    n_bins: int = N_BINS,
    theta_penalty: float = np.inf,
) -> bool:
    """Whether m residuals of ``dim`` components can fit a residual flow of
    :meth:`ResidualFlow.fit`'s ``n_layers`` (default: ``dim``), ``n_bins`` and
    ``theta_penalty``: ``MAPS_PER_PARAMETER`` numbers per fitted parameter."""
    n_layers = dim if n_layers is None else int(n_layers)
    n_params = n_parameters(dim, n_layers, n_bins, not np.isinf(theta_penalty))
    return m * dim >= MAPS_PER_PARAMETER * n_params


@dataclasses.dataclass(frozen=True, eq=False)
class ResidualFlow:
    """p(r | theta) of the module doc. ``weights`` (J, D + 2, 3K - 1): layer j's knots are
    ``[theta_unit, tanh(u_others / 2), 1] @ weights[j]`` (its theta rows zero unless fitted
    with a finite ``theta_penalty``); ``nu_coef`` (3,) = (c_0, c)."""

    gaussian: ResidualModel
    weights: np.ndarray
    nu_coef: np.ndarray
    bound: float
    fit_report: dict = dataclasses.field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.gaussian.dim

    @property
    def _key(self) -> tuple:
        """What the compiled functions hold as constants (the rest, the parameters, are
        arguments): equal keys share one compilation (fits, reloads, every call)."""
        g = self.gaussian
        return (
            float(self.bound),
            int(g.scale_degree),
            int(g.corr_degree),
            *(tuple(float(v) for v in a) for a in (g.unit, g.theta_low, g.theta_high)),
        )

    def _jax_params(self) -> dict:
        g = self.gaussian
        return {
            "weights": jnp.asarray(self.weights, jnp.float32),
            "nu_coef": jnp.asarray(self.nu_coef, jnp.float32),
            "diag": jnp.asarray(g.diag_coef, jnp.float32),
            "lower": jnp.asarray(g.lower_coef, jnp.float32),
        }

    def _cholesky(self, params: dict, theta):
        """The Gaussian model's L(theta), (..., D, D) for theta (..., 2)."""
        coef = {"diag": params["diag"], "lower": params["lower"]}
        flat = self.gaussian._cholesky(coef, theta.reshape(-1, 2))
        return flat.reshape(*theta.shape[:-1], self.dim, self.dim)

    def _inputs(self, u, a: int, tu):
        others = jnp.delete(u, a, axis=-1, assume_unique_indices=True)
        ones = jnp.ones_like(u[..., :1])
        return jnp.concatenate([tu, jnp.tanh(others / 2), ones], axis=-1)

    def _theta_unit(self, theta):
        low = np.asarray(self.gaussian.theta_low, np.float32)
        high = np.asarray(self.gaussian.theta_high, np.float32)
        return 2.0 * unit_theta(theta, low, high) - 1.0

    def _nu(self, params: dict, tu):
        c = params["nu_coef"]
        return 2.0 + jnp.exp(c[0] + tu @ c[1:])

    def _transform(self, params: dict, r, theta):
        """v (..., D) of residuals r (..., D) at theta (..., 2), and log|dv/dr| (...,)."""
        chol = self._cholesky(params, theta)
        u = jnp.linalg.solve(chol, r[..., None])[..., 0]
        log_det = -jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        tu = self._theta_unit(theta)
        for j in range(len(params["weights"])):
            a = j % self.dim
            knots = rq_knots(self._inputs(u, a, tu) @ params["weights"][j], self.bound)
            v, log_d = rq_forward(u[..., a : a + 1], knots)
            u = u.at[..., a].set(v[..., 0])
            log_det = log_det + log_d[..., 0]
        return u, log_det

    def _untransform(self, params: dict, v, theta):
        """The residuals r (..., D) whose transform is v (..., D) at theta (..., 2)."""
        tu = self._theta_unit(theta)
        for j in reversed(range(len(params["weights"]))):
            a = j % self.dim
            knots = rq_knots(self._inputs(v, a, tu) @ params["weights"][j], self.bound)
            v = v.at[..., a].set(rq_inverse(v[..., a : a + 1], knots)[0][..., 0])
        chol = self._cholesky(params, theta)
        return jnp.einsum("...ij,...j->...i", chol, v)

    def _log_prob(self, params: dict, r, theta):
        """log p(r | theta) for r (B, D) and theta (B, 2), jax."""
        r, theta = jnp.asarray(r, jnp.float32), jnp.asarray(theta, jnp.float32)
        v, log_det = self._transform(params, r, theta)
        nu = self._nu(params, self._theta_unit(theta))[..., None]
        return log_det + jnp.sum(_student_logpdf(v, nu), axis=-1)

    def log_prob(self, r, theta) -> np.ndarray:
        """log p(r | theta), float64 (computed in float32), for residuals r (..., T, D) and
        theta (T, 2) (or (2,))."""
        t = np.atleast_2d(np.asarray(theta, np.float32))
        r = np.asarray(r, np.float32)
        if t.shape[-1] != 2 or r.ndim < 2 or r.shape[-1] != self.dim:
            raise ValueError(
                f"r (..., {self.dim}) and theta (T, 2) expected, got {r.shape}, {t.shape}"
            )
        t = np.broadcast_to(t, r.shape[:-1] + (2,)).reshape(-1, 2)
        flat_r = r.reshape(-1, self.dim)
        # one compiled shape for any number of residuals: chunks of LOG_PROB_CHUNK, the last
        # padded by repeating the last residual
        params, key, out, size = self._jax_params(), self._key, [], LOG_PROB_CHUNK
        for i in range(0, len(flat_r), size):
            idx = np.minimum(np.arange(i, i + size), len(flat_r) - 1)
            out.append(_log_prob_jit(key, params, flat_r[idx], t[idx]))
        if not out:
            return np.zeros(r.shape[:-1])
        flat = np.concatenate([np.asarray(o, np.float64) for o in out])[: len(flat_r)]
        return flat.reshape(r.shape[:-1])

    def log_prob_fn(self) -> Callable:
        """log p(r | theta) as a jax function ``fn(r (B, D), theta (B, 2)) -> (B,)``, float32,
        differentiable in theta."""
        params = self._jax_params()
        return lambda r, theta: self._log_prob(params, r, jnp.asarray(theta, jnp.float32))

    def sample(self, key: jax.Array, theta, n: int) -> np.ndarray:
        """n residuals drawn at each theta (T, 2): (T, n, D) (the splines inverted exactly)."""
        t = jnp.asarray(np.atleast_2d(theta), jnp.float32)
        return np.asarray(_draw_jit(self._key, int(n), self._jax_params(), key, t), np.float64)

    def covariance(self, theta, n: int = 20000) -> np.ndarray:
        """Cov(r | theta) (T, D, D), from ``n`` draws per theta (a fixed seed)."""
        r = self.sample(jax.random.key(0), theta, n)
        r = r - r.mean(axis=1, keepdims=True)
        return np.einsum("tni,tnj->tij", r, r) / (n - 1)

    def std(self, theta) -> np.ndarray:
        """Standard deviation of each component, (T, D)."""
        return np.sqrt(np.diagonal(self.covariance(theta), axis1=-2, axis2=-1))

    @classmethod
    def fit(
        cls,
        residuals,
        theta,
        gaussian: ResidualModel,
        *,
        n_layers: int | None = None,
        n_bins: int = N_BINS,
        bound: float = 6.0,
        steps: int = 1500,
        learning_rate: float = 3e-3,
        theta_penalty: float = np.inf,
        seed: int = 0,
    ) -> ResidualFlow:
        """Maximum-likelihood fit (Adam, full batch, cosine-decayed learning rate) of the
        splines and nu to residuals (M, D) at theta (M, 2), the Gaussian residual model
        ``gaussian`` (fitted to them) fixed. ``n_layers`` defaults to D (each coordinate
        reshaped once). A tenth of the residuals (chosen with ``seed``) is held out and the
        parameters of its best likelihood (checked every 50 steps) are kept.
        With ``theta_penalty`` finite the knots follow theta too, and that multiple of the
        sum of squares of their theta weights is added to the mean negative log-likelihood;
        ``inf`` (the default): one shape at every theta (the whitening and nu follow theta).

        ValueError for mismatched shapes, non-finite residuals, or fewer than
        ``MAPS_PER_PARAMETER`` residual components per fitted number.
        """
        import optax

        from fieldflow.train import adam_at, learning_rates

        r = np.asarray(residuals, np.float32)
        t = np.asarray(theta, np.float32)
        if r.ndim != 2 or r.shape[1] != gaussian.dim or t.shape != (len(r), 2):
            raise ValueError(
                f"residuals (M, {gaussian.dim}) and theta (M, 2) must agree, got "
                f"{r.shape}, {t.shape}"
            )
        if not np.all(np.isfinite(r)):
            raise ValueError("residuals contain NaN or inf")
        m, d = r.shape
        n_layers = d if n_layers is None else int(n_layers)
        if n_layers < 1 or n_bins < 2 or not bound > 0 or steps < 1 or not theta_penalty >= 0:
            raise ValueError(
                "need n_layers >= 1, n_bins >= 2, bound > 0, steps >= 1 and theta_penalty >= 0"
            )
        frozen = bool(np.isinf(theta_penalty))
        n_params = n_parameters(d, n_layers, n_bins, not frozen)
        if not enough_residuals(m, d, n_layers, n_bins, theta_penalty):
            raise ValueError(
                f"{m} residuals of {d} components are too few for a residual flow of "
                f"{n_params} parameters (need {MAPS_PER_PARAMETER} numbers per parameter)"
            )
        weights = np.zeros((n_layers, d + 2, rq_num_params(n_bins)), np.float32)
        weights[:, -1] = rq_identity_params(n_bins)
        proto = cls(gaussian, weights, np.array([np.log(8.0), 0.0, 0.0]), float(bound))
        fixed = {k: v for k, v in proto._jax_params().items() if k in ("diag", "lower")}
        free = {k: v for k, v in proto._jax_params().items() if k not in fixed}
        held = np.random.default_rng(seed).permutation(m)[: max(1, m // 10)]
        fit_mask = np.ones(m, bool)
        fit_mask[held] = False

        theta_rows = np.zeros((1, d + 2, 1), np.float32)
        theta_rows[:, :2] = 1.0
        # the theta weights are zeroed (frozen) or penalised: arguments, not constants, so
        # that one compiled step serves every fit of the same sizes
        keep = 1.0 - theta_rows if frozen else np.ones_like(theta_rows)
        penalty = np.float32(theta_penalty if theta_penalty > 0 and not frozen else 0.0)
        # the cosine-decayed learning rate of each step, computed as optax computes it
        rates = learning_rates(optax.cosine_decay_schedule(learning_rate, steps), steps)
        fit_data = (keep, theta_rows, r[fit_mask], t[fit_mask])
        held_data = (keep, theta_rows, r[held], t[held])
        key = proto._key
        state = adam_at(rates[0]).init(free)
        start = best = float(_held_loss_jit(key, free, fixed, *held_data))
        kept, best_step = free, 0
        for i in range(1, steps + 1):
            free, state, _ = _fit_step_jit(
                key, free, state, fixed, penalty, rates[i - 1], *fit_data
            )
            if i % 50 == 0 or i == steps:
                value = float(_held_loss_jit(key, free, fixed, *held_data))
                if value < best:
                    best, kept, best_step = value, free, i
        report = {
            "tails": "flow",
            "n_layers": n_layers,
            "n_bins": int(n_bins),
            "n_parameters": n_params,
            "n_fit": int(fit_mask.sum()),
            "n_held_out": len(held),
            "held_out_nll_start": start,
            "held_out_nll": best,
            "best_step": best_step,
            "steps": int(steps),
            "theta_penalty": None if frozen else float(theta_penalty),  # None: inf
            "shape_follows_theta": not frozen,
            "gaussian": gaussian.fit_report,
        }
        weights = np.asarray(kept["weights"], np.float64)
        return dataclasses.replace(
            proto,
            weights=weights * (1.0 - theta_rows) if frozen else weights,
            nu_coef=np.asarray(kept["nu_coef"], np.float64),
            fit_report=report,
        )

    def to_json(self) -> dict:
        return {
            "kind": "flow",
            "gaussian": self.gaussian.to_json(),
            "weights": self.weights.tolist(),
            "nu_coef": self.nu_coef.tolist(),
            "bound": self.bound,
            "fit_report": self.fit_report,
        }

    @classmethod
    def from_json(cls, d: dict) -> ResidualFlow:
        return cls(
            ResidualModel.from_json(d["gaussian"]),
            np.asarray(d["weights"], np.float64),
            np.asarray(d["nu_coef"], np.float64),
            float(d["bound"]),
            d.get("fit_report", {}),
        )


@functools.lru_cache(maxsize=64)
def _skeleton(key: tuple) -> ResidualFlow:
    """A residual flow of ``ResidualFlow._key`` ``key`` without parameters: its methods,
    given the parameters (``_jax_params``), are those of every flow of that key."""
    bound, scale_degree, corr_degree, unit, low, high = key
    gaussian = ResidualModel(
        np.asarray(unit, np.float64), None, None, scale_degree, corr_degree, None,
        np.asarray(low, np.float64), np.asarray(high, np.float64),
    )  # fmt: skip
    return ResidualFlow(gaussian, None, None, bound)


@functools.partial(jax.jit, static_argnums=0)
def _log_prob_jit(key, params, r, theta):
    return _skeleton(key)._log_prob(params, r, theta)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _draw_jit(key, n, params, rng, t):
    flow = _skeleton(key)
    t = jnp.broadcast_to(t[:, None, :], (len(t), n, 2))
    nu = flow._nu(params, flow._theta_unit(t))[..., None]
    v = jax.random.t(rng, nu, (len(t), n, flow.dim))
    return flow._untransform(params, v, t)


def _fit_loss(key, free, fixed, keep, theta_rows, r, t, penalty=None):
    """Mean negative log-likelihood of a fit (its theta weights times ``keep``) plus
    ``penalty`` times the sum of squares of the theta weights."""
    free = {**free, "weights": free["weights"] * keep}
    value = -jnp.mean(_skeleton(key)._log_prob({**fixed, **free}, r, t))
    if penalty is not None:
        value = value + penalty * jnp.sum((free["weights"] * theta_rows) ** 2)
    return value


@functools.partial(jax.jit, static_argnums=0)
def _fit_step_jit(key, free, state, fixed, penalty, rate, keep, theta_rows, r, t):
    import optax

    from fieldflow.train import adam_at

    loss = functools.partial(_fit_loss, key, fixed=fixed, keep=keep, theta_rows=theta_rows)
    value, grad = jax.value_and_grad(loss)(free, r=r, t=t, penalty=penalty)
    updates, state = adam_at(rate).update(grad, state, free)
    return optax.apply_updates(free, updates), state, value


@functools.partial(jax.jit, static_argnums=0)
def _held_loss_jit(key, free, fixed, keep, theta_rows, r, t):
    return _fit_loss(key, free, fixed, keep, theta_rows, r, t)


def residual_model_from_json(d: dict) -> ResidualModel | ResidualFlow:
    """The residual model a summary-likelihood file holds (either kind)."""
    return ResidualFlow.from_json(d) if d.get("kind") == "flow" else ResidualModel.from_json(d)
