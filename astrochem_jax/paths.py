"""Where things live. Raw data under `data/`, every derived artifact under `outputs/`.

Both roots default to the current working directory (the repository root when you follow the
README) and can be moved with the `ASTROCHEM_JAX_DATA` / `ASTROCHEM_JAX_OUTPUTS` variables.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    return Path(os.environ.get("ASTROCHEM_JAX_DATA", "data"))


def outputs_dir() -> Path:
    return Path(os.environ.get("ASTROCHEM_JAX_OUTPUTS", "outputs"))


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
