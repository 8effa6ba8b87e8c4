"""Sample quality of a generative model: flow samples at theta against simulations at theta.

For samples s_1..S and held-out simulations y_1..Y at the same theta, per statistic f
(binned P(k), one-point PDF, cumulative peak counts; from :mod:`fieldflow.metrics`):

    ratio_b   = <f_b(s)> / <f_b(y)>                      (power spectrum, per k bin)
    dev_b     = (<f_b(s)> - <f_b(y)>) / sigma_b(y)        (in units of the simulations' scatter)
    z_b       = (<f_b(s)> - <f_b(y)>) / sqrt(sigma_b(s)^2 / S + sigma_b(y)^2 / Y)

with sigma_b(y) the standard deviation of f_b over single simulations. The acceptance tests
of the project: |ratio_b - 1| < 5% in every k bin whose centre lies below the Nyquist
frequency, and |dev_b| <= 1 (within the simulations' scatter) for the PDF and peak counts.

The 5% test is only meaningful when the statistical error of the ratio,
ratio_err_b ~ ratio_b sqrt(cv_b(s)^2 / S + cv_b(y)^2 / Y) (cv = scatter / mean of one map),
is well below 5%: lognormal 32^2 maps have cv ~ 0.4-0.8 in every bin (their P(k) are strongly
correlated across k), so S = Y = 256 gives ratio_err ~ 4-6% and about 2000 of each are
needed for ~2%. ``passed_within_noise`` allows 2 ratio_err on top of the tolerance.

Figures (matplotlib with the Agg backend, imported lazily): maps side by side, P(k) with a
ratio panel, the PDF, peak counts, and posterior contours of several methods on one plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "sample_quality",
    "sample_maps",
    "plot_maps_side_by_side",
    "plot_power_spectra",
    "plot_pdf",
    "plot_peaks",
    "plot_posteriors",
]

DEFAULT_PEAK_THRESHOLDS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _null_formatter():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def _compare(fs: np.ndarray, fy: np.ndarray) -> dict:
    """Mean, scatter and deviations of a statistic (S, K) of samples vs (Y, K) of sims."""
    ms, my = fs.mean(axis=0), fy.mean(axis=0)
    ss = fs.std(axis=0, ddof=1) if len(fs) > 1 else np.zeros_like(ms)
    sy = fy.std(axis=0, ddof=1) if len(fy) > 1 else np.zeros_like(my)
    se = np.sqrt(ss**2 / len(fs) + sy**2 / len(fy))
    diff = ms - my
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = np.where(sy > 0, diff / sy, np.where(diff == 0, 0.0, np.inf))
        z = np.where(se > 0, diff / se, np.where(diff == 0, 0.0, np.inf))
    return {
        "samples_mean": ms,
        "samples_std": ss,
        "sims_mean": my,
        "sims_std": sy,
        "dev_over_scatter": dev,
        "z": z,
    }


def _tolist(d: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def sample_quality(
    samples,
    sims,
    box: float,
    *,
    pdf_edges=None,
    n_pdf_bins: int = 30,
    peak_thresholds: Sequence[float] = DEFAULT_PEAK_THRESHOLDS,
    pk_tolerance: float = 0.05,
) -> dict:
    """Compare samples (S, N, N) with simulations (Y, N, N) at the same theta.

    Args:
        samples, sims: maps of the same size (ValueError otherwise, or for NaN).
        box: side of the maps in h^-1 Mpc (fixes the k bins).
        pdf_edges: PDF bin edges; default ``n_pdf_bins`` equal bins between the 0.1 and
            99.9 percentiles of the simulations' pixels.
        peak_thresholds: heights nu (in units of each map's std) for N(> nu).
        pk_tolerance: the allowed |ratio - 1| of the power spectra.

    Returns:
        A JSON-able dict with sections ``power_spectrum`` (k, ratio, ratio_err, below
        Nyquist mask, max deviation, pass flag), ``pdf`` and ``peaks`` (means, scatters,
        deviations, pass flags), ``pixels`` (mean, std, skewness of both sets) and ``passed``.
    """
    from fieldflow import fourier, metrics
    from fieldflow.inference import check_maps

    s = check_maps(samples, name="samples")
    y = check_maps(sims, s.shape[-1], name="sims")
    n = s.shape[-1]
    edges = fourier.k_bin_edges(n, box)
    k = fourier.k_bin_centers(edges)
    below = k < fourier.nyquist_k(n, box) * (1 - 1e-9)

    ps = np.asarray(metrics.power_spectrum(s, box), np.float64)
    py = np.asarray(metrics.power_spectrum(y, box), np.float64)
    pk = _compare(ps, py)
    ratio = pk["samples_mean"] / pk["sims_mean"]
    ratio_err = ratio * np.sqrt(
        (pk["samples_std"] / pk["samples_mean"]) ** 2 / len(ps)
        + (pk["sims_std"] / pk["sims_mean"]) ** 2 / len(py)
    )
    max_dev = float(np.max(np.abs(ratio[below] - 1))) if below.any() else float("nan")
    max_err = float(np.max(ratio_err[below])) if below.any() else float("nan")
    pk.update(
        k=k,
        ratio=ratio,
        ratio_err=ratio_err,
        below_nyquist=below,
        max_abs_ratio_dev_below_nyquist=max_dev,
        max_ratio_err_below_nyquist=max_err,
        tolerance=pk_tolerance,
        passed=bool(max_dev < pk_tolerance),
        passed_within_noise=bool(
            np.all(np.abs(ratio[below] - 1) <= pk_tolerance + 2 * ratio_err[below])),
    )

    if pdf_edges is None:
        lo, hi = np.percentile(y, [0.1, 99.9])
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        pdf_edges = np.linspace(lo, hi, int(n_pdf_bins) + 1)
    pdf_edges = np.asarray(pdf_edges, np.float64)
    fs = np.asarray(metrics.one_point_pdf(s, pdf_edges), np.float64)
    fy = np.asarray(metrics.one_point_pdf(y, pdf_edges), np.float64)
    pdf = _compare(fs, fy)
    pdf.update(
        edges=pdf_edges,
        max_abs_dev_over_scatter=float(np.max(np.abs(pdf["dev_over_scatter"]))),
        passed=bool(np.all(np.abs(pdf["dev_over_scatter"]) <= 1.0)),
    )

    thr = np.asarray(peak_thresholds, np.float64)
    cs = np.asarray(metrics.peak_counts(s, thr), np.float64)
    cy = np.asarray(metrics.peak_counts(y, thr), np.float64)
    peaks = _compare(cs, cy)
    peaks.update(
        thresholds=thr,
        max_abs_dev_over_scatter=float(np.max(np.abs(peaks["dev_over_scatter"]))),
        passed=bool(np.all(np.abs(peaks["dev_over_scatter"]) <= 1.0)),
    )

    def moments(x):
        v = x.reshape(len(x), -1).astype(np.float64)
        m, sd = v.mean(axis=1), v.std(axis=1)
        sk = ((v - m[:, None]) ** 3).mean(axis=1) / np.where(sd > 0, sd, 1.0) ** 3
        return {"mean": float(m.mean()), "std": float(sd.mean()), "skewness": float(sk.mean())}

    return {
        "n_samples": int(len(s)),
        "n_sims": int(len(y)),
        "n": int(n),
        "box": float(box),
        "power_spectrum": _tolist(pk),
        "pdf": _tolist(pdf),
        "peaks": _tolist(peaks),
        "pixels": {"samples": moments(s), "sims": moments(y)},
        "passed": bool(pk["passed"] and pdf["passed"] and peaks["passed"]),
    }


def sample_maps(model, theta, num: int, key=None, batch: int = 64) -> np.ndarray:
    """``num`` maps from ``model`` at one theta (2,), drawn ``batch`` at a time: (num, N, N).

    Batch b uses ``jax.random.fold_in(key, b)``; the last batch is padded to a fixed size so
    the sampler compiles once.
    """
    import jax

    key = jax.random.key(0) if key is None else key
    theta = np.asarray(theta, np.float32).reshape(1, 2)
    batch = max(1, min(int(batch), int(num)))
    cond = np.repeat(theta, batch, axis=0)
    out = [np.asarray(model.sample(jax.random.fold_in(key, b), cond))
           for b in range(-(-int(num) // batch))]
    return np.concatenate(out)[: int(num)]


# ------------------------------------------------------------------------- figures
def plot_maps_side_by_side(sims, samples, n: int = 4, titles=("simulation", "flow sample")):
    """Row 1: ``n`` simulations; row 2: ``n`` samples; one shared colour scale."""
    plt = _pyplot()
    sims, samples = np.asarray(sims)[:n], np.asarray(samples)[:n]
    n = min(len(sims), len(samples))
    vmin, vmax = np.percentile(np.concatenate([sims[:n], samples[:n]]), [1, 99])
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    for row, (maps, title) in enumerate(zip((sims, samples), titles, strict=True)):
        for i in range(n):
            ax = axes[row, i]
            im = ax.imshow(maps[i], cmap="viridis", vmin=vmin, vmax=vmax, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(title)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label=r"$\delta$")
    return fig


def plot_power_spectra(stats: Mapping, label: str = "flow"):
    """P(k) of samples and simulations (band: scatter of one map) with a ratio panel."""
    plt = _pyplot()
    pk = stats["power_spectrum"]
    k = np.asarray(pk["k"])
    fig, (ax, axr) = plt.subplots(2, 1, figsize=(5.5, 5.5), sharex=True,
                                  gridspec_kw={"height_ratios": [2.2, 1]})
    my, sy = np.asarray(pk["sims_mean"]), np.asarray(pk["sims_std"])
    ax.fill_between(k, my - sy, my + sy, color="0.8", label="simulations ±1σ (one map)")
    ax.plot(k, my, "k-", label="simulations")
    ax.plot(k, pk["samples_mean"], "C0--", label=label)
    ax.set_yscale("log")
    ax.set_ylabel(r"$P(k)$ [$h^{-2}\,$Mpc$^2$]")
    ax.legend(fontsize=8)
    tol = pk.get("tolerance", 0.05)
    axr.axhspan(1 - tol, 1 + tol, color="C2", alpha=0.2, label=f"±{tol:.0%}")
    axr.errorbar(k, pk["ratio"], yerr=pk["ratio_err"], fmt="o", ms=3, color="C0")
    axr.axhline(1.0, color="k", lw=0.8)
    axr.set_xscale("log")
    axr.xaxis.set_minor_formatter(_null_formatter())
    axr.set_xlabel(r"$k$ [$h\,$Mpc$^{-1}$]")
    axr.set_ylabel("ratio")
    axr.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_pdf(stats: Mapping, label: str = "flow"):
    """One-point PDF of the pixels: simulations (band: one-map scatter) and samples."""
    plt = _pyplot()
    pdf = stats["pdf"]
    e = np.asarray(pdf["edges"])
    c = 0.5 * (e[1:] + e[:-1])
    my, sy = np.asarray(pdf["sims_mean"]), np.asarray(pdf["sims_std"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.fill_between(c, np.maximum(my - sy, 1e-6), my + sy, color="0.8",
                    label="simulations ±1σ (one map)")
    ax.plot(c, my, "k-", label="simulations")
    ax.plot(c, pdf["samples_mean"], "C0--", label=label)
    ax.set_yscale("log")
    ax.set_xlabel(r"$\delta$")
    ax.set_ylabel("PDF")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_peaks(stats: Mapping, label: str = "flow"):
    """Cumulative peak counts N(> nu) of samples and simulations."""
    plt = _pyplot()
    pk = stats["peaks"]
    t = np.asarray(pk["thresholds"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.errorbar(t, pk["sims_mean"], yerr=pk["sims_std"], fmt="k-", capsize=2,
                label="simulations ±1σ (one map)")
    ax.plot(t, pk["samples_mean"], "C0o--", label=label)
    ax.set_xlabel(r"$\nu$ [map std]")
    ax.set_ylabel(r"$N(>\nu)$ per map")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_posteriors(posteriors: Mapping, theta_true=None, zoom: bool = True):
    """68% and 95% HPD contours of several grid posteriors on one (Omega_m, sigma_8) plot.

    ``posteriors`` maps a label (e.g. 'TRENF', 'P(k)', 'exact') to a ``GridPosterior``;
    the legend gives each FoM. ``zoom`` restricts the axes to the 95% regions.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    boxes = []
    for c, (name, p) in enumerate(posteriors.items()):
        g = p.grid
        om, s8 = np.meshgrid(g.om, g.s8, indexing="ij")
        levels = sorted(set(p.levels))  # 95% level < 68% level
        styles = ["--", "-"] if len(levels) == 2 else ["-"] * len(levels)
        ax.contour(om, s8, p.post, levels=levels, colors=[f"C{c}"] * len(levels),
                   linestyles=styles)
        ax.plot([], [], f"C{c}-", label=f"{name} (FoM {p.fom:.0f})")
        inside = p.post >= min(p.levels)
        if inside.any():
            boxes.append((om[inside].min(), om[inside].max(), s8[inside].min(), s8[inside].max()))
    if theta_true is not None:
        ax.plot(*np.asarray(theta_true, np.float64).ravel()[:2], "k*", ms=12, label="truth")
    if zoom and boxes:
        b = np.asarray(boxes)
        lo_om, hi_om, lo_s8, hi_s8 = b[:, 0].min(), b[:, 1].max(), b[:, 2].min(), b[:, 3].max()
        pad_om, pad_s8 = 0.15 * (hi_om - lo_om) + 1e-3, 0.15 * (hi_s8 - lo_s8) + 1e-3
        ax.set_xlim(lo_om - pad_om, hi_om + pad_om)
        ax.set_ylim(lo_s8 - pad_s8, hi_s8 + pad_s8)
    ax.set_xlabel(r"$\Omega_m$")
    ax.set_ylabel(r"$\sigma_8$")
    ax.set_title("68% (solid) and 95% (dashed) credible regions", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
