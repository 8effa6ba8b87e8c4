"""Figures of denoised maps: truth, observation, reconstructions, r(k), residual power."""

from __future__ import annotations

import numpy as np

__all__ = ["plot_denoising", "plot_denoising_comparison"]


def plot_denoising(
    truth,
    observation,
    mask,
    wiener,
    flow=None,
    *,
    box: float,
    path=None,
    edges=None,
    labels: tuple[str, str] = ("Wiener", "flow MAP"),
    title: str | None = None,
):
    """Figure: truth, observation (masked pixels grey), Wiener, flow MAP, their
    residuals, and r(k) and residual P(k) against the truth.

    All maps are single (N, N) arrays (pass ``x[i]`` for a batch). ``flow`` may be
    None. Saved to ``path`` (PNG) when given. Returns the figure.
    """
    import matplotlib
    import matplotlib.pyplot as plt

    from fieldflow.denoise.metrics import denoising_metrics

    truth = np.asarray(truth)
    obs = np.array(observation, dtype=float)
    if mask is not None:
        obs = np.where(np.asarray(mask) > 0, obs, np.nan)
    recons = [(labels[0], np.asarray(wiener))]
    if flow is not None:
        recons.append((labels[1], np.asarray(flow)))
    n_top = 2 + len(recons)
    fig, axes = plt.subplots(2, n_top, figsize=(3.2 * n_top, 6.4))
    lim = float(np.percentile(np.abs(truth), 99.5)) or 1.0  # robust to skewed fields
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.6")
    kw = {"cmap": cmap, "vmin": -lim, "vmax": lim, "origin": "lower"}
    panels = [("truth", truth), ("observation", obs)] + recons
    for ax, (name, img) in zip(axes[0], panels, strict=True):
        im = ax.imshow(img, **kw)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    for ax in axes[1, : len(recons)]:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, (name, img) in zip(axes[1], recons, strict=False):
        ax.imshow(img - truth, **kw)
        ax.set_title(f"{name} − truth")
    ax_r, ax_p = axes[1, len(recons)], axes[1, len(recons) + 1]
    for name, img in recons:
        met = denoising_metrics(truth, img, mask, box, edges)
        ax_r.plot(met["k"], met["r_k"], "o-", ms=3, label=name)
        ax_p.loglog(met["k"], np.maximum(met["residual_pk"], 1e-30), "o-", ms=3, label=name)
    ax_p.loglog(met["k"], met["truth_pk"], "k--", label="truth")
    ax_p.xaxis.set_minor_formatter(plt.NullFormatter())  # no overlapping minor labels
    ax_r.set_xlabel(r"$k$ [$h$/Mpc]")
    ax_r.set_ylabel(r"$r(k)$")
    ax_r.axhline(1.0, color="k", lw=0.5)
    ax_r.legend(fontsize=8)
    ax_p.set_xlabel(r"$k$ [$h$/Mpc]")
    ax_p.set_ylabel(r"$P_{\rm res}(k)$")
    ax_p.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def plot_denoising_comparison(results: dict):
    """Mean r(k) and mean residual power of several estimators against the truth.

    ``results`` maps an estimator's name to its summary with ``k``, ``r_k``,
    ``residual_pk`` and ``truth_pk`` (``fieldflow.denoise.benchmark.summarise``).
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in results.items():
        a.plot(r["k"], r["r_k"], "o-", ms=3, label=name)
        b.loglog(r["k"], r["residual_pk"], "o-", ms=3, label=name)
    b.loglog(r["k"], r["truth_pk"], "k--", label="truth")
    a.set_xlabel(r"$k$ [$h$/Mpc]")
    a.set_ylabel(r"mean $r(k)$")
    b.set_xlabel(r"$k$ [$h$/Mpc]")
    b.set_ylabel(r"mean $P_{s-\hat s}(k)$")
    a.legend(fontsize=8)
    fig.tight_layout()
    return fig
