"""Latent surrogate on the default dataset: the encoder of autoencoder_grav_large ->
emulator_grav_closed_loop (emulator_grav_sequential fine-tuned closed loop over whole
trajectories) -> decoder_grav_closed_loop (the autoencoder's decoder refit on that emulator's
closed-loop states).

`python -m astrochem_jax.benchmark --config=configs/surrogates/ae_emulator_grav.py`
Fields scripts rely on: `name` (output directory under outputs/benchmarks/), `type` (a key of
`astrochem_jax.surrogates.SURROGATES`), `components.{encoder,emulator,decoder}` (component names
under outputs/weights/). Everything else configures the benchmark.
"""

from ml_collections import ConfigDict, config_dict

from configs import datasets


def benchmark_config() -> ConfigDict:
    """Benchmark settings shared by every surrogate config."""
    b = ConfigDict()
    # Test tracers scored closed loop from t0 over the full trajectory (None = all).
    b.n_test_tracers = config_dict.placeholder(int)
    # False: accuracy only (no throughput, matmul peak or solver timing; scripts that sweep
    # seeds use it).
    b.measure_speed = True
    # Throughput: batch sizes in trajectories (scored tracks replicated to fill the batch).
    b.batch_sizes = (1, 16, 64, 256, 1024, 4096)
    b.timing_repeats = 5  # timed calls per batch size after one untimed warm-up
    b.min_timing_s = 1.0  # keep repeating until this much time has been timed
    b.matmul_size = 2048  # [n, n] @ [n, n] float32 jnp.dot for the machine's peak
    # Ground-truth solver on the same validation tracks (only for datasets it can solve).
    b.solver = ConfigDict()
    b.solver.enabled = True
    b.solver.n_tracers = config_dict.placeholder(int)  # None = every scored tracer
    # None = the settings stored in the raw file (those that generated the dataset).
    b.solver.rtol = config_dict.placeholder(float)
    b.solver.atol = config_dict.placeholder(float)
    b.solver.max_steps = config_dict.placeholder(int)
    b.solver.batch_size = config_dict.placeholder(int)
    # Worker processes (None = one per core on CPU, 1 on accelerators): the rollout is sharded
    # over one CPU device per core, so the solver gets every core too.
    b.solver.workers = config_dict.placeholder(int)
    # Distance to training (report "distance_to_training"): each scored row's mean |dlog10| to
    # the nearest train tracer at the same step, over at most this many train tracers (a seeded
    # sample beyond it; cost ~ scored x reference x steps x species).
    b.max_reference_tracers = 1024
    # Plots: example-trajectory species (matched case-insensitively) + the worst species.
    b.plot_species = ("CO", "H2O", "HCO+", "N2H+", "e-")
    b.n_worst_species = 40
    return b


def get_config(dataset: str | None = None) -> ConfigDict:
    """dataset: a configs/datasets name (`--config=...ae_emulator_grav.py:<dataset>`): the
    surrogate of the components trained on it (named as in the component configs)."""
    c = ConfigDict()
    c.name = datasets.component_name("ae_emulator_grav", dataset)
    c.type = "ae_emulator"
    c.components = ConfigDict()
    c.components.encoder = datasets.component_name("autoencoder_grav_large", dataset)
    # The closed-loop fine-tune of emulator_grav_sequential (train both, in that order).
    c.components.emulator = datasets.component_name("emulator_grav_closed_loop", dataset,
                                                    "closed_loop")
    # The autoencoder's decoder refit on the fine-tuned emulator's closed-loop states (train
    # it after the emulator; components.decoder = components.encoder uses the autoencoder's).
    c.components.decoder = datasets.component_name("decoder_grav_closed_loop", dataset,
                                                   "closed_loop")
    # float32 matrix products of the rollout (jax.default_matmul_precision; "default" = the
    # backend's choice: TF32 on recent NVIDIA GPUs); recorded in report.json "numerics".
    c.matmul_precision = "default"
    c.benchmark = benchmark_config()
    return c
