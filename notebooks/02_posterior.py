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
# With a flat prior over the simulated range, $p(\theta\,|\,x) \propto p(x\,|\,\theta)$,
# evaluated on a grid. Three likelihoods:
#
# - the trained flow of notebook 1 (all the information in the map, Gaussian or not);
# - a Gaussian likelihood of the binned power spectrum $\hat P(k)$, with the mean
#   $\mu(\theta)$ emulated across $\theta$ from the training simulations and the
#   covariance $C$ from simulations at the fiducial $\theta$ (Hartlap-corrected):
#   $-2\log L = (\hat P - \mu(\theta))^T C^{-1} (\hat P - \mu(\theta))$;
# - the exact lognormal likelihood, the best any method can do.
#
# The figure of merit is $\mathrm{FoM} = 1/\mathrm{area}$ of the 68% highest-posterior
# region.

# %%
import numpy as np
from _setup import BOX, GRID, TINY, lognormal_data, show, trained_run

import fieldflow
from fieldflow import inference
from fieldflow.data import load_dataset
from fieldflow.plots import plot_posteriors

data = load_dataset(lognormal_data())
model = fieldflow.load(trained_run())
grid = inference.theta_grid(GRID, GRID)
ps = inference.PowerSpectrumLikelihood.fit(*data["train"], data["fiducial"][0], box=BOX)

# %% [markdown]
# One held-out map:

# %%
x, theta_true = data["test"][0][0], data["test"][1][0]
posteriors = {
    "TRENF": inference.flow_posterior(model, x, grid),
    "P(k)": ps.posterior(x, grid),
    "exact": inference.exact_lognormal_posterior(x, grid, box=BOX),
}
for name, post in posteriors.items():
    print(
        f"{name:6s} mean {np.round(post.mean, 3)}  std {np.round(post.std, 3)}  FoM {post.fom:.0f}"
    )
print("truth ", np.round(theta_true, 3))
show(plot_posteriors(posteriors, theta_true=theta_true), "02_posterior.png")

# %% [markdown]
# One map is anecdotal: average over several held-out maps, each analysed on its own. A
# calibrated posterior holds the truth in its 68% region for ~68% of the maps.

# %%
m = 4 if TINY else 16
maps, thetas = data["test"][0][:m], data["test"][1][:m]
per_map = {
    "TRENF": inference.flow_posterior(model, maps, grid, per_map=True),
    "P(k)": ps.posterior(maps, grid, per_map=True),
    "exact": inference.exact_lognormal_posterior(maps, grid, box=BOX, per_map=True),
}
print(
    f"{f'{m} maps':10s} {'median FoM':>11s} {'truth in 68%':>13s}  |mean - exact mean| / exact std"
)
for name, posts in per_map.items():
    fom = np.median([p.fom for p in posts])
    cover = np.mean([inference.contains(p, t) for p, t in zip(posts, thetas, strict=True)])
    shift = np.mean(
        [np.abs(p.mean - e.mean) / e.std for p, e in zip(posts, per_map["exact"], strict=True)],
        axis=0,
    )
    print(f"{name:10s} {fom:11.0f} {cover:13.2f}  {np.round(shift, 2)}")
