"""Posterior-calibrated fine-tuning: the contrastive loss is what it says, fine-tuning keeps
the best validation loss, and the fine-tuned run reloads."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import build_trenf
from scipy.special import logsumexp

import data_gen
from fieldflow.posterior_training import (
    PosteriorTrainingConfig,
    contrastive_posterior_loss,
    fine_tune,
    save_run,
)

# one worker runs this module: its module fixtures (and what they compile) are built once
pytestmark = pytest.mark.xdist_group("posterior_training")

N = 8


@pytest.fixture(scope="module")
def grf_split():
    theta = data_gen.design_theta(48, seed=4)
    maps = data_gen.grf(jax.random.key(1), theta, n=N, box=32.0)
    return (np.asarray(maps[:32]), theta[:32]), (np.asarray(maps[32:]), theta[32:])


def test_contrastive_loss_is_the_cross_entropy_over_the_batch_theta(grf_split):
    (maps, theta), _ = grf_split
    model = build_trenf(N, n_layers=1)
    x, t = maps[:5], theta[:5].astype(np.float32)
    post, nll = contrastive_posterior_loss(model.log_prob, x, t, 2)
    # ll[i, (i + k) % 5] = log q(x_i | theta_{i+k}): the maps against the rolled theta, in
    # batches of 5 (one compiled shape, the one the reload check below uses)
    ll = np.empty((5, 5))
    for k in range(5):
        ll[np.arange(5), (np.arange(5) + k) % 5] = model.log_prob(x, np.roll(t, -k, axis=0))
    cand = [[(i + k) % 5 for k in range(3)] for i in range(5)]
    expected = -np.mean([ll[i, i] - logsumexp(ll[i, cand[i]]) for i in range(5)])
    np.testing.assert_allclose(float(post), expected, rtol=1e-4)
    np.testing.assert_allclose(float(nll), -np.mean(np.diag(ll)) / N**2, rtol=1e-5)


def test_fine_tuning_keeps_the_best_validation_loss_and_reloads(grf_split, tmp_path):
    from fieldflow.checkpoint import load

    model = build_trenf(N, n_layers=1)
    cfg = PosteriorTrainingConfig(steps=4, batch_size=8, n_contrast=3, eval_every=2, seed=1)
    report = fine_tune(model, *grf_split, cfg, progress=False)
    assert [r["step"] for r in report["history"]] == [0, 2, 4]
    assert report["after"]["val_loss"] == min(r["val_loss"] for r in report["history"])
    assert report["after"]["val_loss"] <= report["before"]["val_loss"]
    for row in report["history"]:
        assert np.isfinite(row["val_posterior_loss"]) and row["val_posterior_loss"] > 0
        info = np.log(4) - row["val_posterior_loss"]
        assert row["information_nats"] == pytest.approx(info)
    x, t = grf_split[1][0][:5], grf_split[1][1][:5]  # 5: the shape compiled above
    path = save_run(model, tmp_path / "calibrated", report)
    np.testing.assert_allclose(load(path).log_prob(x, t), model.log_prob(x, t), rtol=1e-6)
    with pytest.raises(ValueError, match="already holds"):
        save_run(model, path, report)


def test_bad_posterior_training_input_raises(grf_split):
    with pytest.raises(ValueError, match="n_contrast"):
        PosteriorTrainingConfig(batch_size=4, n_contrast=4)
    with pytest.raises(ValueError, match="weight"):
        PosteriorTrainingConfig(weight=-1.0)
    (maps, theta), val = grf_split
    with pytest.raises(ValueError, match="needs more than that"):
        fine_tune(build_trenf(N, n_layers=1), (maps[:3], theta[:3]), val, progress=False)
    with pytest.raises(ValueError, match="conditional"):
        fine_tune(build_trenf(N, n_layers=1, cond_dim=0), *grf_split, progress=False)
