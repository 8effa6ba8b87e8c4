"""Coverage statistics of many posteriors, HPD regions at the grid's edge, and the P(k)
emulator (no simulations: exact inputs with known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from fieldflow import fourier, metrics
from fieldflow import inference as inf


def gaussian_posterior(grid, mu, sig=(0.02, 0.05)):
    d = (grid.points - np.asarray(mu)) / np.asarray(sig)
    return inf.posterior_from_loglike(-0.5 * (d**2).sum(-1).reshape(grid.shape), grid)


@pytest.fixture(scope="module")
def grid():
    return inf.theta_grid(40, 40, (0.2, 0.5), (0.5, 1.1))


def test_coverage_summary_counts_hits_and_bias(grid):
    mu, sig = np.array([0.33, 0.8]), np.array([0.02, 0.05])
    posts = [gaussian_posterior(grid, mu, sig) for _ in range(4)]
    truths = np.array([mu, mu + [0.5 * sig[0], 0], mu + [2 * sig[0], 0], mu + [0, 3 * sig[1]]])
    s = inf.coverage_summary(posts, truths)
    foms = [p.fom for p in posts]
    assert s["n_maps"] == 4
    assert s["fom_mean"] == pytest.approx(np.mean(foms))
    assert s["fom_median"] == pytest.approx(np.median(foms)) and s["fom_std"] < 1e-9
    # a 2D Gaussian's q region is the ellipse r^2 <= -2 ln(1 - q): r = 1.51 (68%), 2.45 (95%)
    assert s["coverage_68"] == 0.5 and s["coverage_95"] == 0.75
    expected_bias = ((posts[0].mean - truths) / posts[0].std).mean(axis=0)
    np.testing.assert_allclose(s["mean_bias_over_std"], expected_bias)
    assert set(inf.coverage_summary(posts)) == {"fom_mean", "fom_median", "fom_std", "n_maps"}
    assert "coverage_50" in inf.coverage_summary(posts, truths, masses=(0.5,))
    with pytest.raises(ValueError, match="one row per posterior"):
        inf.coverage_summary(posts, truths[:3])
    with pytest.raises(ValueError, match="at least one"):
        inf.coverage_summary([])


def test_hpd_touches_edge(grid):
    centre = gaussian_posterior(grid, (0.35, 0.8))
    assert not inf.hpd_touches_edge(centre) and not inf.hpd_touches_edge(centre, 0.95)
    at_edge = gaussian_posterior(grid, (0.2, 0.8))
    assert inf.hpd_touches_edge(at_edge)
    # 3 sigma from the edge: only the 99.9% region reaches it
    near = gaussian_posterior(grid, (0.26, 0.8))
    assert not inf.hpd_touches_edge(near, 0.95) and inf.hpd_touches_edge(near, 0.999)
    flat = inf.posterior_from_loglike(np.zeros(grid.shape), grid)
    assert inf.hpd_touches_edge(flat)
    assert inf.fraction_touching_edge([centre, at_edge, near, flat]) == 0.5


def _amplitude(theta):
    """A(theta)^2 = exp(0.3 + 1.2 u0 - 0.5 u1^2 + 0.4 u0 u1): a degree-2 exponent in u."""
    u = 2 * (np.asarray(theta) - [0.2, 0.5]) / [0.3, 0.6] - 1
    return np.exp(0.5 * (0.3 + 1.2 * u[:, 0] - 0.5 * u[:, 1] ** 2 + 0.4 * u[:, 0] * u[:, 1]))


def test_posterior_agreement_counts_maps_off_by_shift_or_width():
    ref_mean, ref_std = np.zeros((4, 2)), np.full((4, 2), 0.1)
    mean = np.array([[0.0, 0.0], [0.019, -0.019], [0.021, 0.0], [0.0, 0.05]])
    std = np.array([[0.1, 0.1], [0.109, 0.091], [0.1, 0.1], [0.1, 0.115]])
    out = inf.posterior_agreement(mean, std, ref_mean, ref_std)
    assert out["maps_means_within_0.2_sigma"] == 0.5  # maps 2 and 3 shifted > 0.2 sigma
    assert out["theta_mean_shift_sigma_max"] == pytest.approx(0.5)
    assert out["maps_stds_within_10pct"] == 0.75  # map 3 is 15% wide
    assert out["theta_std_ratio_range"] == pytest.approx([0.91, 1.15])
    with pytest.raises(ValueError, match="one shape"):
        inf.posterior_agreement(mean[:3], std, ref_mean, ref_std)
    with pytest.raises(ValueError, match="> 0"):
        inf.posterior_agreement(mean, std, ref_mean, 0 * ref_std)


def test_emulator_recovers_an_exact_exp_polynomial():
    """Maps A(theta) x0 have P(k; theta) = A^2 P(k; x0) exactly: the fit is exact."""
    n, box = 8, 32.0
    x0 = np.random.default_rng(0).normal(size=(n, n))
    theta = np.random.default_rng(1).uniform([0.2, 0.5], [0.5, 1.1], (24, 2))
    maps = (_amplitude(theta)[:, None, None] * x0).astype(np.float32)
    emu = inf.PowerSpectrumEmulator.fit(maps, theta, box, degree=2)
    p0 = np.asarray(metrics.power_spectrum(x0.astype(np.float32), box), np.float64)
    new = np.array([[0.25, 0.6], [0.41, 1.02], [0.3, 0.8]])
    np.testing.assert_allclose(emu.mean(new), _amplitude(new)[:, None] ** 2 * p0, rtol=1e-4)
    assert emu.mean((0.3, 0.8)).shape == (1, emu.n_bins)
    assert emu.n_bins == n // 2 and emu.n == n and emu.box == box and emu.degree == 2
    np.testing.assert_allclose(emu.edges, fourier.k_bin_edges(n, box))
    np.testing.assert_allclose(emu.k, fourier.k_bin_centers(emu.edges))
    np.testing.assert_allclose(emu.fit_report["train_mean_ratio"], 1.0, rtol=1e-4)
    assert emu.fit_report["n_train"] == 24 and emu.fit_report["n_bins"] == n // 2
    # custom bins and box
    cut = inf.PowerSpectrumEmulator.fit(
        maps, theta, box, edges=emu.edges[:3], degree=1, theta_low=(0.1, 0.4), theta_high=(0.6, 1.2)
    )
    assert cut.n_bins == 2 and cut.coef.shape == (3, 2)
    with pytest.raises(ValueError, match="too few"):
        inf.PowerSpectrumEmulator.fit(maps[:15], theta[:15], box)  # degree 3: 10 terms
    with pytest.raises(ValueError, match="theta must have shape"):
        inf.PowerSpectrumEmulator.fit(maps, theta[:, :1], box)
    with pytest.raises(ValueError, match="high > low"):
        inf.PowerSpectrumEmulator.fit(maps, theta, box, theta_low=(0.5, 0.5))
    with pytest.raises(ValueError, match="zero-power"):
        inf.PowerSpectrumEmulator.fit(np.zeros_like(maps), theta, box, degree=1)
    with pytest.raises(ValueError, match="theta must have shape"):
        emu.mean([0.3, 0.8, 0.1])


# ------------------------------------------------- which posterior to report by default
def _stats(c68: float, c95: float, fom: float) -> dict:
    return {"coverage_68": c68, "coverage_95": c95, "fom_median": fom, "n_maps": 200}


def test_the_default_is_the_most_informative_honest_posterior():
    from fieldflow.inference import choose_posterior

    stats = {
        "raw": _stats(0.40, 0.80, 900.0),  # overconfident: the largest FoM, not honest
        "adjusted": _stats(0.66, 0.94, 300.0),
        "score": _stats(0.70, 0.97, 200.0),
    }
    chosen, honest, reason = choose_posterior(stats)
    assert (chosen, honest) == ("adjusted", ["adjusted", "score"]) and "in range" in reason
    stats["adjusted"]["coverage_95"] = 0.99  # underconfident at 95%: out
    assert choose_posterior(stats)[:2] == ("score", ["score"])
    # none honest: the one nearest nominal coverage, said so
    stats["score"]["coverage_68"] = 0.50
    chosen, honest, reason = choose_posterior(stats)
    assert (chosen, honest) == ("adjusted", []) and "no posterior" in reason
    with pytest.raises(ValueError, match="at least one"):
        choose_posterior({})


def test_a_selection_reloads_and_is_refused_for_another_model(tmp_path):
    from fieldflow.inference import PosteriorSelection

    stats = {"raw": _stats(0.68, 0.95, 10.0)}
    sel = PosteriorSelection("raw", ("raw",), "why", stats, "3 maps", {"model": "a", "data": "b"})
    path = sel.save(tmp_path / "selection.json")
    assert PosteriorSelection.load(path, model="a", data="b") == sel
    assert "* raw" in sel.describe()
    with pytest.raises(ValueError, match="another model"):
        PosteriorSelection.load(path, model="other")
    (tmp_path / "bad.json").write_text(path.read_text().replace('"chosen": "raw"', '"chosen": "x"'))
    with pytest.raises(ValueError, match="unknown posterior"):
        PosteriorSelection.load(tmp_path / "bad.json")


def test_held_out_maps_are_spread_over_simulations_first():
    from fieldflow.inference import one_map_per_simulation

    maps = np.arange(12, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    theta = np.arange(24, dtype=np.float32).reshape(12, 2)
    m, t = one_map_per_simulation(maps, theta, 5, maps_per_sim=4)  # 3 simulations x 4 slabs
    np.testing.assert_array_equal(m[:, 0, 0], [0, 1, 4, 5, 8])  # slab 0 of each, then slab 1
    np.testing.assert_array_equal(t, theta[[0, 1, 4, 5, 8]])
    assert len(one_map_per_simulation(maps, theta, 50)[0]) == 12
