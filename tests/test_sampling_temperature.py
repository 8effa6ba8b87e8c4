"""Tempered sampling: T scales the latent, the fit recovers a known temperature, files reload,
bad input is refused, and ``fieldflow sample`` fits, writes and reuses a temperature."""

import json

import jax
import numpy as np
import pytest
from conftest import build_trenf

from fieldflow.sampling_temperature import (
    SamplingTemperature,
    fit_sampling_temperature,
    temperature_at,
)

LOW, HIGH = (0.1, 0.5), (0.5, 1.3)
BOX = 64.0


@pytest.fixture(scope="module")
def model():
    return build_trenf(8, cond_dim=2, cond_low=LOW, cond_high=HIGH)


@pytest.fixture(scope="module")
def thetas():
    rng = np.random.default_rng(0)
    return np.stack([rng.uniform(*r, 1024) for r in zip(LOW, HIGH, strict=True)], axis=1)


def features(theta):
    """1, u(sigma_8), u(Omega_m): the layout of a degree-1 temperature's coefficients."""
    u = 2 * (theta - np.asarray(LOW)) / (np.asarray(HIGH) - np.asarray(LOW)) - 1
    return np.stack([np.ones(len(u)), u[:, 1], u[:, 0]], axis=1)


def test_temperature_scales_the_latent(model, thetas):
    cond = thetas[:4].astype(np.float32)
    key = jax.random.key(3)
    z = jax.random.normal(key, (4, 8, 8))
    t = np.array([0.5, 0.8, 1.0, 1.3])
    np.testing.assert_allclose(
        model.sample(key, cond, temperature=t),
        model.inverse(z * t[:, None, None], cond),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_array_equal(model.sample(key, cond, temperature=1.0), model.sample(key, cond))
    for bad in (0.0, -1.0, np.nan, np.ones(3)):
        with pytest.raises(ValueError, match="temperature"):
            model.sample(key, cond, temperature=bad)


def test_fit_recovers_a_known_temperature(model, thetas):
    """Maps drawn at ln T = -0.15 + 0.1 u(sigma_8) - 0.05 u(Omega_m) give back those
    coefficients (to the Monte Carlo error of 1024 maps), and the flow's own samples a
    temperature near 1."""
    cond = thetas.astype(np.float32)
    truth = np.array([-0.15, 0.1, -0.05])
    t_true = np.exp(features(thetas) @ truth)
    maps = np.asarray(model.sample(jax.random.key(5), cond, temperature=t_true))
    fitted = fit_sampling_temperature(model, maps, thetas, BOX, progress=False)
    d = fitted.fit_diagnostics
    assert d["converged"] and d["max_abs_moment_residual"] < 1e-3
    assert d["band_power_ratio_before"] > 1.2 and abs(d["band_power_ratio_after"] - 1) < 2e-3
    np.testing.assert_allclose(fitted.coefficients, truth, atol=0.04)
    corners = np.array([LOW, HIGH, (LOW[0], HIGH[1]), (HIGH[0], LOW[1])])
    np.testing.assert_allclose(fitted(corners), np.exp(features(corners) @ truth), rtol=0.06)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        stopped = fit_sampling_temperature(
            model, maps, thetas, BOX, max_iterations=0, progress=False
        )
    assert not stopped.fit_diagnostics["converged"] and stopped.coefficients == (0.0, 0.0, 0.0)
    own = np.asarray(model.sample(jax.random.key(6), cond))
    flat = fit_sampling_temperature(model, own, thetas, BOX, degree=0, progress=False)
    assert len(flat.coefficients) == 1 and abs(flat.coefficients[0]) < 0.02


def test_temperature_file_round_trip_and_refusals(tmp_path, model, thetas):
    fitted = SamplingTemperature((-0.1, 0.02, 0.03, 0.01, 0.0, -0.02), 2, LOW, HIGH, {"n": 1})
    path = fitted.save(tmp_path / "t.json")
    again = SamplingTemperature.load(path)
    assert again == fitted
    np.testing.assert_allclose(again(thetas[:5]), fitted(thetas[:5]))
    (tmp_path / "other.json").write_text(json.dumps({"coefficients": [0.0]}))
    with pytest.raises(ValueError, match="not a fieldflow sampling-temperature"):
        SamplingTemperature.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match="cannot read"):
        SamplingTemperature.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="has 6 coefficients, got 3"):
        SamplingTemperature((0.0, 0.1, 0.2), 2, LOW, HIGH)
    with pytest.raises(ValueError, match="outside the trained range"):
        fitted(np.array([[0.6, 0.8]]))
    with pytest.raises(ValueError, match="shape"):
        fitted(np.array([[0.3, 0.8, 1.0]]))
    maps = np.zeros((64, 8, 8), np.float32)
    with pytest.raises(ValueError, match="conditional"):
        fit_sampling_temperature(build_trenf(8, cond_dim=0), maps, thetas[:64], BOX)
    with pytest.raises(ValueError, match="theta must have shape"):
        fit_sampling_temperature(model, maps, thetas[:63], BOX)
    with pytest.raises(ValueError, match="NaN"):
        fit_sampling_temperature(model, maps + np.nan, thetas[:64], BOX)
    with pytest.raises(ValueError, match="no power"):
        fit_sampling_temperature(model, maps, thetas[:64], BOX, progress=False)


def test_sample_command_fits_writes_and_reuses_a_temperature(tiny_run_dir, tiny_data_dir, tmp_path):
    from fieldflow.commands import run_command

    fit_dir, again_dir = tmp_path / "fit", tmp_path / "again"
    common = ["--theta", "0.3", "0.8", "--num", "8", "--no-progress"]
    first = run_command(
        "sample", [tiny_run_dir, fit_dir, *common, "--fit-temperature", tiny_data_dir]
    )
    file = fit_dir / "sampling_temperature.json"
    assert file.is_file() and first["temperature_fit"]["converged"]
    assert first["temperature"] == pytest.approx(
        float(SamplingTemperature.load(file)(np.array([[0.3, 0.8]]))[0])
    )
    second = run_command("sample", [tiny_run_dir, again_dir, *common, "--temperature", file])
    assert second["temperature"] == pytest.approx(first["temperature"])
    np.testing.assert_array_equal(
        np.load(fit_dir / "samples.npz")["maps"], np.load(again_dir / "samples.npz")["maps"]
    )
    evaluated = run_command(
        "evaluate",
        [tiny_run_dir, tiny_data_dir, tmp_path / "eval", "--temperature", file, "--num", "16"]
        + ["--grid", "6", "--coverage-maps", "0", "--no-progress"],
    )
    assert evaluated["temperature"] == pytest.approx(first["temperature"])
    assert temperature_at(None, None) == (1.0, "none (the flow's own samples)")
    assert temperature_at("0.9", None) == (0.9, "--temperature")
    with pytest.raises(ValueError, match="conditional"):
        temperature_at(file, None)
    with pytest.raises(ValueError, match="not both"):
        run_command(
            "sample",
            [tiny_run_dir, again_dir, *common, "--temperature", "1", "--fit-temperature", "x"],
        )
