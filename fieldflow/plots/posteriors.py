"""Figures of posteriors on (Omega_m, sigma_8)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["plot_posteriors", "plot_coverage"]


def plot_posteriors(posteriors: Mapping, theta_true=None, zoom: bool = True):
    """68% and 95% HPD contours of several grid posteriors on one (Omega_m, sigma_8) plot.

    ``posteriors`` maps a label (e.g. 'TRENF', 'P(k)', 'exact') to a
    ``fieldflow.inference.GridPosterior``; the legend gives each FoM. ``theta_true`` is
    marked with a star. ``zoom`` restricts the axes to the 95% regions.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    boxes = []
    for c, (name, p) in enumerate(posteriors.items()):
        g = p.grid
        om, s8 = np.meshgrid(g.om, g.s8, indexing="ij")
        levels = sorted(set(p.levels))  # 95% level < 68% level
        styles = ["--", "-"] if len(levels) == 2 else ["-"] * len(levels)
        ax.contour(om, s8, p.post, levels=levels, colors=[f"C{c}"] * len(levels), linestyles=styles)
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


def plot_coverage(curves: Mapping):
    """Empirical against expected coverage of the HPD regions, one line per method.

    ``curves`` maps a label to a ``fieldflow.inference.coverage_curve`` result. A calibrated
    posterior follows the diagonal within its binomial band (shaded, 2 sigma); a curve below
    it is overconfident (its regions are too small), above it too conservative.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    for c, (name, curve) in enumerate(curves.items()):
        q, cov = np.asarray(curve["levels"]), np.asarray(curve["coverage"])
        err = np.asarray(curve["stderr"])
        ax.fill_between(q, q - 2 * err, q + 2 * err, color=f"C{c}", alpha=0.12, lw=0)
        ax.plot(q, cov, f"C{c}o-", ms=3, label=f"{name} ({curve['n_maps']} maps)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("credibility of the HPD region")
    ax.set_ylabel("fraction of maps whose true θ is inside")
    ax.set_title("coverage (below the diagonal: overconfident)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
