"""A deep ensemble of 5 latent emulators over the shipped autoencoder (`autoencoder_grav_large`):
the shipped emulator recipe, every member with its own initialisation, data order and dropout
keys, trained in ONE run (one vmapped step for all members; member 0 is the plain emulator of
the same seed).

    python -m astrochem_jax.train --config=configs/components/emulator_grav_ensemble.py
    python -m astrochem_jax.benchmark --config=configs/surrogates/ae_emulator_grav_ensemble.py

For an ensemble of full pairs, train the autoencoder with `--config.ensemble_size=5` too: member
k of the emulators then learns on autoencoder member k.
"""

from ml_collections import ConfigDict

from configs import datasets
from configs.components import emulator_grav_sequential


def get_config(dataset: str | None = None) -> ConfigDict:
    c = emulator_grav_sequential.get_config(dataset)
    c.name = datasets.component_name("emulator_grav_ensemble", dataset, "ensemble")
    c.ensemble_size = 5
    return c
