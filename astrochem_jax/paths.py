"""Where things live. Raw data under `data/`, every derived artifact under `outputs/`.

Both roots default to the current working directory (the repository root when you follow the
README) and can be moved with the `ASTROCHEM_JAX_DATA` / `ASTROCHEM_JAX_OUTPUTS` variables.
Library code that reads another project's outputs (`surrogates.load(name, workdir=...)`) sets
the outputs root for a block with `using_outputs(root)`; `find_outputs(workdir)` picks it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_OUTPUTS_OVERRIDE: list[Path] = []


def data_dir() -> Path:
    return Path(os.environ.get("ASTROCHEM_JAX_DATA", "data"))


def outputs_dir() -> Path:
    if _OUTPUTS_OVERRIDE:
        return _OUTPUTS_OVERRIDE[-1]
    return Path(os.environ.get("ASTROCHEM_JAX_OUTPUTS", "outputs"))


@contextlib.contextmanager
def using_outputs(root: str | Path | None) -> Iterator[None]:
    """`outputs_dir()` is `root` inside the block (None: unchanged)."""
    if root is None:
        yield
        return
    _OUTPUTS_OVERRIDE.append(Path(root))
    try:
        yield
    finally:
        _OUTPUTS_OVERRIDE.pop()


def project_dir() -> Path:
    """The repository root of a source checkout (where the README's commands run), else the
    working directory."""
    return configs_dir().resolve().parent


def find_outputs(workdir: str | Path | None = None) -> tuple[Path, str]:
    """(outputs root, how it was chosen), for readers that may run from any directory (a
    notebook): `workdir` (an outputs directory itself, or a directory holding `outputs/`), else
    `ASTROCHEM_JAX_OUTPUTS`, else the project's `outputs/`. Raises FileNotFoundError naming the
    directories tried when `workdir` has neither."""
    if workdir is not None:
        workdir = Path(workdir).expanduser().resolve()
        if (workdir / "weights").is_dir():
            return workdir, f"workdir={workdir}"
        if (workdir / "outputs").is_dir():
            return workdir / "outputs", f"workdir={workdir}"
        raise FileNotFoundError(
            f"workdir={workdir}: found neither {workdir / 'weights'} (an outputs directory) nor "
            f"{workdir / 'outputs'} (a directory the pipeline ran in)")
    env = os.environ.get("ASTROCHEM_JAX_OUTPUTS")
    if env:
        return Path(env).expanduser().resolve(), f"ASTROCHEM_JAX_OUTPUTS={env}"
    return project_dir() / "outputs", f"the project's outputs ({project_dir()})"


def preprocessed_dir(dataset: str, method: str) -> Path:
    return outputs_dir() / "preprocessed" / dataset / method


def utils_dir(dataset: str) -> Path:
    return outputs_dir() / "utils" / dataset


def weights_dir(component: str) -> Path:
    return outputs_dir() / "weights" / component


def benchmarks_dir(surrogate: str) -> Path:
    return outputs_dir() / "benchmarks" / surrogate


def runs_dir() -> Path:
    return outputs_dir() / "runs"


def configs_dir() -> Path:
    """The repository's `configs/` folder (next to the package in a source checkout)."""
    here = Path(__file__).resolve().parent.parent / "configs"
    return here if here.is_dir() else Path("configs")
