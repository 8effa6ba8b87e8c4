"""The field-level figure: truth, observation, posterior mean and std, and theta contours."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["plot_field_level", "sample_contours"]


def sample_contours(ax, samples, color, label, *, bins: int = 40, smooth: float = 1.5):
    """68% and 95% HPD contours of 2D samples (S, 2) on ``ax`` from a smoothed histogram."""
    from scipy.ndimage import gaussian_filter

    s = np.asarray(samples, np.float64)
    lo, hi = s.min(axis=0), s.max(axis=0)
    pad = 0.2 * (hi - lo) + 1e-9
    h, xe, ye = np.histogram2d(
        s[:, 0],
        s[:, 1],
        bins=bins,
        range=[[lo[0] - pad[0], hi[0] + pad[0]], [lo[1] - pad[1], hi[1] + pad[1]]],
    )
    h = gaussian_filter(h, smooth)
    h = h / h.sum()
    flat = np.sort(h.ravel())[::-1]
    cum = np.cumsum(flat)
    levels = sorted(
        {float(flat[min(np.searchsorted(cum, m), len(flat) - 1)]) for m in (0.68, 0.95)}
    )
    xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
    styles = ["--", "-"] if len(levels) == 2 else ["-"]
    ax.contour(xc, yc, h.T, levels=levels, colors=[color] * len(levels), linestyles=styles)
    ax.plot([], [], "-", color=color, label=label)


def plot_field_level(
    truth,
    d,
    mask,
    result,
    *,
    others: Mapping | None = None,
    grid_posterior=None,
    theta_true=None,
):
    """One row: truth (if given), observation (masked pixels blank), posterior mean, posterior
    std, and the theta contours (68% solid, 95% dashed) of ``result`` (a FieldLevelResult),
    of ``others`` (label -> FieldLevelResult, e.g. the exact sampler) and of a grid posterior
    of the clean map (``fieldflow.inference.GridPosterior``)."""
    import matplotlib.pyplot as plt

    panels = []
    if truth is not None:
        panels.append(("truth", np.asarray(truth)))
    obs = np.where(np.asarray(mask) > 0, np.asarray(d), np.nan)
    panels += [("observation", obs), ("posterior mean", result.field_mean)]
    fig, axes = plt.subplots(1, len(panels) + 2, figsize=(4.0 * (len(panels) + 2), 3.8))
    finite = np.concatenate([np.ravel(p[1][np.isfinite(p[1])]) for p in panels])
    vmin, vmax = np.percentile(finite, [1, 99])
    for ax, (title, img) in zip(axes, panels, strict=False):
        im = ax.imshow(img, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[len(panels) - 1], fraction=0.046)
    ax = axes[len(panels)]
    im = ax.imshow(result.field_std, cmap="magma")
    ax.set_title("posterior std")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[-1]
    sample_contours(ax, result.samples, "C0", f"field-level ({result.sampler})")
    for c, (label, r) in enumerate((others or {}).items()):
        sample_contours(ax, r.samples, f"C{c + 1}", label)
    if grid_posterior is not None:
        g, p = grid_posterior.grid, grid_posterior
        om, s8 = np.meshgrid(g.om, g.s8, indexing="ij")
        levels = sorted(set(p.levels))
        ax.contour(
            om,
            s8,
            p.post,
            levels=levels,
            colors=["k"] * len(levels),
            linestyles=["--", "-"][-len(levels) :],
        )
        ax.plot([], [], "k-", label="grid posterior (clean map)")
    if theta_true is not None:
        ax.plot(*np.asarray(theta_true, np.float64).ravel()[:2], "r*", ms=12, label="truth")
    ax.set_xlabel(r"$\Omega_m$")
    ax.set_ylabel(r"$\sigma_8$")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
