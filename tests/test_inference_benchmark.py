"""The FoM comparison (flow vs P(k) vs exact) and ``fieldflow infer`` on tiny lognormal maps."""

from __future__ import annotations

import json
import shlex

import jax
import numpy as np
import pytest
from conftest import rbg_rngs
from flax import nnx

import data_gen
from fieldflow import inference as inf
from fieldflow.commands import build_parser, run_command
from fieldflow.models import TRENF

# one worker runs this module: its module fixtures (and what they compile) are built once
pytestmark = pytest.mark.xdist_group("inference_benchmark")

N, BOX = 8, 32.0


@pytest.fixture(scope="module")
def splits():
    """Lognormal 8^2 maps: 24 train, 4 test (theta over the prior), 16 fiducial."""
    theta = data_gen.design_theta(32, seed=2)[:28]
    fid_theta = np.tile(np.float32(data_gen.FIDUCIAL_THETA), (16, 1))
    maps = np.asarray(
        data_gen.lognormal(jax.random.key(7), np.concatenate([theta, fid_theta]), n=N, box=BOX)
    )
    return {
        "train": (maps[:24], theta[:24]),
        "test": (maps[24:28], theta[24:]),
        "fiducial": (maps[28:], fid_theta),
    }


@pytest.fixture(scope="module")
def manifest():
    return {"simulator": "lognormal", "n": N, "box": BOX, "slab": None, "maps_per_sim": 1}


@pytest.fixture(scope="module")
def model():
    """A tiny untrained flow on a trained range that is not the prior's."""
    return TRENF(
        (N, N),
        n_layers=1,
        n_psi_bins=4,
        hidden=(8,),
        cond_low=(0.25, 0.6),
        cond_high=(0.45, 1.0),
        rngs=rbg_rngs(0),
    )


def test_split_fiducial_holds_out_whole_simulations():
    assert inf.benchmark.split_fiducial(16, 4) == (slice(0, 12), slice(12, 16))
    assert inf.benchmark.split_fiducial(16, 3, maps_per_sim=4) == (slice(0, 12), slice(12, 16))
    assert inf.benchmark.split_fiducial(16, 64) == (slice(0, 8), slice(8, 16))  # at most half
    assert inf.benchmark.split_fiducial(16, 0) == (slice(0, 16), slice(16, 16))


SETS = ("test", "fiducial")


def test_fom_comparison_reports_every_method(model, splits, manifest):
    grid = inf.theta_grid(6, 6, (0.25, 0.45), (0.6, 1.0))
    with pytest.warns(UserWarning, match="only 4 test maps"):
        out = inf.fom_comparison(model, splits, manifest, grid, n_test=10, n_fid_eval=4)
    assert out["n_train_maps"] == 24 and out["n_fiducial_cov"] == 12
    assert out["n_fiducial_eval"] == 4 and out["grid"] == grid.to_dict()
    assert set(out["results"]) == {"test", "fiducial"}
    for name, n_maps in (("test", 4), ("fiducial", 4)):
        res = out["results"][name]
        assert set(res) >= {"flow", "power_spectrum", "exact", "flow_over_ps_fom_mean"}
        assert res["flow_score_compressed_over_ps_fom_median"] == pytest.approx(
            res["flow_score_compressed"]["fom_median"] / res["power_spectrum"]["fom_median"]
        )
        for method in ("flow", "power_spectrum", "exact", "flow_score_compressed"):
            stats = res[method]
            assert stats["n_maps"] == n_maps and stats["fom_mean"] > 0
            assert 0 <= stats["coverage_68"] <= stats["coverage_95"] <= 1
            assert 0 <= stats["frac_hpd68_touching_prior_edge"] <= 1
        assert res["flow_over_exact_fom_mean"] == pytest.approx(
            res["flow"]["fom_mean"] / res["exact"]["fom_mean"]
        )
        agree = res["flow_vs_exact_per_map"]
        assert 0 <= agree["maps_means_within_0.2_sigma"] <= 1
        assert agree["theta_mean_shift_sigma_max"] >= agree["theta_mean_shift_sigma_median"] >= 0
    # the same numbers as the per-method functions
    flow = inf.flow_posterior(model, splits["test"][0], grid, per_map=True)
    assert out["results"]["test"]["flow"] == {
        **inf.coverage_summary(flow, splits["test"][1]),
        "frac_hpd68_touching_prior_edge": inf.fraction_touching_edge(flow),
        "coverage_curve": inf.coverage_curve(flow, splits["test"][1]),
    }
    checks = out["checks"]
    assert set(checks) == {
        "flow_fom_gt_ps",
        "flow_fom_gt_ps_median",
        "coverage_68_within_2sigma",
        "coverage_binomial_sigma",
        "flow_fom_ge_0.9_exact",
    }
    assert checks["coverage_binomial_sigma"] == pytest.approx(np.sqrt(0.68 * 0.32 / 4))
    ps = out["power_spectrum_likelihood"]
    assert ps["n_bins"] == N // 2 and ps["n_fiducial_cov"] == 12
    assert np.isfinite(ps["emulator_rms_rel_error_test_theta"])
    assert out["summary_likelihoods"]["flow_score_compressed"]["n_fiducial"] == 12
    assert set(out["timings_s"]) == {
        "ps_fit_s",
        "score_compressed_fit_s",
        *(f"{m}_{s}_s" for m in ("flow", "exact", "flow_score_compressed") for s in SETS),
    }
    json.dumps(out)  # JSON-able as it is
    no_fid = {k: v for k, v in splits.items() if k != "fiducial"}
    with pytest.raises(ValueError, match="no fiducial"):
        inf.fom_comparison(model, no_fid, manifest, grid)


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
    from fieldflow.checkpoint import CheckpointStore, write_model_json

    path = tmp_path_factory.mktemp("run")
    write_model_json(path, model)
    store = CheckpointStore(path)
    store.save_best(0, nnx.state(model, nnx.Param), {"step": 0})
    store.close()
    return path


def test_infer_command_writes_posterior_files(run_dir, splits, tmp_path):
    maps, theta = splits["test"]
    np.savez(tmp_path / "maps.npz", maps=maps, theta=theta, box=BOX)
    out = tmp_path / "infer"
    summary = run_command(
        "infer",
        [
            run_dir,
            tmp_path / "maps.npz",
            out,
            "--index",
            "1",
            "--grid",
            "6",
            "--lognormal-box",
            str(BOX),
        ],
    )
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["n_maps"] == 1 and set(summary["posteriors"]) == {"TRENF", "exact lognormal"}
    np.testing.assert_allclose(summary["theta_true"], theta[1])
    assert (out / "posterior.png").stat().st_size > 0
    with np.load(out / "posterior.npz") as f:
        assert set(f.files) == {"om", "s8", "TRENF", "exact_lognormal"}
        # the grid spans the model's trained range
        np.testing.assert_allclose(f["om"], inf.theta_grid(6, 6, (0.25, 0.45), (0.6, 1.0)).om)
        assert f["TRENF"].shape == (6, 6) and f["TRENF"].sum() == pytest.approx(1.0)
    joint = run_command("infer", [run_dir, tmp_path / "maps.npz", tmp_path / "j", "--grid", "6"])
    assert joint["n_maps"] == 4 and joint["theta_true"] is None
    with pytest.raises(ValueError, match="out of range"):
        run_command("infer", [run_dir, tmp_path / "maps.npz", tmp_path / "x", "--index", "9"])


def test_infer_examples_parse():
    from fieldflow.commands import infer

    parser = build_parser(["infer"])
    for example in infer.EXAMPLES:
        argv = shlex.split(example)
        assert argv[:2] == ["fieldflow", "infer"]
        args = parser.parse_args(argv[1:])
        assert args.run_dir.name == "trenf"


def test_fom_comparison_with_adjustments(model, splits, manifest):
    """Adjusted flow and P(k) posteriors beside the raw ones; with A = I they are the raw ones."""
    grid = inf.theta_grid(6, 6, (0.25, 0.45), (0.6, 1.0))
    ident = inf.CurvatureAdjustment(
        np.array([[0.3, 0.8]]), np.eye(2)[None], (0.2, 0.5), (0.5, 1.1), {"model": "m"}
    )
    adj = {"flow": ident, "power_spectrum": ident}
    fresh = splits["test"][0][:3]  # stands in for maps of fresh fiducial simulations
    with pytest.warns(UserWarning):
        out = inf.fom_comparison(
            model,
            splits,
            manifest,
            grid,
            n_test=4,
            adjustments=adj,
            fiducial_eval_maps=fresh,
        )
    # the given fiducial maps are evaluated; every fiducial map of the data set is covariance
    assert out["n_fiducial_eval"] == 3 and out["n_fiducial_cov"] == len(splits["fiducial"][0])
    assert out["results"]["fiducial"]["flow"]["coverage_curve"]["n_maps"] == 3
    res = out["results"]["test"]
    for raw, adjusted in (("flow", "flow_adjusted"), ("power_spectrum", "power_spectrum_adjusted")):
        assert res[adjusted]["fom_mean"] == pytest.approx(res[raw]["fom_mean"], rel=1e-4)
        curve = res[adjusted]["coverage_curve"]
        assert curve["n_maps"] == 4 and len(curve["levels"]) == len(curve["coverage"])
    assert res["flow_adjusted_over_ps_adjusted_fom_mean"] == pytest.approx(
        res["flow_over_ps_fom_mean"], rel=1e-4
    )
