"""Sample-quality statistics, held-out simulations, a trained run with its data, figures."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fieldflow import evaluation as ev
from fieldflow import inference as inf
from fieldflow import plots


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


def test_too_much_scatter_of_the_power_and_runaway_pixels_fail():
    x = _maps(0)
    q = ev.sample_quality(x, x, box=64.0)
    np.testing.assert_allclose(q["power_spectrum"]["log_spread_ratio"], 1.0, rtol=1e-6)
    assert q["pixels"]["n_runaway_samples"] == 0 and q["power_spectrum"]["spread_passed"]
    # each sample's amplitude drawn from 0.5 ... 1.5: the mean power is kept within ~5%, its
    # map-to-map scatter is not
    amp = np.linspace(0.5, 1.5, len(x), dtype=np.float32)[
        np.random.default_rng(0).permutation(len(x))
    ]
    q = ev.sample_quality(amp[:, None, None] * x, x, box=64.0)
    assert min(q["power_spectrum"]["log_spread_ratio"]) > 1.5
    assert not q["power_spectrum"]["spread_passed"] and not q["passed"]
    runaway = x.copy()
    runaway[3, 2, 2] = 2.5 * np.abs(x).max()  # one pixel beyond 2x the sims' largest
    q = ev.sample_quality(runaway, x, box=64.0)
    assert q["pixels"]["n_runaway_samples"] == 1 and not q["passed"]


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
    posts = {
        "flow": inf.posterior_from_loglike(ll, g),
        "P(k)": inf.posterior_from_loglike(ll / 3, g),
    }
    figs = {
        "maps": plots.plot_maps_side_by_side(y, x, n=3),
        "pk": plots.plot_power_spectra(q),
        "pdf": plots.plot_pdf(q),
        "peaks": plots.plot_peaks(q),
        "post": plots.plot_posteriors(posts, theta_true=(0.3, 0.8)),
    }
    for name, fig in figs.items():
        fig.savefig(tmp_path / f"{name}.png", dpi=50)
        plt.close(fig)
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def run_and_data(tiny_run_dir, tiny_data_dir):
    from fieldflow.workflows import load_run_and_data

    return load_run_and_data(tiny_run_dir, tiny_data_dir)


def test_load_run_and_data(run_and_data, tiny_run_dir, tmp_path):
    from data_gen.dataset import generate_dataset, theta_box
    from fieldflow.workflows import check_prior_box, ensure_run, load_run_and_data

    cfg, model, splits = run_and_data
    assert cfg["n"] == 16 and tuple(model.shape) == (16, 16)
    assert {"train", "val", "test", "fiducial"} <= set(splits)
    generate_dataset(tmp_path / "d8", "lognormal", 2, progress=False, n=8, box=64.0)
    with pytest.raises(ValueError, match="n = 8"):
        load_run_and_data(tiny_run_dir, tmp_path / "d8")
    summary, seconds = ensure_run(tmp_path / "d8", tiny_run_dir)  # finished: reused as is
    assert summary["reused"] and seconds == 0.0 and np.isfinite(summary["test_nll_per_pixel"])
    # trained on the data set's prior box; a data set with a wider box is refused
    assert inf.model_theta_range(model) == ((0.2, 0.5), (0.5, 1.1)) == theta_box(cfg)
    check_prior_box(model, {**cfg, "sigma8_range": [0.5, 1.1]})
    with pytest.raises(ValueError, match="trained range"):
        check_prior_box(model, {**cfg, "omega_m_range": [0.1, 0.5]})


def test_a_run_is_trained_on_its_data_sets_prior_box(tmp_path):
    from data_gen.dataset import generate_dataset
    from fieldflow.train import TrainConfig
    from fieldflow.workflows import check_prior_box, load_run_and_data, train_run

    box = {"omega_m_range": (0.15, 0.45), "sigma8_range": (0.6, 1.3)}
    generate_dataset(tmp_path / "wide", "lognormal", 12, progress=False, n=8, box=64.0, **box)
    config = TrainConfig(steps=1, batch_size=2, warmup_steps=0, eval_every=1, patience=None)
    kw = {"n_layers": 1, "hidden": (4,)}
    train_run(tmp_path / "wide", tmp_path / "run", "trenf", kw, config, progress=False)
    cfg, model, _ = load_run_and_data(tmp_path / "run", tmp_path / "wide")
    assert inf.model_theta_range(model) == ((0.15, 0.45), (0.6, 1.3))
    # the default box (sigma_8 from 0.5) leaves this run's trained range
    with pytest.raises(ValueError, match="trained range"):
        check_prior_box(model, {k: v for k, v in cfg.items() if k != "sigma8_range"})
    with pytest.raises(ValueError, match="outside the trained range"):
        model.log_prob(np.zeros((1, 8, 8), np.float32), np.array([[0.3, 0.55]], np.float32))


def test_held_out_sims_and_theory_check(run_and_data):
    cfg, _, splits = run_and_data
    fid = np.asarray([0.3, 0.8])
    sims, source = ev.held_out_sims(cfg, splits, fid, 20, seed=0)
    assert sims.shape == (20, 16, 16) and "16 maps of the data set's fiducial" in source
    np.testing.assert_array_equal(sims[:16], splits["fiducial"][0])
    assert "4 new lognormal simulations" in source
    other, source = ev.held_out_sims(cfg, splits, np.asarray([0.4, 0.9]), 3, seed=0)
    assert other.shape == (3, 16, 16) and "fiducial" not in source
    train = splits["train"][0]
    assert not any(np.array_equal(m, t) for m in other for t in train)
    theory = ev.theory_check(cfg, fid, ev.sample_quality(sims, sims, cfg["box"]))
    assert len(theory["expected_pk"]) == 8 and np.isfinite(
        theory["max_abs_samples_dev_below_nyquist"]
    )
    assert ev.theory_check({**cfg, "simulator": "nbody"}, fid, {}) is None
    # a cache returns what it holds; fresh maps only at the fiducial theta are kept apart
    cache = {}
    ev.held_out_sims(cfg, splits, fid, 20, seed=0, cache=cache)
    no_fid = {k: v for k, v in splits.items() if k != "fiducial"}
    fresh, source = ev.held_out_sims(cfg, no_fid, fid, 20, seed=0, cache=cache)
    assert len(cache) == 2 and "fiducial" not in source
    assert not np.array_equal(fresh[:16], splits["fiducial"][0])
    cache[(0.3, 0.8, 20, 0)] = (np.zeros((20, 16, 16)), "held")
    assert ev.held_out_sims(cfg, splits, fid, 20, seed=0, cache=cache)[1] == "held"


def test_independent_fiducial_maps_take_one_slab_per_fresh_simulation(run_and_data):
    from fieldflow.workflows import independent_fiducial_maps

    cfg, _, splits = run_and_data
    cfg = {**cfg, "maps_per_sim": 2}  # as if each simulation gave two correlated slabs
    cache = {}
    maps = independent_fiducial_maps(cfg, 3, seed=4, cache=cache)
    ((key, (held, source)),) = cache.items()
    assert maps.shape == (3, 16, 16) and key == (0.3, 0.8, 6, 4, 1)
    np.testing.assert_array_equal(maps, held[::2])
    assert "fiducial" not in source
    assert not any(np.array_equal(m, f) for m in maps for f in splits["fiducial"][0])


def test_sample_quality_benchmark_and_map_posteriors(run_and_data):
    cfg, model, splits = run_and_data
    lines = []
    thetas = [("fiducial", (0.3, 0.8)), ("given", (0.4, 0.9))]
    cache = {}
    bench = ev.sample_quality_benchmark(
        model, cfg, splits, thetas, 8, log=lines.append, sims_cache=cache
    )
    assert [r["kind"] for r in bench["results"]] == ["fiducial", "given"] and len(lines) == 2
    for row in bench["results"]:
        assert row["n_samples"] == 8 and len(row["pk_ratio"]) == 8
        assert np.isfinite(row["pk_max_abs_samples_over_theory_dev"])
        assert row["n_runaway_samples"] == 0 and row["max_abs_pixel_samples_over_sims"] > 0
    # a second model is compared with the cached simulations, not new ones
    assert len(cache) == 2
    key = next(k for k in cache if k[:2] == (0.4, 0.9))
    cache[key] = (cache[key][0], "cached maps")
    again = ev.sample_quality_benchmark(model, cfg, splits, thetas[1:], 8, sims_cache=cache)
    assert len(cache) == 2 and again["results"][0]["simulations"] == "cached maps"
    # more samples than simulations (the sampler's batch of 8 is already compiled)
    more = ev.sample_quality_benchmark(model, cfg, splits, thetas[1:], 4, n_samples=8)
    assert more["results"][0]["n_samples"] == 8 and more["results"][0]["n_simulations"] == 4
    # tempered mocks (a fitted T(theta) or any callable): less power, T recorded per row
    cold = ev.sample_quality_benchmark(
        model, cfg, splits, thetas[1:], 8, sims_cache=cache, temperature=lambda t: [0.5]
    )
    row, warm = cold["results"][0], again["results"][0]
    assert row["temperature"] == 0.5 and warm["temperature"] == 1.0
    assert np.all(np.asarray(row["pk_ratio"]) < np.asarray(warm["pk_ratio"]))
    assert isinstance(bench["all_passed"], bool)
    json.dumps(bench)
    assert [k for k, _ in ev.default_thetas()] == ["fiducial"] + ["interior"] * 4 + ["edge"] * 2
    box = {"omega_m_range": [0.1, 0.5], "sigma8_range": [0.5, 1.3]}
    interior = [t for k, t in ev.default_thetas(box) if k == "interior"]
    assert interior == [(0.2, 0.7), (0.2, 1.1), (0.4, 0.7), (0.4, 1.1)]
    assert [t for k, t in ev.default_thetas() if k == "interior"][0] == (0.275, 0.65)
    with pytest.raises(ValueError, match="at least 2"):
        ev.sample_quality_benchmark(model, cfg, splits, thetas, 1)

    grid = inf.theta_grid(6, 6)
    x = splits["test"][0][0]
    posts, notes = ev.map_posteriors(model, cfg, splits, x, grid, splits["fiducial"][0])
    assert set(posts) == {"TRENF", "P(k)", "exact"} and notes == []
    posts, notes = ev.map_posteriors(model, cfg, splits, x, grid)
    assert set(posts) == {"TRENF", "exact"} and "no fiducial/ set" in notes[0]


def test_calibration_diagnostics_of_every_likelihood(run_and_data):
    cfg, model, splits = run_and_data
    fid = np.asarray([0.3, 0.8])
    sims, _ = ev.held_out_sims(cfg, splits, fid, 16, seed=0)
    grid = inf.theta_grid(8, 8)
    # without fiducial maps for a covariance: no P(k) likelihood (its jax form, the same code
    # path, is tested in test_inference_calibration.py), and a note says so
    out, curves = ev.calibration_diagnostics(model, cfg, splits, fid, sims, grid, n_coverage=3)
    assert set(curves) == {"TRENF", "exact"} and "no fiducial maps" in out["notes"][0]
    for name in curves:
        diag = out[name]
        assert diag["score_test"]["n_maps"] == 16 and len(diag["score_test"]["mean_score"]) == 2
        assert diag["coverage"]["n_maps"] == 3 and curves[name]["n_maps"] == 3
        assert any("error bars are large" in w for w in diag["warnings"])
    json.dumps(out)
