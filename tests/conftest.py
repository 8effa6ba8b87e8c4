"""Shared test helpers: small maps, perturbed (non-identity) models, a tiny data set and run.

Compilations dominate the suite's time: they go to a persistent compilation cache for the
session (a temporary directory, or ``JAX_COMPILATION_CACHE_DIR`` when set), shared with the
subprocesses the tests start, so a function compiled again with the same shapes and
constants (a second training run of the same model, the notebooks) is loaded instead.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

# XLA's backend optimisations cost the tests' tiny maps more compile time than they save run
# time (about a third of the suite's CPU time); the tolerances asserted hold either way
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fieldflow-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
# ... and XLA's other expensive passes (about a tenth of the remaining time), here and in the
# subprocesses the tests start
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
jax.config.update("jax_disable_most_optimizations", True)
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)


def perturb(model: nnx.Module, seed: int = 0, scale: float = 0.1) -> nnx.Module:
    """Add Gaussian noise of std ``scale`` to every trainable parameter, in place."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [
        p + scale * jax.random.normal(k, p.shape, p.dtype)
        for p, k in zip(leaves, keys, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, noisy))
    return model


@pytest.fixture
def conds() -> jnp.ndarray:
    """Three conditions spread over the prior (Omega_m, sigma_8)."""
    return jnp.array([[0.3, 0.8], [0.22, 0.55], [0.48, 1.05]], dtype=jnp.float32)


# ------------------------------------------------------------------ shared flows
# Every bijection and model the tests exercise, built once per session (lazily, on first
# use) and shared by test_contract.py and the model-specific test files. Models with
# the same structure share their compiled forward / inverse / log_prob, so building each
# once keeps the compile count, which dominates these tests, low. Tests must not modify
# the shared modules.

CONDS = np.array([[0.3, 0.8], [0.22, 0.55], [0.48, 1.05]], dtype=np.float32)
ALL_SYMMETRIES = frozenset(
    {"shift(3,5)", "shift(0,1)", "shift(4,-4)", "rot90", "rot180", "rot270"}
    | {"flip_y", "flip_x", "transpose"}
)
# an anisotropic radius sqrt((1.5 k_x)^2 + k_y^2) keeps translations, rot180 and the flips
NON_RADIAL_SYMMETRIES = frozenset({"shift(3,5)", "shift(0,1)", "shift(4,-4)", "rot180"}) | {
    "flip_y",
    "flip_x",
}
# RealNVP's masks and squeezes repeat every 2**n_scales pixels (4 here, or 2); its
# couplings mix pixels strongly
REALNVP = dict(symmetries=frozenset({"shift(4,-4)"}), min_mixing=0.1)
TRENF_STANDARDISATION = dict(data_shift=-0.3, data_scale=0.8)
# two layers (a composition) of 4-bin splines: what the contract checks holds for any depth
# and bin count, and the flows' compilations (forward, inverse, log p, Jacobian, gradient)
# take about a third less time than with build_trenf's 3 layers of 8 bins
TRENF_SMALL = dict(n_layers=2, n_psi_bins=4)
REALNVP_SMALL = dict(n_couplings_per_scale=2, hidden_channels=8, n_res_blocks=1)
# a multiscale flow is invariant under shifts by multiples of 2^n_levels with an even sum
# (in units of 2^n_levels): of the maps tested, only shift(4,-4) on 8x8 maps with one level
MULTISCALE_SMALL = dict(
    coarse_layers=1,
    coarse_psi_bins=4,
    coarse_hidden=(8,),
    detail_layers=1,
    detail_bins=4,
    detail_hidden=8,
)
MULTISCALE_SMALL["unroll"] = False  # rolled coupling steps: less to compile


def rbg_rngs(seed: int = 0) -> nnx.Rngs:
    """Flax streams on the "rbg" PRNG: on CPU its initialisers compile ~10x faster than
    threefry's, which would otherwise dominate the cost of building a flow."""
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def perturb_numpy(model: nnx.Module, seed: int = 1, scale: float = 0.05) -> nnx.Module:
    """Add N(0, scale^2) noise to every parameter, in place (in numpy: nothing to compile; a
    float32 sum is the same in numpy and jax)."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)

    def noisy(p):
        return jnp.asarray(np.asarray(p) + scale * rng.standard_normal(p.shape).astype(np.float32))

    nnx.update(model, jax.tree.map(noisy, state))
    return model


def gaussian_fields(n: int, batch: int = 3, seed: int = 0) -> jnp.ndarray:
    """(batch, n, n) unit white noise."""
    return jax.random.normal(jax.random.key(seed), (batch, n, n), dtype=jnp.float32)


def contrasts(n: int, batch: int = 3, seed: int = 0) -> jnp.ndarray:
    """Positive-skewed density contrasts > -1 (a lognormal-like field), heavy upper tail."""
    return jnp.exp(0.8 * gaussian_fields(n, batch, seed) - 0.32) - 1.0


def build_trenf(n: int = 8, seed: int = 0, **kwargs) -> nnx.Module:
    """A small TRENF (3 layers, conditioner width 16), perturbed away from the identity."""
    from fieldflow import TRENF

    kwargs.setdefault("n_layers", 3)
    kwargs.setdefault("hidden", (16,))
    return perturb_numpy(TRENF((n, n), rngs=rbg_rngs(seed), **kwargs), seed=seed + 1, scale=0.1)


def build_realnvp(
    n: int = 8, n_scales: int = 2, cond_dim: int = 2, perturbed: bool = True, **kwargs
) -> nnx.Module:
    """A small RealNVP (width 8, two couplings per mask type), perturbed unless asked not."""
    from fieldflow.models.realnvp import RealNVP

    model = RealNVP(
        (n, n),
        n_scales=n_scales,
        cond_dim=cond_dim,
        data_shift=0.1,
        data_scale=0.7,
        rngs=rbg_rngs(0),
        **REALNVP_SMALL,
        **kwargs,
    )
    return perturb_numpy(model) if perturbed else model


def build_fourier_conv(n: int, cond_dim: int, radial: bool = True) -> nnx.Module:
    from fieldflow.layers import FourierConv

    conv = FourierConv(n, n_knots=6, cond_dim=cond_dim, hidden=(8,), radial=radial, rngs=rbg_rngs())
    return perturb_numpy(conv, seed=0, scale=0.3)


def build_pointwise_spline(n: int, cond_dim: int) -> nnx.Module:
    from fieldflow.layers import PointwiseSpline

    spline = PointwiseSpline(
        n, n_bins=5, bound=2.0, cond_dim=cond_dim, hidden=(8,), rngs=rbg_rngs()
    )
    return perturb_numpy(spline, seed=0, scale=0.5)


def build_multiscale(n: int = 8, **kwargs) -> nnx.Module:
    """A small multiscale flow (one Haar level, tiny widths), perturbed away from the identity."""
    from fieldflow.models.multiscale import MultiscaleFlow

    model = MultiscaleFlow((n, n), hidden=(8,), rngs=rbg_rngs(0), **MULTISCALE_SMALL, **kwargs)
    return perturb_numpy(model, seed=2, scale=0.1)


@dataclass(frozen=True)
class FlowSpec:
    """A bijection or model under test and what it claims.

    ``symmetries``: the lattice maps (names in ALL_SYMMETRIES) under which log p is
    invariant and z equivariant; it must NOT be invariant under the others.
    ``pointwise``: its Jacobian is diagonal; else some off-diagonal entry exceeds
    ``min_mixing`` (it mixes pixels).
    ``control``: a deliberately non-equivariant variant, checked only for its symmetries.
    """

    build: Callable[[], nnx.Module]
    n: int = 8
    cond_dim: int = 2
    is_model: bool = True
    symmetries: frozenset = ALL_SYMMETRIES
    log_offset: float | None = None
    pointwise: bool = False
    min_mixing: float = 1e-2
    control: bool = False


@dataclass
class Flow:
    """A built :class:`FlowSpec`: the module, its test inputs and its log density."""

    name: str
    spec: FlowSpec
    module: nnx.Module

    def cond(self, batch: int = 3) -> jnp.ndarray | None:
        return jnp.asarray(CONDS[:batch]) if self.spec.cond_dim else None

    def fields(self, batch: int = 3, seed: int = 0) -> jnp.ndarray:
        """Inputs in the flow's support: contrasts > -1 with a log transform, else 1.5 N(0, 1)."""
        if self.spec.log_offset is not None:
            return contrasts(self.spec.n, batch, seed)
        return 1.5 * gaussian_fields(self.spec.n, batch, seed)

    def log_p(self, x, cond) -> jnp.ndarray:
        """log p(x | cond): the model's, or log N(z; 0, I) + logdet for a single layer."""
        if self.spec.is_model:
            return self.module.log_prob(x, cond)
        from fieldflow.models.base import standard_normal_logpdf

        z, logdet = self.module.forward(x, cond)
        return standard_normal_logpdf(z) + logdet


def _layer_specs() -> dict[str, FlowSpec]:
    specs = {}
    for n in (8, 9):
        for label, cond_dim in (("free", 0), ("mlp", 2)):
            specs[f"fourier_conv_{n}_{label}"] = FlowSpec(
                functools.partial(build_fourier_conv, n, cond_dim), n, cond_dim, False
            )
            specs[f"pointwise_spline_{n}_{label}"] = FlowSpec(
                functools.partial(build_pointwise_spline, n, cond_dim),
                n,
                cond_dim,
                False,
                pointwise=True,
            )
    specs["fourier_conv_non_radial"] = FlowSpec(
        functools.partial(build_fourier_conv, 8, 0, radial=False),
        cond_dim=0,
        is_model=False,
        symmetries=NON_RADIAL_SYMMETRIES,
    )
    return specs


FLOW_SPECS: dict[str, FlowSpec] = {
    **_layer_specs(),
    # "trenf" and "trenf_log_offset" have the same parameters; so have all RealNVPs with the
    # same n_scales and cond_dim (the parameters do not depend on N)
    "trenf": FlowSpec(functools.partial(build_trenf, 8, **TRENF_SMALL, **TRENF_STANDARDISATION)),
    "trenf_log_offset": FlowSpec(
        functools.partial(build_trenf, 8, log_offset=0.01, **TRENF_SMALL, **TRENF_STANDARDISATION),
        log_offset=0.01,
    ),
    "trenf_9_unconditional": FlowSpec(
        functools.partial(
            build_trenf, 9, cond_dim=0, data_shift=0.1, data_scale=1.3, **TRENF_SMALL
        ),
        n=9,
        cond_dim=0,
    ),
    "trenf_non_radial": FlowSpec(
        functools.partial(build_trenf, 8, radial=False, **TRENF_SMALL),
        symmetries=NON_RADIAL_SYMMETRIES,
        control=True,
    ),
    "realnvp": FlowSpec(build_realnvp, **REALNVP),
    "realnvp_1_scale_unconditional": FlowSpec(
        functools.partial(build_realnvp, n_scales=1, cond_dim=0), cond_dim=0, **REALNVP
    ),
    "multiscale": FlowSpec(
        functools.partial(
            build_multiscale, log_offset=0.01, prefix_layers=1, **TRENF_STANDARDISATION
        ),
        log_offset=0.01,
        symmetries=frozenset({"shift(4,-4)"}),
    ),
}


class FlowZoo:
    """``zoo[name]`` builds the flow of FLOW_SPECS[name] on first use, then reuses it."""

    def __init__(self):
        self._built: dict[str, Flow] = {}

    def __getitem__(self, name: str) -> Flow:
        if name not in self._built:
            spec = FLOW_SPECS[name]
            self._built[name] = Flow(name, spec, spec.build())
        return self._built[name]


@pytest.fixture(scope="session")
def flows() -> FlowZoo:
    """The session's shared flows (see FLOW_SPECS)."""
    return FlowZoo()


# ------------------------------------------------------- shared tiny data set and run
# One lognormal data set and one TRENF trained on it serve the command-line examples, the
# evaluation tests and the notebooks (notebooks/_setup.py's FIELDFLOW_TINY data set and
# model are the same, so a tiny notebook run on its own builds the same kind of run).
TINY_DATA = dict(n=16, box=64.0, n_fiducial=16, shard_size=64, seed=0)
TINY_N_SIMS = 32  # split 26 / 3 / 3 by simulation
# `fieldflow train` options of the tiny run: the training of a tiny `fieldflow quickstart`
# (--steps 20 --layers 2 --hidden 16). test_cli gives them to the train examples, so that
# they and the quickstart compile what the run compiled (the compilation cache has it).
CONCAVE_RUN = pytest.mark.xdist_group("concave_run")
# where the tests calibrate the concave run: two interior points of the prior
CALIBRATION_THETA = ["--theta", "0.275", "0.65", "--theta", "0.425", "0.95"]

TINY_TRAIN_OPTIONS = {
    "--steps": ["20"],
    "--layers": ["2"],
    "--hidden": ["16"],
    "--lr": ["3e-3"],
    "--warmup": ["2"],
    "--eval-every": ["2"],
    "--checkpoint-every": ["20"],
    "--patience": ["0"],
}


@contextlib.contextmanager
def built_once(tmp_path_factory, name: str):
    """Yield ``(path, done)`` under an exclusive lock shared by the xdist workers: the first
    worker builds ``path`` (``done`` False) and the others, waiting on the lock, find it
    built (``done`` True), so the shared data set and runs are built once per session."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' common directory
    path, marker = root / "shared" / name, root / "shared" / f"{name}.built"
    path.parent.mkdir(exist_ok=True)
    with open(root / "shared" / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path, marker.exists()
        marker.touch()


def train_tiny(tmp_path_factory, data_dir, name: str, options: dict[str, list[str]]):
    """``fieldflow train DATA shared/NAME`` with ``options``, once per session."""
    from fieldflow.commands import run_command

    with built_once(tmp_path_factory, name) as (path, done):
        if not done:
            argv = [w for option, values in options.items() for w in [option, *values]]
            run_command("train", [data_dir, path, *argv, "--no-progress"])
    return path


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A lognormal data set of 32 maps of 16 x 16 (box 64 h^-1 Mpc) and 16 fiducial maps."""
    from fieldflow.workflows import ensure_dataset

    with built_once(tmp_path_factory, "lognormal_n16") as (path, done):
        if not done:
            ensure_dataset(path, "lognormal", TINY_N_SIMS, progress=False, **TINY_DATA)
    return path


@pytest.fixture(scope="session")
def tiny_run_dir(tiny_data_dir, tmp_path_factory):
    """A conditional TRENF (2 layers, conditioner width 16) trained for 20 steps on the tiny
    data set."""
    return train_tiny(tmp_path_factory, tiny_data_dir, "trenf_n16", TINY_TRAIN_OPTIONS)


@pytest.fixture(scope="session")
def concave_run_dir(tiny_data_dir, tmp_path_factory):
    """The tiny run trained long enough (50 steps, learning rate 1e-2) for its log-likelihood
    to be concave in theta at the interior calibration points (``CALIBRATION_THETA``): what
    ``fieldflow calibrate`` needs. Its users share the xdist group ``CONCAVE_RUN``."""
    options = {**TINY_TRAIN_OPTIONS, "--steps": ["50"], "--lr": ["1e-2"]}
    options.update({"--checkpoint-every": ["50"], "--eval-every": ["25"]})
    return train_tiny(tmp_path_factory, tiny_data_dir, "trenf_n16_concave", options)
