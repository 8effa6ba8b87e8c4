"""Files the package writes and reads: JSON summaries, ``.npz`` arrays, map files.

Writes are atomic (a temporary file renamed over the final name), so an interrupted run
never leaves half a file under a final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fieldflow.validation import check_maps

__all__ = ["to_jsonable", "write_json", "save_npz", "read_maps"]


def to_jsonable(obj):
    """Nested dicts / lists / tuples of numpy or jax arrays and scalars as plain Python."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray)) or hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


def write_json(path, payload) -> Path:
    """Write ``payload`` (see :func:`to_jsonable`) as indented JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(payload), indent=2) + "\n")
    tmp.replace(path)
    return path


def save_npz(path, **arrays) -> Path:
    """``np.savez`` to ``path``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def read_maps(path, index: int | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Maps ``(M, N, N)`` float32, their ``theta`` ``(M, 2)`` (or None) and the file's other
    scalars (e.g. ``box``) from an ``.npz`` holding ``maps`` (or one ``map``), or a ``.npy``.

    ``index`` keeps one map. ValueError for a missing or unreadable file, no map array,
    bad shapes or values, or an index out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"map file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    extra: dict = {}
    if isinstance(data, np.ndarray):
        maps, theta = data, None
    else:
        with data:
            key = "maps" if "maps" in data.files else "map" if "map" in data.files else None
            if key is None:
                raise ValueError(
                    f"{path} holds {sorted(data.files)}; expected an array named 'maps' or 'map'"
                )
            maps = data[key]
            theta = data["theta"] if "theta" in data.files else None
            extra = {
                k: data[k].item()
                for k in data.files
                if k not in (key, "theta") and data[k].ndim == 0
            }
    maps, _ = check_maps(np.asarray(maps), name=f"maps in {path}")
    if theta is not None:
        theta = np.asarray(theta, np.float32)
        if theta.ndim == 1:  # one theta for every map
            theta = np.tile(theta, (len(maps), 1))
        if theta.ndim != 2 or len(theta) != len(maps):
            raise ValueError(
                f"theta in {path} must be (2,) or ({len(maps)}, 2) for its {len(maps)} maps, "
                f"got shape {theta.shape}"
            )
    if index is not None:
        if not -len(maps) <= index < len(maps):
            raise ValueError(f"index {index} is out of range for {len(maps)} maps in {path}")
        index %= len(maps)  # a negative index counts from the end
        maps = maps[index : index + 1]
        theta = None if theta is None else theta[index : index + 1]
    return maps, theta, extra
