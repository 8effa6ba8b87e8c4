"""Sharded data sets on disk: theta designs, deterministic seeds, atomic writes, resume.

Layout of a data set directory::

    manifest.json         the configuration (simulator, n, box, slab, version, n_sims, ...)
    shard_00000.npz       maps (M, N, N) float32, theta (M, 2) float32, sim_id (M,) int64,
    shard_00001.npz       seed (M,) uint32, plus 0-d metadata: simulator, box, n, slab, version
    ...
    fiducial/             the same at the fixed FIDUCIAL_THETA (covariance estimates)

A shard holds ``shard_size`` simulations (one map each for grf / lognormal, ``n_slabs``
maps for nbody). Simulation i of set s (0 = design, 1 = fiducial) uses the integer seed
``SeedSequence([base_seed, s, i]).generate_state(1)[0]`` and the key ``PRNGKey(seed)``, so a
shard's content depends only on the configuration and its index. Shards are written to a
temporary name and renamed, with fixed zip timestamps, so an interrupted run resumes to
byte-identical files and never leaves a half-written shard under a final name. A directory
whose manifest differs from the requested configuration is refused (``ValueError``); an
existing shard that cannot be read is reported, never overwritten.

Workers: ``generate_dataset(..., worker=i, workers=n)`` writes only the shards ``j`` with
``j % n == i`` (of the design set and of ``fiducial/``), so n processes on as many machines
sharing a file system fill one data set, each shard byte-identical to a one-process run. A
shard's temporary file is locked (``flock``) while it is written: a second writer of the same
shard (two workers given the same index) gets a ``ValueError``, and a stale temporary file left
by a killed writer is reused. Whichever worker (or plain rerun) finds every shard present
verifies all of them against the manifest (:func:`verify_dataset`).

Simulations are independent, so splitting them over workers scales without communication. The
particle-mesh simulator itself runs on one device: a 256^3 box (the paper's 128^2 maps with
the default 2 N particles per side) needs well under 10 GB and fits any current GPU, so jaxpm's
distributed mode (jaxdecomp's pencil-decomposed FFTs over several devices) only starts to pay
for boxes that do not fit one device's memory, about 1024^3 particles and up (~100 B per
particle: ~100 GB), or when the latency of a single box matters more than the throughput of
many.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from data_gen.cosmology import (
    FIDUCIAL_THETA,
    OMEGA_M_RANGE,
    SIGMA8_RANGE,
    check_grid,
    check_theta_box,
)
from data_gen.power import DEFAULT_BOX, DEFAULT_N, resolve_slab
from data_gen.shards import read_shard, write_shard

__all__ = [
    "SIMULATORS",
    "FORMAT_VERSION",
    "make_config",
    "design_theta",
    "theta_box",
    "sim_seeds",
    "simulate",
    "generate_dataset",
    "read_shard",
    "write_shard",
    "check_worker",
    "worker_shards",
    "verify_dataset",
]

SIMULATORS = ("grf", "lognormal", "nbody")
FORMAT_VERSION = 1


def make_config(
    simulator: str,
    n_sims: int,
    n: int = DEFAULT_N,
    box: float = DEFAULT_BOX,
    slab: float | None = None,
    nonlinear: bool = False,
    shard_size: int = 64,
    seed: int = 0,
    design: str = "sobol",
    n_fiducial: int = 0,
    n_mesh: int | None = None,
    n_steps: int = 10,
    a_init: float = 0.1,
    n_slabs: int = 4,
    omega_m_range=OMEGA_M_RANGE,
    sigma8_range=SIGMA8_RANGE,
) -> dict:
    """Validated configuration dict (the content of ``manifest.json``).

    ``omega_m_range`` x ``sigma8_range`` is the prior box the theta design covers (and the
    data set's models are trained on); it must lie in the simulators' supported range and
    hold the fiducial theta (:func:`data_gen.cosmology.check_theta_box`).
    """
    from data_gen import __version__

    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, got {simulator!r}")
    n, box = check_grid(n, box)
    for name, v, lo in (
        ("n_sims", n_sims, 1),
        ("shard_size", shard_size, 1),
        ("n_fiducial", n_fiducial, 0),
        ("seed", seed, 0),
    ):
        if isinstance(v, bool) or int(v) != v or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if design not in ("sobol", "lhs"):
        raise ValueError(f"design must be 'sobol' or 'lhs', got {design!r}")
    omega_m_range, sigma8_range = check_theta_box(omega_m_range, sigma8_range)
    cfg = {
        "format_version": FORMAT_VERSION,
        "version": __version__,
        "simulator": simulator,
        "n": n,
        "box": box,
        "n_sims": int(n_sims),
        "shard_size": int(shard_size),
        "seed": int(seed),
        "design": design,
        "n_fiducial": int(n_fiducial),
        "fiducial_theta": list(FIDUCIAL_THETA),
        "omega_m_range": omega_m_range,
        "sigma8_range": sigma8_range,
    }
    if simulator == "nbody":
        from data_gen.nbody import _check_nbody_args, default_mesh, particles_per_pixel

        n_mesh = default_mesh(n) if n_mesh is None else n_mesh
        n_mesh, box, n_steps, a_init, n_slabs, _, _ = _check_nbody_args(
            n_mesh, box, n_steps, a_init, n_slabs, n, 2
        )
        cfg.update(
            slab=box / n_slabs,
            n_mesh=n_mesh,
            n_steps=n_steps,
            a_init=a_init,
            n_slabs=n_slabs,
            lpt_order=2,
            maps_per_sim=n_slabs,
            particles_per_pixel=particles_per_pixel(n, n_mesh, n_slabs),
        )
    else:
        cfg.update(slab=resolve_slab(box, slab), nonlinear=bool(nonlinear), maps_per_sim=1)
    return cfg


def theta_box(cfg: dict | None = None) -> tuple[tuple[float, float], tuple[float, float]]:
    """The prior box ((om_lo, om_hi), (s8_lo, s8_hi)) of a data set's configuration
    (``manifest.json``); the default box for ``None`` or a manifest without one."""
    cfg = cfg or {}
    om = cfg.get("omega_m_range", OMEGA_M_RANGE)
    s8 = cfg.get("sigma8_range", SIGMA8_RANGE)
    return (float(om[0]), float(om[1])), (float(s8[0]), float(s8[1]))


def design_theta(
    n_sims: int,
    seed: int = 0,
    design: str = "sobol",
    omega_m_range=OMEGA_M_RANGE,
    sigma8_range=SIGMA8_RANGE,
) -> np.ndarray:
    """(n_sims, 2) float32 theta covering the prior box ``omega_m_range`` x ``sigma8_range``:
    scrambled Sobol or Latin hypercube.

    Sobol: the first ``n_sims`` points of the scrambled sequence. scipy's warning that only
    a power of 2 keeps its balance properties is silenced: any prefix still covers the box
    far more evenly than random draws, and the data set's manifest rebuilds the same design.
    """
    import warnings

    from scipy.stats import qmc

    if design == "sobol":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*balance properties of Sobol")
            u = qmc.Sobol(d=2, scramble=True, seed=seed).random(n_sims)
    elif design == "lhs":
        u = qmc.LatinHypercube(d=2, seed=seed).random(n_sims)
    else:
        raise ValueError(f"design must be 'sobol' or 'lhs', got {design!r}")
    lo = np.array([omega_m_range[0], sigma8_range[0]])
    hi = np.array([omega_m_range[1], sigma8_range[1]])
    return (lo + u * (hi - lo)).astype(np.float32)


def sim_seeds(base_seed: int, set_index: int, start: int, stop: int) -> np.ndarray:
    """uint32 seeds of simulations start..stop-1 of a set (0 design, 1 fiducial)."""
    return np.array(
        [
            np.random.SeedSequence([base_seed, set_index, i]).generate_state(1)[0]
            for i in range(start, stop)
        ],
        dtype=np.uint32,
    )


def simulate(cfg: dict, seeds: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Maps of the simulations with these seeds: (len(seeds) * maps_per_sim, n, n) float32."""
    keys = jax.vmap(jax.random.PRNGKey)(np.asarray(seeds, np.uint32))
    theta = np.asarray(theta, np.float32)
    sim = cfg["simulator"]
    if sim == "grf":
        from data_gen.gaussian import _grf_keys

        out = _grf_keys(keys, theta, cfg["n"], cfg["box"], cfg["slab"], cfg["nonlinear"])
    elif sim == "lognormal":
        from data_gen.lognormal import _lognormal_keys

        out = _lognormal_keys(keys, theta, cfg["n"], cfg["box"], cfg["slab"], cfg["nonlinear"])
    else:
        from data_gen.nbody import _nbody_keys

        out = _nbody_keys(
            keys,
            theta,
            cfg["n_mesh"],
            cfg["box"],
            cfg["n_steps"],
            cfg["a_init"],
            cfg["n_slabs"],
            cfg["n"],
            cfg["lpt_order"],
        )
    return np.asarray(out, np.float32).reshape(-1, cfg["n"], cfg["n"])


DERIVED_KEYS = ("particles_per_pixel",)

_WORKER_OPTIONS = ("worker", "workers")
_COMMON_OPTIONS = (
    "n",
    "box",
    "shard_size",
    "seed",
    "design",
    "n_fiducial",
    "omega_m_range",
    "sigma8_range",
)
_SIMULATOR_OPTIONS = {
    "nbody": ("n_mesh", "n_steps", "a_init", "n_slabs"),
    "grf": ("slab", "nonlinear"),
    "lognormal": ("slab", "nonlinear"),
}


def generate_options(simulator: str, options: dict) -> dict:
    """The keyword arguments of :func:`generate_dataset` for ``simulator`` among ``options``
    (e.g. ``vars()`` of parsed command-line arguments); the other simulators' are dropped."""
    keys = _COMMON_OPTIONS + _SIMULATOR_OPTIONS.get(simulator, ()) + _WORKER_OPTIONS
    return {k: options[k] for k in keys if options.get(k) is not None}


def check_worker(worker: int, workers: int) -> None:
    """ValueError unless ``0 <= worker < workers``."""
    for name, v, lo in (("workers", workers, 1), ("worker", worker, 0)):
        if isinstance(v, bool) or int(v) != v or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if worker >= workers:
        raise ValueError(
            f"worker index {worker} is out of range for {workers} workers (0..{workers - 1})"
        )


def worker_shards(n_shards: int, worker: int = 0, workers: int = 1) -> list[int]:
    """The shards worker ``worker`` of ``workers`` writes: every ``workers``-th from ``worker``."""
    check_worker(worker, workers)
    return list(range(worker, n_shards, workers))


def _check_manifest(directory: Path, cfg: dict) -> None:
    man = directory / "manifest.json"
    if man.exists():
        try:
            old = json.loads(man.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{man} is corrupt: {err}") from None
        # derived entries (recorded for the reader) follow from the others: manifests written
        # before they existed still match
        keys = (set(old) | set(cfg)) - set(DERIVED_KEYS)
        diff = sorted(k for k in keys if old.get(k) != cfg.get(k))
        if diff:
            detail = ", ".join(
                f"{k}: {old.get(k)!r} on disk vs {cfg.get(k)!r} requested" for k in diff
            )
            raise ValueError(
                f"{directory} holds a data set with another configuration ({detail}); "
                "use a new directory"
            )
        return
    directory.mkdir(parents=True, exist_ok=True)
    # one temporary name per process: workers may write the same manifest at once
    tmp = man.with_name(f"manifest.json.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, man)


def _expected(cfg: dict, thetas: np.ndarray, set_index: int, j: int) -> dict[str, np.ndarray]:
    """The per-map arrays of shard j (all but the maps) that its configuration implies."""
    size, per = cfg["shard_size"], cfg["maps_per_sim"]
    lo, hi = j * size, min((j + 1) * size, cfg["n_sims"])
    seeds = sim_seeds(cfg["seed"], set_index, lo, hi)
    return {
        "theta": np.repeat(thetas[lo:hi], per, axis=0).astype(np.float32),
        "sim_id": np.repeat(np.arange(lo, hi, dtype=np.int64), per),
        "seed": np.repeat(seeds, per),
    }


def _generate_set(
    directory: Path,
    cfg: dict,
    thetas: np.ndarray,
    set_index: int,
    progress: bool,
    desc: str,
    on_shard: Callable[[int], None] | None,
    worker: int = 0,
    workers: int = 1,
) -> None:
    from tqdm.auto import tqdm

    _check_manifest(directory, cfg)
    n_sims, size, per = cfg["n_sims"], cfg["shard_size"], cfg["maps_per_sim"]
    n_shards = -(-n_sims // size)
    mine = worker_shards(n_shards, worker, workers)
    todo = []
    for j in mine:
        path = directory / f"shard_{j:05d}.npz"
        if path.exists():
            read_shard(path, cfg["n"])  # raises on a corrupt shard: never overwritten
        else:
            todo.append(j)
    total = sum(min(size, n_sims - j * size) for j in mine)
    bar = tqdm(
        total=total,
        desc=desc if workers == 1 else f"{desc} (worker {worker}/{workers})",
        unit="sim",
        disable=not progress,
        initial=total - sum(min(size, n_sims - j * size) for j in todo),
    )
    for j in todo:
        lo, hi = j * size, min((j + 1) * size, n_sims)
        expected = _expected(cfg, thetas, set_index, j)
        maps = simulate(cfg, expected["seed"][::per], thetas[lo:hi])
        arrays = {
            "maps": maps,
            **expected,
            "simulator": np.array(cfg["simulator"]),
            "box": np.array(cfg["box"], np.float64),
            "slab": np.array(cfg["slab"], np.float64),
            "n": np.array(cfg["n"], np.int64),
            "version": np.array(cfg["version"]),
        }
        write_shard(directory / f"shard_{j:05d}.npz", arrays, overwrite=False)
        bar.update(hi - lo)
        if on_shard is not None:
            on_shard(j)
    bar.close()


def _set_arrays(cfg: dict) -> list[tuple[str, dict, np.ndarray, int]]:
    """(subdirectory, configuration, theta, set index) of the design and fiducial sets."""
    theta = design_theta(cfg["n_sims"], cfg["seed"], cfg["design"], *theta_box(cfg))
    sets = [("", cfg, theta, 0)]
    if cfg["n_fiducial"] > 0:
        fcfg = dict(cfg, n_sims=cfg["n_fiducial"], n_fiducial=0, design="fiducial")
        fth = np.tile(np.asarray(FIDUCIAL_THETA, np.float32), (cfg["n_fiducial"], 1))
        sets.append(("fiducial", fcfg, fth, 1))
    return sets


def verify_dataset(out_dir: str | os.PathLike, read: bool = True) -> dict:
    """Check a data set directory against its manifest.

    Returns ``{"complete": bool, "missing": [paths of absent shards], "n_shards": int}``;
    when complete (and ``read``), every shard has been read and its simulation ids, seeds and
    theta checked against what the manifest implies (``read=False`` only lists the files).
    ValueError for a missing or corrupt manifest, or a shard that is corrupt or belongs to
    another configuration.
    """
    out = Path(out_dir)
    man = out / "manifest.json"
    try:
        cfg = json.loads(man.read_text())
        sets = _set_arrays(cfg)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{out} has no readable data set manifest: {err}") from None
    paths = []
    for sub, scfg, thetas, set_index in sets:
        n_shards = -(-scfg["n_sims"] // scfg["shard_size"])
        paths += [
            (out / sub / f"shard_{j:05d}.npz", scfg, thetas, set_index, j) for j in range(n_shards)
        ]
    missing = [str(p[0]) for p in paths if not p[0].exists()]
    if read and not missing:
        for path, scfg, thetas, set_index, j in paths:
            data = read_shard(path, scfg["n"])
            expected = _expected(scfg, thetas, set_index, j)
            if any(not np.array_equal(data[k], v) for k, v in expected.items()):
                raise ValueError(
                    f"shard {path} does not belong to the data set of {man} (its simulation "
                    "ids, seeds or theta differ)"
                )
    return {"complete": not missing, "missing": missing, "n_shards": len(paths)}


def generate_dataset(
    out_dir: str | os.PathLike,
    simulator: str = "lognormal",
    n_sims: int = 1024,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
    worker: int = 0,
    workers: int = 1,
    **config,
) -> dict:
    """Simulate a data set into ``out_dir`` (and ``out_dir/fiducial``), resuming if present.

    ``config`` are the keyword arguments of ``make_config`` (n, box, slab, nonlinear,
    shard_size, seed, design, n_fiducial, and for nbody n_mesh, n_steps, a_init, n_slabs).
    ``worker`` of ``workers`` writes only its own shards (see the module's docstring); once
    every shard is present the whole set is verified (:func:`verify_dataset`). Returns the
    configuration. ``on_shard(j)`` is called after shard j is written.
    """
    check_worker(worker, workers)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    cfg = make_config(simulator, n_sims, **config)
    for sub, scfg, thetas, set_index in _set_arrays(cfg):
        desc = f"{simulator} {'design' if set_index == 0 else 'fiducial'}"
        callback = on_shard if set_index == 0 else None
        _generate_set(out / sub, scfg, thetas, set_index, progress, desc, callback, worker, workers)
    verify_dataset(out)  # every shard, once all are present (ValueError on a foreign one)
    return cfg
