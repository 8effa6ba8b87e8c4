"""Gaussian likelihoods of summaries of a map: the power spectrum, the flow's score at the
fiducial theta (score compression), or both.

A summary t(x) compresses a map into D numbers. Its likelihood is Gaussian,

    log L(theta) = -1/2 (t - mu(theta))^T Psi (t - mu(theta)) + 1/2 log det(Psi / 2 pi),

with the mean mu(theta) emulated from simulations across the prior
(:class:`~fieldflow.inference.emulator.SummaryEmulator`) and Psi = h C_hat^-1 from fiducial
simulations (Hartlap-corrected). With t the binned P(k) this is the classical power-spectrum
likelihood; with t the score of a trained flow at the fiducial theta,

    t(x) = grad_theta log q(x | theta_fid),

it is the score-compressed likelihood (Alsing & Wandelt 2018): the two numbers carry, to first
order about theta_fid, all the information the flow sees, and the Gaussian likelihood with a
covariance measured on simulations is honest even where q itself is overconfident (its score
is only a summary here, its curvature is not trusted).

The covariance is either fixed (fiducial simulations; the classical P(k) likelihood) or
'emulated': the residual t - mu(theta) follows a multivariate Gaussian (or Student-t) whose
spreads and correlations are polynomials in theta, fitted by maximum likelihood to the
residuals of the training maps (:class:`~fieldflow.inference.residuals.ResidualModel`), so
that maps far from theta_fid get their own spread and correlation, optionally reshaped by
splines onto Student-t tails (:class:`~fieldflow.inference.residual_flow.ResidualFlow`); the
score-compressed likelihood of ``fieldflow calibrate`` uses it
(:func:`score_compressed_likelihood`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from data_gen.cosmology import FIDUCIAL_THETA, OMEGA_M_RANGE, SIGMA8_RANGE
from fieldflow.inference.emulator import SummaryEmulator
from fieldflow.inference.gaussian import GaussianLikelihood, fiducial_covariance
from fieldflow.inference.residual_flow import (
    ResidualFlow,
    enough_residuals,
    residual_model_from_json,
)
from fieldflow.inference.residuals import ResidualModel
from fieldflow.validation import check_maps

FORMAT = "fieldflow-summary-likelihood-2"
# the correlation of the two flow scores swings from about 0 to 0.9 across a wide prior box
# (32^2 N-body maps, Omega_m in [0.1, 0.5], sigma_8 in [0.5, 1.3]): linear in theta is too stiff
SCORE_CORR_DEGREE = 2

__all__ = [
    "Summary",
    "summary_from_spec",
    "power_spectrum_summary",
    "log_power_spectrum_summary",
    "flow_score_summary",
    "concatenate_summaries",
    "SummaryLikelihood",
    "score_compressed_likelihood",
]


@dataclasses.dataclass(frozen=True, eq=False)
class Summary:
    """A compression of maps (B, N, N) into D numbers per map.

    ``fn`` is jax-traceable (``fn(x (B, N, N) float32) -> (B, D)``); ``labels`` name the D
    components; ``log_link[j]`` says component j is positive and its mean is emulated as
    exp(polynomial) (P(k)), else as a polynomial (a score). Maps are summarised ``chunk``
    at a time, the last chunk padded, so that one shape is compiled. ``spec`` describes it
    in JSON (:func:`summary_from_spec`).
    """

    name: str
    fn: Callable
    labels: tuple[str, ...]
    log_link: tuple[bool, ...]
    n: int | None = None
    chunk: int = 64
    spec: dict = dataclasses.field(default_factory=dict)

    @property
    def dim(self) -> int:
        return len(self.labels)

    def __call__(self, maps) -> np.ndarray:
        """The summaries of maps (M, N, N), float64 (M, D)."""
        x, _ = check_maps(np.asarray(maps), self.n, name="maps")
        chunk = max(1, int(self.chunk))
        out = []
        for i in range(0, len(x), chunk):
            idx = np.minimum(np.arange(i, i + chunk), len(x) - 1)
            out.append(np.asarray(self.fn(jnp.asarray(x[idx])), np.float64)[: len(x) - i])
        return np.concatenate(out)


def power_spectrum_summary(n: int, box: float, k_max: float | None = None) -> Summary:
    """Binned P(k) (``fieldflow.fourier.power_spectrum``) of N x N maps of side ``box``
    (h^-1 Mpc), bins up to ``k_max`` (h/Mpc; default Nyquist)."""
    from fieldflow import fourier

    edges = fourier.k_bin_edges_up_to(n, box, k_max)
    centres = fourier.k_bin_centers(edges)
    return Summary(
        "P(k)",
        lambda x: fourier.power_spectrum(x, box, edges),
        tuple(f"P(k={k:.3g})" for k in centres),
        (True,) * len(centres),
        n,
        spec={"kind": "power_spectrum", "n": int(n), "box": float(box), "k_max": k_max},
    )


def log_power_spectrum_summary(n: int, box: float, k_max: float | None = None) -> Summary:
    """ln P(k) in the bins of :func:`power_spectrum_summary`, its mean emulated as a
    polynomial in theta (``log_link`` False): where P(k)'s scatter is skewed (N-body maps
    at large sigma_8, a few massive haloes) a Gaussian likelihood about the mean <P>
    sits above most maps, while ln P is nearly Gaussian. Bins are floored at the smallest
    normal float32 (a map with no power in a bin gives a large negative value, not -inf).

    On 32^2 N-body maps over Omega_m in [0.1, 0.5], sigma_8 in [0.5, 1.3], with the fixed
    covariance of fiducial simulations: 68% / 95% coverage 0.67 / 0.93 over 200 test maps and
    0.685 / 0.90 on 200 fiducial ones (P(k) itself: 0.525 / 0.685, 0.67 / 0.915); see README."""
    power = power_spectrum_summary(n, box, k_max)
    tiny = float(jnp.finfo(jnp.float32).tiny)
    return Summary(
        "ln P(k)",
        lambda x: jnp.log(jnp.maximum(power.fn(x), tiny)),
        tuple(f"ln {label}" for label in power.labels),
        (False,) * power.dim,
        n,
        spec={**power.spec, "kind": "log_power_spectrum"},
    )


def flow_score_summary(model, theta: Sequence[float] = FIDUCIAL_THETA, chunk: int = 64) -> Summary:
    """The score of a conditional flow at one theta, t(x) = grad_theta log q(x | theta),
    (B, 2): the score compression of Alsing & Wandelt (2018); ``chunk`` maps per call."""
    from fieldflow.inference.likelihoods import grad_log_prob_theta

    score = grad_log_prob_theta(model)
    t0 = jnp.asarray(theta, jnp.float32)

    def fn(x):
        return score(x, jnp.broadcast_to(t0, (x.shape[0], t0.shape[0])))

    return Summary(
        "flow score",
        fn,
        ("dlnq/dOmega_m", "dlnq/dsigma_8"),
        (False, False),
        model.shape[0],
        chunk,
        {"kind": "flow_score", "theta": [float(v) for v in theta]},
    )


def concatenate_summaries(*summaries: Summary) -> Summary:
    """The summaries side by side (e.g. P(k) and the flow score)."""
    if not summaries:
        raise ValueError("no summary to concatenate")
    ns = {s.n for s in summaries if s.n is not None}
    if len(ns) > 1:
        raise ValueError(f"the summaries are of maps of different sizes {sorted(ns)}")
    fns = [s.fn for s in summaries]
    return Summary(
        " + ".join(s.name for s in summaries),
        lambda x: jnp.concatenate([fn(x) for fn in fns], axis=-1),
        sum((s.labels for s in summaries), ()),
        sum((s.log_link for s in summaries), ()),
        ns.pop() if ns else None,
        min(s.chunk for s in summaries),
        {"kind": "concatenated", "parts": [s.spec for s in summaries]},
    )


def summary_from_spec(spec: dict, model=None) -> Summary:
    """Rebuild a summary from its ``spec`` (``model``: the flow of a flow-score summary)."""
    kind = spec.get("kind")
    if kind == "power_spectrum":
        return power_spectrum_summary(spec["n"], spec["box"], spec.get("k_max"))
    if kind == "log_power_spectrum":
        return log_power_spectrum_summary(spec["n"], spec["box"], spec.get("k_max"))
    if kind == "flow_score":
        if model is None:
            raise ValueError("a flow-score summary needs its model")
        return flow_score_summary(model, spec["theta"])
    if kind == "concatenated":
        return concatenate_summaries(*(summary_from_spec(p, model) for p in spec["parts"]))
    raise ValueError(f"unknown summary {spec!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class SummaryLikelihood(GaussianLikelihood):
    """The likelihood of a :class:`Summary` (module doc): ``emulator`` for the mean.

    With ``residuals`` None, ``cov`` / ``precision`` / ``hartlap`` are those of the summaries
    of ``n_fiducial`` fiducial simulations (a fixed Gaussian covariance). With ``residuals``
    set (the 'emulated' covariance of :meth:`fit`) it gives the distribution of t - mu(theta)
    at each theta, and ``cov`` / ``precision`` are its covariance at the fiducial theta and
    the inverse (for reference; ``hartlap`` 1)."""

    summary: Summary
    emulator: SummaryEmulator
    cov: np.ndarray
    precision: np.ndarray
    hartlap: float
    n_fiducial: int
    fit_report: dict
    residuals: ResidualModel | ResidualFlow | None = None

    theta_low = property(lambda self: self.emulator.theta_low)
    theta_high = property(lambda self: self.emulator.theta_high)
    n = property(lambda self: self.summary.n)

    @classmethod
    def fit(
        cls,
        summary: Summary,
        train_maps,
        train_theta,
        fiducial_maps,
        *,
        covariance: str = "fiducial",
        **options,
    ) -> SummaryLikelihood:
        """The likelihood of ``summary`` fitted to the summaries of (train_maps,
        train_theta) and of ``fiducial_maps``: :meth:`fit_summaries` (which says what
        ``covariance`` and the other ``options`` do) with the summaries computed here; bad
        input fails before the training maps' summaries are computed."""
        if covariance not in ("fiducial", "emulated"):
            raise ValueError(f"covariance must be 'fiducial' or 'emulated', got {covariance!r}")
        fid = summary(fiducial_maps)
        fiducial_covariance(fid)  # too few fiducial maps: fail before the training summaries
        return cls.fit_summaries(
            summary, summary(train_maps), train_theta, fid, covariance=covariance, **options
        )

    @classmethod
    def fit_summaries(
        cls,
        summary: Summary,
        train,
        train_theta,
        fid,
        *,
        degree: int = 3,
        covariance: str = "fiducial",
        tails: str = "gaussian",
        scale_degree: int = 2,
        corr_degree: int = 1,
        fiducial_theta: Sequence[float] = FIDUCIAL_THETA,
        theta_low: Sequence[float] = (OMEGA_M_RANGE[0], SIGMA8_RANGE[0]),
        theta_high: Sequence[float] = (OMEGA_M_RANGE[1], SIGMA8_RANGE[1]),
        flow_options: dict | None = None,
    ) -> SummaryLikelihood:
        """Emulate mu(theta) (a polynomial of ``degree``) from ``summary``'s values ``train``
        (M, D) of maps at ``train_theta`` (M, 2); the covariance from its values ``fid``
        (F, D) of fiducial maps (``covariance='fiducial'``: Gaussian, Hartlap-corrected) or,
        with 'emulated', a :class:`~fieldflow.inference.residuals.ResidualModel` of the
        training residuals t - mu(theta) with ``tails`` ('gaussian' or 'student'),
        log-spreads of degree ``scale_degree`` and correlations of degree ``corr_degree`` in
        theta (lowered, with a warning, where the training maps are too few for them); with
        ``tails='flow'`` that Gaussian model whitens a
        :class:`~fieldflow.inference.residual_flow.ResidualFlow` (splined core, Student-t
        tails; ``flow_options`` go to its ``fit``), or stays alone, with a warning, where the
        maps are too few for the flow. Computing the summaries once lets several likelihoods
        of one summary be fitted.

        ValueError when the fiducial values do not outnumber the components by 3 (Hartlap) or
        the training values are too few for the emulator or the residual model.
        ``fit_report`` records the emulator's deviation from the fiducial maps' mean summary
        in units of its standard error (and, emulated, the fiducial maps' spread over the
        model's and the residual model's fit).
        """
        if covariance not in ("fiducial", "emulated"):
            raise ValueError(f"covariance must be 'fiducial' or 'emulated', got {covariance!r}")
        train, fid = np.asarray(train, np.float64), np.asarray(fid, np.float64)
        cov, precision, h = fiducial_covariance(fid)
        box = dict(theta_low=theta_low, theta_high=theta_high)
        emulator = SummaryEmulator.fit(train, train_theta, summary.log_link, degree=degree, **box)
        residuals = None
        if covariance == "emulated":
            r = train - emulator.mean(train_theta)
            residuals = ResidualModel.fit(
                r,
                train_theta,
                tails="gaussian" if tails == "flow" else tails,
                scale_degree=scale_degree,
                corr_degree=corr_degree,
                shrink=True,
                **box,
            )
            flow_options = dict(flow_options or {})
            sizes = ("n_layers", "n_bins", "theta_penalty")
            sizes = {k: flow_options[k] for k in sizes if k in flow_options}
            if tails == "flow" and enough_residuals(*r.shape, **sizes):
                residuals = ResidualFlow.fit(r, train_theta, residuals, **flow_options)
            elif tails == "flow":
                warnings.warn(
                    f"{len(r)} residuals of {r.shape[1]} components are too few for a residual "
                    "flow: Gaussian residuals instead",
                    stacklevel=2,
                )
            cov = residuals.covariance(fiducial_theta)[0]
            precision, h = np.linalg.inv(cov), 1.0
            precision = 0.5 * (precision + precision.T)
        se = fid.std(axis=0, ddof=1) / np.sqrt(len(fid))
        report = {
            "summary": summary.name,
            "labels": list(summary.labels),
            **emulator.fit_report,
            "covariance": covariance,
            "n_fiducial": len(fid),
            "hartlap": h,
            "fiducial_dev_over_stderr": (
                (emulator.mean(fiducial_theta)[0] - fid.mean(axis=0)) / se
            ).tolist(),
        }
        if residuals is not None:
            report["residual_model"] = residuals.fit_report
            report["fiducial_std_over_emulated"] = (
                fid.std(axis=0, ddof=1) / residuals.std(fiducial_theta)[0]
            ).tolist()
        return cls(summary, emulator, cov, precision, h, len(fid), report, residuals)

    def std(self, theta) -> np.ndarray:
        """Standard deviation of each component at theta (T, D): the residual model's, or the
        fixed covariance's at every theta."""
        if self.residuals is not None:
            return self.residuals.std(theta)
        n_theta = len(np.atleast_2d(np.asarray(theta)))
        return np.broadcast_to(np.sqrt(np.diag(self.cov)), (n_theta, len(self.cov))).copy()

    def _sample_residuals(self, key, theta: np.ndarray, n: int) -> np.ndarray:
        if self.residuals is None:
            return super()._sample_residuals(key, theta, n)
        return self.residuals.sample(key, theta, n)

    def _log_density(self, r: np.ndarray, theta: np.ndarray) -> np.ndarray:
        if self.residuals is None:
            return super()._log_density(r, theta)
        return self.residuals.log_prob(r, theta)

    def _log_density_fn(self) -> Callable:
        if self.residuals is None:
            return super()._log_density_fn()
        return self.residuals.log_prob_fn()

    def data_vector(self, maps) -> np.ndarray:
        """t(x) of the maps, (M, D)."""
        return self.summary(maps)

    def mean(self, theta) -> np.ndarray:
        """Emulated mean t, (T, D) for theta (T, 2) or (2,)."""
        return self.emulator.mean(theta)

    def log_like_fn(self) -> Callable:
        """log L as a jax function ``fn(x (B, N, N), theta (B, 2)) -> (B,)``, differentiable
        in theta (for the score test, :func:`fieldflow.inference.score_and_hessian`)."""
        return self._jax_log_like(self.summary.fn, self.emulator.mean_fn())

    def save(self, path, fingerprint: dict) -> Path:
        """Write the likelihood (its summary's spec, emulator and covariance) as JSON, tied
        to ``fingerprint`` ({"model": ..., "data": ...}, as a curvature adjustment)."""
        from fieldflow.io import write_json

        return write_json(
            path,
            {
                "format": FORMAT,
                "fingerprint": fingerprint,
                "summary": self.summary.spec,
                "emulator": _emulator_json(self.emulator),
                "cov": self.cov.tolist(),
                **({} if self.residuals is None else {"residuals": self.residuals.to_json()}),
                "hartlap": self.hartlap,
                "n_fiducial": self.n_fiducial,
                "fit_report": self.fit_report,
            },
        )

    @classmethod
    def load(
        cls, path, model=None, *, model_fingerprint: str | None = None, data: str | None = None
    ) -> SummaryLikelihood:
        """Read :meth:`save`'s file (``model``: the flow of a flow-score summary); ValueError
        when it is not one or belongs to another model or data set (fingerprints)."""
        from fieldflow.inference.adjusted import read_calibration_json

        d = read_calibration_json(path, FORMAT, model=model_fingerprint, data=data)
        emulator = _emulator_from_json(d["emulator"])
        residuals = residual_model_from_json(d["residuals"]) if "residuals" in d else None
        cov = np.asarray(d["cov"], np.float64)
        precision = (1.0 if residuals is not None else float(d["hartlap"])) * np.linalg.inv(cov)
        return cls(
            summary_from_spec(d["summary"], model),
            emulator,
            cov,
            0.5 * (precision + precision.T),
            float(d["hartlap"]),
            int(d["n_fiducial"]),
            d["fit_report"],
            residuals,
        )


def _emulator_json(emu: SummaryEmulator) -> dict:
    return {
        "coef": emu.coef.tolist(),
        "degree": emu.degree,
        "log_link": emu.log_link.tolist(),
        "theta_low": emu.theta_low.tolist(),
        "theta_high": emu.theta_high.tolist(),
    }


def _emulator_from_json(e: dict) -> SummaryEmulator:
    return SummaryEmulator(
        np.asarray(e["coef"], np.float64),
        int(e["degree"]),
        np.asarray(e["log_link"], bool),
        np.asarray(e["theta_low"], np.float64),
        np.asarray(e["theta_high"], np.float64),
        {},
    )


def score_compressed_likelihood(
    model, train_maps, train_theta, fiducial_maps, **kwargs
) -> SummaryLikelihood:
    """The score-compressed likelihood of a flow: its score at the fiducial theta as the
    summary (:func:`flow_score_summary`), with the 'emulated' residual distribution: by
    default a :class:`~fieldflow.inference.residual_flow.ResidualFlow` (a Gaussian whose
    spreads and correlation follow theta, reshaped by splines onto Student-t tails; with too
    few training maps for it, the Gaussian alone, with a warning); ``tails='gaussian'`` or
    'student' for those models alone. The residuals' correlation is quadratic in theta
    (``SCORE_CORR_DEGREE``; ``corr_degree`` overrides). Measured on 32^2 N-body maps over
    Omega_m in [0.1, 0.5], sigma_8 in [0.5, 1.3] (512 maps at each of 9 theta): score-test
    eigenvalues 0.72-1.19, where a correlation linear in theta gave 0.58-1.28 (it fitted 0.25
    where the maps have -0.05); in a narrower box (512 maps at each of 5 theta, 1024 at four;
    linear correlations) the residual flow gave 0.71-1.32, the Gaussian alone 0.75-4.21 (its
    score test set by the rare far maps); see README.
    ``kwargs`` go to :meth:`SummaryLikelihood.fit`."""
    kwargs.setdefault("covariance", "emulated")
    kwargs.setdefault("tails", "flow")
    kwargs.setdefault("corr_degree", SCORE_CORR_DEGREE)
    return SummaryLikelihood.fit(
        flow_score_summary(model), train_maps, train_theta, fiducial_maps, **kwargs
    )
