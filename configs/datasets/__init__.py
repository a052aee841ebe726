"""Dataset configs. `by_name(name)` loads `configs/datasets/<name>.py`: component and surrogate
configs take a dataset name after `:` (`--config=configs/components/autoencoder_grav_large.py:
uclchem_grav_train`), which ml_collections passes to their `get_config(arg)`."""

import importlib

from ml_collections import ConfigDict

DEFAULT = "grav"


def by_name(name: str | None) -> ConfigDict:
    """The dataset config `configs/datasets/<name>.py` (None or "" = the default dataset)."""
    name = name or DEFAULT
    check_name(name)
    return importlib.import_module(f"configs.datasets.{name}").get_config()


def check_name(name: str) -> None:
    """Refuse a dataset name without a `configs/datasets/<name>.py`, listing the available ones."""
    from pathlib import Path

    available = sorted(p.stem for p in Path(__file__).parent.glob("*.py")
                       if not p.stem.startswith("_"))
    if name not in available:
        raise ValueError(f"dataset {name!r} not found: no configs/datasets/{name}.py; available: "
                         f"{available}")


def component_name(base: str, dataset: str | None, variant: str = "") -> str:
    """Name of a component (or surrogate) trained on `dataset`: `base` for the default dataset,
    else `<kind>[_<variant>]_<dataset>` (e.g. `autoencoder_uclchem_grav_train`,
    `emulator_ensemble_grav_seed7`), where kind is `base` without its `_grav...` suffix."""
    if not dataset or dataset == DEFAULT:
        return base
    kind = base.split("_grav")[0]
    return f"{kind}_{variant}_{dataset}" if variant else f"{kind}_{dataset}"
