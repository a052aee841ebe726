"""Tiny raw datasets made with the project's own generator, for any stage's tests.

    from fixtures import make_tiny_raw_dataset, tiny_dataset_config

    @pytest.fixture(scope="session")
    def tiny_raw(tmp_path_factory):
        return make_tiny_raw_dataset(tmp_path_factory.mktemp("raw") / "tiny.h5")

Each distinct (n_tracers, n_steps, seed) is generated once per test session (the default network,
collapse tracks of the default config, a shortened time span) and copied to the requested path,
so several test modules can share one solve. The jax persistent compile cache under the
repository's `outputs/jax_cache` (the entry points' default) is switched on if no cache is set,
so the solver compile is paid once per machine, not once per run.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

from ml_collections import ConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_TIME_END_YEARS = 1.0e6  # long enough for the fastest tiny tracers to hit their density cap

_GENERATED: dict[tuple[int, int, int], Path] = {}
_CACHE_DIR: list[Path] = []


def tiny_dataset_config(raw_path: str | Path, n_tracers: int = 4, n_steps: int = 20,
                        seed: int = 0) -> ConfigDict:
    """The default dataset config (`configs/datasets/grav.py`) shrunk to a tiny dataset at
    `raw_path`: `name="tiny"`, few tracers and steps, a shorter time span."""
    from astrochem_jax import config_utils

    config = config_utils.load_config(str(REPO_ROOT / "configs" / "datasets" / "grav.py"),
                                      "datasets")
    config.name = "tiny"
    config.raw_path = str(raw_path)
    config.n_tracers = int(n_tracers)
    config.n_steps = int(n_steps)
    config.seed = int(seed)
    config.generator.time_end_years = TINY_TIME_END_YEARS
    config.generator.solver.batch_size = int(n_tracers)
    return config


def make_tiny_raw_dataset(path: str | Path, n_tracers: int = 4, n_steps: int = 20,
                          seed: int = 0) -> Path:
    """Write a tiny raw dataset (our HDF5 layout) to `path` and return it.

    `path` is the .h5 file to create (a directory gets `tiny.h5` inside it).
    """
    path = Path(path)
    if path.suffix not in (".h5", ".hdf5"):
        path = path / "tiny.h5"
    key = (int(n_tracers), int(n_steps), int(seed))
    cached = _GENERATED.get(key)
    if cached is None or not cached.is_file():
        _enable_compile_cache()
        from astrochem_jax.generate import generate_dataset

        if not _CACHE_DIR:
            _CACHE_DIR.append(Path(tempfile.mkdtemp(prefix="astrochem_tiny_raw_")))
        target = _CACHE_DIR[0] / f"tiny-{key[0]}x{key[1]}-seed{key[2]}.h5"
        cached = generate_dataset(tiny_dataset_config(target, *key), stream=io.StringIO())
        _GENERATED[key] = cached
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, path)
    return path


def _enable_compile_cache() -> None:
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    cache = REPO_ROOT / "outputs" / "jax_cache"
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
