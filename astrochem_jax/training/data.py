"""Getting preprocessed splits onto the devices and cutting batches there.

A split is read in CHUNKS: contiguous row ranges of the split (rows = timeless rows or
sequential tracers). A chunk on the devices is ONE global array [n_rows, ...] sharded over the
mesh's `data` axis (each device holds n_rows / n_devices rows), padded at the end to a multiple
of the device count; the padding rows are masked (never sampled, never evaluated), so no row is
ever cut. Each process reads only the rows that live on its own devices (`HostChunk`, memory-
mapped slices of the shards) and the global array is assembled from the per-process parts
(`jax.make_array_from_process_local_data`): the same code runs on one process and on several,
and the global array, hence every batch, is the same whatever the process count.

- Device-resident mode (the split is at most `config.device_resident_max_mb` per process): one
  chunk, put on the devices once for the whole run.
- Streaming mode (larger splits): chunks of at most half that budget (never across a shard
  boundary; with a budget of 0, one chunk per shard). `ChunkLoader` keeps at most two chunks on
  the devices: the one being trained on and the next one, read and put while the devices work.

Batches: every step gets the global item indices of its batch (int32 [B], the same on every
process) and `gather_rows` / `gather_windows` cut them on device: each device takes the rows it
holds (the others masked to 0) and a reduce-scatter over `data` hands every device its B / n
slice of the batch. Values are exact (x + 0 = x). Batches and permutations are drawn on the host
from the data key (`training.state.data_rng`): they depend on (seed, epoch, chunk, item count,
batch size) only, not on the device or process count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from astrochem_jax.training import mesh as mesh_lib

DATA = mesh_lib.DATA_AXIS


@dataclasses.dataclass(frozen=True)
class HostChunk:
    """This process's rows of one chunk, on the host.

    local: float32 [stop - start, ...] rows [start, stop) of the chunk's padded global array
    (rows past the chunk's real rows are NaN); n_valid: real rows of the chunk (all processes);
    n_rows: padded global row count (a multiple of the device count); start: first chunk row of
    `local`; mesh: where the chunk goes.
    """

    local: np.ndarray
    n_valid: int
    n_rows: int
    start: int
    mesh: Mesh

    def put(self, local: np.ndarray | None = None) -> jax.Array:
        """`local` (default the chunk's own rows; any array with the same leading rows) -> the
        global array [n_rows, ...] sharded over `data`."""
        a = np.ascontiguousarray(self.local if local is None else local)
        return put_rows(self.mesh, a, self.n_rows)

    def all_rows(self, local: np.ndarray) -> np.ndarray:
        """A small per-row array of this process (leading dim = local rows) -> the whole
        [n_rows, ...] on every process (e.g. tracer lengths for the window table)."""
        return gather_to_host(self.mesh, np.ascontiguousarray(local), self.n_rows)


def put_rows(mesh: Mesh, local: np.ndarray, n_rows: int) -> jax.Array:
    """This process's rows [stop - start, ...] (`mesh_lib.process_rows`) -> global [n_rows, ...]
    sharded over `data`."""
    sharding = mesh_lib.batch_sharded(mesh, local.ndim)
    return jax.make_array_from_process_local_data(sharding, local, (n_rows, *local.shape[1:]))


_REPLICATE: dict[Mesh, Callable] = {}


def gather_to_host(mesh: Mesh, local: np.ndarray, n_rows: int) -> np.ndarray:
    """Per-process rows -> the whole [n_rows, ...] as numpy on every process."""
    fn = _REPLICATE.get(mesh)
    if fn is None:
        fn = _REPLICATE[mesh] = jax.jit(lambda a: a, out_shardings=mesh_lib.replicated(mesh))
    return mesh_lib.fetch(fn(put_rows(mesh, local, n_rows)))


def padded_rows(n_valid: int, mesh: Mesh) -> int:
    """Rows of a chunk's global array: n_valid rounded up to a multiple of the device count
    (at least one row per device)."""
    d = mesh_lib.n_data_shards(mesh)
    return max(d, -(-int(n_valid) // d) * d)


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """How to read one split: chunk k is rows `chunk_bounds[k]` = [start, stop) of the split.

    resident: one chunk (the whole split) kept on the devices for the whole run.
    """

    directory: Path
    split: str
    shape: tuple[int, ...]
    nbytes: int
    resident: bool
    shard_files: tuple[str, ...]
    shard_rows: tuple[int, ...]
    chunk_bounds: tuple[tuple[int, int], ...]

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_bounds)

    @property
    def chunk_shapes(self) -> list[tuple[int, ...]]:
        return [(stop - start, *self.shape[1:]) for start, stop in self.chunk_bounds]

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the split (float32, a copy), from the memory-mapped shards."""
        parts, offset = [], 0
        for name, rows in zip(self.shard_files, self.shard_rows, strict=True):
            lo, hi = max(start, offset), min(stop, offset + rows)
            if lo < hi:
                array = np.load(self.directory / name, mmap_mode="r", allow_pickle=False)
                parts.append(np.asarray(array[lo - offset : hi - offset], np.float32))
            offset += rows
        if not parts:
            return np.zeros((0, *self.shape[1:]), np.float32)
        return np.concatenate(parts, axis=0) if len(parts) > 1 else np.array(parts[0])

    def load(self, k: int, mesh: Mesh) -> HostChunk:
        """This process's rows of chunk k, NaN-padded to the chunk's padded row count."""
        c0, c1 = self.chunk_bounds[k]
        n_valid = c1 - c0
        n_rows = padded_rows(n_valid, mesh)
        lo, hi = mesh_lib.process_rows(mesh, n_rows)
        real = self.read_rows(c0 + min(lo, n_valid), c0 + min(hi, n_valid))
        if real.shape[0] < hi - lo:
            pad = np.full((hi - lo - real.shape[0], *self.shape[1:]), np.nan, np.float32)
            real = np.concatenate([real, pad], axis=0)
        return HostChunk(local=real, n_valid=n_valid, n_rows=n_rows, start=lo, mesh=mesh)


def host_chunk(array: np.ndarray, mesh: Mesh) -> HostChunk:
    """A whole in-memory array [N, ...] as one chunk: this process's rows of it, NaN-padded
    (tests and benchmarks; training reads chunks from the shards with `SplitSource.load`)."""
    array = np.asarray(array, np.float32)
    n_valid = array.shape[0]
    n_rows = padded_rows(n_valid, mesh)
    lo, hi = mesh_lib.process_rows(mesh, n_rows)
    local = np.full((hi - lo, *array.shape[1:]), np.nan, np.float32)
    real = array[min(lo, n_valid):min(hi, n_valid)]
    local[: real.shape[0]] = real
    return HostChunk(local=local, n_valid=n_valid, n_rows=n_rows, start=lo, mesh=mesh)


def chunk_bounds(shard_rows: Sequence[int], max_rows: int | None) -> tuple[tuple[int, int], ...]:
    """Row ranges of the chunks: every shard cut into equal pieces of at most `max_rows` rows
    (None: one chunk per shard)."""
    out, offset = [], 0
    for rows in shard_rows:
        pieces = 1 if max_rows is None else max(1, -(-int(rows) // max(1, int(max_rows))))
        size = -(-int(rows) // pieces) if rows else 0
        for k in range(pieces):
            lo, hi = offset + k * size, min(offset + (k + 1) * size, offset + rows)
            if hi > lo:
                out.append((lo, hi))
        offset += rows
    return tuple(out)


def split_source(directory: str | Path, manifest: dict, split: str,
                 resident_max_mb: float) -> SplitSource:
    """The split's reading plan: resident when it is at most `resident_max_mb` MiB per process,
    else chunks of at most half of that (the current and the prefetched chunk fit the budget)."""
    entry = manifest["splits"][split]
    shape = tuple(int(d) for d in entry["shape"])
    item_bytes = int(np.prod(shape[1:], dtype=np.int64)) * 4
    nbytes = shape[0] * item_bytes
    budget = float(resident_max_mb) * 2**20 * jax.process_count()  # over all processes
    resident = nbytes <= budget
    shard_rows = tuple(int(s["shape"][0]) for s in entry["shards"])
    if resident:
        bounds: tuple[tuple[int, int], ...] = ((0, shape[0]),)
    else:
        bounds = chunk_bounds(shard_rows,
                              None if budget <= 0 else max(1, int(budget / 2 // item_bytes)))
    return SplitSource(
        directory=Path(directory), split=split, shape=shape, nbytes=nbytes, resident=resident,
        shard_files=tuple(s["file"] for s in entry["shards"]), shard_rows=shard_rows,
        chunk_bounds=bounds,
    )


class ChunkLoader:
    """Prepared chunks of one split (`prepare(host_chunk) -> Prepared`).

    Resident splits are prepared once and kept. Streamed ones are prepared when needed, with at
    most two on the devices: `iterate` yields chunk `pos` and, once the consumer has queued its
    work on it and set `fence` (an output of that work), reads and puts chunk pos + 1 while the
    devices run, after waiting for the work queued on chunk pos - 1 (so that it is freed first).
    """

    def __init__(self, source: SplitSource, mesh: Mesh, prepare: Callable[[HostChunk], Any]):
        self.source, self.mesh, self.prepare = source, mesh, prepare
        self.fence: Any = None
        self._kept = ([prepare(source.load(k, mesh)) for k in range(source.n_chunks)]
                      if source.resident else None)

    def get(self, k: int):
        if self._kept is not None:
            return self._kept[k]
        return self.prepare(self.source.load(k, self.mesh))

    def iterate(self, order: Sequence[int] | None = None, start: int = 0
                ) -> Iterator[tuple[int, int, Any]]:
        """(position, chunk index, prepared) for order[start:], default every chunk in order."""
        order = list(range(self.source.n_chunks)) if order is None else [int(k) for k in order]
        if start >= len(order):
            return
        if self._kept is not None:
            for pos in range(start, len(order)):
                yield pos, order[pos], self._kept[order[pos]]
            return
        upcoming = self.get(order[start])
        previous_fence = None
        for pos in range(start, len(order)):
            current, upcoming = upcoming, None
            self.fence = None
            yield pos, order[pos], current
            del current
            if pos + 1 < len(order):
                if previous_fence is not None:
                    jax.block_until_ready(previous_fence)
                upcoming = self.get(order[pos + 1])
            previous_fence = self.fence
        self.fence = None


# --- on-device batch cutting -------------------------------------------------------------------


def _scatter_or_sum(values: jax.Array, scatter: bool) -> jax.Array:
    if scatter:
        return jax.lax.psum_scatter(values, DATA, scatter_dimension=0, tiled=True)
    return jax.lax.psum(values, DATA)


def gather_rows(mesh: Mesh, table: jax.Array, rows: jax.Array) -> jax.Array:
    """table [N, ...] sharded over `data` (rows), rows int32 [B] (the same on every device) ->
    table[rows] [B, ...]: sharded over `data` when B divides the device count, else replicated.
    Call inside jit."""
    scatter = rows.shape[0] % mesh_lib.n_data_shards(mesh) == 0

    def local(tab, r):
        n = tab.shape[0]
        k = r - jax.lax.axis_index(DATA) * n
        mine = (k >= 0) & (k < n)
        values = jnp.take(tab, jnp.clip(k, 0, n - 1), axis=0)
        values = jnp.where(mine.reshape(-1, *([1] * (values.ndim - 1))), values,
                           jnp.zeros((), values.dtype))
        return _scatter_or_sum(values, scatter)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(DATA), P()),
                         out_specs=P(DATA) if scatter else P())(table, rows)


def gather_windows(mesh: Mesh, table: jax.Array, rows: jax.Array, starts: jax.Array,
                   length: int) -> jax.Array:
    """table [N, T, ...] sharded over `data` (axis 0), rows / starts int32 [B] -> the windows
    table[rows[b], starts[b] : starts[b] + length] [B, length, ...] (sharded over `data` when
    B divides the device count, else replicated). Call inside jit."""
    scatter = rows.shape[0] % mesh_lib.n_data_shards(mesh) == 0

    def local(tab, r, s):
        n = tab.shape[0]
        k = r - jax.lax.axis_index(DATA) * n
        mine = (k >= 0) & (k < n)

        def one(kk, ss):
            return jax.lax.dynamic_slice_in_dim(tab[kk], ss, length, axis=0)

        values = jax.vmap(one)(jnp.clip(k, 0, n - 1), s)
        values = jnp.where(mine.reshape(-1, *([1] * (values.ndim - 1))), values,
                           jnp.zeros((), values.dtype))
        return _scatter_or_sum(values, scatter)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(DATA), P(), P()),
                         out_specs=P(DATA) if scatter else P())(table, rows, starts)


def map_local_rows(mesh: Mesh, fn: Callable[[jax.Array], jax.Array], table: jax.Array,
                   block_rows: int) -> jax.Array:
    """fn applied to the rows of `table` [N, ...] (sharded over `data`) on the device that holds
    them, `block_rows` rows at a time (bounded memory): [N, ...] -> [N, ...out]. Call in jit."""
    def local(tab):
        return jax.lax.map(lambda row: fn(row[None])[0], tab, batch_size=int(block_rows))

    return jax.shard_map(local, mesh=mesh, in_specs=P(DATA), out_specs=P(DATA))(table)


# --- host-side index plans ----------------------------------------------------------------------


def epoch_batches(rng: np.random.Generator, n_items: int, batch_size: int) -> np.ndarray:
    """A random permutation of the items cut into whole batches: int32 [n_batches, B] (the
    remainder that does not fill a batch is left out this epoch). Depends only on the generator,
    n_items and batch_size."""
    n_batches = n_items // batch_size
    perm = rng.permutation(n_items)[: n_batches * batch_size]
    return perm.astype(np.int32).reshape(n_batches, batch_size)


def eval_batch_size(n_items: int, batch_size: int, n_shards: int) -> int:
    """The evaluation batch for a chunk of `n_items`: `batch_size`, or fewer when the chunk is
    smaller (its item count rounded up to a multiple of the `n_shards` devices). A split of 19
    whole-trajectory validation windows then runs as 20 rows, not padded to 1024 (which cost
    more than the training epoch of a closed-loop fine-tune)."""
    n_shards = max(1, int(n_shards))
    return max(n_shards, min(int(batch_size), -(-int(n_items) // n_shards) * n_shards))


def eval_batches(n_items: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every item once, in order, in batches of exactly `batch_size`: [(idx int32 [B], mask
    bool [B])]; the last batch is padded with item 0 and masked (big_vision's
    make_for_inference pattern: one compiled shape, padding that counts for nothing)."""
    out = []
    for start in range(0, int(n_items), batch_size):
        idx = np.arange(start, start + batch_size, dtype=np.int32)
        mask = idx < n_items
        out.append((np.where(mask, idx, 0).astype(np.int32), mask))
    return out
