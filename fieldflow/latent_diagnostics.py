"""What a trained flow leaves in its latent space, and how honest its likelihood is at theta_0.

* :func:`latent_amplitude_power`: the power of w = z^2 - 1 at the lowest |k| bins. A correct
  flow gives white, unit Gaussian z, for which it is 2.0 at every k; excess power at low k is
  a small-scale amplitude modulated by the large scales (what TRENF misses on N-body maps).
* :func:`model_diagnostics`: that power over test maps, a multiscale model's NLL per pixel
  split into its terms, and the score test of the information identity on fiducial maps.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["latent_amplitude_power", "model_diagnostics"]


def latent_amplitude_power(z, n_bins: int = 3) -> list[float]:
    """P(k) of w = z^2 - 1 of latent maps z (M, N, N) in grid units:

        P_w(k_b) = < |F[w](k)|^2 / N^2 >  over all maps and modes with round(|k|) = b,

    for b = 1 ... ``n_bins``. 2.0 for white unit-Gaussian z."""
    z = np.asarray(z, np.float64)
    n = z.shape[-1]
    w = z * z - 1.0
    power = np.abs(np.fft.fft2(w)) ** 2 / (n * n)
    k = np.fft.fftfreq(n, 1.0 / n)
    kk = np.rint(np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)).astype(int)
    return [float(power[:, kk == b].mean()) for b in range(1, n_bins + 1)]


def model_diagnostics(
    model,
    splits: dict,
    theta0,
    n_score: int | None = None,
    batch: int = 64,
    n_mixture: int = 256,
):
    """Latent clustering, NLL terms (multiscale) and the fiducial score test of ``model``.

    ``splits`` as :func:`fieldflow.data.load_dataset` returns them (``test``, optionally
    ``fiducial`` maps simulated at ``theta0``); ``n_score`` fiducial maps for the score test
    (None: all, 0: no score test). For a multiscale model also the NLL per pixel of its
    exact symmetrisation over the lattice symmetries it lacks
    (:func:`fieldflow.models.group_mixture.group_mixture_log_prob`) and of the model itself
    on the first ``n_mixture`` test maps (0: skip).
    """
    import jax.numpy as jnp

    from fieldflow.inference.calibration import score_and_hessian, score_test
    from fieldflow.inference.likelihoods import flow_log_like_fn

    maps, theta = splits["test"]
    zs, levels = [], []
    for i in range(0, len(maps), batch):
        x, t = jnp.asarray(maps[i : i + batch]), jnp.asarray(theta[i : i + batch])
        zs.append(np.asarray(model.forward(x, t)[0]))
        if model.model_type == "multiscale":
            levels.append(np.asarray(model.level_log_probs(x, t)))
    out: dict = {"latent_z2_power_lowest_k": latent_amplitude_power(np.concatenate(zs))}
    if levels:
        terms = -np.concatenate(levels).mean(axis=0) / (maps.shape[1] * maps.shape[2])
        names = model.level_term_names
        out["nll_terms_per_pixel"] = {k: float(v) for k, v in zip(names, terms, strict=True)}
    if model.model_type == "multiscale" and n_mixture:
        out["group_mixture"] = _group_mixture_nll(model, maps[:n_mixture], theta[:n_mixture])
    if "fiducial" in splits and n_score != 0:
        fid = splits["fiducial"][0][:n_score]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s, h = score_and_hessian(flow_log_like_fn(model), fid, np.asarray(theta0))
            test = score_test(s, h)
        keys = ("n_maps", "eigenvalues", "predicted_coverage", "hotelling_t2")
        out["score_test"] = {k: test.get(k) for k in keys}
    return out


def _group_mixture_nll(model, maps, theta, batch: int = 16) -> dict:
    """NLL per pixel of ``model`` and of its group mixture on the same maps."""
    import jax.numpy as jnp

    from fieldflow.models.group_mixture import coset_representatives, group_mixture_log_prob

    elements = coset_representatives(model)
    plain, mixed = [], []
    for i in range(0, len(maps), batch):
        x, t = jnp.asarray(maps[i : i + batch]), jnp.asarray(theta[i : i + batch])
        plain.append(np.asarray(model.log_prob(x, t)))
        mixed.append(np.asarray(group_mixture_log_prob(model, x, t, elements)))
    pixels = maps.shape[1] * maps.shape[2]
    return {
        "n_maps": len(maps),
        "n_elements": len(elements),
        "model_nll_per_pixel": float(-np.concatenate(plain).mean() / pixels),
        "mixture_nll_per_pixel": float(-np.concatenate(mixed).mean() / pixels),
    }
