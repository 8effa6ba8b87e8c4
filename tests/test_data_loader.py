"""fieldflow.data: splits by simulation, fiducial set, errors."""

import numpy as np
import pytest

from data_gen.dataset import make_config, write_shard
from fieldflow.data import load_dataset


def _fake(tmp_path, n_sims=20, per=4):
    """A synthetic nbody-like data set: map value encodes its simulation."""
    import json

    d = tmp_path / "ds"
    d.mkdir()
    cfg = make_config("grf", n_sims, n=4, box=16.0, shard_size=8)
    (d / "manifest.json").write_text(json.dumps(cfg))
    for j, lo in enumerate(range(0, n_sims, 8)):
        ids = np.repeat(np.arange(lo, min(lo + 8, n_sims)), per)
        write_shard(
            d / f"shard_{j:05d}.npz",
            {
                "maps": np.broadcast_to(ids[:, None, None], (len(ids), 4, 4)).astype(np.float32),
                "theta": np.tile([0.3, 0.8], (len(ids), 1)).astype(np.float32),
                "sim_id": ids,
                "seed": ids.astype(np.uint32),
            },
        )
    return d


def test_splits_by_simulation(tmp_path):
    d = _fake(tmp_path)
    ds = load_dataset(d, splits=(0.6, 0.2, 0.2), seed=1)
    sims = {k: set(np.unique(ds[k][0][:, 0, 0]).astype(int)) for k in ("train", "val", "test")}
    assert [len(sims[k]) for k in ("train", "val", "test")] == [12, 4, 4]
    assert not (sims["train"] & sims["val"]) and not (sims["train"] & sims["test"])
    assert not (sims["val"] & sims["test"])
    for k in ("train", "val", "test"):
        maps, theta = ds[k]
        assert len(maps) == 4 * len(sims[k]) and theta.shape == (len(maps), 2)
        assert maps.dtype == np.float32
    assert "fiducial" not in ds
    again = load_dataset(d, splits=(0.6, 0.2, 0.2), seed=1)
    np.testing.assert_array_equal(again["val"][0], ds["val"][0])


def test_real_dataset_with_fiducial(tmp_path):
    from data_gen.dataset import generate_dataset

    generate_dataset(
        tmp_path / "r", "lognormal", 10, progress=False, n=8, box=64.0, shard_size=4, n_fiducial=2
    )
    ds = load_dataset(tmp_path / "r")
    assert sum(len(ds[k][0]) for k in ("train", "val", "test")) == 10
    assert ds["fiducial"][0].shape == (2, 8, 8)


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="manifest"):
        load_dataset(tmp_path / "empty")
    d = _fake(tmp_path)
    (d / "shard_00001.npz").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="corrupt shard .*shard_00001"):
        load_dataset(d)


def test_ensure_dataset_reuses_a_complete_set_and_resumes_an_unfinished_one(tmp_path):
    from fieldflow.workflows import ensure_dataset

    kw = dict(n=8, box=64.0, shard_size=2, n_fiducial=2)  # compiled by the test above
    d = tmp_path / "e"
    cfg = ensure_dataset(d, "lognormal", 4, progress=False, **kw)
    assert cfg["n_sims"] == 4 and (d / "fiducial" / "shard_00000.npz").is_file()
    stamp = (d / "shard_00001.npz").stat().st_mtime_ns
    assert ensure_dataset(d, "grf", 99, progress=False) == cfg  # complete: reused as it is
    assert (d / "shard_00001.npz").stat().st_mtime_ns == stamp
    (d / "shard_00001.npz").unlink()
    (d / "fiducial" / "shard_00000.npz").unlink()
    assert ensure_dataset(d, "lognormal", 4, progress=False, **kw) == cfg  # resumed
    assert (d / "shard_00001.npz").is_file() and (d / "fiducial" / "shard_00000.npz").is_file()
    assert len(load_dataset(d)["fiducial"][0]) == 2
