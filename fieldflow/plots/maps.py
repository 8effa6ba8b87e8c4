"""Figures of maps and of training curves."""

from __future__ import annotations

__all__ = ["plot_loss_curves", "plot_maps"]


def plot_loss_curves(history: dict):
    """Training and validation NLL (nats per pixel) against step."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    train = history.get("train", [])
    evals = history.get("eval", [])
    if train:
        ax.plot(
            [r["step"] for r in train],
            [r["nll_per_pixel"] for r in train],
            lw=0.8,
            alpha=0.6,
            label="train (batch)",
        )
    if evals:
        ax.plot(
            [r["step"] for r in evals],
            [r["val_nll_per_pixel"] for r in evals],
            "o-",
            ms=3,
            label="validation",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("NLL [nats / pixel]")
    if train or evals:
        ax.legend()
    fig.tight_layout()
    return fig


def plot_maps(maps, titles=None, ncols: int = 4, cmap: str = "viridis"):
    """A grid of maps sharing one colour scale."""
    import matplotlib.pyplot as plt
    import numpy as np

    maps = np.asarray(maps)
    n = maps.shape[0]
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    vmin, vmax = np.percentile(maps, [1, 99])
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3 * nrows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(maps[i], cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
            if titles is not None:
                ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    return fig
