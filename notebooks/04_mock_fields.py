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
# $z \sim \mathcal{N}(0, I)$. We compare the samples' power spectrum, one-point PDF and
# peak counts with held-out simulations at the same $\theta$.

# %%
import time

import jax
import numpy as np
from _setup import BOX, OUT, TINY, lognormal_data, trained_run

import fieldflow
from fieldflow.data import load_dataset
from fieldflow.evaluation import plot_maps_side_by_side, plot_power_spectra, sample_quality

model = fieldflow.load(trained_run())
sims = load_dataset(lognormal_data())["fiducial"][0]
cond = np.tile(np.float32([0.3, 0.8]), (len(sims), 1))

sample = jax.jit(lambda key, c: model.sample(key, c))
jax.block_until_ready(sample(jax.random.key(0), cond))  # compile once
t0 = time.perf_counter()
samples = np.asarray(jax.block_until_ready(sample(jax.random.key(1), cond)))
print(f"{len(samples)} maps in {1e3 * (time.perf_counter() - t0):.1f} ms")

# %%
stats = sample_quality(samples, sims, BOX)
pk = stats["power_spectrum"]
print("P(k) samples / simulations per k bin:", np.round(pk["ratio"], 3))
print(f"PDF max deviation: {stats['pdf']['max_abs_dev_over_scatter']:.2f} x the scatter;"
      f" peaks: {stats['peaks']['max_abs_dev_over_scatter']:.2f} x the scatter")

# %%
plot_maps_side_by_side(sims, samples).savefig(OUT / "04_maps.png")
plot_power_spectra(stats).savefig(OUT / "04_power_spectrum.png")
assert np.all(np.isfinite(samples)) and (TINY or pk["passed_within_noise"])
