"""Preprocessing stage: raw HDF5 (ours, UCLCHEM pandas fixed format, Carbox) -> cached, validated,
scaled float32 shards + manifest (`outputs/preprocessed/<dataset>/<method>/`) and the dataset's
static files (`outputs/utils/<dataset>/`).

Library use (later stages build caches on demand):

    from astrochem_jax.preprocess import preprocess, is_cached
    directory = preprocess("grav", "sequential")   # names, paths or ConfigDicts

Command line: `python -m astrochem_jax.preprocess --dataset=grav --method=sequential [--force]`.
"""

from astrochem_jax.preprocess.errors import PreprocessError
from astrochem_jax.preprocess.methods import PREPROCESSORS, Method, TracerBatch
from astrochem_jax.preprocess.pipeline import cache_status, is_cached, output_dirs, preprocess
from astrochem_jax.preprocess.readers import READERS, open_raw

__all__ = [
    "PREPROCESSORS",
    "READERS",
    "Method",
    "PreprocessError",
    "TracerBatch",
    "cache_status",
    "is_cached",
    "open_raw",
    "output_dirs",
    "preprocess",
]
