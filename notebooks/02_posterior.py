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
# # 2. Posterior on $(\Omega_m, \sigma_8)$ from one map
#
# With a flat prior, $p(\theta\,|\,x) \propto p(x\,|\,\theta)$ on a grid over the prior.
# Three likelihoods: the trained flow (all the information in the map), a Gaussian
# likelihood of the binned power spectrum (mean emulated across $\theta$, covariance from
# fiducial simulations with the Hartlap factor), and the exact lognormal likelihood.
# The figure of merit is $1/\mathrm{area}$ of the 68% highest-density region.

# %%
import numpy as np
from _setup import BOX, GRID, OUT, lognormal_data, trained_run

import fieldflow
from fieldflow import inference
from fieldflow.data import load_dataset
from fieldflow.evaluation import plot_posteriors

data = load_dataset(lognormal_data())
model = fieldflow.load(trained_run())
grid = inference.theta_grid(GRID, GRID)

# %%
ps = inference.PowerSpectrumLikelihood.fit(*data["train"], data["fiducial"][0], box=BOX)
x, theta_true = data["test"][0][0], data["test"][1][0]
posteriors = {
    "TRENF": inference.flow_posterior(model, x, grid),
    "P(k)": ps.posterior(x, grid),
    "exact": inference.exact_lognormal_posterior(x, grid, box=BOX),
}
for name, post in posteriors.items():
    print(f"{name:6s} mean {np.round(post.mean, 3)}  std {np.round(post.std, 3)}  "
          f"FoM {post.fom:.0f}")
print("truth", np.round(theta_true, 3))

# %%
fig = plot_posteriors(posteriors, theta_true=theta_true)
fig.savefig(OUT / "02_posterior.png")
