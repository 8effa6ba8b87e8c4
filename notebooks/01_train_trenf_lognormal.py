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
# # 1. Train a conditional TRENF on lognormal maps
#
# A lognormal field $\delta = e^{g - \sigma_g^2/2} - 1$, with $g$ a Gaussian random field,
# has a closed-form likelihood
# $\log p(\delta\,|\,\theta) = \log p_G(g\,|\,\theta) - \sum_x \log(1 + \delta_x)$,
# so we can measure exactly how far a trained flow is from the truth: the gap between the
# flow's test negative log-likelihood and the exact one, in nats per pixel.
#
# The TRENF (Dai & Seljak 2022) stacks layers $f_i(x) = \Psi_i(F^{-1}[T_i(|k|)\,F x])$:
# a radial Fourier filter $T_i$ (translation and rotation equivariant) and a pixel-wise
# monotone spline $\Psi_i$, both conditioned on $\theta = (\Omega_m, \sigma_8)$. Its
# log-likelihood is exact,
# $\log p(x\,|\,\theta) = \log\mathcal{N}(f(x); 0, I) + \log|\det \partial f/\partial x|$.
# A lognormal field is within its reach: $\Psi \approx \log(1+x)$, $T \approx 1/\sqrt{P_g}$.

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
from _setup import BOX, MODEL_KWARGS, RUN, TINY, lognormal_data, show, train_config

import fieldflow
from data_gen import lognormal_log_likelihood
from fieldflow.data import load_dataset
from fieldflow.plots import plot_loss_curves
from fieldflow.train import nll_per_pixel
from fieldflow.workflows import ensure_run

# %% [markdown]
# Simulate maps over the prior $\Omega_m \in [0.2, 0.5]$, $\sigma_8 \in [0.5, 1.1]$ (plus a
# set at the fiducial $\theta = (0.3, 0.8)$, used by the other notebooks), then train by
# maximum likelihood: about a minute on a laptop CPU, seconds in tiny mode. The run is
# saved and notebooks 2–4 reuse it.

# %%
data_dir = lognormal_data()
config = train_config()
print(config)
summary, seconds = ensure_run(
    data_dir, RUN, model_kwargs=MODEL_KWARGS, config=config, progress=not TINY
)
model = fieldflow.load(RUN)
print(
    f"{model.num_params()} parameters; run in {RUN} "
    + ("(reused)" if summary["reused"] else f"(trained in {seconds:.0f} s)")
)

# %% [markdown]
# Compare with the exact likelihood on held-out maps, on average and map by map.

# %%
test_maps, test_theta = load_dataset(data_dir)["test"]
npix = test_maps[0].size
flow_nll = nll_per_pixel(model, test_maps, test_theta)
flow_lp = np.asarray(model.log_prob(test_maps, test_theta)) / npix
exact_lp = np.asarray(lognormal_log_likelihood(test_maps, test_theta, box=BOX)) / npix
exact_nll = -float(exact_lp.mean())
gap = exact_lp - flow_lp  # >= 0 on average: the flow can only lose information
print(
    f"test maps  {len(test_maps)}\n"
    f"flow  NLL  {flow_nll:.5f} nats/pixel\nexact NLL  {exact_nll:.5f} nats/pixel\n"
    f"gap        {flow_nll - exact_nll:.5f} nats/pixel (per map: {gap.mean():.5f} "
    f"+/- {gap.std():.5f})"
)

# %% [markdown]
# Left: the training curve against the exact test NLL. Right: the per-map gap across
# the prior; a good conditional flow is uniformly close to zero in $\theta$. The gap is
# usually largest at high $\sigma_8$, where the fields are the most non-Gaussian.

# %%
history = json.loads((RUN / "history.json").read_text())
fig = plot_loss_curves(history)
fig.axes[0].axhline(exact_nll, color="k", ls=":", label="exact (test)")
fig.axes[0].legend()
show(fig, "01_loss.png")

fig, ax = plt.subplots(figsize=(5, 4))
sc = ax.scatter(test_theta[:, 0], test_theta[:, 1], c=gap, cmap="viridis", s=15)
fig.colorbar(sc, ax=ax, label=r"$[\log p_{\rm exact} - \log p_{\rm flow}]$ / pixel")
ax.set(xlabel=r"$\Omega_m$", ylabel=r"$\sigma_8$", title="likelihood gap per test map")
show(fig, "01_gap.png")
assert np.isfinite(flow_nll) and (TINY or flow_nll - exact_nll < 0.01)
