# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Field-level inference: $\theta$ and the field from a noisy, masked map
#
# Data $d = M s + n$: a survey mask $M$ (20% masked) and white noise with the variance of the
# signal (S/N ~ 1 per pixel). With $s = f^{-1}(z; \theta)$ the flow's prior on the signal is
# exactly $\mathcal{N}(z; 0, I)$ in latent coordinates, so
#
# $$\log p(\theta, z \,|\, d) = \log p(\theta) - \tfrac12 |z|^2
#   - \tfrac12 \sum_\mathrm{pixels} \frac{M}{\sigma_n^2} \big(d - f^{-1}(z; \theta)\big)^2 + c,$$
#
# which NUTS (BlackJAX) samples in $N^2 + 2$ dimensions: the posterior of
# $(\Omega_m, \sigma_8)$ marginalised over the unseen field, and the posterior mean,
# standard deviation and central intervals of every pixel. The exact lognormal prior
# ($g = \ln(1 + \delta)$ Gaussian with $P_g(k; \theta)$) in place of the flow is the yardstick.
# For nearly clean maps the same density is sampled in data coordinates (the default
# `coordinates="auto"` switches at S/N 2.5 per pixel); here the latent ones run.

# %%
import warnings

import jax
import numpy as np
from _setup import BOX, GRID, TINY, N, lognormal_data, show, trained_run

import fieldflow
from data_gen.power import pixel_power_grid
from fieldflow import inference
from fieldflow.data import load_dataset
from fieldflow.denoise import wiener_filter
from fieldflow.field_level import field_level_posterior, lognormal_field_level_posterior
from fieldflow.masks import make_mask
from fieldflow.plots.field_level import plot_field_level

test_maps, test_theta = load_dataset(lognormal_data())["test"]
truth, theta_true = np.asarray(test_maps[0]), np.asarray(test_theta[0])
model = fieldflow.load(trained_run())

mask = np.asarray(make_mask(jax.random.key(0), N, 0.2))
noise_var = float(truth.var())
rng = np.random.default_rng(1)
d = (mask * (truth + np.sqrt(noise_var) * rng.normal(size=truth.shape))).astype(np.float32)

# the chains start from the Wiener filter at the fiducial theta (not the truth's)
fiducial = np.float32([0.3, 0.8])
signal = N**2 * np.asarray(pixel_power_grid(fiducial, N, BOX))[0]
wiener = np.asarray(wiener_filter(d, mask, noise_var, signal).field)

# %% [markdown]
# Two chains per prior (a few hundred NUTS steps each; the tiny test settings are far too
# short to converge, and the results say so). Unconverged or divergent chains are flagged in
# `result.problems` and warned about. A lognormal pixel's posterior is skewed, so the mean
# $\pm$ one std of $\delta$ covers more than 68% of it; the central 68% interval of the draws,
# or $\pm$ one std of $\ln(1 + \delta)$ (where the pixels' posteriors are nearly Gaussian), is
# the calibrated error bar.

# %%
kw = dict(
    num_chains=2,
    num_warmup=10 if TINY else 300,
    num_samples=8 if TINY else 500,
    init_field=wiener,
    field_draws=10 if TINY else 100,
    progress=not TINY,
    # tiny test settings: data coordinates, as the command-line example of the tests, whose
    # compiled sampler of the same tiny run is then reused
    coordinates="data" if TINY else "auto",
)
key = jax.random.key(2)
with warnings.catch_warnings():
    if TINY:
        warnings.simplefilter("ignore", RuntimeWarning)
    results = {
        "flow": field_level_posterior(model, d, mask, noise_var, key=key, **kw),
        "exact lognormal": lognormal_field_level_posterior(
            d, mask, noise_var, box=BOX, key=key, **kw
        ),
    }

mse_wiener = float(np.mean((wiener - truth) ** 2))
print("truth", np.round(theta_true, 3))
for name, r in results.items():
    s = r.summary()
    print(
        f"{name:16s} Omega_m {r.mean[0]:.3f} +- {r.std[0]:.3f}, sigma_8 {r.mean[1]:.3f} +- "
        f"{r.std[1]:.3f}; R-hat {np.round(r.rhat, 3).tolist()}, converged {r.converged} "
        f"({r.coordinates} coordinates, {s['grad_evals']} gradients, {r.seconds:.0f} s)"
    )
    mse = float(np.mean((r.field_mean - truth) ** 2))
    within_log = r.masked_std_coverage(truth, mask)  # None where draws reach delta <= -1
    print(
        f"{'':16s} posterior-mean MSE / Wiener {mse / mse_wiener:.3f}; masked pixels inside "
        f"their central 68% interval {r.masked_coverage(truth, mask):.3f}"
        + ("" if within_log is None else f", within +-1 std of ln(1 + delta) {within_log:.3f}")
    )

# %% [markdown]
# The truth, the observation, the flow's posterior mean and standard deviation per pixel
# (largest in the masked holes), and the $\theta$ contours of both field-level posteriors
# against the grid posterior of the clean map (what a noiseless, unmasked map would give):

# %%
om_range, s8_range = inference.model_theta_range(model)
clean = inference.flow_posterior(model, truth, inference.theta_grid(GRID, GRID, om_range, s8_range))
fig = plot_field_level(
    truth,
    d,
    mask,
    results["flow"],
    others={"exact lognormal": results["exact lognormal"]},
    grid_posterior=clean,
    theta_true=theta_true,
)
show(fig, "05_field_level.png")

# %% [markdown]
# `results["flow"].save(path)` writes the chains, field moments and draws (`.npz`) and ArviZ
# InferenceData (`.nc`); `results["flow"].to_getdist()` gives GetDist samples for triangle
# plots. From the command line: `fieldflow infer RUN maps.npz OUT --index 0 --mask 0.2
# --noise 0.5 --lognormal-box 128`.
