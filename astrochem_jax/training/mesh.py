"""The one place where a `jax.sharding.Mesh` is built, plus the shardings the loop uses.

Data parallelism only: a 1-D mesh with axis `data` over all devices (or a given device list).
Train state and device-resident data are replicated (`P()`), batches are split over `data`.

Multi-host (several processes, e.g. one per GPU node): set `config.distributed = True` and start the
same command on every host with the coordinator's address in the environment:

    # on each of N hosts (process id i = 0 .. N-1)
    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i \
        python -m astrochem_jax.train --config=configs/components/autoencoder_grav_large.py \
        --config.distributed=True

`initialize_distributed` reads those variables (and `JAX_LOCAL_DEVICE_IDS`, comma-separated, when
a host runs one process per accelerator) and passes them to `jax.distributed.initialize`; without
them JAX's cluster auto-detection (SLURM, Open MPI, TPU pods, ...) fills them in. CPU processes
use gloo collectives. The mesh then spans every process's devices; each process reads only the
rows of the preprocessed shards that live on its own devices (`process_rows`) and the global
arrays are assembled from the per-process parts (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named `data` over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: empty device list")
    return Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of the train state and device-resident data: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, ndim: int = 1, axis: int = 0) -> NamedSharding:
    """Sharding of a batch: dimension `axis` split over the `data` axis, the rest replicated."""
    spec = [None] * ndim
    spec[axis] = DATA_AXIS
    return NamedSharding(mesh, P(*spec))


def n_data_shards(mesh: Mesh) -> int:
    return int(mesh.shape[DATA_AXIS])


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
    """The global batch is split evenly over the devices; refuse sizes that do not divide."""
    from astrochem_jax.config_utils import ConfigError

    n = n_data_shards(mesh)
    if batch_size < 1 or batch_size % n != 0:
        raise ConfigError(
            f"config.{field} = {batch_size} is not divisible by the number of devices ({n}): "
            f"the global batch is split evenly over the mesh axis {DATA_AXIS!r}; choose a multiple "
            f"of {n}, e.g. {max(n, (batch_size // n) * n)} (--config.{field}=...)"
        )


COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
LOCAL_DEVICE_IDS_ENV = "JAX_LOCAL_DEVICE_IDS"


def distributed_settings(environ: Mapping[str, str] | None = None) -> dict:
    """Keyword arguments of `jax.distributed.initialize` from the environment (empty: let JAX's
    cluster auto-detection find them). A partial set is refused: it would hang at the
    coordinator waiting for processes that never come."""
    env = os.environ if environ is None else environ
    names = (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)
    present = [n for n in names if env.get(n)]
    out: dict = {}
    if present and len(present) != len(names):
        missing = [n for n in names if n not in present]
        raise ValueError(
            f"config.distributed = True: environment variables {present} are set but {missing} "
            f"are not; set all of {list(names)} (or none, for cluster auto-detection)")
    if present:
        try:
            out = {"coordinator_address": env[COORDINATOR_ENV],
                   "num_processes": int(env[NUM_PROCESSES_ENV]),
                   "process_id": int(env[PROCESS_ID_ENV])}
        except ValueError as err:
            raise ValueError(f"{NUM_PROCESSES_ENV} / {PROCESS_ID_ENV} must be integers, found "
                             f"{env[NUM_PROCESSES_ENV]!r} / {env[PROCESS_ID_ENV]!r}") from err
        if not 0 <= out["process_id"] < out["num_processes"]:
            raise ValueError(f"{PROCESS_ID_ENV} = {out['process_id']} is not in 0 .. "
                             f"{NUM_PROCESSES_ENV} - 1 = {out['num_processes'] - 1}")
    if env.get(LOCAL_DEVICE_IDS_ENV):
        out["local_device_ids"] = [int(v) for v in env[LOCAL_DEVICE_IDS_ENV].split(",")]
    return out


def initialize_distributed(enabled: bool) -> None:
    """`jax.distributed.initialize(...)` once, when the config asks for multi-host training, with
    the settings of `distributed_settings()`. Must run before JAX's first backend use. CPU
    processes exchange their collectives through gloo (harmless for GPU / TPU backends)."""
    if not enabled or jax.distributed.is_initialized():
        return
    settings = distributed_settings()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**settings)


def is_main_process() -> bool:
    """Process 0 writes every artifact (config, metrics, summary, latents, event files)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def process_rows(mesh: Mesh, n_rows: int) -> tuple[int, int]:
    """Rows [start, stop) of an array [n_rows, ...] sharded over `data` that live on this
    process's devices (contiguous: the mesh lists each process's devices together)."""
    index_map = batch_sharded(mesh, 1).addressable_devices_indices_map((n_rows,))
    bounds = sorted({(s[0].start or 0, n_rows if s[0].stop is None else s[0].stop)
                     for s in index_map.values()})
    for (_, stop), (start, _) in zip(bounds[:-1], bounds[1:], strict=True):
        if stop != start:
            raise ValueError(f"process {jax.process_index()}: its devices hold rows {bounds} of "
                             "the data axis, not one contiguous block; order the mesh's devices "
                             "by process")
    return bounds[0][0], bounds[-1][1]


def put_replicated(tree, mesh: Mesh):
    """Host values (numpy, Python scalars, single-device arrays; identical on every process) ->
    global arrays replicated over the mesh. Works on one process and on several."""
    sharding = replicated(mesh)

    def put(leaf):
        host = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def fetch(tree):
    """Global arrays that are replicated (or fully addressable) -> numpy, on every process."""
    def get(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(leaf)

    return jax.tree.map(get, jax.device_get(tree) if jax.process_count() == 1 else tree)


def local_mesh() -> Mesh:
    """A 1-D `data` mesh over this process's own devices (inference: surrogates)."""
    return make_mesh(jax.local_devices())
