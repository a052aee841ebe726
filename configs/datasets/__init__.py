"""Dataset configs. `by_name(name)` loads `configs/datasets/<name>.py`: component and surrogate
configs take a dataset name after `:` (`--config=configs/components/autoencoder_grav_large.py:
uclchem_grav_train`), which ml_collections passes to their `get_config(arg)`.

`<dataset>-train<n>` (e.g. `uclchem_grav_train-train16`) is `<dataset>` trained on only n of its
train tracers, for data-scaling studies: the same validation and test tracers, the kept train
tracers nested in those of any larger n (`dataset.train_tracers`; preprocess
`limit_train_tracers`). Its preprocessed data, components and benchmarks live under that name."""

import importlib
import re

from ml_collections import ConfigDict

DEFAULT = "grav"


TRAIN_SUBSET_NAME = re.compile(r"^(?P<base>.+)-train(?P<n>[0-9]+)$")


def split_subset_name(name: str) -> tuple[str, int | None]:
    """`grav-train32` -> ("grav", 32); a plain name -> (name, None)."""
    match = TRAIN_SUBSET_NAME.match(name)
    return (match["base"], int(match["n"])) if match else (name, None)


def by_name(name: str | None) -> ConfigDict:
    """The dataset config `configs/datasets/<name>.py` (None or "" = the default dataset), or for
    `<name>-train<n>` that config named so, with `train_tracers = n`."""
    name = name or DEFAULT
    base, n_train = split_subset_name(name)
    check_name(base)
    config = importlib.import_module(f"configs.datasets.{base}").get_config()
    if n_train is not None:
        config.name = name
        config.train_tracers = n_train
    return config


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
