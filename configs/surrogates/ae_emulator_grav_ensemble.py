"""Ensemble surrogate of 5 full pairs: member k of `autoencoder_grav_ensemble` around member k of
`emulator_grav_ensemble`. The surrogate returns the members' mean in log space;
`surrogate.predict(x0, physical, return_spread=True)` adds the spread (std of log10 abundance
over members, dex). The benchmark adds an `uncertainty` section (calibration of the spread
against the error on the test tracers) and reliability / error-vs-spread plots.

    python -m astrochem_jax.benchmark --config=configs/surrogates/ae_emulator_grav_ensemble.py
"""

from ml_collections import ConfigDict

from configs import datasets
from configs.surrogates import ae_emulator_grav


def get_config(dataset: str | None = None) -> ConfigDict:
    c = ae_emulator_grav.get_config(dataset)
    c.name = datasets.component_name("ae_emulator_grav_ensemble", dataset, "ensemble")
    c.components.emulator = datasets.component_name("emulator_grav_ensemble", dataset,
                                                    "ensemble")
    c.components.encoder = c.components.decoder = datasets.component_name(
        "autoencoder_grav_ensemble", dataset, "ensemble")
    return c
