"""Cache identity of a preprocessed directory: source file, configs, code version.

`cache_key` = sha256 over the dataset config (less `raw_path`, which the content hash covers,
and the `generator` section, which only matters through the raw file it produced), the method
config, the raw file's sha256 and `PREPROCESS_VERSION` + the package version. Git revisions are
recorded in the manifest for provenance but do not invalidate caches (every commit would).

Hashing a multi-GB raw file takes seconds, so a cache check trusts the recorded sha256 when the
file's size and mtime (ns) are unchanged and re-hashes only when either differs (a file rewritten
in place with the same size and mtime is therefore not detected; use --force). A touched but
identical file re-hashes to the same digest and stays a hit.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrochem_jax import __version__, config_utils
from astrochem_jax.shards import MANIFEST_NAME

# Bump when the meaning or layout of preprocessed outputs changes.
PREPROCESS_VERSION = 2  # 2: train / val / test splits
CACHE_IGNORED_DATASET_FIELDS = ("raw_path", "generator")
_HASH_BLOCK_BYTES = 8 * 2**20


def file_sha256(path: str | Path, stop: threading.Event | None = None) -> str:
    """Streamed sha256 of a file (8 MiB blocks); returns "" early once `stop` is set."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK_BYTES):
            if stop is not None and stop.is_set():
                return ""
            digest.update(block)
    return digest.hexdigest()


def source_identity(path: str | Path, previous: dict | None = None,
                    stop: threading.Event | None = None) -> dict[str, Any]:
    """{path, size_bytes, mtime (s), mtime_ns, sha256}; reuses `previous["sha256"]` when size and
    mtime_ns match it, so a cache check does not re-read the file. `stop` aborts the hash."""
    path = Path(path)
    stat = path.stat()
    same = (previous is not None and previous.get("size_bytes") == stat.st_size
            and previous.get("mtime_ns") == stat.st_mtime_ns and previous.get("sha256"))
    return {
        "path": str(path.resolve()),
        "size_bytes": int(stat.st_size),
        "mtime": stat.st_mtime,
        "mtime_ns": int(stat.st_mtime_ns),
        "sha256": previous["sha256"] if same else file_sha256(path, stop),
    }


def code_version() -> str:
    """`<package version>` plus `git describe` of the checkout when available."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5,
        )
        described = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"{__version__}+{described}" if described else __version__


def config_snapshot(dataset_config, method_config) -> dict[str, Any]:
    return {"dataset": config_utils.to_dict(dataset_config),
            "method": config_utils.to_dict(method_config)}


def cache_key(dataset_config, method_config, source_sha256: str) -> str:
    snapshot = config_snapshot(dataset_config, method_config)
    for name in CACHE_IGNORED_DATASET_FIELDS:
        snapshot["dataset"].pop(name, None)
    payload = {"config": snapshot, "source_sha256": source_sha256,
               "preprocess_version": PREPROCESS_VERSION, "package_version": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CacheStatus:
    """hit: outputs are up to date; reason: why not (or "cache hit")."""

    hit: bool
    reason: str
    directory: Path
    source: dict | None = None


def check(directory: Path, utils_directory: Path, raw_path: Path, dataset_config,
          method_config) -> CacheStatus:
    """Compare a preprocessed directory with the current raw file and configs."""
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.exists():
        return CacheStatus(False, f"no manifest at {manifest_path}", directory)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return CacheStatus(False, f"unreadable manifest {manifest_path}: {exc}", directory)
    if not utils_directory.is_dir():
        return CacheStatus(False, f"{utils_directory} is missing", directory)
    if not raw_path.is_file():
        return CacheStatus(False, f"raw file {raw_path} is missing", directory)
    source = source_identity(raw_path, manifest.get("source"))
    if source["sha256"] != (manifest.get("source") or {}).get("sha256"):
        return CacheStatus(False, f"raw file {raw_path} changed (content hash differs)",
                           directory, source)
    key = cache_key(dataset_config, method_config, source["sha256"])
    if key != manifest.get("cache_key"):
        return CacheStatus(False, "dataset/method config or code version changed", directory,
                           source)
    missing = [s["file"] for split in manifest.get("splits", {}).values()
               for s in split.get("shards", []) if not (directory / s["file"]).exists()]
    if missing:
        return CacheStatus(False, f"shards missing: {missing[:3]}", directory, source)
    return CacheStatus(True, "cache hit", directory, source)
