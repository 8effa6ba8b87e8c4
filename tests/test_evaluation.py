"""Sample-quality statistics and figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fieldflow import evaluation as ev
from fieldflow import inference as inf


def _maps(seed: int, num: int = 24, n: int = 16) -> np.ndarray:
    """Skewed, spatially correlated toy maps (lognormal-like)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(num, n, n))
    g = (g + np.roll(g, 1, -1) + np.roll(g, 1, -2)) / np.sqrt(3)
    return (np.exp(0.5 * g - 0.125) - 1).astype(np.float32)


def test_identical_sets_give_ratio_one_and_pass():
    x = _maps(0)
    q = ev.sample_quality(x, x, box=64.0)
    pk = q["power_spectrum"]
    np.testing.assert_allclose(pk["ratio"], 1.0, rtol=1e-6)
    assert pk["max_abs_ratio_dev_below_nyquist"] < 1e-6 and pk["passed"]
    np.testing.assert_allclose(q["pdf"]["dev_over_scatter"], 0.0, atol=1e-12)
    np.testing.assert_allclose(q["peaks"]["dev_over_scatter"], 0.0, atol=1e-12)
    assert q["pdf"]["passed"] and q["peaks"]["passed"] and q["passed"]
    assert len(pk["k"]) == 8 and pk["below_nyquist"] == [True] * 7 + [False]
    json.dumps(q)  # JSON-able


def test_scaled_samples_fail_power_spectrum_tolerance():
    x = _maps(0)
    q = ev.sample_quality(1.1 * x, x, box=64.0)
    np.testing.assert_allclose(q["power_spectrum"]["ratio"], 1.21, rtol=1e-3)  # TF32 on GPUs
    assert not q["power_spectrum"]["passed"] and not q["passed"]
    # independent draws of the same process stay within the scatter
    q2 = ev.sample_quality(_maps(1), _maps(2), box=64.0, n_pdf_bins=10)
    assert q2["pdf"]["passed"] and q2["peaks"]["passed"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="16 x 16"):
        ev.sample_quality(_maps(0), _maps(1, n=8), box=64.0)
    bad = _maps(0)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ev.sample_quality(bad, _maps(1), box=64.0)


def test_figures(tmp_path):
    x, y = _maps(0, 8), _maps(1, 8)
    q = ev.sample_quality(x, y, box=64.0)
    g = inf.theta_grid(30, 30)
    d = g.points - np.array([0.3, 0.8])
    ll = (-0.5 * ((d[:, 0] / 0.03) ** 2 + (d[:, 1] / 0.06) ** 2)).reshape(g.shape)
    posts = {"flow": inf.posterior_from_loglike(ll, g),
             "P(k)": inf.posterior_from_loglike(ll / 3, g)}
    figs = {
        "maps": ev.plot_maps_side_by_side(y, x, n=3),
        "pk": ev.plot_power_spectra(q),
        "pdf": ev.plot_pdf(q),
        "peaks": ev.plot_peaks(q),
        "post": ev.plot_posteriors(posts, theta_true=(0.3, 0.8)),
    }
    for name, fig in figs.items():
        fig.savefig(tmp_path / f"{name}.png", dpi=50)
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
