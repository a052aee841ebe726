"""The embedded default dataset: tracers of gravitational free-fall collapse integrated with the
default demonstration network by `python -m astrochem_jax.generate --config=configs/datasets/grav.py`.

Sections: identity + raw file (used by every stage), `generator` (ground truth, used by generate),
and the preprocessing fields (used by preprocess).
"""

from ml_collections import ConfigDict, config_dict


def get_config() -> ConfigDict:
    c = ConfigDict()
    # --- identity and raw file ---------------------------------------------------------------
    c.name = "grav"
    c.raw_path = "data/raw/grav.h5"  # relative paths are relative to the working directory
    c.format = "astrochem_jax"  # reader: astrochem_jax | uclchem | carbox
    c.key = ""  # HDF5 key / group (UCLCHEM pandas: "df"; Carbox: "large" or "small")
    c.n_tracers = 64
    c.n_steps = 300
    c.seed = 42

    # --- ground truth generator (owned by astrochem_jax.generate) -------------------------------
    c.generator = ConfigDict()
    c.generator.network = "default"  # "default" or a path to a UMIST-format .rates file

    # --- preprocessing (owned by astrochem_jax.preprocess) -------------------------------------
    c.physical_parameters = ["Density", "Radfield", "Av", "gasTemp"]
    c.physical_ranges = config_dict.placeholder(dict)  # {name: [min, max]}; None = from train split
    c.metadata_columns = ["Index", "Model", "Time"]
    c.columns_to_drop = ["dustTemp", "dstep", "zeta", "SURFACE", "BULK"]
    c.abundance_clip = (1e-20, 1.0)
    c.n_species = config_dict.placeholder(int)  # checked against the file when set
    c.train_split = 0.75
    c.prepend_initial_abundances = False
    c.shift_physical = True
    return c
