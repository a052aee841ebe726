"""Worker of tests/test_multiprocess.py: train the tiny autoencoder, then the tiny latent
emulator on it, in THIS process (one of a multi-process run, or a single-process reference).

    python tests/multiprocess_train.py OUTPUTS_DIR N_CPU_DEVICES EPOCHS

Multi-process runs set JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; the configs
then say distributed=True, so `train_component` reads them (`training.mesh.
initialize_distributed`). The preprocessed data must already be under OUTPUTS_DIR.

SIGTERM_AT=<process>:<call> makes that process send itself SIGTERM during its <call>-th jitted
train call (a preemption notice reaching one host); like `python -m astrochem_jax.train`, the
worker then exits with 128 + the signal number once the checkpoint is saved.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from astrochem_jax import runtime  # noqa: E402

if __name__ == "__main__":
    runtime.configure_threads()
    outputs, n_devices, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.environ["ASTROCHEM_JAX_OUTPUTS"] = outputs
    import jax

    jax.config.update("jax_num_cpu_devices", n_devices)
    cache = HERE.parent / "outputs" / "jax_cache"
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    import signal

    import numpy as np
    import training_fixtures as tf

    from astrochem_jax import paths
    from astrochem_jax.training import state as state_lib
    from astrochem_jax.training import train_component
    from astrochem_jax.training.preemption import TrainingInterrupted

    if os.environ.get("SIGTERM_AT"):
        who, at = (int(v) for v in os.environ["SIGTERM_AT"].split(":"))
        real, calls = state_lib.lr_schedule_factor, [0]

        def factor(config, progress):
            if np.ndim(progress) == 1:  # once per jitted train call
                calls[0] += 1
                if calls[0] == at and jax.process_index() == who:
                    os.kill(os.getpid(), signal.SIGTERM)
            return real(config, progress)

        state_lib.lr_schedule_factor = factor

    distributed = "JAX_COORDINATOR_ADDRESS" in os.environ
    for kind, method in (("autoencoder", "timeless"), ("emulator", "sequential")):
        c = tf.tiny_config(kind)
        c.epochs = epochs
        c.distributed = distributed
        c.dropout = 0.1  # exercise the dropout stream across processes too
        c.steps_per_call = 2  # several calls per epoch: a stop can land mid-epoch
        if kind == "autoencoder":
            # Without BatchNorm: the bias of a Linear layer in front of a BatchNorm has a zero
            # gradient, so Adam turns the float rounding of the cross-device reductions (whose
            # order differs between an in-process all-reduce and gloo) into parameter drifts of
            # ~lr per step (see test_training.test_one_vs_eight_devices_same_losses).
            c.model.normalization = "none"
        else:
            c.model.state_noise_std = 0.01
        try:
            train_component(c, preprocessed_dir=paths.preprocessed_dir("synth", method))
        except TrainingInterrupted as stop:
            print(f"process {jax.process_index()}: interrupted: {stop}", flush=True)
            sys.exit(stop.exit_code)
    print(f"process {jax.process_index()} of {jax.process_count()}: done", flush=True)
