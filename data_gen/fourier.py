"""Fourier conventions shared by data_gen and fieldflow (fieldflow.fourier re-exports them).

A map is an ``N x N`` periodic field on a square of side ``box`` (h^-1 Mpc).
Real fields are transformed with ``rfft2`` over the last two axes, which keeps
the half plane ``(N, N//2 + 1)``: every row ``k_y`` and the columns
``k_x = 0 .. N//2``.

Continuous-normalised Fourier modes and the power spectrum follow

    delta(k) = (L / N)^2 sum_x delta(x) exp(-i k.x),
    P(k)     = <|delta(k)|^2> / L^2 = L^2 |FFT[delta](k)|^2 / N^4,

so that the variance of a pixel is sum_k P(k) / L^2 over the N^2 modes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "fundamental_k",
    "nyquist_k",
    "kgrid",
    "kgrid_half",
    "kmag",
    "kmag_half",
    "rfft_multiplicity",
    "k_bin_edges",
    "k_bin_centers",
    "bins_below_nyquist",
    "k_bin_edges_up_to",
    "bin_index_half",
    "radial_average_half",
    "power_spectrum",
    "cross_power_spectrum",
]


def _check_grid(n: int, box: float) -> None:
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not np.isfinite(box) or box <= 0:
        raise ValueError(f"box must be a positive finite length in h^-1 Mpc, got {box!r}")


def fundamental_k(box: float) -> float:
    """Fundamental wavenumber k_f = 2 pi / L in h/Mpc."""
    _check_grid(2, box)
    return 2.0 * np.pi / box


def nyquist_k(n: int, box: float) -> float:
    """Nyquist wavenumber k_N = pi N / L in h/Mpc."""
    _check_grid(n, box)
    return np.pi * n / box


@functools.lru_cache(maxsize=64)
def _kgrid_np(n: int, box: float, half: bool) -> tuple[np.ndarray, np.ndarray]:
    ky = 2.0 * np.pi * np.fft.fftfreq(n, d=box / n)
    kx = 2.0 * np.pi * (np.fft.rfftfreq(n, d=box / n) if half else np.fft.fftfreq(n, d=box / n))
    kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
    kxx.setflags(write=False)
    kyy.setflags(write=False)
    return kxx, kyy


def kgrid(n: int, box: float = 2.0 * np.pi) -> tuple[np.ndarray, np.ndarray]:
    """Wavevector components (k_x, k_y) on the full N x N FFT grid, each of shape (N, N).

    Axis 0 of a map is y, axis 1 is x, matching ``np.fft.fft2``. The default box
    ``2 pi`` makes k integer (grid units).
    """
    _check_grid(n, box)
    return _kgrid_np(int(n), float(box), False)


def kgrid_half(n: int, box: float = 2.0 * np.pi) -> tuple[np.ndarray, np.ndarray]:
    """Wavevector components (k_x, k_y) on the rfft2 half plane, each of shape (N, N//2+1)."""
    _check_grid(n, box)
    return _kgrid_np(int(n), float(box), True)


def kmag(n: int, box: float = 2.0 * np.pi) -> np.ndarray:
    """|k| = sqrt(k_x^2 + k_y^2) on the full grid, shape (N, N)."""
    kx, ky = kgrid(n, box)
    return np.hypot(kx, ky)


def kmag_half(n: int, box: float = 2.0 * np.pi) -> np.ndarray:
    """|k| on the rfft2 half plane, shape (N, N//2+1)."""
    kx, ky = kgrid_half(n, box)
    return np.hypot(kx, ky)


@functools.lru_cache(maxsize=64)
def rfft_multiplicity(n: int) -> np.ndarray:
    """How many of the N^2 full-plane frequencies each rfft2 entry stands for.

    Column k_x = 0, and for even N the Nyquist column k_x = -N/2, are their own
    mirror images and count once; every other column also stands for its
    complex conjugate at -k and counts twice. The weights sum to N^2.
    """
    _check_grid(n, 1.0)
    w = np.full((n, n // 2 + 1), 2.0)
    w[:, 0] = 1.0
    if n % 2 == 0:
        w[:, -1] = 1.0
    w.setflags(write=False)
    return w


def k_bin_edges(n: int, box: float, n_bins: int | None = None) -> np.ndarray:
    """Edges of the radial k bins used everywhere in the package.

    Linear bins from k_f / 2 to the Nyquist frequency plus k_f / 2; the default
    N // 2 bins are centred on k_f, 2 k_f, ..., (N/2) k_f. The k = 0 mode and
    the corners beyond Nyquist fall outside every bin.
    """
    _check_grid(n, box)
    n_bins = n // 2 if n_bins is None else int(n_bins)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    kf = fundamental_k(box)
    return np.linspace(0.5 * kf, (n // 2 + 0.5) * kf, n_bins + 1)


def k_bin_centers(edges: np.ndarray) -> np.ndarray:
    """Centres of the bins given by ``edges``."""
    edges = np.asarray(edges)
    return 0.5 * (edges[1:] + edges[:-1])


def bins_below_nyquist(n: int, box: float) -> np.ndarray:
    """Boolean mask of the default :func:`k_bin_edges` bins whose centre lies below the
    Nyquist frequency (all but the last; where P(k) of a map is compared)."""
    centres = k_bin_centers(k_bin_edges(n, box))
    return centres < nyquist_k(n, box) * (1 - 1e-9)


def k_bin_edges_up_to(n: int, box: float, k_max: float | None = None) -> np.ndarray:
    """``k_bin_edges(n, box)`` without the bins whose centre lies above ``k_max`` (h/Mpc;
    None keeps every bin up to Nyquist); ValueError when no bin is left."""
    edges = k_bin_edges(n, box)
    if k_max is None:
        return edges
    centres = k_bin_centers(edges)
    keep = int(np.sum(centres <= float(k_max)))
    if keep < 1:
        raise ValueError(f"k_max = {k_max} h/Mpc leaves no bin (first at {centres[0]:.4g})")
    return edges[: keep + 1]


def bin_index_half(n: int, box: float, edges: np.ndarray) -> np.ndarray:
    """Bin of every rfft2 entry, shape (N, N//2+1); -1 where |k| is in no bin."""
    k = kmag_half(n, box)
    idx = np.digitize(k, edges) - 1
    idx[(idx < 0) | (idx >= len(edges) - 1)] = -1
    return idx


def radial_average_half(
    values: jnp.ndarray, n: int, box: float, edges: np.ndarray | None = None
) -> jnp.ndarray:
    """Mode-weighted mean of ``values`` (..., N, N//2+1) in each radial k bin.

    Every full-plane mode counts once (``rfft_multiplicity``). Returns
    (..., n_bins); an empty bin gives 0.
    """
    edges = k_bin_edges(n, box) if edges is None else np.asarray(edges)
    n_bins = len(edges) - 1
    idx = bin_index_half(n, box, edges)
    w = rfft_multiplicity(n) * (idx >= 0)
    onehot = (idx[..., None] == np.arange(n_bins)) * w[..., None]  # (N, N//2+1, n_bins)
    counts = onehot.sum(axis=(0, 1))
    weights = jnp.asarray(onehot / np.maximum(counts, 1.0), dtype=jnp.float32)
    return jnp.einsum("...ij,ijb->...b", values, weights, precision=jax.lax.Precision.HIGHEST)


def cross_power_spectrum(
    a: jnp.ndarray, b: jnp.ndarray, box: float, edges: np.ndarray | None = None
) -> jnp.ndarray:
    """Binned cross spectrum P_ab(k) = L^2 Re[FFT(a) FFT(b)^*] / N^4 of (..., N, N) maps."""
    n = a.shape[-1]
    fa = jnp.fft.rfft2(a)
    fb = jnp.fft.rfft2(b)
    pk = (box**2 / n**4) * jnp.real(fa * jnp.conj(fb))
    return radial_average_half(pk, n, box, edges)


def power_spectrum(delta: jnp.ndarray, box: float, edges: np.ndarray | None = None) -> jnp.ndarray:
    """Binned auto power spectrum P(k) = L^2 |FFT(delta)|^2 / N^4 of (..., N, N) maps.

    Returns (..., n_bins) on ``k_bin_edges(N, box)`` unless ``edges`` is given.
    """
    n = delta.shape[-1]
    fd = jnp.fft.rfft2(delta)
    pk = (box**2 / n**4) * (jnp.real(fd) ** 2 + jnp.imag(fd) ** 2)
    return radial_average_half(pk, n, box, edges)
