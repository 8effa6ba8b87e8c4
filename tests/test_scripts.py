"""The scripts are thin wrappers over package functions: each one loads, its command line
parses (``--help`` exits 0 with its usage), and the package functions they print are right on
inputs whose answer is known."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = sorted((Path(__file__).resolve().parent.parent / "scripts").glob("*.py"))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_loads_and_parses_help(path, capsys):
    module = _load(path)
    assert module.__doc__ and callable(module.main)
    if path.stem == "check_halofit":  # no options
        return
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_latent_amplitude_power_is_two_for_white_noise_and_more_when_modulated():
    from fieldflow.latent_diagnostics import latent_amplitude_power

    rng = np.random.default_rng(0)
    z = rng.standard_normal((64, 32, 32))
    white = latent_amplitude_power(z)
    assert len(white) == 3 and np.allclose(white, 2.0, atol=0.15), white
    # an amplitude that follows the lowest mode: its power shows at the lowest k
    y = np.arange(32)[:, None] * np.ones(32)
    modulated = latent_amplitude_power(z * (1 + 0.5 * np.cos(2 * np.pi * y / 32)))
    assert modulated[0] > 10 * modulated[1] > 10 * white[1], modulated


def test_calibration_checks_apply_the_ranges():
    from fieldflow.inference.calibration_benchmark import calibration_checks

    stats = {"coverage_68": 0.70, "coverage_95": 0.85}
    test = {"flow_score_compressed": stats, "flow_adjusted": stats}
    test |= {"flow_score_compressed_over_exact_fom_mean": 0.8}  # lognormal data only
    fom = {"results": {"test": test}}
    tests = {
        "flow_score_compressed": [
            {"eigenvalues": [0.9, 1.3], "eigenvalue_interval": {"low": [0.8, 1.1], "high": [1, 2]}}
        ],
        "flow_adjusted": [
            {"eigenvalues": [0.9, 2.0], "eigenvalue_interval": {"low": [0.6, 1.5], "high": [1, 3]}},
            {"eigenvalues": None},
        ],
    }
    checks = calibration_checks(fom, tests)
    assert checks["flow_score_compressed_coverage_68_test_in_range"]
    assert not checks["flow_score_compressed_coverage_95_test_in_range"]
    assert checks["flow_score_compressed_eigenvalues_in_range"]
    assert checks["flow_score_compressed_eigenvalue_intervals_meet_range"]
    assert not checks["flow_adjusted_eigenvalues_in_range"]
    assert not checks["flow_adjusted_eigenvalue_intervals_meet_range"]  # [1.5, 3] misses it
    assert not checks["flow_score_compressed_fom_ge_0.9_exact"]
    assert "flow_adjusted_fom_ge_0.9_exact" not in checks
    assert not any("fiducial" in k for k in checks)


def test_a_score_test_that_cannot_be_computed_is_recorded_not_raised():
    from fieldflow.inference.calibration_benchmark import _one_test, _score_test_of

    maps = np.zeros((60, 4, 4), np.float32)

    def nan_like(x, theta):  # non-finite scores on every map
        return x.sum(axis=(1, 2)) + np.nan * theta[:, 0]

    out = _one_test((0.3, 0.8), _score_test_of, nan_like, maps, np.array([0.3, 0.8]))
    assert out["theta"] == [0.3, 0.8] and "NaN or inf" in out["error"]


def test_calibration_benchmark_phases_are_timed_and_logged():
    from fieldflow.inference.calibration_benchmark import _phase

    timings, lines = {}, []
    with _phase("fom", timings, lines.append):
        pass
    with _phase("selection", timings, None):
        pass
    assert set(timings) == {"fom_s", "selection_s"} and min(timings.values()) >= 0.0
    assert lines == ["fom ...", f"fom: {timings['fom_s']:.0f} s"]
