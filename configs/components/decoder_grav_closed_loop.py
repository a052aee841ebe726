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
    # (`losses.log_relative_error`), weight 30: where the emulator's state cannot tell on which
    # side of an abrupt drop the truth is (a transition it times a few steps off), the symmetric
    # loss reads the state as the log-midpoint, a relative error of 10^(drop / 2); this term
    # reads it on the low side, where an under-prediction costs at most 1. Chosen on the
    # VALIDATION tracers (seed 0; rule fixed before: the lowest validation MRE whose closed-loop
    # mean |dlog10| is at most 0.003 dex above weight 0's). Weight: val MRE / mean / p99 dex:
    #   default data: 0 26.7 / .0529 / .640; 0.3 14.2 / .0524 / .617; 1 8.95 / .0530 / .620;
    #     3 5.50 / .0534 / .630; 10 3.96 / .0536 / .636; 30 3.52 / .0537 / .638 (one tracer
    #     holds most of the MRE; without it 1.30 -> 0.296 (3), 0.245 (10), 0.229 (30))
    #   grav_seed7: 0 1.305 / .0458 / .447; 3 0.219 / .0474 / .465; 10 0.177 / .0477 / .468;
    #     30 0.168 / .0478 / .471
    # The same term in the emulator's closed-loop fine-tune (weight 1, then this decoder with
    # weight 1) did not add to it: 10.2 / .0536 against 8.95 / .0530.
    # Reading a species low lowers its elements' totals too (worst element S 4.4-5.8% on
    # grav_seed7's test tracers with weight 10, 2.9-3.8% without the term), so the element-total
    # term weighs 3 here (the autoencoder's 0.1). Rule fixed before the runs: ship a variant if
    # on each of grav seeds 1 and 3 and grav_seed7 seed 0 its mean dex is at most 0.002 above
    # (relative 10, conservation 0.1)'s, its worst element lower, and its MRE lower on at least
    # 2 of the 3. VALIDATION tracers, MRE / mean dex / worst element's mean error, grav s1; grav
    # s3; grav_seed7 s0:
    #   relative 10, conservation 0.1: 0.575 / .0515 / S 6.1%; 0.186 / .0514 / 5.9%;
    #     0.177 / .0477 / 5.2%
    #   conservation 1: 0.611 / .0515 / 5.0%; 0.193 / .0512 / 4.7%; 0.180 / .0475 / 4.6%
    #   conservation 3: 0.664 / .0517 / 3.6%; 0.204 / .0512 / 3.5%; 0.192 / .0476 / 3.6%
    #   relative 30: 0.539 / .0517 / 6.3%; not run; 0.168 / .0478 / 5.3%
    #   relative 30, conservation 3 (shipped): 0.572 / .0516 / 5.0%; 0.189 / .0513 / 4.7%;
    #     0.173 / .0476 / 4.6%
    # and on the gas-phase network (uclchem_gas_grav seed 0): 8.23 / .0883 / Si 4.4% with the
    # previous weights, 0.384 / .0885 / Si 3.4% (CH2CO 1293 -> 7.4).
    c.loss.relative_weight = 30.0
    c.loss.conservation_weight = 3.0
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
