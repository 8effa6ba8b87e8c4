"""Training across processes with JAX's own distributed runtime.

One process per machine (or per accelerator) joins a coordinator with
``jax.distributed.initialize``; ``jax.devices()`` then lists the devices of every process and
one global mesh over them carries the data-parallel training of ``fieldflow.train.fit``:
parameters replicated, each global batch split along the ``"data"`` axis, gradients averaged
by XLA's cross-process all-reduce. Every process computes the same batch indices from
``(seed, step)`` and reads only the rows that land on its own devices
(:func:`put_rows`), so a run with P processes follows the trajectory of a one-process run with
the same global batch and seed (to float32 round-off). Checkpoints are written once, by orbax's
multi-process support (the primary process writes the JSON bookkeeping and one replica of each
array); they hold whole arrays, so a run resumes with any number of processes.

The settings come from flags or from the variables ``jax.distributed.initialize`` reads::

    JAX_COORDINATOR_ADDRESS=host0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \\
        fieldflow train data/ln32 runs/trenf --distributed       # on host0
    JAX_COORDINATOR_ADDRESS=host0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 \\
        fieldflow train data/ln32 runs/trenf --distributed       # on host1

:func:`launch_local` starts such a group on one machine (tests, benchmarks).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import time
from collections.abc import Sequence

import numpy as np

__all__ = [
    "ENV_VARS",
    "DistributedConfig",
    "resolve_config",
    "initialize",
    "add_arguments",
    "setup_from_args",
    "is_primary",
    "check_global_batch",
    "batch_shardings",
    "put_rows",
    "free_port",
    "launch_local",
]

ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
DEFAULT_TIMEOUT_S = 60


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where the coordinator listens (``host:port``), how many processes join, which one this
    is, and how long to wait for the others (seconds)."""

    coordinator: str
    num_processes: int
    process_id: int
    timeout_s: int = DEFAULT_TIMEOUT_S

    def __post_init__(self):
        host, sep, port = self.coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"coordinator address must be HOST:PORT, got {self.coordinator!r}")
        if self.num_processes < 1:
            raise ValueError(f"number of processes must be >= 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"process id {self.process_id} is out of range for {self.num_processes} "
                f"processes (0..{self.num_processes - 1})"
            )
        if self.timeout_s < 1:
            raise ValueError(f"timeout must be >= 1 s, got {self.timeout_s}")


def _env_int(name: str, env) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def resolve_config(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = DEFAULT_TIMEOUT_S,
    env=None,
) -> DistributedConfig:
    """The settings of this process: each argument, or when None its variable in ``env``
    (default ``os.environ``): ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``. ValueError naming what is missing or wrong."""
    env = os.environ if env is None else env
    values = {
        "JAX_COORDINATOR_ADDRESS": coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None,
        "JAX_NUM_PROCESSES": num_processes
        if num_processes is not None
        else _env_int("JAX_NUM_PROCESSES", env),
        "JAX_PROCESS_ID": process_id if process_id is not None else _env_int("JAX_PROCESS_ID", env),
    }
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ValueError(
            "distributed training needs a coordinator address, a number of processes and a "
            f"process id: set {', '.join(missing)} or pass --coordinator / --num-processes / "
            "--process-id"
        )
    return DistributedConfig(
        str(values["JAX_COORDINATOR_ADDRESS"]),
        int(values["JAX_NUM_PROCESSES"]),
        int(values["JAX_PROCESS_ID"]),
        int(timeout_s),
    )


def initialize(config: DistributedConfig) -> None:
    """Join the group (``jax.distributed.initialize``), before anything else uses jax.

    A group of one process needs no runtime and starts none, nor does a process that has
    joined already. ValueError when the coordinator cannot be reached (or its port is taken)
    within ``config.timeout_s``; once reached, the runtime itself waits up to that long for
    the other processes (and ends this one if they do not come).
    """
    import jax

    if config.num_processes == 1 or jax.distributed.is_initialized():
        return
    # the runtime aborts the whole process (no exception) when it cannot reach the
    # coordinator: check the address first, so that a wrong one is a clear error
    host, _, port = config.coordinator.rpartition(":")
    if config.process_id == 0:
        _check_bindable(int(port), config.coordinator)
    else:
        _wait_for_coordinator(host.strip("[]"), int(port), config)
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator,
            num_processes=config.num_processes,
            process_id=config.process_id,
            initialization_timeout=config.timeout_s,
        )
    except Exception as err:  # the runtime raises XlaRuntimeError / RuntimeError
        message = " ".join(str(err).split())[:300]
        raise ValueError(
            f"process {config.process_id} of {config.num_processes} could not join the "
            f"coordinator at {config.coordinator} within {config.timeout_s} s (is process 0 "
            f"running there, and the port open?): {message}"
        ) from None


def _check_bindable(port: int, address: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a listener still blocks it
        try:
            s.bind(("", port))
        except OSError as err:
            raise ValueError(
                f"process 0 cannot start the coordinator at {address}: port {port} is not "
                f"free ({err.strerror})"
            ) from None


def _wait_for_coordinator(host: str, port: int, config: DistributedConfig) -> None:
    deadline = time.monotonic() + config.timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise ValueError(
                    f"process {config.process_id} of {config.num_processes} could not reach the "
                    f"coordinator at {config.coordinator} within {config.timeout_s} s (is "
                    f"process 0 running there, and the port open?): {err}"
                ) from None
            time.sleep(0.2)  # process 0 may still be starting


def add_arguments(parser) -> None:
    """The ``--distributed`` options of a subcommand (``fieldflow train``)."""
    group = parser.add_argument_group(
        "multi-process training", "one process per machine; see fieldflow.distributed"
    )
    group.add_argument(
        "--distributed",
        action="store_true",
        help="join a group of processes (jax.distributed) and train on one global mesh",
    )
    group.add_argument(
        "--coordinator", default=None, metavar="HOST:PORT", help="default $JAX_COORDINATOR_ADDRESS"
    )
    group.add_argument("--num-processes", type=int, default=None, help="default $JAX_NUM_PROCESSES")
    group.add_argument("--process-id", type=int, default=None, help="default $JAX_PROCESS_ID")
    group.add_argument(
        "--distributed-timeout",
        type=int,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="seconds to wait for the coordinator and the other processes",
    )


def setup_from_args(args) -> DistributedConfig | None:
    """Join the group the parsed ``--distributed`` options describe (None without the flag)."""
    if not getattr(args, "distributed", False):
        return None
    config = resolve_config(
        args.coordinator, args.num_processes, args.process_id, args.distributed_timeout
    )
    initialize(config)
    return config


def is_primary() -> bool:
    """Whether this process writes the run's plain files (process 0; always on one machine)."""
    import jax

    return jax.process_index() == 0


def check_global_batch(batch_size: int, n_devices: int, n_processes: int) -> None:
    """ValueError unless the global batch splits evenly over the devices of every process."""
    if batch_size % n_devices:
        raise ValueError(
            f"the global batch size {batch_size} must be a multiple of the {n_devices} devices "
            f"of the {n_processes} processes (each process reads an equal part of every batch)"
        )


def batch_shardings(batch_size: int, data_parallel: bool = True) -> tuple:
    """``(batch_sharding, replicated)`` over one mesh of every process's devices, or
    ``(None, None)`` to train on one device.

    One process: the mesh is used when ``data_parallel`` and the batch splits evenly over
    its devices (else one device, as before). Several processes: the mesh is required;
    ValueError when ``data_parallel`` is off or the batch does not split evenly.
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()
    if jax.process_count() > 1:
        if not data_parallel:
            raise ValueError("training across processes needs data_parallel=True")
        check_global_batch(batch_size, len(devices), jax.process_count())
    elif not (data_parallel and len(devices) > 1 and batch_size % len(devices) == 0):
        return None, None
    mesh = Mesh(np.array(devices), ("data",))
    return NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


def put_rows(array: np.ndarray, idx: np.ndarray | None, sharding=None):
    """``array[idx]`` (``idx`` None: all rows) as one global array split by ``sharding``.

    Each process gathers only the rows its own devices hold, so no process reads a whole
    global batch; without a sharding the rows are returned as a host array.
    """
    import jax

    rows = np.arange(len(array)) if idx is None else np.asarray(idx)
    if sharding is None:
        return array[rows]
    shape = (len(rows), *array.shape[1:])
    return jax.make_array_from_callback(shape, sharding, lambda index: array[rows[index[0]]])


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def launch_local(
    argv: Sequence[str],
    num_processes: int,
    *,
    env: dict | None = None,
    timeout_s: float | None = None,
    port: int | None = None,
) -> list[subprocess.CompletedProcess]:
    """Run ``argv`` (e.g. ``[sys.executable, "-m", "fieldflow.cli", "train", ...,
    "--distributed"]``) as ``num_processes`` local processes of one group: each gets
    ``JAX_COORDINATOR_ADDRESS`` (localhost, a free port), ``JAX_NUM_PROCESSES`` and its
    ``JAX_PROCESS_ID``. Returns their completed processes (stdout and stderr as text), in
    process order; a process still running after ``timeout_s`` is killed (return code -9)."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    address = f"localhost:{port or free_port()}"
    base = {**os.environ, **(env or {})}
    procs = []
    for pid in range(num_processes):
        penv = {
            **base,
            "JAX_COORDINATOR_ADDRESS": address,
            "JAX_NUM_PROCESSES": str(num_processes),
            "JAX_PROCESS_ID": str(pid),
        }
        procs.append(
            subprocess.Popen(
                list(argv), env=penv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results
