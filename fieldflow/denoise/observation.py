r"""The observation model, its input checks, and the signal power in FFT units.

Observation model, on periodic N x N maps (pixel index x):

    d = M s + n,    n ~ N(0, N),   N = diag(sigma_n^2(x)),

with M the binary mask (1 = observed, 0 = hole) and sigma_n^2 > 0 white or
pixel-dependent. Masked pixels carry no information: only W = M^T N^-1 M =
diag(M / sigma_n^2) enters (:func:`noise_weights`).

Fourier units. With the unnormalised FFT s_k = sum_x s(x) exp(-i k.x) (numpy's
``fft2``), a statistically homogeneous Gaussian field has

    < s_k s_k'^* > = S_k  delta_kk',    S_k = <|FFT[s](k)|^2> = N^4 P(k) / L^2,

where P(k) is the power spectrum in (h^-1 Mpc)^2 in the convention of
:mod:`fieldflow.fourier` (P = L^2 |FFT|^2 / N^4). The pixel covariance is
C = F^-1 diag(S) F^-dagger, whose eigenvalues are S_k / N^2: white noise of
pixel variance sigma^2 has S_k = N^2 sigma^2. ``signal_power_half`` is S_k on the
rfft2 half plane, shape (N, N//2+1), in these units (:func:`signal_power_from_pk`).

The checks run on the host (numpy) on concrete inputs, so that a call compiles only
its jitted solver, not a string of small eager operations. Map arrays go through
:func:`fieldflow.validation.check_maps`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fieldflow import fourier
from fieldflow.validation import check_maps

__all__ = ["signal_power_from_pk", "sample_gaussian_field", "observe"]


# ------------------------------------------------------------------------ checks
def check_data(d, name: str = "d") -> tuple[np.ndarray, bool]:
    """Maps (B, N, N) float32 numpy and whether the input was one (N, N) map."""
    return check_maps(np.asarray(d), name=name)


def check_mask(mask, shape) -> np.ndarray:
    """(B, N, N) or (N, N) binary float32 mask, 1 = observed; None = all observed."""
    b, n = shape[0], shape[-1]
    if mask is None:
        return np.ones((n, n), np.float32)
    m = np.asarray(mask)
    if m.shape not in ((n, n), (b, n, n)):
        raise ValueError(f"mask must have shape ({n}, {n}) or ({b}, {n}, {n}), got {m.shape}")
    if m.dtype == bool:
        m = m.astype(np.float32)
    if not np.all((m == 0) | (m == 1)):
        raise ValueError("mask must contain only 0 (masked) and 1 (observed)")
    flat = m.reshape(-1, n * n)
    if np.any(flat.sum(axis=1) == 0):
        raise ValueError("the mask hides every pixel of a map: nothing is observed")
    return m.astype(np.float32)


def check_noise(noise_var, shape) -> np.ndarray:
    """Noise variance sigma_n^2 > 0: a scalar, (N, N) or (B, N, N), as float32."""
    b, n = shape[0], shape[-1]
    v = np.asarray(noise_var, dtype=np.float64)
    if v.shape not in ((), (n, n), (b, n, n)):
        raise ValueError(
            f"noise_var must be a scalar or have shape ({n}, {n}) or ({b}, {n}, {n}), got {v.shape}"
        )
    if not np.all(np.isfinite(v)):
        raise ValueError("noise_var must be finite")
    if not np.all(v > 0):
        raise ValueError(f"noise_var must be > 0 everywhere, got min {v.min():g}")
    return v.astype(np.float32)


def check_power(signal_power_half, n: int) -> np.ndarray:
    """S_k on the rfft2 half plane, (N, N//2+1), finite and >= 0, as float32."""
    s = np.asarray(signal_power_half, dtype=np.float64)
    if s.shape != (n, n // 2 + 1):
        raise ValueError(
            f"signal_power_half must be S_k on the rfft2 half plane, shape ({n}, {n // 2 + 1}), "
            f"got {s.shape}"
        )
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("signal_power_half must be finite and >= 0")
    return s.astype(np.float32)


def noise_weights(mask: np.ndarray, noise_var: np.ndarray, shape) -> np.ndarray:
    """W = M / sigma_n^2 per pixel, broadcast to ``shape`` (B, N, N), float32."""
    return np.ascontiguousarray(np.broadcast_to(mask / noise_var, shape), dtype=np.float32)


def check_batch_cond(cond, batch: int) -> np.ndarray | None:
    """Conditions theta (B, P) as float32; one (P,) row is shared by the batch."""
    if cond is None:
        return None
    cond = np.asarray(cond, dtype=np.float32)
    if cond.ndim == 1:
        cond = np.broadcast_to(cond, (batch, cond.shape[0]))
    if cond.ndim != 2 or cond.shape[0] != batch:
        raise ValueError(f"cond must have shape ({batch}, P), got {tuple(cond.shape)}")
    return cond


# ---------------------------------------------------------------- Fourier helpers
def fourier_apply(x, h_half):
    """F^-1 diag(h) F x for real (..., N, N) x and a real half-plane filter h."""
    n = x.shape[-1]
    return jnp.fft.irfft2(jnp.fft.rfft2(x) * h_half, s=(n, n))


def signal_power_from_pk(
    pk, n: int, box: float, *, edges=None, k0_power: float | None = None
) -> np.ndarray:
    """Per-mode signal variance S_k = N^4 P(|k|) / L^2 on the rfft2 half plane.

    From P(k) = L^2 <|FFT[s](k)|^2> / N^4 (:mod:`fieldflow.fourier`). A field drawn
    with :func:`sample_gaussian_field` from this S has ``fourier.power_spectrum`` = P.

    Args:
        pk: the power spectrum in (h^-1 Mpc)^2, either
            * a callable P(k) of |k| in h/Mpc (evaluated on ``fourier.kmag_half``);
            * a 1D array of binned values on ``edges`` (default
              ``fourier.k_bin_edges(n, box)``), assigned piecewise-constant to the
              modes of each bin; modes beyond the last edge (the corners past
              Nyquist) take the last bin's value;
            * an (N, N//2+1) array of P on the half plane.
        n: map side N.
        box: side L in h^-1 Mpc.
        edges: bin edges for a binned ``pk``.
        k0_power: P at k = 0 (the variance of the map mean, times L^2). Default: the
            value of a half-plane ``pk``; 0 for a callable or binned ``pk`` (a
            mean-zero field, whose mean the Wiener filter then sets to zero). Give a
            positive value to let the mean float (needed by ``gaussian_log_prior``).

    Returns:
        float32 numpy array (N, N//2+1), >= 0.
    """
    n = int(n)
    box = float(box)
    k = fourier.kmag_half(n, box)
    if callable(pk):
        with np.errstate(divide="ignore", invalid="ignore"):
            k_safe = np.where(k > 0, k, 1.0)
            p = np.asarray(pk(k_safe), dtype=np.float64)
        if p.shape != k.shape:
            p = np.broadcast_to(p, k.shape).astype(np.float64)
    else:
        arr = np.asarray(pk, dtype=np.float64)
        if arr.shape == k.shape:
            p = arr.copy()
        elif arr.ndim == 1:
            e = fourier.k_bin_edges(n, box) if edges is None else np.asarray(edges, np.float64)
            if len(arr) != len(e) - 1:
                raise ValueError(f"binned pk has {len(arr)} values but {len(e) - 1} bins")
            idx = np.clip(np.digitize(k, e) - 1, 0, len(arr) - 1)
            p = arr[idx]
        else:
            raise ValueError(
                f"pk must be callable, 1D binned, or shape {k.shape}; got shape {arr.shape}"
            )
    p = np.array(p, dtype=np.float64)
    if k0_power is not None:
        p[0, 0] = float(k0_power)
    elif callable(pk) or np.ndim(pk) == 1:
        p[0, 0] = 0.0
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("P(k) must be finite and >= 0 on every mode")
    return (n**4 * p / box**2).astype(np.float32)


def sample_gaussian_field(key: jax.Array, signal_power_half, batch: int = 1) -> jnp.ndarray:
    """Draw (batch, N, N) Gaussian fields with <|FFT[s]_k|^2> = S_k: s = C^{1/2} w, w white."""
    s = np.asarray(signal_power_half, dtype=np.float32)
    return _sample(key, check_power(s, s.shape[0]), int(batch))


@functools.partial(jax.jit, static_argnames=("batch",))
def _sample(key, s, batch):
    n = s.shape[0]
    w = jax.random.normal(key, (batch, n, n), dtype=jnp.float32)
    return fourier_apply(w, jnp.sqrt(s) / n)


def observe(truth, mask, noise_var, seed: int) -> np.ndarray:
    """A synthetic observation d = M (s + n), n ~ N(0, noise_var) white, float32.

    ``noise_var`` is a scalar or broadcasts against ``truth``; the noise is drawn by
    ``numpy.random.default_rng(seed)``.
    """
    truth = np.asarray(truth)
    rng = np.random.default_rng(seed)
    noise = np.sqrt(noise_var) * rng.standard_normal(truth.shape)
    return (np.asarray(mask) * (truth + noise)).astype(np.float32)
