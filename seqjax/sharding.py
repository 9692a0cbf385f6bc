"""Data (and optional model) parallelism over a ``jax.sharding.Mesh``; multi-host start-up;
JAX's persistent compilation cache.

seqjax runs on JAX's own distributed runtime: ``jax.jit`` with ``NamedSharding`` (no
``pmap``), ``jax.distributed.initialize()`` for several hosts. The mesh always has two
axes, ``("data", "model")``:

- batches are split along ``data`` (rows; each device gets ``rows / data``),
- parameters and optimizer state are replicated, or, when ``model > 1``, the big
  matrices are split along ``model`` on one of their dimensions (GSPMD inserts the
  collectives; results do not change, only where the work runs).

A mesh spec is a string: ``"auto"`` (every device on ``data``), ``"data=8"``,
``"data=4,model=2"``; the axis sizes must multiply to the number of devices.

Multi-host: every process runs the same program. Each process builds only its own rows
of every global batch (``local_rows``), and ``shard_local_rows`` assembles the global
array with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax.config import ConfigError

DATA, MODEL = "data", "model"
AXES = (DATA, MODEL)

# A parameter is split along ``model`` only when it has at least this many elements
# (embedding tables, attention and feed-forward matrices); small ones stay replicated.
MIN_MODEL_SHARD_SIZE = 1 << 16


class MeshError(ConfigError):
    """A bad ``--mesh`` spec; the message names the flag and the device count."""


def parse_mesh_spec(spec: str, *, flag: str = "--mesh") -> dict[str, int]:
    """``"data=4,model=2"`` -> ``{"data": 4, "model": 2}``; ``"auto"`` (or ``""``) -> ``{}``."""
    text = spec.strip().lower()
    if text in ("", "auto"):
        return {}
    sizes: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if not sep or name not in AXES or name in sizes:
            raise MeshError(f"{flag} {spec!r}: use auto, data=N or data=N,model=M (each axis once)")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise MeshError(
                f"{flag} {spec!r}: {name} size {value.strip()!r} is not an integer"
            ) from None
        if sizes[name] < 1:
            raise MeshError(f"{flag} {spec!r}: {name} size must be >= 1")
    return sizes


def make_mesh(
    spec: str = "auto", devices: Sequence[jax.Device] | None = None, *, flag: str = "--mesh"
) -> Mesh:
    """A ``("data", "model")`` mesh over ``devices`` (default: every device of every process).

    ``"auto"`` puts every device on ``data``; ``"data=N"`` alone must use them all;
    ``"model=M"`` alone gives ``data = devices / M``. Raises ``MeshError`` (one line,
    naming ``flag`` and the device count) when the sizes do not fit.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = parse_mesh_spec(spec, flag=flag)
    model = sizes.get(MODEL, 1)
    if DATA not in sizes and n % model == 0:
        sizes[DATA] = n // model
    data = sizes.get(DATA, 1)
    if data * model != n:
        raise MeshError(
            f"{flag} {spec!r} asks for data={data} x model={model} = {data * model} devices, "
            f"but {n} device(s) are available (jax.devices()); the axis sizes must multiply "
            f"to {n}, or use --mesh auto"
        )
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh((data, model), devices)
    except Exception:  # unusual topologies: plain row-major order
        grid = np.asarray(devices, dtype=object).reshape(data, model)
    return Mesh(grid, AXES)


def data_size(mesh: Mesh | None) -> int:
    """Devices along ``data`` (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape[DATA])


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (row) axis split along ``data``; other axes whole."""
    return NamedSharding(mesh, P(DATA))


def _param_spec(shape: tuple[int, ...], model: int) -> P:
    if model == 1 or len(shape) < 2 or math.prod(shape) < MIN_MODEL_SHARD_SIZE:
        return P()
    # The largest dimension the model axis divides (the vocabulary for embedding
    # tables, d_ff or d_model for the matrices); ties go to the last one.
    best = None
    for axis, size in enumerate(shape):
        if size % model == 0 and (best is None or size >= shape[best]):
            best = axis
    if best is None:
        return P()
    return P(*([None] * best), MODEL)


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """A ``NamedSharding`` per leaf: replicated, or split along ``model`` for big matrices."""
    model = int(mesh.shape[MODEL])
    return jax.tree.map(lambda x: NamedSharding(mesh, _param_spec(np.shape(x), model)), params)


def _global_array(x: Any, sharding: NamedSharding) -> jax.Array:
    """``x`` (the same full value on every process) laid out with ``sharding``."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _global_array(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and x.is_fully_addressable and sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def place_params(tree: Any, mesh: Mesh) -> Any:
    """Params (or optimizer state) on ``mesh``: replicated, big matrices split on ``model``."""
    return jax.tree.map(_global_array, tree, param_shardings(tree, mesh))


def place_replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda x: _global_array(x, replicated(mesh)), tree)


def padded_rows(rows: int, mesh: Mesh | None) -> int:
    """``rows`` rounded up to a multiple of the ``data`` axis (and of the process count)."""
    m = math.lcm(data_size(mesh), jax.process_count())
    return -(-rows // m) * m


def pad_rows(x_RxL: np.ndarray, rows: int, fill: int | float) -> np.ndarray:
    """``x`` with ``fill`` rows appended up to ``rows`` (no copy when already that tall)."""
    extra = rows - x_RxL.shape[0]
    if extra < 0:
        raise ValueError(f"{x_RxL.shape[0]} rows do not fit in {rows}")
    if extra == 0:
        return x_RxL
    pad = np.full((extra, *x_RxL.shape[1:]), fill, dtype=x_RxL.dtype)
    return np.concatenate([x_RxL, pad], axis=0)


def local_rows(global_rows: int, process_index: int, process_count: int) -> slice:
    """This process's contiguous slice of a global batch of ``global_rows`` rows."""
    if global_rows % process_count:
        raise ValueError(f"{global_rows} rows do not split over {process_count} processes")
    per = global_rows // process_count
    return slice(process_index * per, (process_index + 1) * per)


def shard_rows(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """A batch held whole by every process, split along ``data`` (rows must divide evenly)."""
    sharding = batch_sharding(mesh)
    return {k: _global_array(np.asarray(v), sharding) for k, v in batch.items()}


def shard_local_rows(
    local: Mapping[str, np.ndarray], mesh: Mesh, global_rows: int
) -> dict[str, jax.Array]:
    """Global row-sharded arrays from this process's rows (``local_rows`` of the batch)."""
    sharding = batch_sharding(mesh)
    out = {}
    for k, v in local.items():
        shape = (global_rows, *np.shape(v)[1:])
        out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v), shape)
    return out


def to_host(x: jax.Array) -> np.ndarray:
    """The full value of ``x`` on this host (gathered across processes when needed)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def is_primary() -> bool:
    """True on the process that writes logs, metrics and run files (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across processes (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (host clocks differ; decisions must not)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


# --------------------------------------------------------------------------- multi-host

# The variables a launcher sets for every process (same values, except the process id).
DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
# Clusters that jax.distributed.initialize() detects by itself (Slurm, Open MPI, TPU pods).
_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")

_initialized = False

# How long a process that has finished waits at JAX's shutdown barrier for the others. After
# training, process 0 alone reports and evaluates the test set while the others exit: with
# JAX's default (300 s) a long evaluation, or a loaded machine, ended the whole job in a
# failed barrier after all its work. A process that dies is still noticed at once (the
# coordination service's heartbeats), so waiting long costs nothing on failure.
SHUTDOWN_TIMEOUT_S = 6 * 3600

# JAX writes each op's whole Python call stack into the compiled program, so two processes
# whose call stacks differ compile different programs, and under jax 0.12.1 a collective
# called from two lines of the same function (process 0 after taking the run's lock,
# the others at once) waited forever on CPU. Only the innermost frame is kept instead, the
# same on every process (session 35: the two-process locked-run test hung without this).
_TRACEBACKS_FLAG = "jax_include_full_tracebacks_in_locations"


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Call ``jax.distributed.initialize()`` when a multi-process launch is configured.

    Explicit: ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID`` (passed through; a partial set is an error). Otherwise, with
    ``SEQJAX_DISTRIBUTED=1``, JAX's own cluster auto-detection (Slurm, Open MPI, TPU) is
    used. Returns True if the runtime was (or already had been) initialized. Must run
    before anything touches a device. A multi-process job also stops JAX from writing
    whole call stacks into its programs (``jax_include_full_tracebacks_in_locations``),
    so that every process compiles the same program for a collective wherever it calls it.
    """
    global _initialized
    env = os.environ if env is None else env
    present = [k for k in DISTRIBUTED_ENV if env.get(k)]
    if _initialized:
        return True
    if present:
        missing = [k for k in DISTRIBUTED_ENV if k not in present]
        if missing:
            raise ConfigError(
                f"multi-host launch: {', '.join(present)} set but {', '.join(missing)} "
                "missing; set all three (same coordinator and count on every host)"
            )
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
            shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
        )
    elif env.get("SEQJAX_DISTRIBUTED") == "1" and any(env.get(k) for k in _CLUSTER_ENV):
        jax.distributed.initialize(shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    else:
        return False
    jax.config.update(_TRACEBACKS_FLAG, False)
    _initialized = True
    return True


# --------------------------------------------------------------------------- compile cache


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$SEQJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/seqjax/jax``, else ``~/.cache/seqjax/jax``."""
    env = os.environ if env is None else env
    if env.get("SEQJAX_CACHE_DIR"):
        return Path(env["SEQJAX_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seqjax" / "jax"


def enable_compile_cache(
    cache_dir: str | Path | None = None, *, min_compile_secs: float = 0.1
) -> Path | None:
    """Turn on JAX's persistent compilation cache; returns its directory, or None if off.

    Off when ``SEQJAX_NO_COMPILE_CACHE=1``. Programs that took at least
    ``min_compile_secs`` to compile (every decoder and train step) are written there
    and reused by the next process with the same program, JAX version and device.
    """
    if os.environ.get("SEQJAX_NO_COMPILE_CACHE", "") not in ("", "0"):
        return None
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def compile_cache_dir() -> Path | None:
    """The persistent compile cache directory in use, or None when the cache is off.

    Things derived once and reusable by the next process (``seqjax.app.export_cache``'s
    lowered decoders, ``run_dir.param_target``'s shapes) are kept in folders of it.
    """
    path = jax.config.jax_compilation_cache_dir
    return Path(path) if path else None
