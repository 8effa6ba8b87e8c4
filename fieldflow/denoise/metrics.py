"""Quality of a reconstruction against the truth: r(k), residual power, pixel MSE."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fieldflow import fourier, metrics

__all__ = ["denoising_metrics"]


def denoising_metrics(truth, recon, mask, box: float, edges=None) -> dict:
    """Quality of a reconstruction against the truth.

    Returns a dict of numpy arrays: ``k`` (bin centres, h/Mpc); ``r_k`` the
    cross-correlation r(k) = P_{s,s_hat} / sqrt(P_s P_s_hat); ``residual_pk`` =
    P_{s - s_hat}(k); ``truth_pk`` = P_s(k); ``mse_all``, ``mse_observed``,
    ``mse_masked`` the pixel MSE overall, where M = 1 and where M = 0 (NaN when the
    region is empty). Per map: (B, n_bins) / (B,), or unbatched for (N, N) input.
    """
    truth = jnp.asarray(truth, jnp.float32)
    recon = jnp.asarray(recon, jnp.float32)
    n = truth.shape[-1]
    e = fourier.k_bin_edges(n, box) if edges is None else np.asarray(edges)
    out = {
        "k": fourier.k_bin_centers(e),
        "r_k": metrics.cross_correlation(truth, recon, box, e),
        "residual_pk": metrics.power_spectrum(truth - recon, box, e),
        "truth_pk": metrics.power_spectrum(truth, box, e),
        "mse_all": metrics.pixel_mse(truth, recon),
    }
    if mask is not None:
        out["mse_observed"] = metrics.pixel_mse(truth, recon, mask, "observed")
        out["mse_masked"] = metrics.pixel_mse(truth, recon, mask, "masked")
    return {k: np.asarray(v) for k, v in out.items()}
