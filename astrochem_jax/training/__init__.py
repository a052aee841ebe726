"""Training stage: mesh, generic loop, checkpoints (orbax), component registry `COMPONENTS`.

Entry point: `python -m astrochem_jax.train --config=configs/components/<name>.py`.
"""

from astrochem_jax.training.checkpoints import (
    ComponentNotFoundError,
    LoadedComponent,
    load_component,
)
from astrochem_jax.training.components import COMPONENTS, ComponentError
from astrochem_jax.training.loop import NonFiniteLossError, ResumeMismatchError, train_component

__all__ = [
    "COMPONENTS",
    "ComponentError",
    "ComponentNotFoundError",
    "LoadedComponent",
    "NonFiniteLossError",
    "ResumeMismatchError",
    "load_component",
    "train_component",
]
