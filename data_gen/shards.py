"""One shard of a data set on disk: an uncompressed .npz written atomically, read with checks.

``write_shard`` writes to a temporary name under an exclusive ``flock`` and renames, with
fixed zip timestamps, so the same arrays always give byte-identical files and a half-written
shard never appears under its final name; a second writer of the same shard gets a
``ValueError``. ``read_shard`` refuses a file that cannot be read, lacks the shard arrays
(maps, theta, sim_id, seed), has inconsistent shapes or non-finite maps.
"""

from __future__ import annotations

import fcntl
import io
import os
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["read_shard", "write_shard"]

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_SHARD_KEYS = ("maps", "theta", "sim_id", "seed")


def write_shard(path: Path, arrays: dict[str, np.ndarray], overwrite: bool = True) -> None:
    """Write an uncompressed .npz with fixed timestamps atomically (temporary name, then rename).

    The temporary file is locked while it is written: ValueError when another process is
    writing the same shard, or (``overwrite=False``) when the shard exists by the time the
    lock is taken; a stale temporary file (a killed writer's) is reused.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o644), "wb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{path} is being written by another process right now: two workers were "
                "given the same shard (check --worker / --workers)"
            ) from None
        if not overwrite and path.exists():  # written by another worker meanwhile
            if os.path.samestat(os.fstat(fh.fileno()), os.stat(tmp)):
                os.unlink(tmp)
            raise ValueError(
                f"{path} was written by another process meanwhile: two workers were given the "
                "same shard (check --worker / --workers)"
            )
        try:
            fh.truncate(0)
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                for name, arr in arrays.items():
                    buf = io.BytesIO()
                    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
                    info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
                    zf.writestr(info, buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def read_shard(path: Path, n: int | None = None) -> dict[str, np.ndarray]:
    """Load and check one shard; ``ValueError`` naming the file if it is corrupt."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as err:  # zipfile.BadZipFile, OSError, ValueError, EOFError ...
        raise ValueError(f"corrupt shard {path}: cannot be read ({err})") from None
    missing = [k for k in _SHARD_KEYS if k not in data]
    if missing:
        raise ValueError(f"corrupt shard {path}: missing arrays {missing}")
    m = data["maps"]
    ok = (
        m.ndim == 3
        and m.shape[1] == m.shape[2]
        and data["theta"].shape == (len(m), 2)
        and data["sim_id"].shape == (len(m),)
        and data["seed"].shape == (len(m),)
        and (n is None or m.shape[1] == n)
    )
    if not ok:
        raise ValueError(f"corrupt shard {path}: inconsistent array shapes")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"corrupt shard {path}: maps contain NaN or inf")
    return data
