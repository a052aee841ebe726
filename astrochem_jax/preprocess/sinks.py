"""Streaming shard writers: shards are written piece by piece, never held whole in memory.

`ShardWriter` writes a split whose length is known up front as `<split>-<k>-of-<n>.npy` float32
shards (the names and manifest entries of `astrochem_jax.shards`), appending with plain file
writes (not memory maps, whose dirty pages would count towards the resident set).

`ShuffleWriter` shuffles rows across a whole split in two passes (an external shuffle): rows are
appended to `n_buckets` temporary files chosen at random, then each bucket is loaded, permuted and
streamed into a `ShardWriter`. Peak memory is one bucket (`bucket_bytes`) plus one input chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrochem_jax.shards import shard_name


class ShardWriter:
    """Append float32 arrays [n, *item_shape] until `total` items are written, then `close()`."""

    def __init__(self, directory: str | Path, split: str, total: int,
                 item_shape: tuple[int, ...], max_shard_bytes: int):
        self.directory = Path(directory)
        self.split = split
        self.total = int(total)
        self.item_shape = tuple(int(d) for d in item_shape)
        item_bytes = max(1, int(np.prod(self.item_shape, dtype=np.int64)) * 4)
        self.per_shard = max(1, int(max_shard_bytes) // item_bytes)
        self.count = max(1, -(-self.total // self.per_shard))
        self.written = 0
        self.shards: list[dict] = []
        self._file = None
        self._left_in_shard = 0

    def _open_next(self) -> None:
        k = len(self.shards)
        n = min(self.per_shard, self.total - self.written)
        name = shard_name(self.split, k, self.count)
        shape = (n, *self.item_shape)
        self._file = open(self.directory / name, "wb")  # noqa: SIM115 - closed in _close_current
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                  "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self._file, header)
        self.shards.append({"file": name, "shape": list(shape)})
        self._left_in_shard = n

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def append(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype="<f4")
        if array.shape[1:] != self.item_shape:
            raise ValueError(
                f"split {self.split}: item shape {array.shape[1:]} != expected {self.item_shape}"
            )
        if self.written + array.shape[0] > self.total:
            raise ValueError(
                f"split {self.split}: {self.written + array.shape[0]} items exceed the declared "
                f"{self.total}"
            )
        offset = 0
        while offset < array.shape[0]:
            if self._file is None:
                self._open_next()
            take = min(self._left_in_shard, array.shape[0] - offset)
            array[offset : offset + take].tofile(self._file)
            offset += take
            self.written += take
            self._left_in_shard -= take
            if self._left_in_shard == 0:
                self._close_current()

    def close(self) -> dict:
        """Finish the split; returns the manifest entry `{"shape", "dtype", "shards"}`."""
        if self.total == 0 and not self.shards:
            self._open_next()  # one empty shard, as shards.write_split does
        self._close_current()
        if self.written != self.total:
            raise ValueError(f"split {self.split}: wrote {self.written} of {self.total} items")
        return {"shape": [self.total, *self.item_shape], "dtype": "float32",
                "shards": self.shards}


class ShuffleWriter:
    """Shuffle rows [n, *item_shape] across a split of known length with bounded memory."""

    def __init__(self, writer: ShardWriter, scratch_dir: str | Path, bucket_bytes: int,
                 rng: np.random.Generator):
        self.writer = writer
        self.scratch = Path(scratch_dir)
        self.scratch.mkdir(parents=True, exist_ok=True)
        item_bytes = max(1, int(np.prod(writer.item_shape, dtype=np.int64)) * 4)
        self.n_buckets = max(1, -(-writer.total * item_bytes // max(1, int(bucket_bytes))))
        self.rng = rng
        # A split that fits in one bucket is shuffled in memory (no scratch file round trip).
        self._memory: list[np.ndarray] | None = [] if self.n_buckets == 1 else None
        self._paths = [self.scratch / f"{writer.split}-bucket-{b:05d}.f32"
                       for b in range(self.n_buckets if self._memory is None else 0)]
        self._files = [open(p, "wb") for p in self._paths]  # noqa: SIM115 - closed in close()

    def append(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype="<f4")
        if self._memory is not None:
            self._memory.append(array.copy() if array.base is not None else array)
            return
        bucket = self.rng.integers(0, self.n_buckets, size=array.shape[0])
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(self.n_buckets + 1))
        grouped = array[order]
        for b in range(self.n_buckets):
            if bounds[b + 1] > bounds[b]:
                grouped[bounds[b] : bounds[b + 1]].tofile(self._files[b])

    def close(self) -> dict:
        if self._memory is not None:
            block = (np.concatenate(self._memory) if self._memory
                     else np.zeros((0, *self.writer.item_shape), dtype="<f4"))
            self._memory = None
            self.writer.append(block[self.rng.permutation(block.shape[0])])
            return self.writer.close()
        for f in self._files:
            f.close()
        for path in self._paths:
            block = np.fromfile(path, dtype="<f4").reshape(-1, *self.writer.item_shape)
            path.unlink()
            self.writer.append(block[self.rng.permutation(block.shape[0])])
            del block
        return self.writer.close()
