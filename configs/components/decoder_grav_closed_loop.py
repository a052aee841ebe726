"""Closed-loop decoder on the default dataset: the decoder of `autoencoder_grav_large` refit to
read the states that `emulator_grav_closed_loop` (train it first) produces closed loop over the
TRAIN tracers' whole trajectories; the encoder and the emulator stay frozen, so the states are
exactly the surrogate's (`training.closed_loop_decoder`).

    python -m astrochem_jax.train --config=configs/components/decoder_grav_closed_loop.py
    python -m astrochem_jax.train --config=decoder_grav_closed_loop:uclchem_grav_train

Why: the decoder was trained on encode(x), the latents of true abundances, but the emulator's
states drift away from those latents over a 300-step rollout; a decoder that has seen the
drifted states reads them back better. The checkpoint is chosen by the closed-loop mean |dlog10|
over every row of the VALIDATION tracers (never the test tracers), and the autoencoder's own
weights are candidate epoch 0: a refit that does not beat them keeps them (`kept_warm_start`).
"""

from ml_collections import ConfigDict

from configs import datasets
from configs.components import autoencoder_grav_large


def get_config(dataset: str | None = None) -> ConfigDict:
    c = autoencoder_grav_large.get_config(dataset)
    c.name = datasets.component_name("decoder_grav_closed_loop", dataset, "closed_loop")
    c.type = "closed_loop_decoder"  # key of training.components.COMPONENTS
    c.preprocessing_method = "sequential"
    c.emulator_component = datasets.component_name("emulator_grav_closed_loop", dataset,
                                                   "closed_loop")
    # The emulator's autoencoder: its weights are the warm start and only the decoder's move
    # (the model is rebuilt from that autoencoder's own config.model).
    c.init_from = datasets.component_name("autoencoder_grav_large", dataset)
    c.trainable_params = ("decoder_",)
    c.checkpoint_metric = "mean_abs_dlog10"
    c.converged_loss_ratio = None  # its reference is its warm start (epoch 0), not a fresh model
    # Chosen on the VALIDATION tracers of the default data, seeds 0 and 1 (closed-loop mean
    # |dlog10| of the surrogate at the chosen epoch; the autoencoder's decoder: .0851 / .0762):
    #   lr 3e-4, 200 epochs .0588 / .0528; lr 1e-3, 200 epochs .0550 / .0492;
    #   lr 1e-3, 400 epochs (shipped) .0525 / .0462; lr 1e-3, 800 epochs (seed 1) .0436: a
    #   further 6% for twice the time. The loss shape mattered less (seed 0, lr
    #   3e-4, 200 epochs: no conservation term .0581, power_weight 1 .0606).
    # ~2 min on 2 CPU cores for the default data.
    # The loss adds the log of AstroChemNet's relative error, log(1 + |x_hat - x| / x)
    # (`losses.log_relative_error`), weight 10: where the emulator's state cannot tell on which
    # side of an abrupt drop the truth is (a transition it times a few steps off), the symmetric
    # loss reads the state as the log-midpoint, a relative error of 10^(drop / 2); this term
    # reads it on the low side, where an under-prediction costs at most 1. Chosen on the
    # VALIDATION tracers (seed 0; rule fixed before: the lowest validation MRE whose closed-loop
    # mean |dlog10| is at most 0.003 dex above weight 0's). Weight: val MRE / mean / p99 dex:
    #   default data: 0 26.7 / .0529 / .640; 0.3 14.2 / .0524 / .617; 1 8.95 / .0530 / .620;
    #     3 5.50 / .0534 / .630; 10 3.96 / .0536 / .636; 30 3.52 / .0537 / .638 (one tracer
    #     holds most of the MRE; without it 1.30 -> 0.296 (3), 0.245 (10), 0.229 (30))
    #   grav_seed7: 0 1.305 / .0458 / .447; 3 0.219 / .0474 / .465; 10 0.177 / .0477 / .468
    # 10 rather than 30: 30 gains 11% more on the default data and was not measured on
    # grav_seed7. The same term in the emulator's closed-loop fine-tune (weight 1, then this
    # decoder with weight 1) did not add to it: 10.2 / .0536 against 8.95 / .0530.
    c.loss.relative_weight = 10.0
    c.epochs = 400
    # Optimizer steps of 400 epochs of 180 train tracers x 300 rows (the default dataset).
    c.max_train_examples = 21_600_000
    c.batch_size = 1024
    c.eval_batch_size = 4096
    c.lr = 1e-3
    c.lr_schedule = "warmup_cosine"
    c.warmup_epochs = 3.0
    c.lr_final_factor = 0.01
    return c
