"""The denoising benchmark's computation (fieldflow.denoise.benchmark): its comparisons, the
emulated Wiener signal, and every estimator on maps of a Gaussian "flow" (whose MAPs are the
Wiener filter), plus its figure."""

import jax.numpy as jnp
import numpy as np
import pytest
from test_denoise import BOX, gaussian_prior, grf, power

from fieldflow.denoise import benchmark as bench
from fieldflow.denoise.observation import fourier_apply


class LinearFlow:
    """x = C^1/2 z with C the covariance of ``power(n)``: its density is ``gaussian_prior``."""

    def __init__(self, n: int):
        self.root = jnp.sqrt(jnp.asarray(power(n))) / n
        self.log_prior = gaussian_prior(n)

    def forward(self, x, cond=None):
        return fourier_apply(x, 1.0 / self.root), None

    def inverse(self, z, cond=None):
        return fourier_apply(z, self.root)

    def log_prob(self, x, cond=None):
        return self.log_prior(x, cond)


def metrics_of(r_k, mse):
    """Per-map metrics (B maps, 4 bins) with r(k) = ``r_k`` and total MSE ``mse``."""
    b = len(mse)
    return {
        "k": np.arange(1.0, 5.0),
        "r_k": np.asarray(r_k, float),
        "residual_pk": np.ones((b, 4)),
        "truth_pk": np.ones((b, 4)),
        "mse_all": np.asarray(mse, float),
        "mse_observed": np.asarray(mse, float) / 2,
        "mse_masked": np.asarray(mse, float) * 2,
    }


def test_summaries_and_targets():
    wiener = metrics_of([[0.9, 0.8, 0.5, 0.3], [0.9, 0.8, 0.5, 0.3]], [1.0, 1.2])
    better = metrics_of([[0.9, 0.795, 0.6, 0.4], [0.9, 0.795, 0.6, 0.4]], [0.8, 1.0])
    worse = metrics_of([[0.9, 0.7, 0.6, 0.4], [0.9, 0.7, 0.6, 0.4]], [0.8, 1.0])
    summary = bench.summarise(better, 1.234)
    assert summary["r_k"] == pytest.approx([0.9, 0.795, 0.6, 0.4])
    assert summary["mse_all"] == pytest.approx(0.9) and summary["seconds"] == 1.23
    assert summary["mse_all_stderr"] == pytest.approx(0.1 / np.sqrt(2))
    good = bench.versus_wiener(better, wiener)
    assert good["upper_half_k_from"] == 3.0 and good["r_k_above_on_upper_half"]
    assert good["r_k_min_difference"] == pytest.approx(-0.005)
    assert good["mse_ratio"] == pytest.approx(1.8 / 2.2) and good["all_targets_met"]
    bad = bench.versus_wiener(worse, wiener)
    assert not bad["r_k_never_below_by_0.01"] and not bad["all_targets_met"]
    assert bad["r_k_min_difference_at_k"] == 2.0
    exact = bench.summarise(wiener, 1.0)
    close = bench.versus_exact({**exact, "mse_all": exact["mse_all"] * 1.01}, exact)
    assert close["within_2_percent"] and close["mse_relative_difference"] == pytest.approx(0.01)
    assert not bench.versus_exact(summary, exact)["within_2_percent"]


def test_emulated_wiener_signal_follows_theta():
    """Maps with P(k; theta) = sigma_8^2 P_0(k): the emulated S_k at a theta is close to
    the true one, piecewise constant in k, with the variance of the mean at k = 0."""
    n, rng = 16, np.random.default_rng(0)
    theta = np.stack([rng.uniform(0.2, 0.5, 64), rng.uniform(0.5, 1.1, 64)], axis=1)
    maps = np.concatenate([s8 * grf(i, power(n), 1) for i, s8 in enumerate(theta[:, 1])])
    signal, text = bench.wiener_signal(
        "nbody", [[0.3, 0.6], [0.3, 1.0]], n, BOX, train=(maps, theta)
    )
    assert signal.shape == (2, n, n // 2 + 1) and "emulated" in text
    assert signal[0, 0, 0] == pytest.approx(
        BOX**2 * np.mean(maps.mean((1, 2)) ** 2) * n**4 / BOX**2
    )
    truth = np.asarray(power(n))
    ratio = signal[:, 1:, 1:] / (np.array([0.36, 1.0])[:, None, None] * truth[1:, 1:])
    assert np.all(np.abs(np.median(ratio, axis=(1, 2)) - 1) < 0.15)  # measured 1.09, 1.03
    growth = np.median(signal[1, 1:, 1:] / signal[0, 1:, 1:])
    assert growth == pytest.approx((1.0 / 0.6) ** 2, rel=0.1)  # measured 5% low
    with pytest.raises(ValueError, match="training maps"):
        bench.wiener_signal("nbody", [[0.3, 0.8]], n, BOX)


def test_every_estimator_of_a_gaussian_flow_is_the_wiener_filter():
    n = 16
    truth = grf(30, power(n), 2)
    theta = np.float32([[0.3, 0.8], [0.4, 0.9]])
    signal = np.stack([power(n)] * 2)
    out = bench.compare_estimators(
        truth, theta, LinearFlow(n), BOX, signal, steps=200, gtol=1e-5, verbose=False
    )
    assert list(out["methods"]) == ["wiener", "flow_map", "flow_latent_map"]
    assert set(out["estimators"]) == set(out["methods"])
    assert out["mask_fraction"] == pytest.approx(0.2, abs=0.01)
    assert out["signal_to_noise_per_pixel"] == pytest.approx(1.0)
    wiener = out["fields"]["wiener"]
    for name in ("flow_map", "flow_latent_map"):
        assert out["methods"][name]["fraction_converged"] == 1.0
        field = out["fields"][name]
        assert np.linalg.norm(field - wiener) / np.linalg.norm(wiener) < 1e-3
        target = out["targets"][f"{name}_vs_wiener"]
        assert target["mse_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert out["data"].shape == truth.shape and out["mask"].shape == (n, n)

    import matplotlib.pyplot as plt

    from fieldflow.plots import plot_denoising_comparison

    fig = plot_denoising_comparison(out["methods"])
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3
    plt.close(fig)
