"""A realistic network for the default collapse tracks: the gas-phase subset of UCLCHEM v3's
network (164 species, 2,236 reactions, from ../shared/networks), integrated along the same
free-fall tracks as the default dataset, 256 tracers (as the default dataset: 180 train, 38
validation, 38 test; the components train the same optimizer steps as on 128). With 128 tracers
(90 / 19 / 19) the shipped recipe scored 0.161 / 0.155 / 0.133 dex on the test tracers of seeds
0 / 1 / 2, and its checkpoints were chosen inside the noise of 19 validation tracers; with 256,
0.121 / 0.093 / 0.096 (README, robustness table; docs/architecture.md, "256 tracers instead of
128"):

    python -m astrochem_jax.generate --config=configs/datasets/uclchem_gas_grav.py

The network files are development material next to the checkout (MIT licence, see
../shared/networks/UCLCHEM_LICENSE.txt), read in place and never copied; generating this dataset
needs ../shared (tests that use it skip without it). The raw file stores the network as UMIST
RATE22 text, so the benchmark can re-solve it.
"""

from ml_collections import ConfigDict

from configs.datasets import grav

SHARED_NETWORKS = "../shared/networks"


def get_config() -> ConfigDict:
    c = grav.get_config()
    c.name = "uclchem_gas_grav"
    c.raw_path = "data/raw/uclchem_gas_grav.h5"
    c.n_tracers = 256
    # The gas-phase network's species: checked against the raw file by preprocess, and what the
    # component configs size themselves by (configs/components/emulator_grav_sequential.py).
    c.n_species = 164
    c.generator.network = f"{SHARED_NETWORKS}/uclchem_reactions.csv"
    c.generator.network_species_csv = f"{SHARED_NETWORKS}/uclchem_species.csv"
    c.generator.network_gas_phase = True
    return c
