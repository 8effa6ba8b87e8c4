"""Figures comparing flow samples with simulations: maps side by side, P(k), PDF, peaks.

The statistics come from :func:`fieldflow.evaluation.sample_quality`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["plot_maps_side_by_side", "plot_power_spectra", "plot_pdf", "plot_peaks"]


def plot_maps_side_by_side(sims, samples, n: int = 4, titles=("simulation", "flow sample")):
    """Row 1: ``n`` simulations; row 2: ``n`` samples; one shared colour scale."""
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    pk = stats["power_spectrum"]
    k = np.asarray(pk["k"])
    fig, (ax, axr) = plt.subplots(
        2, 1, figsize=(5.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [2.2, 1]}
    )
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
    axr.xaxis.set_minor_formatter(NullFormatter())
    axr.set_xlabel(r"$k$ [$h\,$Mpc$^{-1}$]")
    axr.set_ylabel("ratio")
    axr.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_pdf(stats: Mapping, label: str = "flow"):
    """One-point PDF of the pixels: simulations (band: one-map scatter) and samples."""
    import matplotlib.pyplot as plt

    pdf = stats["pdf"]
    e = np.asarray(pdf["edges"])
    c = 0.5 * (e[1:] + e[:-1])
    my, sy = np.asarray(pdf["sims_mean"]), np.asarray(pdf["sims_std"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.fill_between(
        c, np.maximum(my - sy, 1e-6), my + sy, color="0.8", label="simulations ±1σ (one map)"
    )
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
    import matplotlib.pyplot as plt

    pk = stats["peaks"]
    t = np.asarray(pk["thresholds"])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.errorbar(
        t,
        pk["sims_mean"],
        yerr=pk["sims_std"],
        fmt="k-",
        capsize=2,
        label="simulations ±1σ (one map)",
    )
    ax.plot(t, pk["samples_mean"], "C0o--", label=label)
    ax.set_xlabel(r"$\nu$ [map std]")
    ax.set_ylabel(r"$N(>\nu)$ per map")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
