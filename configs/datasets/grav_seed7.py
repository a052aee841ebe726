"""The default dataset regenerated with another generator seed and twice the tracers (the
robustness check of the shipped recipe: the same configs must train on it without retuning):

    python -m astrochem_jax.generate --config=configs/datasets/grav_seed7.py
"""

from ml_collections import ConfigDict

from configs.datasets import grav


def get_config() -> ConfigDict:
    c = grav.get_config()
    c.name = "grav_seed7"
    c.raw_path = "data/raw/grav_seed7.h5"
    c.seed = 7
    c.n_tracers = 128
    return c
