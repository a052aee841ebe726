"""Direct surrogate on the default dataset: direct_emulator_grav steps on scaled abundances.

`python -m astrochem_jax.benchmark --config=configs/surrogates/direct_emulator_grav.py`
No autoencoder: `components.encoder` / `components.decoder` are empty.
"""

from ml_collections import ConfigDict

from configs.surrogates.ae_emulator_grav import benchmark_config


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.name = "direct_emulator_grav"
    c.type = "direct_emulator"
    c.components = ConfigDict()
    c.components.encoder = ""
    c.components.emulator = "direct_emulator_grav"
    c.components.decoder = ""
    c.benchmark = benchmark_config()
    return c
