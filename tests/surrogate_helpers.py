"""Tiny trained components for the surrogate and benchmark tests, trained once per test session.

`tiny_trained_outputs()` generates a tiny raw dataset with the project's generator, preprocesses
it (timeless + sequential) and trains a tiny autoencoder, latent emulator and direct emulator for
two epochs each, all under one private outputs directory, and returns that directory. Tests point
`ASTROCHEM_JAX_OUTPUTS` at it (`use_outputs`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fixtures import REPO_ROOT, make_tiny_raw_dataset, tiny_dataset_config
from ml_collections import ConfigDict

AE, EMULATOR, DIRECT = "ae_tiny", "emulator_tiny", "direct_tiny"
N_TRACERS, N_STEPS, HORIZON = 4, 20, 4
_TRAINED: list[Path] = []


def component_config(kind: str, name: str, dataset: ConfigDict) -> ConfigDict:
    """A shipped component config shrunk to a tiny, fast model on `dataset`."""
    from astrochem_jax import config_utils

    base = {"autoencoder": "autoencoder_grav_large", "emulator": "emulator_grav_sequential",
            "direct_emulator": "direct_emulator_grav"}[kind]
    c = config_utils.load_config(str(REPO_ROOT / "configs" / "components" / f"{base}.py"),
                                 "components")
    c.name = name
    c.dataset = dataset
    c.epochs = 2
    c.batch_size = 8
    c.eval_batch_size = 8
    c.horizon = HORIZON
    c.converged_loss_ratio = None  # 2-epoch runs
    if kind != "autoencoder":  # 2-epoch emulators pin many states
        c.max_pinned_state_fraction = None
    if kind == "autoencoder":
        c.model.hidden_dims = (16,)
        c.model.latent_dim = 4
    else:
        c.model.hidden_dims = (16,)
    if kind == "emulator":
        c.autoencoder_component = AE
    return c


def surrogate_config(kind: str = "ae_emulator", name: str = "tiny_surrogate") -> ConfigDict:
    """A shipped surrogate config pointed at the tiny components, with a fast benchmark."""
    from astrochem_jax import config_utils

    base = "ae_emulator_grav" if kind == "ae_emulator" else "direct_emulator_grav"
    c = config_utils.load_config(str(REPO_ROOT / "configs" / "surrogates" / f"{base}.py"),
                                 "surrogates")
    c.name = name
    if kind == "ae_emulator":
        c.components.encoder = c.components.decoder = AE
        c.components.emulator = EMULATOR
    else:
        c.components.emulator = DIRECT
    c.benchmark.batch_sizes = (1, 8)
    c.benchmark.timing_repeats = 2
    c.benchmark.min_timing_s = 0.0
    c.benchmark.matmul_size = 128
    return c


def tiny_trained_outputs() -> Path:
    """The outputs directory holding the tiny trained components (built on first call)."""
    if _TRAINED and (_TRAINED[0] / "weights" / EMULATOR / "summary.json").exists():
        return _TRAINED[0]
    from astrochem_jax.training.loop import train_component

    root = Path(tempfile.mkdtemp(prefix="astrochem_tiny_trained_"))
    outputs = root / "outputs"
    previous = os.environ.get("ASTROCHEM_JAX_OUTPUTS")
    os.environ["ASTROCHEM_JAX_OUTPUTS"] = str(outputs)
    try:
        raw = make_tiny_raw_dataset(root / "raw" / "tiny.h5", N_TRACERS, N_STEPS)
        dataset = tiny_dataset_config(raw, N_TRACERS, N_STEPS)
        for kind, name in (("autoencoder", AE), ("emulator", EMULATOR),
                           ("direct_emulator", DIRECT)):
            train_component(component_config(kind, name, dataset))
    finally:
        if previous is None:
            os.environ.pop("ASTROCHEM_JAX_OUTPUTS", None)
        else:
            os.environ["ASTROCHEM_JAX_OUTPUTS"] = previous
    _TRAINED[:] = [outputs]
    return outputs


def write_surrogate_config_file(path: Path, name: str = "tiny_surrogate") -> Path:
    """A surrogate config file (like configs/surrogates/*.py) for the tiny ae_emulator, for
    programs and notebooks that take a config path (`--config=<path>`, `surrogates.load(path)`)."""
    path.write_text(f'''"""The tiny test surrogate (tests/surrogate_helpers.py)."""

from configs.surrogates import ae_emulator_grav


def get_config():
    c = ae_emulator_grav.get_config()
    c.name = "{name}"
    c.components.encoder = c.components.decoder = "{AE}"
    c.components.emulator = "{EMULATOR}"
    c.benchmark.measure_speed = False
    c.benchmark.solver.enabled = False
    return c
''')
    return path
