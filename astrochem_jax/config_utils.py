"""Helpers around ml_collections configs: resolving bare names, snapshots and hashes."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from astrochem_jax import paths


class ConfigError(ValueError):
    """A config value that cannot work (names the field, what was expected and found)."""


def ensure_configs_importable() -> None:
    """Config files compose each other with `from configs.datasets import grav`; make the
    repository root importable so that works whatever the working directory."""
    root = str(paths.configs_dir().resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)


def resolve_config_path(name_or_path: str, kind: str) -> Path:
    """`grav` -> `configs/<kind>/grav.py`; an existing path is returned unchanged.

    kind: one of `datasets`, `preprocessing`, `components`, `surrogates`.
    """
    candidate = Path(name_or_path)
    if candidate.suffix == ".py" and candidate.exists():
        return candidate
    spec, _, _ = name_or_path.partition(":")
    candidate = Path(spec)
    if candidate.suffix == ".py" and candidate.exists():
        return candidate
    by_name = paths.configs_dir() / kind / f"{candidate.stem}.py"
    if by_name.exists():
        return by_name
    available = sorted(p.stem for p in (paths.configs_dir() / kind).glob("*.py")
                       if not p.stem.startswith("_"))
    raise FileNotFoundError(
        f"config {name_or_path!r} not found: no file {candidate} and no {by_name}; "
        f"available {kind}: {available}"
    )


def load_config(name_or_path: str, kind: str) -> ConfigDict:
    """Execute a config file's `get_config()` (bare names resolved under `configs/<kind>/`).

    `name:arg` passes `arg` to `get_config(arg)`, as ml_collections' `--config=path:arg` does
    (component and surrogate configs take a dataset name there)."""
    ensure_configs_importable()
    if kind == "datasets" and not Path(name_or_path).suffix:
        from configs import datasets  # a bare name, `<dataset>-train<n>` included

        if datasets.split_subset_name(name_or_path)[1] is not None:
            return datasets.by_name(name_or_path)
    path = resolve_config_path(name_or_path, kind)
    _, sep, arg = name_or_path.partition(":")
    spec = importlib.util.spec_from_file_location(f"_astrochem_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.get_config(arg) if sep and arg else module.get_config()


def to_dict(config: ConfigDict | dict) -> dict[str, Any]:
    """A JSON-safe plain dict snapshot of a config (placeholders become None)."""
    if isinstance(config, ConfigDict):
        config = config.to_dict()
    return json.loads(json.dumps(config, default=_default, sort_keys=True))


def config_hash(config: ConfigDict | dict, ignore: tuple[str, ...] = ()) -> str:
    """Stable sha256 of a config snapshot, with top-level `ignore` keys left out."""
    d = {k: v for k, v in to_dict(config).items() if k not in ignore}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _default(obj: Any) -> Any:
    if isinstance(obj, tuple | set):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return repr(obj)
