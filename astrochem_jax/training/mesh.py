"""The one place where a `jax.sharding.Mesh` is built, plus the shardings the loop uses.

Data parallelism only: a 1-D mesh with axis `data` over all devices (or a given device list).
Train state and device-resident data are replicated (`P()`), batches are split over `data`.

Multi-host (several processes, e.g. one per GPU node): set `config.distributed = True` and start the
same command on every host with the coordinator's address in the environment, e.g.

    # on each of N hosts (process id i = 0 .. N-1)
    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i \
        python -m astrochem_jax.train --config=configs/components/autoencoder_grav_large.py \
        --config.distributed=True

(on SLURM / TPU pods `jax.distributed.initialize()` discovers these by itself). Every process then
reads only its share of the preprocessed shards (`process_shards`) and the global batch is assembled
from the per-process parts (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

from collections.abc import Sequence

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


def initialize_distributed(enabled: bool) -> None:
    """`jax.distributed.initialize()` once, when the config asks for multi-host training."""
    if not enabled:
        return
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize()


def process_shards(n_shards: int) -> list[int]:
    """Indices of the shards this process reads (round robin over processes)."""
    return [k for k in range(n_shards) if k % jax.process_count() == jax.process_index()]
