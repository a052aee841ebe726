"""A smaller autoencoder on the default dataset (hidden [64, 32], latent 8): faster surrogate."""

from ml_collections import ConfigDict

from configs import datasets
from configs.components import autoencoder_grav_large


def get_config(dataset: str | None = None) -> ConfigDict:
    c = autoencoder_grav_large.get_config(dataset)
    c.name = datasets.component_name("autoencoder_grav_small", dataset, "small")
    c.model.hidden_dims = (64, 32)
    c.model.latent_dim = 8
    return c
