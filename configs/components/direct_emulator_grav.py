"""Autoregressive emulator directly on scaled abundances (no autoencoder), default dataset."""

from ml_collections import ConfigDict

from configs.components import emulator_grav_sequential


def get_config() -> ConfigDict:
    c = emulator_grav_sequential.get_config()
    c.name = "direct_emulator_grav"
    c.type = "direct_emulator"
    c.autoencoder_component = None
    return c
