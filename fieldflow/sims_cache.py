"""Held-out simulations kept on disk, so benchmarks of several runs, or several sessions,
simulate them once (N-body simulations at seven theta take minutes to hours on a CPU).

A :class:`SimulationCache` is a folder holding ``config.json`` (the data set's manifest the
simulations follow) and one ``.npz`` per (theta, number, seed). It is used where
``fieldflow.evaluation.sample_quality_benchmark`` takes a ``sims_cache`` dict.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fieldflow.io import save_npz, to_jsonable, write_json

__all__ = ["SimulationCache", "open_cache"]


class SimulationCache:
    """``cache[key] = (maps, source)`` writes ``folder/<key>.npz``; ``key in cache`` and
    ``cache[key]`` read it back. ``key`` is a tuple of numbers (theta, number, seed).

    Args:
        folder: created if missing.
        cfg: the data set's manifest. ValueError if the folder was filled for another one.
    """

    def __init__(self, folder, cfg: dict):
        self.folder = Path(folder)
        config = to_jsonable(cfg)
        stored = self.folder / "config.json"
        if stored.exists():
            held = json.loads(stored.read_text())
            if held != config:
                raise ValueError(
                    f"{self.folder} holds simulations of another data set configuration "
                    f"({stored}); use another folder"
                )
        else:
            write_json(stored, config)

    def _path(self, key: tuple) -> Path:
        return self.folder / ("_".join(f"{float(v):g}" for v in key) + ".npz")

    def __contains__(self, key: tuple) -> bool:
        return self._path(key).exists()

    def __getitem__(self, key: tuple) -> tuple[np.ndarray, str]:
        if key not in self:
            raise KeyError(key)
        with np.load(self._path(key)) as f:
            return f["maps"], str(f["source"])

    def __setitem__(self, key: tuple, value: tuple[np.ndarray, str]) -> None:
        maps, source = value
        save_npz(self._path(key), maps=np.asarray(maps, np.float32), source=np.asarray(source))


def open_cache(folder, cfg: dict) -> SimulationCache | None:
    """The :class:`SimulationCache` in ``folder`` for the data set ``cfg``; None without one."""
    return None if folder is None else SimulationCache(folder, cfg)
