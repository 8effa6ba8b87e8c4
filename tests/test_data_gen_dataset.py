"""Sharded data sets: content, determinism, resume byte-identical, refusals, CLI."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from data_gen.__main__ import main
from data_gen.dataset import design_theta, generate_dataset, make_config, read_shard, theta_box

# n_fiducial = shard_size: a fiducial shard has the design shards' batch (one compile less)
KW = dict(n=8, box=64.0, shard_size=4, seed=3, n_fiducial=4)
# one worker: the grf / lognormal tests share the compiled simulators of these shapes
# (marked per test: xdist joins the names of a module's and a test's groups)
same_worker = pytest.mark.xdist_group("data_gen_dataset")


class Killed(Exception):
    pass


def _files(d: Path) -> dict:
    files = sorted(p for p in d.rglob("*") if p.is_file())
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in files}


@same_worker
def test_generate_contents(tmp_path):
    cfg = generate_dataset(tmp_path / "ds", "lognormal", 10, progress=False, **KW)
    d = tmp_path / "ds"
    names = sorted(p.name for p in d.glob("shard_*.npz"))
    assert names == ["shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
    man = json.loads((d / "manifest.json").read_text())
    assert man == cfg and man["simulator"] == "lognormal" and man["slab"] == 16.0
    s = read_shard(d / "shard_00002.npz")
    assert s["maps"].shape == (2, 8, 8) and s["maps"].dtype == np.float32
    assert s["theta"].dtype == np.float32 and s["sim_id"].tolist() == [8, 9]
    assert str(s["simulator"]) == "lognormal" and float(s["box"]) == 64.0
    th = np.concatenate([read_shard(p)["theta"] for p in sorted(d.glob("shard_*.npz"))])
    assert th[:, 0].min() >= 0.2 and th[:, 0].max() <= 0.5 and len(np.unique(th[:, 0])) == 10
    f = read_shard(d / "fiducial" / "shard_00000.npz")
    np.testing.assert_allclose(f["theta"], [[0.3, 0.8]] * 4)
    assert not np.array_equal(f["maps"][0], s["maps"][0])


@same_worker
def test_prior_box_of_a_data_set(tmp_path):
    box = {"omega_m_range": (0.15, 0.45), "sigma8_range": (0.6, 1.3)}
    cfg = generate_dataset(tmp_path / "ds", "lognormal", 8, progress=False, **KW, **box)
    assert cfg["omega_m_range"] == [0.15, 0.45] and cfg["sigma8_range"] == [0.6, 1.3]
    assert theta_box(cfg) == ((0.15, 0.45), (0.6, 1.3))
    assert theta_box({}) == ((0.2, 0.5), (0.5, 1.1))  # manifests of the default box
    th = np.concatenate([read_shard(p)["theta"] for p in sorted((tmp_path / "ds").glob("s*.npz"))])
    assert th[:, 0].min() >= 0.15 and th[:, 0].max() <= 0.45 and th[:, 1].max() > 1.1
    np.testing.assert_array_equal(th, design_theta(8, 3, "sobol", *theta_box(cfg)))
    # the same directory with the default box is another data set
    with pytest.raises(ValueError, match="omega_m_range"):
        generate_dataset(tmp_path / "ds", "lognormal", 8, progress=False, **KW)
    # the command line passes the box through
    argv = [str(tmp_path / "cli"), "--n-sims", "4", "--n", "8", "--box", "64", "--shard-size", "4"]
    argv += ["--seed", "3", "--n-fiducial", "4", "--omega-m-range", "0.15", "0.45"]
    assert main([*argv, "--sigma8-range", "0.6", "1.3", "--no-progress"]) == 0
    man = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert man["omega_m_range"] == [0.15, 0.45] and man["sigma8_range"] == [0.6, 1.3]


@pytest.mark.parametrize(
    "box, match",
    [
        (((0.05, 0.5), (0.5, 1.1)), "supported"),
        (((0.2, 0.5), (0.5, 1.5)), "supported"),
        (((0.35, 0.5), (0.5, 1.1)), "fiducial"),
        (((0.5, 0.2), (0.5, 1.1)), "low < high"),
        (((0.2, np.inf), (0.5, 1.1)), "finite"),
        (((0.2,), (0.5, 1.1)), "two numbers"),
    ],
)
def test_prior_box_refusals(box, match):
    with pytest.raises(ValueError, match=match):
        make_config("nbody", 4, omega_m_range=box[0], sigma8_range=box[1])


def test_sobol_design_of_any_size_is_a_silent_reproducible_prefix():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "balance properties" warning for 10 points
        theta = design_theta(10, seed=3)
    np.testing.assert_array_equal(theta[:4], design_theta(4, seed=3))
    assert theta.shape == (10, 2) and not np.array_equal(theta, design_theta(10, seed=4))


@same_worker
def test_resume_after_kill_is_byte_identical(tmp_path):
    ref, part = tmp_path / "ref", tmp_path / "part"
    generate_dataset(ref, "grf", 10, progress=False, **KW)

    def kill(j):
        if j == 1:
            raise Killed

    with pytest.raises(Killed):
        generate_dataset(part, "grf", 10, progress=False, on_shard=kill, **KW)
    assert sorted(p.name for p in part.glob("shard_*")) == ["shard_00000.npz", "shard_00001.npz"]
    # a half-written temporary file from a killed write is ignored and replaced
    (part / "shard_00002.npz.tmp").write_bytes(b"garbage")
    first = (part / "shard_00000.npz").stat().st_mtime_ns
    generate_dataset(part, "grf", 10, progress=False, **KW)
    assert (part / "shard_00000.npz").stat().st_mtime_ns == first  # not recomputed
    assert not list(part.rglob("*.tmp"))
    assert _files(part) == _files(ref)


@same_worker
def test_refuses_other_configuration_and_keeps_data(tmp_path):
    d = tmp_path / "ds"
    generate_dataset(d, "grf", 4, progress=False, **KW)
    before = _files(d)
    with pytest.raises(ValueError, match="another configuration.*box"):
        generate_dataset(d, "grf", 4, progress=False, **dict(KW, box=128.0))
    with pytest.raises(ValueError, match="simulator"):
        generate_dataset(d, "lognormal", 4, progress=False, **KW)
    assert _files(d) == before


@same_worker
def test_corrupt_shard_is_reported_not_overwritten(tmp_path):
    d = tmp_path / "ds"
    generate_dataset(d, "grf", 8, progress=False, **dict(KW, n_fiducial=0))
    (d / "shard_00001.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="corrupt shard .*shard_00001.npz"):
        generate_dataset(d, "grf", 8, progress=False, **dict(KW, n_fiducial=0))
    assert (d / "shard_00001.npz").read_bytes() == b"not a zip"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="box"):
        generate_dataset(tmp_path / "a", "grf", 4, progress=False, box=0.0)
    with pytest.raises(ValueError, match="simulator"):
        generate_dataset(tmp_path / "b", "nope", 4, progress=False)
    with pytest.raises(ValueError, match="n_sims"):
        generate_dataset(tmp_path / "c", "grf", 0, progress=False)
    assert not (tmp_path / "a").exists()


@pytest.mark.xdist_group("nbody")  # beside test_data_gen_nbody.py: one compiled simulator
def test_nbody_dataset_and_cli(tmp_path):
    d = tmp_path / "pm"
    # 16^3 particles, 10 steps, 2 simulations per shard: the simulator that
    # test_data_gen_nbody.py compiles (one compile for both files)
    args = ["--simulator", "nbody", "--n-sims", "2", "--n", "16", "--n-mesh", "16"]
    args += ["--n-steps", "10", "--shard-size", "2", "--no-progress"]
    assert main([str(d), *args, "--box", "256"]) == 0
    s = read_shard(d / "shard_00000.npz")
    assert s["maps"].shape == (8, 16, 16) and s["sim_id"].tolist() == [0] * 4 + [1] * 4
    assert main([str(d), *args, "--box", "128"]) == 2
