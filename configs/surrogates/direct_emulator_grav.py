"""Direct surrogate on the default dataset: direct_emulator_grav steps on scaled abundances.

`python -m astrochem_jax.benchmark --config=configs/surrogates/direct_emulator_grav.py`
No autoencoder: `components.encoder` / `components.decoder` are empty.
"""

from ml_collections import ConfigDict, config_dict

from configs.surrogates.ae_emulator_grav import benchmark_config


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.name = "direct_emulator_grav"
    c.type = "direct_emulator"
    c.components = ConfigDict()
    c.components.encoder = ""
    c.components.emulator = "direct_emulator_grav"
    c.components.decoder = ""
    # (low, high): clip the emulator state after every step (both state spaces are [0, 1] on the
    # training data); None = the trained components exactly (what the trainer validated).
    c.state_clip = config_dict.placeholder(tuple)
    c.benchmark = benchmark_config()
    return c
