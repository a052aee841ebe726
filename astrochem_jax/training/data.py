"""Getting preprocessed splits onto the devices and cutting batches there.

Device-resident mode (the split fits under `config.device_resident_max_mb`): the whole split is put
on the devices once (replicated), and each training step slices its batch on device from a
per-epoch permutation that also lives on device: no host -> device copy per step.

Streaming mode (larger splits): the same code over one shard at a time ("chunks"); each shard is
put on device once per epoch, the shard order is reshuffled every epoch, and the remainder of a
shard that does not fill a whole batch is dropped for that epoch.

Multi-host (device-resident only, not yet run on real hosts): each process reads its share of the
shards (`mesh.process_shards`) and the per-process arrays become one global array sharded over
`data` (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from astrochem_jax import shards
from astrochem_jax.training import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """How to read one split: `chunks()` yields host float32 arrays along axis 0.

    resident: the whole split is one chunk that stays on device for the whole run.
    """

    directory: Path
    split: str
    shape: tuple[int, ...]
    nbytes: int
    resident: bool
    shard_files: tuple[str, ...]

    def chunks(self) -> Iterator[np.ndarray]:
        parts = shards.iter_split(self.directory, self.split)
        if jax.process_count() > 1:
            mine = set(mesh_lib.process_shards(len(self.shard_files)))
            parts = (p for k, p in enumerate(parts) if k in mine)
        if self.resident:
            arrays = list(parts)
            yield np.concatenate(arrays, axis=0) if len(arrays) > 1 else np.asarray(arrays[0])
        else:
            yield from (np.asarray(p) for p in parts)

    @property
    def n_chunks(self) -> int:
        return 1 if self.resident else len(self.shard_files)


def split_source(directory: str | Path, manifest: dict, split: str,
                 resident_max_mb: float) -> SplitSource:
    entry = manifest["splits"][split]
    shape = tuple(int(d) for d in entry["shape"])
    nbytes = int(np.prod(shape, dtype=np.int64)) * 4
    resident = nbytes / jax.process_count() <= resident_max_mb * 2**20
    if not resident and jax.process_count() > 1:
        raise NotImplementedError(
            f"{directory}: split {split!r} ({nbytes / 2**20:.0f} MiB) exceeds "
            f"config.device_resident_max_mb = {resident_max_mb} per process; streaming shards on "
            "several hosts is not implemented (raise the limit or use more hosts)"
        )
    return SplitSource(
        directory=Path(directory), split=split, shape=shape, nbytes=nbytes, resident=resident,
        shard_files=tuple(s["file"] for s in entry["shards"]),
    )


def device_put_fn(mesh: Mesh) -> Callable[[np.ndarray], jax.Array]:
    """Host array -> device array: replicated on one host; on several hosts, the per-process
    parts are joined into one array sharded over `data` (every process must pass the same row
    count, so parts are cut to the smallest one)."""
    if jax.process_count() == 1:
        sharding = mesh_lib.replicated(mesh)
        return lambda a: jax.device_put(np.asarray(a), sharding)

    from jax.experimental import multihost_utils

    def put(a: np.ndarray) -> jax.Array:
        a = np.asarray(a)
        rows = int(np.min(multihost_utils.process_allgather(np.asarray(a.shape[0]))))
        sharding = mesh_lib.batch_sharded(mesh, a.ndim)
        return jax.make_array_from_process_local_data(sharding, a[:rows])

    return put


def epoch_batches(key: jax.Array, n_items: int, batch_size: int, mesh: Mesh) -> jax.Array:
    """A random permutation of the items cut into whole batches: int32 [n_batches, B] on device,
    each batch sharded over `data`. Depends only on (key, n_items, batch_size), not on the
    number of devices."""
    n_batches = n_items // batch_size
    fn = _permutation_fn(n_items, n_batches, batch_size, mesh)
    return fn(key)


_PERMUTATIONS: dict[tuple, Callable] = {}


def _permutation_fn(n_items: int, n_batches: int, batch_size: int, mesh: Mesh) -> Callable:
    cache_key = (n_items, n_batches, batch_size, mesh)
    fn = _PERMUTATIONS.get(cache_key)
    if fn is None:
        def permute(key):
            perm = jax.random.permutation(key, n_items)[: n_batches * batch_size]
            return perm.astype(jnp.int32).reshape(n_batches, batch_size)

        fn = jax.jit(permute, out_shardings=mesh_lib.batch_sharded(mesh, 2, axis=1))
        _PERMUTATIONS[cache_key] = fn
    return fn


def eval_index_batches(n_items: int, batch_size: int, mesh: Mesh) -> list[jax.Array]:
    """All items in order: whole batches [B] sharded over `data`, then the remainder replicated
    (so evaluation sees every item exactly once)."""
    out = []
    full = (n_items // batch_size) * batch_size
    sharded = mesh_lib.batch_sharded(mesh, 1)
    for start in range(0, full, batch_size):
        out.append(jax.device_put(np.arange(start, start + batch_size, dtype=np.int32), sharded))
    if full < n_items:
        out.append(jax.device_put(np.arange(full, n_items, dtype=np.int32),
                                  mesh_lib.replicated(mesh)))
    return out
