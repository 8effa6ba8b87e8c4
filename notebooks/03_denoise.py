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
# # 3. Denoise a masked, noisy map: flow MAP against the Wiener filter
#
# Data $d = M s + n$: a survey mask $M$ (20% masked) and white noise with the variance of
# the signal (S/N ~ 1 per pixel). The Wiener filter
# $s_{WF} = (S^{-1} + M^T N^{-1} M)^{-1} M^T N^{-1} d$ is the best linear estimate. The flow
# gives a non-Gaussian prior: the MAP of its latent $z$ (with $s = f^{-1}(z)$) fills the
# holes and the small scales better. (The MAP of the field itself, with the flow's
# log-determinant, is biased towards the mode of the one-point PDF, as the exact lognormal
# MAP is: `scripts/benchmark_denoise.py` shows both.)

# %%
import jax
import numpy as np
from _setup import BOX, TINY, N, lognormal_data, show, trained_run

import fieldflow
from data_gen.power import pixel_power_grid
from fieldflow.data import load_dataset
from fieldflow.denoise import denoising_metrics, flow_latent_map, wiener_filter
from fieldflow.masks import make_mask
from fieldflow.plots import plot_denoising

fiducial = np.float32([0.3, 0.8])
truth = load_dataset(lognormal_data())["fiducial"][0][: 1 if TINY else 4]
model = fieldflow.load(trained_run())

mask = np.asarray(make_mask(jax.random.key(0), N, 0.2))
noise_var = float(truth.var())
rng = np.random.default_rng(1)
d = mask * (truth + np.sqrt(noise_var) * rng.normal(size=truth.shape)).astype(np.float32)

# %%
signal = N**2 * np.asarray(pixel_power_grid(fiducial, N, BOX))[0]  # S_k on the rfft2 plane
wiener = np.asarray(wiener_filter(d, mask, noise_var, signal).field)
flow = flow_latent_map(
    model,
    d,
    mask,
    noise_var,
    cond=np.tile(fiducial, (len(d), 1)),
    init=wiener,
    steps=30 if TINY else 300,
)
recs = {"Wiener": wiener, "flow latent MAP": np.asarray(flow.field)}
mse = {}
for name, rec in recs.items():
    m = denoising_metrics(truth, rec, mask, BOX)
    mse[name] = float(np.mean(m["mse_all"]))
    print(
        f"{name:16s} MSE {mse[name]:.4f} (masked pixels {float(np.mean(m['mse_masked'])):.4f})"
        f"   r(k) at the largest k {float(np.mean(m['r_k'][:, -1])):.3f}"
    )
print(
    f"MSE flow / Wiener {mse['flow latent MAP'] / mse['Wiener']:.3f}; "
    f"noise variance = signal variance = {noise_var:.3f}"
)

# %% [markdown]
# The maps, their residuals, and the cross-correlation $r(k) = P_{s\hat s}/\sqrt{P_s P_{\hat s}}$
# and residual power $P_{s - \hat s}(k)$ per scale (first map):

# %%
fig = plot_denoising(
    truth[0],
    d[0],
    mask,
    wiener[0],
    np.asarray(flow.field)[0],
    box=BOX,
    labels=("Wiener", "flow latent MAP"),
)
show(fig, "03_denoise.png")
