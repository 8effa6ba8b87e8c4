"""The distribution of a summary's residual about its emulated mean, r = t - mu(theta), as a
function of theta: a multivariate Student-t (or Gaussian) whose scale matrix follows theta,

    log p(r | theta) = log Gamma((nu + D) / 2) - log Gamma(nu / 2) - D/2 log(nu pi)
                       - 1/2 log det Sigma(theta) - (nu + D)/2 log(1 + Q / nu),
    Q = r^T Sigma(theta)^-1 r,   Sigma = L L^T,   Cov(r | theta) = nu / (nu - 2) Sigma,

(the Gaussian, -1/2 Q - 1/2 log det(2 pi Sigma), is the limit nu -> inf). The Cholesky factor
is L = diag(unit) L~(theta) with unit the residuals' overall standard deviations and

    L~_jj = exp(sum_c a_cj phi_c(u)),   L~_jk = sum_c b_c,jk psi_c(u)   (j > k),

phi / psi the monomials of u (``fieldflow.inference.emulator.poly_features``) up to
``scale_degree`` / ``corr_degree``: both the spreads and the correlations of the components
follow theta. The parameters (and nu) maximise the likelihood of residuals of simulations
spread over the prior.

Student-t tails: the flow scores of N-body maps are heavy-tailed (on 32^2 PM maps, 1% of the
training maps lie beyond the Gaussian 99.9% radius and nu ~ 8 is preferred by ~300 nats), and
a Gaussian likelihood's score, quadratic in r where the covariance follows theta, lets those
maps dominate the score test. But a t with one nu everywhere has a narrower core than most
maps' scatter (those tails live where sigma_8 is high): on the same maps its 68% regions
covered 0.58 at the fiducial theta where the Gaussian's covered 0.66. The Gaussian is the
default; :class:`~fieldflow.inference.residual_flow.ResidualFlow` reshapes it (splined core,
Student-t tails).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln
from scipy.special import gammaln as scipy_gammaln

from fieldflow.inference.emulator import poly_features, unit_theta

__all__ = ["ResidualModel"]

TAILS = ("student", "gaussian")


def _lower_pairs(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the strictly lower triangle (j > k) of a (dim, dim) matrix."""
    return np.tril_indices(dim, -1)


def _placement(dim: int) -> np.ndarray:
    """(dim, dim, P) zeros with a one at (j, k, p) for the p-th lower pair (j, k): puts P
    numbers into the strictly lower triangle by one einsum, in numpy and jax alike."""
    rows, cols = _lower_pairs(dim)
    out = np.zeros((dim, dim, len(rows)))
    out[rows, cols, np.arange(len(rows))] = 1.0
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class ResidualModel:
    """r | theta ~ Student-t_nu(0, Sigma(theta)), or Gaussian N(0, Sigma(theta)) when ``nu`` is
    None (module doc). ``diag_coef`` (n_scale_terms, D) and ``lower_coef``
    (n_corr_terms, D (D - 1) / 2) are the polynomial coefficients a, b of L~; ``unit`` (D,);
    [``theta_low``, ``theta_high``] the box that maps theta to u. Build it with :meth:`fit`.
    """

    unit: np.ndarray
    diag_coef: np.ndarray
    lower_coef: np.ndarray
    scale_degree: int
    corr_degree: int
    nu: float | None
    theta_low: np.ndarray
    theta_high: np.ndarray
    fit_report: dict = dataclasses.field(default_factory=dict)

    @property
    def dim(self) -> int:
        return len(self.unit)

    def _params(self) -> dict:
        return {"diag": self.diag_coef, "lower": self.lower_coef}

    def _cholesky(self, params: dict, theta):
        """L(theta) (T, D, D) for theta (T, 2), in the array module of ``theta``."""
        xp = np if isinstance(theta, np.ndarray) else jnp
        u = unit_theta(theta, self.theta_low, self.theta_high)
        diag = xp.exp(poly_features(u, self.scale_degree) @ params["diag"])
        lower = poly_features(u, self.corr_degree) @ params["lower"]
        chol = diag[:, :, None] * np.eye(self.dim)
        if self.dim > 1:
            chol = chol + xp.einsum("tp,jkp->tjk", lower, _placement(self.dim))
        return chol * xp.asarray(self.unit)[None, :, None]

    def _log_prob(self, params: dict, nu, r, theta, xp):
        """log p(r | theta) for r (..., T, D) and theta (T, 2) (module doc)."""
        chol = self._cholesky(params, theta)
        inv = xp.linalg.inv(chol)
        z = xp.einsum("tij,...tj->...ti", inv, r)
        q = xp.sum(z**2, axis=-1)
        log_det = 2.0 * xp.sum(xp.log(xp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        d = self.dim
        if nu is None:
            return -0.5 * q - 0.5 * log_det - 0.5 * d * np.log(2 * np.pi)
        lgamma = gammaln if xp is jnp else scipy_gammaln
        norm = lgamma((nu + d) / 2) - lgamma(nu / 2) - 0.5 * d * xp.log(nu * np.pi)
        return norm - 0.5 * log_det - 0.5 * (nu + d) * xp.log1p(q / nu)

    def log_prob(self, r, theta) -> np.ndarray:
        """log p(r | theta), float64, for residuals r (..., T, D) and theta (T, 2) (or (2,))."""
        t = np.atleast_2d(np.asarray(theta, np.float64))
        r = np.asarray(r, np.float64)
        if t.shape[-1] != 2 or r.shape[-1] != self.dim:
            raise ValueError(
                f"r (..., {self.dim}) and theta (T, 2) expected, got {r.shape}, {t.shape}"
            )
        return self._log_prob(self._params(), self.nu, r, t, np)

    def log_prob_fn(self) -> Callable:
        """log p(r | theta) as a jax function ``fn(r (B, D), theta (B, 2)) -> (B,)``, float32,
        differentiable in theta."""
        params = {k: jnp.asarray(v, jnp.float32) for k, v in self._params().items()}
        nu = None if self.nu is None else jnp.float32(self.nu)
        float32 = dataclasses.replace(
            self,
            unit=np.asarray(self.unit, np.float32),
            theta_low=np.asarray(self.theta_low, np.float32),
            theta_high=np.asarray(self.theta_high, np.float32),
        )
        return lambda r, theta: float32._log_prob(params, nu, r, theta, jnp)

    def sample(self, key: jax.Array, theta, n: int) -> np.ndarray:
        """n residuals drawn at each theta (T, 2): r = L(theta) z with z standard normal (or
        standard Student-t with ``nu``), (T, n, D), float64."""
        t = np.atleast_2d(np.asarray(theta, np.float64))
        shape = (len(t), int(n), self.dim)
        if self.nu is None:
            z = jax.random.normal(key, shape)
        else:
            z = jax.random.t(key, self.nu, shape)
        chol = self._cholesky(self._params(), t)
        return np.einsum("tij,tnj->tni", chol, np.asarray(z, np.float64))

    def covariance(self, theta) -> np.ndarray:
        """Cov(r | theta) = nu / (nu - 2) L L^T (L L^T for the Gaussian), (T, D, D)."""
        t = np.atleast_2d(np.asarray(theta, np.float64))
        chol = self._cholesky(self._params(), t)
        factor = 1.0 if self.nu is None else self.nu / (self.nu - 2.0)
        return factor * np.einsum("tij,tkj->tik", chol, chol)

    def std(self, theta) -> np.ndarray:
        """Standard deviation of each component, (T, D)."""
        return np.sqrt(np.diagonal(self.covariance(theta), axis1=-2, axis2=-1))

    @classmethod
    def fit(
        cls,
        residuals,
        theta,
        *,
        tails: str = "gaussian",
        scale_degree: int = 2,
        corr_degree: int = 1,
        theta_low: Sequence[float],
        theta_high: Sequence[float],
        shrink: bool = False,
    ) -> ResidualModel:
        """Maximum-likelihood fit to residuals (M, D) of maps simulated at theta (M, 2).

        ``tails`` 'gaussian' or 'student' (nu fitted, > 2). The data must give five numbers
        (maps x D) per parameter and more maps than D + 2; with ``shrink`` the degrees are
        lowered (correlations first) until they do, with a warning. ValueError for
        mismatched shapes, non-finite residuals, an unknown ``tails`` or too few residuals.
        Warns when the optimiser stops short of convergence. ``fit_report`` records nu, the
        mean log-likelihood per map and the optimiser's iterations.
        """
        import scipy.optimize

        r = np.asarray(residuals, np.float64)
        t = np.asarray(theta, np.float64)
        if tails not in TAILS:
            raise ValueError(f"tails must be one of {TAILS}, got {tails!r}")
        if r.ndim != 2 or t.shape != (r.shape[0], 2):
            raise ValueError(
                f"residuals (M, D) and theta (M, 2) must agree, got {r.shape}, {t.shape}"
            )
        if not np.all(np.isfinite(r)):
            raise ValueError("residuals contain NaN or inf")
        m, d = r.shape
        wanted = (int(scale_degree), int(corr_degree))
        scale_degree, corr_degree = _affordable_degrees(m, d, tails, *wanted, shrink)
        if (scale_degree, corr_degree) != wanted:
            warnings.warn(
                f"{m} residuals of {d} components are too few for a residual model of degrees "
                f"{wanted}: fitting degrees {(scale_degree, corr_degree)}",
                stacklevel=2,
            )
        n_scale, n_corr, n_lower, n_params = _sizes(d, tails, scale_degree, corr_degree)
        unit = r.std(axis=0)
        unit = np.where(unit > 0, unit, 1.0)
        proto = cls(
            unit, np.zeros((n_scale, d)), np.zeros((n_corr, n_lower)), int(scale_degree),
            int(corr_degree), None, np.asarray(theta_low, np.float64),
            np.asarray(theta_high, np.float64),
        )  # fmt: skip
        # start from the overall correlation: L~ = its Cholesky factor at every theta
        start = np.linalg.cholesky(np.corrcoef(r / unit, rowvar=False).reshape(d, d))
        x0 = np.zeros(n_params)
        x0[:d] = np.log(np.diag(start))  # the constant terms come first (poly_features)
        rows, cols = _lower_pairs(d)
        x0[n_scale * d : n_scale * d + n_lower] = start[rows, cols]
        if tails == "student":
            x0[-1] = np.log(8.0)

        def unpack(x):
            params = {
                "diag": x[: n_scale * d].reshape(n_scale, d),
                "lower": x[n_scale * d : n_scale * d + n_corr * n_lower].reshape(n_corr, n_lower),
            }
            nu = 2.0 + jnp.exp(x[-1]) if tails == "student" else None
            return params, nu

        with jax.enable_x64(True):
            r_j, t_j = jnp.asarray(r), jnp.asarray(t)
            # the box and units enter as float64 arguments, not as numpy constants: jax may
            # reuse a float32 constant it lowered for an earlier array at the same address
            consts = tuple(jnp.asarray(a) for a in (proto.unit, proto.theta_low, proto.theta_high))

            def loss(x, unit, low, high):
                params, nu = unpack(x)
                model = dataclasses.replace(proto, unit=unit, theta_low=low, theta_high=high)
                return -jnp.mean(model._log_prob(params, nu, r_j, t_j, jnp))

            value_and_grad = jax.jit(jax.value_and_grad(loss))

            def fun(x):
                v, g = value_and_grad(jnp.asarray(x), *consts)
                return float(v), np.asarray(g, np.float64)

            sol = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B")
        if not sol.success:
            warnings.warn(f"residual model fit: {sol.message}", stacklevel=2)
        params, nu = unpack(jnp.asarray(sol.x))
        report = {
            "tails": tails,
            "nu": None if nu is None else float(nu),
            "scale_degree": int(scale_degree),
            "corr_degree": int(corr_degree),
            "n_fit": int(m),
            "mean_log_likelihood": float(-sol.fun),
            "iterations": int(sol.nit),
        }
        return dataclasses.replace(
            proto,
            diag_coef=np.asarray(params["diag"], np.float64),
            lower_coef=np.asarray(params["lower"], np.float64),
            nu=None if nu is None else float(nu),
            fit_report=report,
        )

    def to_json(self) -> dict:
        return {
            "unit": self.unit.tolist(),
            "diag_coef": self.diag_coef.tolist(),
            "lower_coef": self.lower_coef.tolist(),
            "scale_degree": self.scale_degree,
            "corr_degree": self.corr_degree,
            "nu": self.nu,
            "theta_low": self.theta_low.tolist(),
            "theta_high": self.theta_high.tolist(),
            "fit_report": self.fit_report,
        }

    @classmethod
    def from_json(cls, d: dict) -> ResidualModel:
        n_lower = len(d["unit"]) * (len(d["unit"]) - 1) // 2
        return cls(
            np.asarray(d["unit"], np.float64),
            np.asarray(d["diag_coef"], np.float64),
            np.asarray(d["lower_coef"], np.float64).reshape(-1, n_lower),
            int(d["scale_degree"]),
            int(d["corr_degree"]),
            None if d["nu"] is None else float(d["nu"]),
            np.asarray(d["theta_low"], np.float64),
            np.asarray(d["theta_high"], np.float64),
            d.get("fit_report", {}),
        )


def _sizes(d: int, tails: str, scale_degree: int, corr_degree: int) -> tuple[int, int, int, int]:
    """(scale terms, correlation terms, lower pairs, parameters) of a residual model."""
    n_scale = poly_features(np.zeros((1, 2)), scale_degree).shape[1]
    n_corr = poly_features(np.zeros((1, 2)), corr_degree).shape[1]
    n_lower = d * (d - 1) // 2
    return n_scale, n_corr, n_lower, n_scale * d + n_corr * n_lower + (tails == "student")


def _affordable_degrees(
    m: int, d: int, tails: str, scale_degree: int, corr_degree: int, shrink: bool
) -> tuple[int, int]:
    """The degrees to fit with m residuals of d components (``ResidualModel.fit``)."""

    def enough(sd: int, cd: int) -> bool:
        return m * d >= 5 * _sizes(d, tails, sd, cd)[3] and m > d + 2

    while shrink and not enough(scale_degree, corr_degree) and scale_degree + corr_degree > 0:
        if corr_degree > 0:
            corr_degree -= 1
        else:
            scale_degree -= 1
    if not enough(scale_degree, corr_degree):
        n_params = _sizes(d, tails, scale_degree, corr_degree)[3]
        raise ValueError(
            f"{m} residuals of {d} components are too few to fit the {n_params} "
            "parameters of the residual model"
        )
    return scale_degree, corr_degree
