"""fieldflow.io: atomic JSON / npz writes and the one reader of map files."""

import json

import numpy as np
import pytest

from fieldflow.io import read_maps, save_npz, to_jsonable, write_json


def test_json_of_arrays_and_atomic_writes(tmp_path):
    payload = {"a": np.arange(3), "b": np.float32(1.5), "c": [np.bool_(True), tmp_path]}
    path = write_json(tmp_path / "x" / "s.json", payload)
    assert json.loads(path.read_text()) == {"a": [0, 1, 2], "b": 1.5, "c": [True, str(tmp_path)]}
    assert to_jsonable((np.int64(2),)) == [2]
    save_npz(tmp_path / "m.npz", maps=np.zeros((2, 4, 4)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "x"]  # no temporary left


def test_read_maps_forms_and_errors(tmp_path):
    maps = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)
    save_npz(tmp_path / "a.npz", maps=maps, theta=np.array([0.3, 0.8]), box=np.float64(64.0))
    x, theta, extra = read_maps(tmp_path / "a.npz")
    np.testing.assert_array_equal(x, maps)
    assert theta.shape == (3, 2) and extra == {"box": 64.0}
    x, theta, _ = read_maps(tmp_path / "a.npz", index=-1)
    np.testing.assert_array_equal(x, maps[-1:])
    save_npz(tmp_path / "one.npz", map=maps[0])
    assert read_maps(tmp_path / "one.npz")[0].shape == (1, 8, 8)
    np.save(tmp_path / "m.npy", maps)
    assert read_maps(tmp_path / "m.npy")[1] is None
    save_npz(tmp_path / "bad_theta.npz", maps=maps, theta=np.zeros((2, 2)))
    save_npz(tmp_path / "no_maps.npz", x=maps)
    save_npz(tmp_path / "nan.npz", maps=np.full((1, 8, 8), np.nan))
    for name, message in [
        ("missing.npz", "does not exist"),
        ("bad_theta.npz", "must be \\(2,\\) or \\(3, 2\\)"),
        ("no_maps.npz", "expected an array named 'maps' or 'map'"),
        ("nan.npz", "NaN"),
    ]:
        with pytest.raises(ValueError, match=message):
            read_maps(tmp_path / name)
    with pytest.raises(ValueError, match="out of range"):
        read_maps(tmp_path / "a.npz", index=3)


def test_simulation_cache_reloads_and_refuses_another_data_set(tmp_path):
    from fieldflow.sims_cache import SimulationCache, open_cache

    cfg = {"simulator": "nbody", "n": 8, "box": 64.0, "seed": 3}
    assert open_cache(None, cfg) is None  # no folder given: no cache
    cache = SimulationCache(tmp_path / "sims", cfg)
    key = (0.3, 0.8, 16, 0)
    assert key not in cache
    with pytest.raises(KeyError):
        cache[key]
    maps = np.random.default_rng(0).normal(size=(16, 8, 8)).astype(np.float32)
    cache[key] = (maps, "16 new nbody simulations")
    again = open_cache(tmp_path / "sims", dict(cfg))  # another session, same data set
    assert key in again and (0.3, 0.8, 16, 1) not in again
    stored, source = again[key]
    np.testing.assert_array_equal(stored, maps)
    assert source == "16 new nbody simulations"
    with pytest.raises(ValueError, match="another data set"):
        SimulationCache(tmp_path / "sims", {**cfg, "seed": 4})
