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
# # 4. Mock fields in milliseconds, and their statistics
#
# Sampling runs the flow backwards on white noise, $x = f^{-1}(z\,|\,\theta)$,
# $z \sim \mathcal{N}(0, I)$: one batched, jitted call, no simulation. We compare the
# samples with held-out simulations at the same $\theta = (0.3, 0.8)$ on
#
# - the power spectrum $P(k)$ (two-point statistics): ratio samples / simulations;
# - the one-point PDF of $\delta$ and the peak counts $N(>\nu)$ (local maxima above $\nu$
#   standard deviations), which are sensitive to the non-Gaussianity a power spectrum
#   misses; deviations are in units of the map-to-map scatter of the simulations.

# %%
import time

import jax
import numpy as np
from _setup import BOX, TINY, lognormal_data, show, trained_run

import fieldflow
from fieldflow.data import load_dataset
from fieldflow.evaluation import sample_quality
from fieldflow.plots import plot_maps_side_by_side, plot_pdf, plot_peaks, plot_power_spectra

model = fieldflow.load(trained_run())
sims = load_dataset(lognormal_data())["fiducial"][0]
cond = np.tile(np.float32([0.3, 0.8]), (len(sims), 1))

sample = jax.jit(lambda key, c: model.sample(key, c))
jax.block_until_ready(sample(jax.random.key(0), cond))  # compile once
t0 = time.perf_counter()
samples = np.asarray(jax.block_until_ready(sample(jax.random.key(1), cond)))
dt = time.perf_counter() - t0
print(
    f"{len(samples)} maps of {samples.shape[1]}x{samples.shape[2]} in {1e3 * dt:.1f} ms "
    f"({len(samples) / dt:.0f} maps/s)"
)

# %%
stats = sample_quality(samples, sims, BOX)
pk = stats["power_spectrum"]
print("P(k) samples / simulations per k bin:", np.round(pk["ratio"], 3))
print(
    f"max |ratio - 1| below Nyquist {pk['max_abs_ratio_dev_below_nyquist']:.3f} "
    f"(+/- {pk['max_ratio_err_below_nyquist']:.3f})"
)
for who in ("sims", "samples"):
    mom = stats["pixels"][who]
    print(f"pixels of the {who:7s}: std {mom['std']:.3f}, skewness {mom['skewness']:.2f}")
print(
    f"PDF max deviation: {stats['pdf']['max_abs_dev_over_scatter']:.2f} x the scatter;"
    f" peaks: {stats['peaks']['max_abs_dev_over_scatter']:.2f} x the scatter"
)

# %%
show(plot_maps_side_by_side(sims, samples), "04_maps.png")
show(plot_power_spectra(stats), "04_power_spectrum.png")
show(plot_pdf(stats), "04_pdf.png")
show(plot_peaks(stats), "04_peaks.png")
assert np.all(np.isfinite(samples)) and (TINY or pk["passed_within_noise"])
