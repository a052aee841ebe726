"""UCLCHEM gravitational-collapse runs as AstroChemNet used them: a pandas fixed-format HDF5 frame
(`DataFrame.to_hdf(path, key="df")`), one row per (tracer, time), columns Index, Time, Density,
gasTemp, dustTemp, Av, radfield, zeta, the step counter (`point` in UCLCHEM v3, `dstep` in older
dumps), 333 species + SURFACE + BULK, Tracer.

    python -m astrochem_jax.preprocess --dataset=uclchem_grav --method=sequential \
        --dataset.raw_path=../shared/data/uclchem_grav_small.h5
"""

from ml_collections import ConfigDict

from configs.datasets import grav


def get_config() -> ConfigDict:
    c = grav.get_config()
    c.name = "uclchem_grav"
    c.raw_path = "data/raw/gravitational_collapse.h5"
    c.format = "uclchem"
    c.key = "df"
    c.n_species = 333
    # UCLCHEM's step counter is `point` in v3 outputs and `dstep` in older ones (a column that is
    # absent from a file is simply not there to drop).
    c.columns_to_drop = (*c.columns_to_drop, "point")
    # The shared UCLCHEM files start at t = 0 with the initial abundances in row 0. For dumps that
    # start at the first output, set --dataset.prepend_initial_abundances=True.
    c.prepend_initial_abundances = False
    return c
