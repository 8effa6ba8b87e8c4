"""``fieldflow calibrate`` then ``fieldflow infer``: once a run is calibrated the default is the
raw posterior where the score tests find it honest, else the score-compressed one; the others
stay beside it, and a calibration file of another model is refused."""

import json
import shutil

import numpy as np
import pytest
from conftest import CALIBRATION_THETA, CONCAVE_RUN

from fieldflow import inference
from fieldflow.cli import main

pytestmark = CONCAVE_RUN


# session scope: xdist runs this group's tests interleaved with test_cli's calibrate examples,
# and a module fixture would be rebuilt at every switch between the two modules
@pytest.fixture(scope="session")
def tiny_maps_file(tiny_data_dir, tmp_path_factory):
    from fieldflow.data import load_dataset
    from fieldflow.io import save_npz

    maps, theta = load_dataset(tiny_data_dir)["test"]
    return save_npz(tmp_path_factory.mktemp("maps") / "maps.npz", maps=maps[:2], theta=theta[:2])


@pytest.fixture(scope="session")
def calibrated(concave_run_dir, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration")
    argv = [
        "calibrate",
        str(concave_run_dir),
        str(tiny_data_dir),
        "--num",
        "16",
        *CALIBRATION_THETA,
        "--grid",
        "16",
    ]
    sims = out / "sims"
    assert main([*argv, "--out", str(out), "--sims-cache", str(sims), "--no-progress"]) == 0
    return out


def test_calibrate_writes_score_tests_and_an_adjustment(calibrated):
    # the held-out maps of both calibration theta are kept for the next calibration
    assert len(list((calibrated / "sims").glob("*.npz"))) == 2
    summary = json.loads((calibrated / "summary.json").read_text())
    tests = summary["score_tests"]
    assert len(tests) == 2 and any(t["used"] for t in tests)
    for t in tests:
        assert t["n_maps"] == 16 and len(t["mean_score"]) == 2
        if t["used"]:
            assert len(t["eigenvalues"]) == 2 and min(t["eigenvalues"]) > 0
    assert summary["score_compressed_file"] == str(calibrated / "score_compressed.json")
    cal = json.loads((calibrated / "calibration.json").read_text())
    assert np.asarray(cal["matrices"]).shape == (sum(t["used"] for t in tests), 2, 2)
    # the default posterior, chosen by coverage on the (3) validation maps
    selection = inference.PosteriorSelection.load(calibrated / "selection.json")
    assert summary["selection"]["chosen"] == selection.chosen
    assert set(selection.stats) == {"raw", "adjusted", "score"}
    for stats in selection.stats.values():
        assert stats["n_maps"] == 3 and 0 <= stats["coverage_68"] <= stats["coverage_95"] <= 1
    expected = inference.choose_posterior(selection.stats)
    assert (selection.chosen, list(selection.honest), selection.reason) == expected


def _with_predicted_coverage(calibrated, out_dir, coverage: float):
    """A copy of the calibration files whose score tests predict ``coverage`` for the raw
    posterior's 68% region."""
    out_dir.mkdir()
    shutil.copy(calibrated / "score_compressed.json", out_dir)
    cal = json.loads((calibrated / "calibration.json").read_text())
    for test in cal["tests"]:
        if test["used"]:
            test["predicted_coverage"]["0.68"] = coverage
    (out_dir / "calibration.json").write_text(json.dumps(cal))
    return out_dir / "calibration.json"


def test_infer_reports_the_adjusted_posterior_beside_the_raw_one(
    calibrated, concave_run_dir, tiny_maps_file, tmp_path
):
    argv = ["infer", str(concave_run_dir), str(tiny_maps_file), str(tmp_path / "a"), "--grid", "16"]
    assert main([*argv, "--calibration", str(calibrated / "calibration.json")]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    names = {"raw": "TRENF", "adjusted": "TRENF (curvature-adjusted)"}
    names["score"] = "TRENF (score-compressed)"
    chosen = inference.PosteriorSelection.load(calibrated / "selection.json").chosen
    assert summary["default_posterior"] == names[chosen]
    methods = set(names.values())
    assert set(summary["posteriors"]) == methods
    for post in summary["posteriors"].values():
        assert 0.2 < post["mean"][0] < 0.5 and post["fom"] > 0
    assert main([*argv[:3], str(tmp_path / "s"), "--grid", "16", "--posterior", "adjusted",
                 "--calibration", str(calibrated / "calibration.json")]) == 0  # fmt: skip
    chosen = json.loads((tmp_path / "s" / "summary.json").read_text())["default_posterior"]
    assert chosen == "TRENF (curvature-adjusted)"
    # the default is the posterior `fieldflow calibrate` chose by coverage ...
    selection = json.loads((calibrated / "selection.json").read_text())
    for kind, expected in names.items():
        cal = tmp_path / f"chosen_{kind}"
        shutil.copytree(calibrated, cal)
        (cal / "selection.json").write_text(json.dumps({**selection, "chosen": kind}))
        out = tmp_path / f"auto_{kind}"
        calibration = str(cal / "calibration.json")
        assert main([*argv[:3], str(out), "--grid", "16", "--calibration", calibration]) == 0
        assert json.loads((out / "summary.json").read_text())["default_posterior"] == expected
    # ... and for a calibration without that choice, the score tests: raw when they
    # predict an honest 68% region
    for coverage, expected in ((0.30, "TRENF (score-compressed)"), (0.68, "TRENF")):
        cal = _with_predicted_coverage(calibrated, tmp_path / f"cal{coverage}", coverage)
        out = tmp_path / f"auto{coverage}"
        assert main([*argv[:3], str(out), "--grid", "16", "--calibration", str(cal)]) == 0
        assert json.loads((out / "summary.json").read_text())["default_posterior"] == expected
    # without a calibration file: the raw posterior, with a warning
    with pytest.warns(UserWarning, match="coverage is unchecked"):
        assert main(argv[:3] + [str(tmp_path / "r"), "--grid", "16"]) == 0
    raw = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert raw["default_posterior"] == "TRENF" and set(raw["posteriors"]) == {"TRENF"}


def test_a_calibration_of_another_model_is_refused(
    calibrated, tiny_run_dir, tiny_maps_file, tmp_path, capsys
):
    argv = ["infer", str(tiny_run_dir), str(tiny_maps_file), str(tmp_path), "--grid", "8"]
    assert main([*argv, "--calibration", str(calibrated / "calibration.json")]) == 2
    assert "another model" in capsys.readouterr().err
    assert main([*argv, "--posterior", "adjusted"]) == 2
    assert "fieldflow calibrate" in capsys.readouterr().err
    from fieldflow.checkpoint import load
    from fieldflow.inference import SummaryLikelihood

    with pytest.raises(ValueError, match="another model"):
        SummaryLikelihood.load(
            calibrated / "score_compressed.json",
            load(tiny_run_dir),
            model_fingerprint=inference.model_fingerprint(load(tiny_run_dir)),
        )


def test_residual_model_benchmark_scores_every_residual_model(concave_run_dir, tiny_data_dir):
    """The benchmark behind `scripts/benchmark_residual_models.py`: score tests and coverage
    of the score-compressed likelihood with each residual model (on 26 training maps the
    flow is refused and its Gaussian stays, with a warning)."""
    from fieldflow.inference.residual_benchmark import RESIDUAL_MODELS, residual_model_benchmark

    with pytest.warns(UserWarning, match="Gaussian residuals instead"):
        out = residual_model_benchmark(
            concave_run_dir, tiny_data_dir, num=8, tails=("flow", "student"), n_test=3,
            grid_size=8,
        )  # fmt: skip
    assert out["maps_per_theta"] == 8 and len(out["maps"]) == 5
    assert out["corr_degree"] == inference.SCORE_CORR_DEGREE  # as score_compressed_likelihood
    assert set(out["residual_models"]) == {"flow", "student"} <= set(RESIDUAL_MODELS)
    for res in out["residual_models"].values():
        rows = res["score_tests"]
        assert len(rows) == 5 and all(r["n_maps"] == 8 for r in rows)
        assert 0 <= res["test"]["coverage_68"] <= res["test"]["coverage_95"] <= 1
        eigs = [e for r in rows for e in r.get("eigenvalues") or []]
        assert res["eigenvalues_in_range"] == (bool(eigs) and all(0.7 <= e <= 1.4 for e in eigs))
    assert out["residual_models"]["flow"]["fit_report"]["tails"] == "gaussian"
    assert out["residual_models"]["student"]["fit_report"]["tails"] == "student"
    json.dumps(out)
