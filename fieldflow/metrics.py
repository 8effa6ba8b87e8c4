"""Summary statistics of 2D density maps, jitted and batched.

Every function takes maps of shape (B, N, N) or a single map (N, N) and returns
the batch axis only when it was given. Fourier statistics use the package-wide
convention of :mod:`fieldflow.fourier`,

    P(k) = L^2 |FFT[delta](k)|^2 / N^4,

binned on ``fourier.k_bin_edges(N, box)`` (N // 2 linear bins centred on
k_f, 2 k_f, ..., k_N) unless ``edges`` is given; the binning counts every
full-plane mode once. The spectra are thin wrappers on ``fourier.power_spectrum``
and ``fourier.cross_power_spectrum``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fieldflow import fourier
from fieldflow.validation import check_maps

__all__ = [
    "power_spectrum",
    "cross_power_spectrum",
    "cross_correlation",
    "one_point_pdf",
    "peak_counts",
    "pixel_mse",
]


# ---------------------------------------------------------------------------- helpers
def _as_maps(x, name: str = "x") -> tuple[jnp.ndarray, bool]:
    """Return (B, N, N) float32 maps and whether the input was a single (N, N) map."""
    maps, single = check_maps(x, name=name, finite=False)
    return jnp.asarray(maps), single


def _same_shape(a, b, na: str, nb: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{na} and {nb} must have the same shape, got {a.shape} and {b.shape}")


def _edges_key(n: int, box: float, edges) -> tuple[float, ...]:
    """Hashable (static) version of the k-bin edges."""
    e = fourier.k_bin_edges(n, box) if edges is None else np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) < 2 or not np.all(np.diff(e) > 0):
        raise ValueError("edges must be a 1D increasing array with at least 2 entries")
    return tuple(float(v) for v in e)


def _check_box(box) -> float:
    box = float(box)
    if not np.isfinite(box) or box <= 0:
        raise ValueError(f"box must be a positive finite length in h^-1 Mpc, got {box!r}")
    return box


def _unbatch(y, single: bool):
    return y[0] if single else y


# ------------------------------------------------------------------- power spectra
@functools.partial(jax.jit, static_argnames=("box", "edges"))
def _pk(x, box, edges):
    return fourier.power_spectrum(x, box, np.asarray(edges))


@functools.partial(jax.jit, static_argnames=("box", "edges"))
def _xpk(a, b, box, edges):
    return fourier.cross_power_spectrum(a, b, box, np.asarray(edges))


@functools.partial(jax.jit, static_argnames=("box", "edges"))
def _r(a, b, box, edges):
    e = np.asarray(edges)
    pab = fourier.cross_power_spectrum(a, b, box, e)
    pa = fourier.power_spectrum(a, box, e)
    pb = fourier.power_spectrum(b, box, e)
    den = jnp.sqrt(pa * pb)
    return jnp.where(den > 0, pab / jnp.where(den > 0, den, 1.0), 0.0)


def power_spectrum(x, box: float, edges=None) -> jnp.ndarray:
    """Binned auto power spectrum in (h^-1 Mpc)^2.

        P(k_b) = < L^2 |FFT[x](k)|^2 / N^4 >_{|k| in bin b},

    the mean over the full-plane modes of each bin (``fourier.power_spectrum``).

    Args:
        x: maps (B, N, N) or (N, N).
        box: side L of the map in h^-1 Mpc.
        edges: bin edges in h/Mpc; default ``fourier.k_bin_edges(N, box)``.

    Returns:
        (B, n_bins) or (n_bins,).
    """
    x, single = _as_maps(x)
    box = _check_box(box)
    return _unbatch(_pk(x, box, _edges_key(x.shape[-1], box, edges)), single)


def cross_power_spectrum(a, b, box: float, edges=None) -> jnp.ndarray:
    """Binned cross power spectrum P_ab(k_b) = < L^2 Re[FFT a FFT b^*] / N^4 >_bin.

    Same shapes and bins as :func:`power_spectrum`; ``a`` and ``b`` must match.
    """
    a, single = _as_maps(a, "a")
    b, _ = _as_maps(b, "b")
    _same_shape(a, b, "a", "b")
    box = _check_box(box)
    return _unbatch(_xpk(a, b, box, _edges_key(a.shape[-1], box, edges)), single)


def cross_correlation(a, b, box: float, edges=None) -> jnp.ndarray:
    """Cross-correlation coefficient per k bin,

        r(k) = P_ab(k) / sqrt(P_a(k) P_b(k)),

    each spectrum binned first (so |r| <= 1 by Cauchy-Schwarz). r = 1 for
    identical maps, ~0 for independent ones; a bin where either spectrum
    vanishes gives 0. ``box`` cancels out but fixes the bins.

    Returns:
        (B, n_bins) or (n_bins,).
    """
    a, single = _as_maps(a, "a")
    b, _ = _as_maps(b, "b")
    _same_shape(a, b, "a", "b")
    box = _check_box(box)
    return _unbatch(_r(a, b, box, _edges_key(a.shape[-1], box, edges)), single)


# ----------------------------------------------------------------------- one-point PDF
@jax.jit
def _pdf(x, edges):
    flat = x.reshape(x.shape[0], -1)
    n_bins = edges.shape[0] - 1
    idx = jnp.searchsorted(edges, flat, side="right") - 1
    # the last edge is inclusive, as in numpy.histogram
    idx = jnp.where(flat == edges[-1], n_bins - 1, idx)
    valid = (idx >= 0) & (idx < n_bins)
    onehot = (idx[..., None] == jnp.arange(n_bins)) & valid[..., None]
    counts = onehot.sum(axis=1).astype(jnp.float32)
    return counts / (flat.shape[1] * jnp.diff(edges))


def one_point_pdf(x, bin_edges) -> jnp.ndarray:
    """Histogram estimate of the one-point PDF of the pixel values (e.g. delta).

        p_i = #{pixels with e_i <= x < e_{i+1}} / (N^2 (e_{i+1} - e_i)),

    bins closed on the left, the last one also on the right (as numpy.histogram).
    The normalisation is by *all* N^2 pixels, so sum_i p_i (e_{i+1} - e_i) is the
    fraction of pixels inside the edges: exactly 1 when the edges cover the map.

    Args:
        x: maps (B, N, N) or (N, N).
        bin_edges: 1D increasing edges (n_bins + 1,).

    Returns:
        Density (B, n_bins) or (n_bins,).
    """
    x, single = _as_maps(x)
    e = np.asarray(bin_edges, dtype=np.float64)
    if e.ndim != 1 or len(e) < 2 or not np.all(np.diff(e) > 0):
        raise ValueError("bin_edges must be a 1D increasing array with at least 2 entries")
    return _unbatch(_pdf(x, jnp.asarray(e, dtype=jnp.float32)), single)


# ------------------------------------------------------------------------- peak counts
def _neighbour_max(x):
    """Max over the 8 periodic neighbours of every pixel, (B, N, N)."""
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return jnp.max(jnp.stack([jnp.roll(x, s, axis=(-2, -1)) for s in shifts]), axis=0)


@jax.jit
def _peaks(x, thresholds):
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = x.std(axis=(-2, -1), keepdims=True)
    nu = (x - mean) / jnp.where(std > 0, std, 1.0)
    is_peak = (x > _neighbour_max(x)) & (std > 0)
    above = is_peak[..., None] & (nu[..., None] > thresholds)  # (B, N, N, T)
    return above.sum(axis=(1, 2)).astype(jnp.int32)


def peak_counts(x, thresholds) -> jnp.ndarray:
    """Cumulative peak counts N(> nu_t) of each map.

    A peak is a pixel strictly greater than its 8 periodic neighbours. Its height
    is nu = (x - mean) / std in units of the map's own standard deviation (mean
    and std over the N^2 pixels of that map); N(> nu_t) counts peaks with
    nu > nu_t. A constant map has no peaks.

    Args:
        x: maps (B, N, N) or (N, N).
        thresholds: nu_t, scalar or 1D (T,).

    Returns:
        int32 counts (B, T) or (T,).
    """
    x, single = _as_maps(x)
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float32))
    if t.ndim != 1:
        raise ValueError("thresholds must be a scalar or a 1D array")
    return _unbatch(_peaks(x, jnp.asarray(t)), single)


# ------------------------------------------------------------------------- pixel MSE
@functools.partial(jax.jit, static_argnames=("region",))
def _mse(a, b, mask, region):
    sq = (a - b) ** 2
    if region == "all":
        w = jnp.ones_like(sq)
    elif region == "observed":
        w = jnp.broadcast_to(mask, sq.shape)
    else:
        w = jnp.broadcast_to(1.0 - mask, sq.shape)
    n = w.sum(axis=(-2, -1))
    return jnp.where(n > 0, (w * sq).sum(axis=(-2, -1)) / jnp.maximum(n, 1.0), jnp.nan)


def pixel_mse(a, b, mask=None, region: str = "all") -> jnp.ndarray:
    """Mean squared pixel difference, optionally restricted to a mask region.

        MSE = sum_x w(x) (a(x) - b(x))^2 / sum_x w(x),

    with w = 1 (``region="all"``), w = M (``"observed"``: pixels where the binary
    mask M is 1) or w = 1 - M (``"masked"``: the holes). An empty region gives NaN.

    Args:
        a, b: maps (B, N, N) or (N, N), same shape.
        mask: 0/1 mask (N, N) or (B, N, N), 1 = observed; required unless region="all".
        region: "all", "observed" or "masked".

    Returns:
        (B,) or a scalar.
    """
    a, single = _as_maps(a, "a")
    b, _ = _as_maps(b, "b")
    _same_shape(a, b, "a", "b")
    if region not in ("all", "observed", "masked"):
        raise ValueError(f"region must be 'all', 'observed' or 'masked', got {region!r}")
    if mask is None:
        if region != "all":
            raise ValueError(f"region={region!r} needs a mask")
        m = jnp.ones(a.shape[-2:], jnp.float32)
    else:
        m = np.asarray(mask, dtype=np.float32)
        if m.shape != tuple(a.shape[-2:]) and m.shape != tuple(a.shape):
            raise ValueError(
                f"mask must have shape {tuple(a.shape[-2:])} or {tuple(a.shape)}, "
                f"got {tuple(m.shape)}"
            )
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("mask must contain only 0 (masked) and 1 (observed)")
        m = jnp.asarray(m)
    return _unbatch(_mse(a, b, m, region), single)
