"""A deep ensemble of 5 latent emulators, the second half of an ensemble of full pairs: member k
learns on member k of the autoencoder ensemble `autoencoder_grav_ensemble` (train that first).
The shipped emulator recipe, every member with its own initialisation, data order and dropout
keys, trained in ONE run (one vmapped step for all members; member 0 is the plain emulator of
the same seed).

    python -m astrochem_jax.train --config=configs/components/autoencoder_grav_ensemble.py
    python -m astrochem_jax.train --config=configs/components/emulator_grav_ensemble.py
    python -m astrochem_jax.benchmark --config=configs/surrogates/ae_emulator_grav_ensemble.py

For 5 emulators over one autoencoder, pass
`--config.autoencoder_component=autoencoder_grav_large` (and the same encoder / decoder to the
surrogate); its mean is no better than its best member (see autoencoder_grav_ensemble.py).
"""

from ml_collections import ConfigDict

from configs import datasets
from configs.components import emulator_grav_sequential


def get_config(dataset: str | None = None) -> ConfigDict:
    c = emulator_grav_sequential.get_config(dataset)
    c.name = datasets.component_name("emulator_grav_ensemble", dataset, "ensemble")
    c.ensemble_size = 5
    c.autoencoder_component = datasets.component_name("autoencoder_grav_ensemble", dataset,
                                                      "ensemble")
    return c
