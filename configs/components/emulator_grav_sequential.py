"""Latent autoregressive emulator on the default dataset (AstroChemNet: hidden [256, 256, 128]),
trained through the frozen `autoencoder_grav_large` (train that one first)."""

from ml_collections import ConfigDict, config_dict

from configs.components import autoencoder_grav_large


def get_config() -> ConfigDict:
    c = autoencoder_grav_large.get_config()
    c.name = "emulator_grav_sequential"
    c.type = "emulator"
    c.preprocessing_method = "sequential"
    c.autoencoder_component = "autoencoder_grav_large"
    c.model = ConfigDict()
    c.model.hidden_dims = (256, 256, 128)
    c.model.latent_dim = config_dict.placeholder(int)  # None = the autoencoder's; set to check
    c.horizon = 16
    c.epochs = 20
    c.batch_size = 256
    c.eval_batch_size = 1024
    c.lr = 1e-3
    c.plateau_patience = 3
    c.plateau_factor = 0.5
    c.stagnant_epoch_patience = 10
    c.loss.conservation_weight = 0.1
    return c
