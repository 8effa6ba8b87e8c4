"""Load data sets written by ``data_gen`` into train / validation / test splits.

Splits are by simulation (``sim_id``): the slices of one N-body simulation never straddle
splits. No jax at import; arrays are numpy.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

__all__ = ["load_manifest", "load_shards", "load_dataset"]

_KEYS = ("maps", "theta", "sim_id")


def load_manifest(path) -> dict:
    """The ``manifest.json`` of a data set directory; ValueError if missing or corrupt."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"data set directory {path} does not exist")
    man = path / "manifest.json"
    if not man.exists():
        raise ValueError(f"{path} is not a data set: no manifest.json")
    try:
        return json.loads(man.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"corrupt manifest {man}: {err}") from None


def load_shards(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All shards of one directory: maps (M, N, N) float32, theta (M, 2) float32, sim_id (M,)."""
    path = Path(path)
    cfg = load_manifest(path)
    files = sorted(path.glob("shard_*.npz"))
    if not files:
        raise ValueError(f"data set {path} holds no shards")
    maps, theta, sim = [], [], []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                d = {k: z[k] for k in _KEYS}
        except Exception as err:
            raise ValueError(f"corrupt shard {f}: {err}") from None
        m = d["maps"]
        if (
            m.ndim != 3
            or m.shape[1:] != (cfg.get("n"), cfg.get("n"))
            or d["theta"].shape != (len(m), 2)
            or d["sim_id"].shape != (len(m),)
        ):
            raise ValueError(f"corrupt shard {f}: array shapes do not match the manifest")
        maps.append(m.astype(np.float32))
        theta.append(d["theta"].astype(np.float32))
        sim.append(d["sim_id"].astype(np.int64))
    maps, theta, sim = np.concatenate(maps), np.concatenate(theta), np.concatenate(sim)
    expected = cfg.get("n_sims")
    if expected is not None and len(np.unique(sim)) < expected:
        warnings.warn(
            f"{path}: {len(np.unique(sim))} of {expected} simulations present "
            "(generation unfinished?)",
            stacklevel=2,
        )
    return maps, theta, sim


def load_dataset(path, splits=(0.8, 0.1, 0.1), seed: int = 0) -> dict:
    """Read a data set into {'train', 'val', 'test'[, 'fiducial']}: each (maps, theta).

    Simulations (not maps) are shuffled with ``seed`` and cut by the fractions ``splits``
    (normalised to sum 1); every split with a positive fraction gets at least one
    simulation when there are enough. ``fiducial`` is present when the data set has a
    ``fiducial/`` subdirectory.
    """
    fr = np.asarray(splits, np.float64)
    if fr.shape != (3,) or np.any(fr < 0) or fr.sum() <= 0:
        raise ValueError(f"splits must be three non-negative fractions, got {splits!r}")
    fr = fr / fr.sum()
    maps, theta, sim = load_shards(path)
    ids = np.random.default_rng(seed).permutation(np.unique(sim))
    cuts = np.round(np.cumsum(fr)[:2] * len(ids)).astype(int)
    groups = np.split(ids, cuts)
    out = {}
    for name, g in zip(("train", "val", "test"), groups, strict=True):
        mask = np.isin(sim, g)
        out[name] = (maps[mask], theta[mask])
    fid = Path(path) / "fiducial"
    if fid.is_dir():
        fm, ft, _ = load_shards(fid)
        out["fiducial"] = (fm, ft)
    return out
