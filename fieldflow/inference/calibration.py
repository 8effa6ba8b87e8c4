"""Is a likelihood honest? The score (information-identity) test and coverage curves.

For the true likelihood p(x | theta) at the true theta_0, the score s(x) = grad_theta log p(x |
theta_0) obeys the information identity

    E[s] = 0,    C = Cov(s) = F = -E[grad_theta grad_theta log p(x | theta_0)].

A learned q(x | theta) that breaks it is misspecified. Its posterior has covariance ~ F^-1 while
the maximum-likelihood estimate scatters with the sandwich covariance F^-1 C F^-1, so the
eigenvalues lambda of F^-1 C say by how much the posterior is too narrow: sqrt(lambda) per
eigen-direction (lambda > 1: overconfident, < 1: too wide). For a Gaussian posterior the
credible region of mass m then covers the truth with probability

    P(lambda_1 chi2_1 + lambda_2 chi2_1 <= q_m),   q_m = the m-quantile of chi2_2,

(:func:`predicted_coverage`). Coverage over simulations (:func:`coverage_curve`, the fraction
of maps whose true theta lies inside the region of each credibility level) is the end-to-end
check; the exact lognormal likelihood passes both and is the test of the diagnostics.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fieldflow.inference.gaussian import DataVectorLogLike
from fieldflow.inference.likelihoods import FlowLogLike
from fieldflow.inference.posterior import GridPosterior, credible_mass_at
from fieldflow.validation import check_maps

__all__ = [
    "MIN_MAPS",
    "score_and_hessian",
    "data_vector_score_and_hessian",
    "score_test",
    "eigenvalue_interval",
    "predicted_coverage",
    "coverage_curve",
]

MIN_MAPS = 50  # below this the diagnostics warn that their error bars are large
N_BOOTSTRAP = 1000  # resamples of the maps for the eigenvalues' interval


def _score_hessian(log_like, xb, theta):
    """Scores (B, d) and Hessians (B, d, d) of a chunk: the gradient of the batch sum and
    its Jacobian-vector products along each theta axis (all maps at once), the d products
    as one vmapped product whose primal is the gradient (half the program of a gradient
    and d separate products to compile)."""

    def grad(t):
        return jax.grad(lambda u: jnp.sum(log_like(xb, u)))(t)

    d = theta.shape[-1]
    tangents = jnp.broadcast_to(jnp.eye(d, dtype=theta.dtype)[:, None, :], (d, *theta.shape))
    scores, cols = jax.vmap(lambda v: jax.jvp(grad, (theta,), (v,)))(tangents)
    return scores[0], jnp.moveaxis(cols, 0, -1)


# a FlowLogLike is a pytree argument (one compilation per model structure); any other
# log-likelihood is a static argument (one compilation per function object)
_score_hessian_jit = jax.jit(_score_hessian)
_score_hessian_static = jax.jit(_score_hessian, static_argnums=0)


def _chunk_function(log_like: Callable) -> Callable:
    """``fn(xb, theta) -> (scores, Hessians)`` of ``log_like``, compiled once per model
    structure (a :class:`FlowLogLike`, a pytree argument, with its loops rolled), else once
    per function object."""
    if isinstance(log_like, FlowLogLike):
        return functools.partial(_score_hessian_jit, log_like.rolled())
    try:
        hash(log_like)
    except TypeError:
        return jax.jit(functools.partial(_score_hessian, log_like))
    return functools.partial(_score_hessian_static, log_like)


def score_and_hessian(
    log_like: Callable, maps, theta0, *, chunk: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Per-map score s_b = d log L(x_b | theta) / d theta and Hessian H_b at ``theta0``.

    ``log_like(x (B, N, N), theta (B, 2)) -> (B,)`` is any jax-traceable log-likelihood of
    (map, theta) pairs (e.g. ``flow_log_like_fn(model)``); ``theta0`` is one theta (2,) for
    every map or one per map (M, 2). Each map's term depends only on its own theta row, so the
    gradient of the batch sum is every map's score (for a data-vector likelihood, such as
    P(k) or the score-compressed one, of its theta-dependent part, the data vectors computed
    once), and two Jacobian-vector products of it
    (theta moved along one axis for all maps at once) give every map's Hessian. Maps are
    processed ``chunk`` at a time (the last chunk padded, so one compilation serves all).
    Returns float64 ``(M, 2)`` and ``(M, 2, 2)``.
    """
    x, _ = check_maps(np.asarray(maps), name="maps")
    if isinstance(log_like, DataVectorLogLike):  # d(x) once; differentiate its theta part
        return data_vector_score_and_hessian(log_like, log_like.data_vectors(x), theta0, chunk)
    return _chunked_score_and_hessian(log_like, x, theta0, chunk)


def data_vector_score_and_hessian(
    log_like: DataVectorLogLike, vectors, theta0, chunk: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`score_and_hessian` of a data-vector likelihood from its data vectors (M, D),
    computed before (e.g. once for several likelihoods of one summary)."""
    d = np.asarray(vectors, np.float32)
    if d.ndim != 2 or not np.all(np.isfinite(d)):
        raise ValueError(f"data vectors must be finite (M, D), got shape {d.shape}")
    return _chunked_score_and_hessian(log_like.of_data, d, theta0, chunk)


def _chunked_score_and_hessian(log_like, x, theta0, chunk):
    t0 = np.asarray(theta0, np.float32)
    t0 = np.broadcast_to(t0, (len(x), t0.shape[-1])) if t0.ndim == 1 else t0
    if t0.shape[0] != len(x) or t0.ndim != 2:
        raise ValueError(f"theta0 must be (d,) or ({len(x)}, d), got {np.shape(theta0)}")
    one_chunk = _chunk_function(log_like)
    chunk = max(1, min(int(chunk), len(x)))
    scores, hessians = [], []
    for i in range(0, len(x), chunk):
        idx = np.minimum(np.arange(i, i + chunk), len(x) - 1)  # the last chunk padded
        keep = min(chunk, len(x) - i)
        s, h = one_chunk(jnp.asarray(x[idx]), jnp.asarray(t0[idx]))
        scores.append(np.asarray(s, np.float64)[:keep])
        hessians.append(np.asarray(h, np.float64)[:keep])
    return np.concatenate(scores), np.concatenate(hessians)


def predicted_coverage(eigenvalues: Sequence[float], mass: float = 0.68) -> float:
    """Coverage of a Gaussian posterior's ``mass`` region when F^-1 C has ``eigenvalues``:
    P(sum_i lambda_i chi2_1 <= q), q the ``mass`` quantile of chi2_d (d = number of
    eigenvalues), by quadrature over the last component. 1 x ``mass`` for lambda = 1."""
    from scipy import integrate, special, stats

    lam = np.asarray(eigenvalues, np.float64).ravel()
    if lam.size == 0 or np.any(~np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError(f"eigenvalues must be finite and > 0, got {lam.tolist()}")
    q = stats.chi2.ppf(mass, lam.size)

    # the chi2_1 cdf and density as scipy.stats.chi2 computes them (same special functions,
    # same numbers), without its per-call overhead: the quadrature calls them thousands of times
    def chi2_1_cdf(x):
        return float(special.chdtr(1.0, x))

    def chi2_1_pdf(u):
        return float(
            np.exp(special.xlogy(-0.5, u) - u / 2.0 - special.gammaln(0.5) - np.log(2) / 2.0)
        )

    if lam.size == 1:
        return chi2_1_cdf(q / lam[0])

    def cdf(r, lams):  # P(sum lams_i chi2_1 <= r)
        if r <= 0:
            return 0.0
        if len(lams) == 1:
            return chi2_1_cdf(r / lams[0])
        head, last = lams[:-1], lams[-1]
        val, _ = integrate.quad(
            lambda u: cdf(r - last * u, head) * chi2_1_pdf(u), 0.0, r / last, limit=200
        )
        return val

    return float(cdf(q, list(lam)))


def eigenvalue_interval(
    scores, hessians, *, level: float = 0.9, n_boot: int = N_BOOTSTRAP, seed: int = 0
) -> dict:
    """Bootstrap interval of the eigenvalues of F^-1 C: the maps are resampled with
    replacement ``n_boot`` times and the (sorted) eigenvalues recomputed; returns the central
    ``level`` interval of each, ``{"level", "low", "high", "n_boot", "n_not_concave"}`` (the
    resamples whose -E[H] is not positive definite are left out and counted).

    With heavy-tailed scores (a few maps far out) this interval, not the point estimate, says
    whether an eigenvalue is distinguishable from 1 on this many maps.
    """
    s = np.asarray(scores, np.float64)
    h = np.asarray(hessians, np.float64)
    m, d = s.shape
    # a resample as the number of times it draws each map: (n_boot, m) weights summing to m
    w = np.random.default_rng(seed).multinomial(m, np.full(m, 1.0 / m), size=int(n_boot)) / m
    mean = w @ s
    outer = (w @ np.einsum("mi,mj->mij", s, s).reshape(m, d * d)).reshape(-1, d, d)
    cov = (outer - np.einsum("bi,bj->bij", mean, mean)) * (m / (m - 1))
    fisher = -(w @ h.reshape(m, d * d)).reshape(-1, d, d)
    fisher = 0.5 * (fisher + np.swapaxes(fisher, 1, 2))
    concave = np.linalg.eigvalsh(fisher).min(axis=1) > 0
    out = {"level": level, "low": None, "high": None, "n_boot": int(n_boot)}
    out["n_not_concave"] = int((~concave).sum())
    if concave.any():
        lam = np.linalg.eigvals(np.linalg.solve(fisher[concave], cov[concave])).real
        tail = 50.0 * (1.0 - level)
        for key, q in (("low", tail), ("high", 100.0 - tail)):
            out[key] = np.percentile(np.sort(lam, axis=1), q, axis=0).tolist()
    return out


def score_test(scores, hessians, *, masses: Sequence[float] = (0.68, 0.95)) -> dict:
    """The information-identity test from per-map scores ``(M, d)`` and Hessians ``(M, d, d)``
    of maps simulated at one theta.

    Returns E[s] with its standard error and Hotelling's T^2 = M s_bar^T C^-1 s_bar (~ chi2_d
    for a correct likelihood), C = Cov(s), F = -E[H], the eigenvalues lambda of F^-1 C
    (ascending) with their 90% bootstrap interval (:func:`eigenvalue_interval`), the factor
    sqrt(lambda) by which posterior standard deviations are too small along each
    eigen-direction, the per-parameter ratio sqrt(diag(F^-1 C F^-1) / diag(F^-1)) and the
    Gaussian-predicted coverage of each mass. Warns below ``MIN_MAPS`` maps and when
    F is not positive definite (the likelihood is not locally concave there).
    """
    s = np.asarray(scores, np.float64)
    h = np.asarray(hessians, np.float64)
    if s.ndim != 2 or h.shape != (*s.shape, s.shape[1]):
        raise ValueError(f"scores must be (M, d) and hessians (M, d, d), got {s.shape}, {h.shape}")
    m, d = s.shape
    if m < d + 2:
        raise ValueError(f"the score test needs more than {d + 1} maps, got {m}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(h))):
        raise ValueError("scores or hessians contain NaN or inf values")
    if m < MIN_MAPS:
        warnings.warn(
            f"score test on {m} maps (< {MIN_MAPS}): its error bars are large", stacklevel=2
        )
    mean = s.mean(axis=0)
    cov = np.cov(s, rowvar=False).reshape(d, d)
    fisher = -h.mean(axis=0)
    fisher = 0.5 * (fisher + fisher.T)
    fisher_eigs = np.linalg.eigvalsh(fisher)
    out = {
        "n_maps": m,
        "mean_score": mean.tolist(),
        "mean_score_stderr": (s.std(axis=0, ddof=1) / np.sqrt(m)).tolist(),
        "hotelling_t2": float(m * mean @ np.linalg.solve(cov, mean)),
        "score_cov": cov.tolist(),
        "fisher": fisher.tolist(),
        "fisher_positive_definite": bool(fisher_eigs.min() > 0),
    }
    if fisher_eigs.min() <= 0:
        warnings.warn(
            "-E[H] is not positive definite: the likelihood is not concave at theta", stacklevel=2
        )
        return out
    lam = np.sort(np.linalg.eigvals(np.linalg.solve(fisher, cov)).real)
    finv = np.linalg.inv(fisher)
    sandwich = finv @ cov @ finv
    out.update(
        eigenvalues=lam.tolist(),
        eigenvalue_interval=eigenvalue_interval(s, h),
        std_too_small_by=np.sqrt(np.maximum(lam, 0)).tolist(),
        std_ratio_per_parameter=np.sqrt(np.diag(sandwich) / np.diag(finv)).tolist(),
        predicted_coverage={
            f"{mass:g}": predicted_coverage(np.maximum(lam, 1e-12), mass) for mass in masses
        },
    )
    return out


def coverage_curve(
    posteriors: Sequence[GridPosterior], theta_true, levels: Sequence[float] | None = None
) -> dict:
    """Empirical coverage against credibility: for each level q the fraction of maps whose true
    theta lies inside their HPD region of mass q (credible mass at the truth <= q).

    Calibrated posteriors give a curve on the diagonal, within the binomial error
    sqrt(q (1 - q) / M) (returned as ``stderr``). ``theta_true`` is (M, 2) or one (2,) for all.
    """
    posts = list(posteriors)
    if not posts:
        raise ValueError("coverage_curve needs at least one posterior")
    t = np.asarray(theta_true, np.float64)
    t = np.broadcast_to(t, (len(posts), 2)) if t.ndim == 1 else t
    if t.shape != (len(posts), 2):
        raise ValueError(f"theta_true must be (2,) or ({len(posts)}, 2), got {t.shape}")
    if len(posts) < MIN_MAPS:
        warnings.warn(
            f"coverage on {len(posts)} maps (< {MIN_MAPS}): its error bars are large",
            stacklevel=2,
        )
    q = np.linspace(0.05, 0.95, 19) if levels is None else np.asarray(levels, np.float64)
    mass_at_truth = np.array([credible_mass_at(p, ti) for p, ti in zip(posts, t, strict=True)])
    empirical = (mass_at_truth[:, None] <= q[None, :]).mean(axis=0)
    return {
        "levels": q.tolist(),
        "coverage": empirical.tolist(),
        "stderr": np.sqrt(q * (1 - q) / len(posts)).tolist(),
        "n_maps": len(posts),
        "credible_mass_at_truth": mass_at_truth.tolist(),
    }
