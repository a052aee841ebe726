"""Direct surrogate on the default dataset: direct_emulator_grav steps on scaled abundances.

`python -m astrochem_jax.benchmark --config=configs/surrogates/direct_emulator_grav.py`
No autoencoder: `components.encoder` / `components.decoder` are empty.
"""

from ml_collections import ConfigDict

from configs import datasets
from configs.surrogates.ae_emulator_grav import benchmark_config


def get_config(dataset: str | None = None) -> ConfigDict:
    c = ConfigDict()
    c.name = datasets.component_name("direct_emulator_grav", dataset)
    c.type = "direct_emulator"
    c.components = ConfigDict()
    c.components.encoder = ""
    c.components.emulator = datasets.component_name("direct_emulator_grav", dataset)
    c.components.decoder = ""
    # float32 matrix products of the rollout (jax.default_matmul_precision; "default" = the
    # backend's choice: TF32 on recent NVIDIA GPUs); recorded in report.json "numerics".
    c.matmul_precision = "default"
    c.benchmark = benchmark_config()
    return c
