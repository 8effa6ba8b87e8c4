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

# %%
import json

import numpy as np
from _setup import BOX, OUT, TINY, lognormal_data, trained_run

import fieldflow
from data_gen import lognormal_log_likelihood
from fieldflow.data import load_dataset
from fieldflow.train import nll_per_pixel

# %% [markdown]
# Simulate maps over the prior $\Omega_m \in [0.2, 0.5]$, $\sigma_8 \in [0.5, 1.1]$ and
# train a 5-layer conditional TRENF (a few minutes on a laptop CPU; seconds in tiny mode).

# %%
data_dir = lognormal_data()
run_dir = trained_run()
model = fieldflow.load(run_dir)
print(f"{model.num_params()} parameters; run in {run_dir}")

# %% [markdown]
# Compare with the exact likelihood on held-out maps.

# %%
test_maps, test_theta = load_dataset(data_dir)["test"]
flow_nll = nll_per_pixel(model, test_maps, test_theta)
exact = -np.mean(np.asarray(lognormal_log_likelihood(test_maps, test_theta, box=BOX)))
exact_nll = exact / test_maps[0].size
print(f"flow  {flow_nll:.5f} nats/pixel\nexact {exact_nll:.5f} nats/pixel\n"
      f"gap   {flow_nll - exact_nll:.5f} nats/pixel")

# %% [markdown]
# The training curve (validation NLL per pixel against step):

# %%
from fieldflow.plots import plot_loss_curves  # noqa: E402

history = json.loads((run_dir / "history.json").read_text())
fig = plot_loss_curves(history)
fig.axes[0].axhline(exact_nll, color="k", ls=":", label="exact (test)")
fig.axes[0].legend()
fig.savefig(OUT / "01_loss.png")
assert np.isfinite(flow_nll) and (TINY or flow_nll - exact_nll < 0.01)
