"""Array shards + manifest: the on-disk contract between preprocess and every later stage.

A preprocessed directory holds `manifest.json` and float32 `.npy` shards named
`<split>-<k:05d>-of-<n:05d>.npy`, each at most `max_shard_bytes`, split along axis 0
(tracers for `sequential`, rows for `timeless` / `random`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A preprocessed directory that is missing, incomplete or from another format version."""


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.npy"


def write_split(directory: str | Path, split: str, array: np.ndarray,
                max_shard_bytes: int = 256 * 2**20) -> dict[str, Any]:
    """Write `array` [N, ...] as float32 shards along axis 0; return the manifest entry
    `{"shape", "dtype", "shards": [{"file", "shape"}]}`."""
    directory = Path(directory)
    array = np.asarray(array, dtype=np.float32)
    item_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * 4)
    per_shard = max(1, max_shard_bytes // item_bytes)
    count = max(1, -(-array.shape[0] // per_shard))
    shards = []
    for k in range(count):
        part = array[k * per_shard : (k + 1) * per_shard]
        name = shard_name(split, k, count)
        np.save(directory / name, part, allow_pickle=False)
        shards.append({"file": name, "shape": list(part.shape)})
    return {"shape": list(array.shape), "dtype": "float32", "shards": shards}


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Load and sanity-check `<directory>/manifest.json`."""
    path = Path(directory) / MANIFEST_NAME
    if not path.exists():
        raise ManifestError(
            f"{path} not found: run `python -m astrochem_jax.preprocess` for this dataset and "
            "method first"
        )
    manifest = json.loads(path.read_text())
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: field format_version is {version!r}, expected {FORMAT_VERSION}; "
            "re-run preprocessing with --force"
        )
    for key in ("method", "species", "splits", "scaling"):
        if key not in manifest:
            raise ManifestError(f"{path}: required field {key!r} is missing")
    return manifest


def iter_split(directory: str | Path, split: str, mmap: bool = True) -> Iterator[np.ndarray]:
    """Yield the shards of `split` in order (memory-mapped by default)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
        raise ManifestError(
            f"{directory / MANIFEST_NAME}: no split {split!r}; available {list(manifest['splits'])}"
        )
    for entry in manifest["splits"][split]["shards"]:
        path = directory / entry["file"]
        if not path.exists():
            raise ManifestError(f"{path} listed in the manifest is missing; re-run with --force")
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if list(array.shape) != list(entry["shape"]):
            raise ManifestError(
                f"{path}: shape {list(array.shape)} differs from the manifest's {entry['shape']}"
            )
        yield array


def load_split(directory: str | Path, split: str) -> np.ndarray:
    """The whole split as one float32 array [N, ...] (shards concatenated along axis 0)."""
    parts = list(iter_split(directory, split))
    return np.concatenate(parts, axis=0) if len(parts) > 1 else np.array(parts[0])
