"""Carbox gravitational-collapse runs: HDF5 group `/large` (or `/small`) with `columns`,
`data` [rows, C], `tracer_id` and `tracer_ptr` (CSR [T + 1] or [T, 3] of id, first row, count).
Carbox's lower-case column names are mapped to ours by the reader (time, density, temperature,
av, rad_field -> Time, Density, gasTemp, Av, Radfield).
"""

from ml_collections import ConfigDict

from configs.datasets import grav


def get_config() -> ConfigDict:
    c = grav.get_config()
    c.name = "carbox_grav"
    c.raw_path = "data/raw/carbox_gravitational_collapse.h5"
    c.format = "carbox"
    c.key = "large"  # or "small"
    c.metadata_columns = ("Index", "Model", "Time")
    # Carbox outputs carry no cosmic-ray column: AstroChemNet's four conditions.
    c.physical_parameters = ("Density", "Radfield", "Av", "gasTemp")
    c.columns_to_drop = ("dustTemp", "dstep", "zeta", "SURFACE", "BULK")
    return c
