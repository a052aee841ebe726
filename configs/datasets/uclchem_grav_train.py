"""Real UCLCHEM v3 gas-grain free-fall collapse tracers for training and measurement on real
chemistry: `../shared/data/uclchem_grav_train.h5` (89 tracers x 301 rows, t = 0 to 1.5 Myr every
5,000 yr, 333 species incl. `#` surface and `@` bulk ices; pandas fixed format, key `df`).

    python -m astrochem_jax.preprocess --dataset=uclchem_grav_train --method=sequential

The file is development material next to the checkout, not part of the package: it is read in
place (never copied) and tests that use it skip when ../shared is absent.
"""

from ml_collections import ConfigDict

from configs.datasets import uclchem_grav


def get_config() -> ConfigDict:
    c = uclchem_grav.get_config()
    c.name = "uclchem_grav_train"
    c.raw_path = "../shared/data/uclchem_grav_train.h5"
    c.n_tracers = 89
    c.n_steps = 301
    return c
