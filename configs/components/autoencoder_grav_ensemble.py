"""A deep ensemble of 5 autoencoders (the shipped autoencoder recipe, `autoencoder_grav_large`,
every member with its own initialisation and data order; member 0 is the plain autoencoder of the
same seed), trained in ONE run: the first half of an ensemble of full pairs. Member k of
`emulator_grav_ensemble` learns on member k's latents.

    python -m astrochem_jax.train --config=configs/components/autoencoder_grav_ensemble.py

Why pairs and not 5 emulators over one autoencoder: members that share the autoencoder share its
decoder's error, so their mean cannot remove it. Measured on the default dataset's test tracers
(seed 0, window-32 emulator recipe, H200 GPU): ensemble mean 0.080 dex against members'
best / median 0.092 / 0.097 for pairs; 0.093 against 0.090 / 0.096 over one autoencoder (no
better than its best member).
"""

from ml_collections import ConfigDict

from configs import datasets
from configs.components import autoencoder_grav_large


def get_config(dataset: str | None = None) -> ConfigDict:
    c = autoencoder_grav_large.get_config(dataset)
    c.name = datasets.component_name("autoencoder_grav_ensemble", dataset, "ensemble")
    c.ensemble_size = 5
    return c
