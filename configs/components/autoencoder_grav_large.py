"""Autoencoder on the default dataset (AstroChemNet's widths: hidden [160, 80], latent 14, with
an untied decoder; wider for networks of more than 200 species, see LARGE_NETWORK_SPECIES).

    python -m astrochem_jax.train --config=configs/components/autoencoder_grav_large.py \
        [--config.lr=5e-4 --config.batch_size=256 ...] [--sweep="lr=1e-3,5e-4,1e-4"]
    python -m astrochem_jax.train \
        --config=configs/components/autoencoder_grav_large.py:uclchem_grav_train

This file is also the base of every component config: it holds every training hyperparameter
(the other component configs import it and override a few fields).

"Measured on the default dataset" in the component configs' comments means its 128-tracer
version (90 train tracers), on which the recipe was chosen. The default dataset now has 256
tracers and trains the same optimizer steps (`max_train_examples`); its own measurements are in
README.md ("Robustness").
"""

from ml_collections import ConfigDict, config_dict

from configs import datasets

LARGE_NETWORK_SPECIES = 200


def get_config(dataset: str | None = None) -> ConfigDict:
    """dataset: a configs/datasets name (`--config=...autoencoder_grav_large.py:<dataset>`);
    None = the default dataset `grav`. The component is named after the dataset."""
    c = ConfigDict()
    # output directory under outputs/weights/
    c.name = datasets.component_name("autoencoder_grav_large", dataset)
    c.type = "autoencoder"  # key of training.components.COMPONENTS
    c.dataset = datasets.by_name(dataset)
    c.preprocessing_method = "timeless"  # configs/preprocessing/<name>.py
    c.seed = 0
    # Deep ensemble: N members trained in one run (one vmapped step; member k its own init,
    # data order, dropout and noise keys; member 0 is the plain component of `seed`). A member
    # whose loss goes non-finite is excluded (recorded in metrics.json and summary.json).
    c.ensemble_size = 1
    # Warm start: a trained component of this type (same model) whose best weights initialise
    # this run (fresh optimizer); None = random initialisation.
    c.init_from = config_dict.placeholder(str)

    # --- model ---------------------------------------------------------------------------------
    c.model = ConfigDict()
    c.model.hidden_dims = (160, 80)
    # Measured (seed 0, val split, default dataset, this recipe): latent 14 0.0152 dex / 3.54%
    # mean relative error; latent 20 3.36%; latent 24 3.64%. Not worth a larger emulator state.
    c.model.latent_dim = 14
    # Gaussian noise on the latent while training (AstroChemNet: 0.1). Measured on this dataset
    # at CI-sized budgets (2 CPU cores): noise 0.1 -> val mean relative error 15.8%, 0.02 ->
    # 10.7%, 0.0 -> 5.0%; raise it for a latent emulator that must tolerate its own drift.
    c.model.latent_noise_std = 0.0
    c.model.normalization = "batch"  # hidden-layer normalisation: "batch" or "none"
    # Decay of the BatchNorm running statistics that evaluation uses (flax convention; 0.9 is
    # PyTorch's momentum 0.1). Training itself uses batch statistics: this changes no weight.
    c.model.batchnorm_momentum = 0.9
    # Decoder kernels of its own (False) or the encoder's transposed (True, AstroChemNet). The
    # autoencoder underfits (train floor ~ validation floor), so capacity pays. Measured (seed 0,
    # default dataset, train / val / test mean relative error of decode(encode(x))): tied, 400
    # epochs 3.29 / 3.51 / 4.05%; untied, 400 epochs 2.73 / 3.13 / 3.60%; untied, 1000 epochs
    # 1.75 / 2.12 / 2.63% (chosen); untied with a clipped output 3.41% val (400 epochs); untied
    # [320, 160], 1000 epochs 1.41 / 1.95 / 2.41%, but it slows the emulator's epochs ~30% (its
    # loss decodes every step): ~15.5 min of quickstart on 2 cores, estimated from its epoch
    # times (the shipped width: 13 min 39 s measured).
    c.model.tied_weights = False
    # models.autoencoder.ACTIVATIONS: "sigmoid" (AstroChemNet), "clip", "linear"
    c.model.latent_activation = "sigmoid"
    c.model.output_activation = "sigmoid"
    # Large networks (a dataset that declares more than LARGE_NETWORK_SPECIES species, e.g. the
    # 333 species of UCLCHEM gas-grain output) get a wider autoencoder and latent. Measured on
    # the validation tracers of real UCLCHEM data (uclchem_grav_train, seed 0, 400 epochs),
    # mean |dlog10| of decode(encode(x)): [160, 80] / 14 0.178 dex, [160, 80] / 32 0.172,
    # [160, 80] / 32 untied 0.167, [512, 256] / 64 0.159, [512, 256] / 32 0.153 (chosen);
    # dropout 0.1 on [512, 256] / 32 was worse (0.219 at epoch 200). PCA needs 48 components
    # for 0.154 dex there: the chemistry of these tracers is high-dimensional. Untied, 1000
    # epochs: train / val / test 0.022 / 0.149 / 0.196 dex: a 7x gap between train and unseen
    # tracers, so on 62 train tracers coverage, not capacity, is the limit. Decided from the
    # dataset config's n_species when the config is built (a later --config.dataset.n_species
    # override does not change it; set --config.model.* directly).
    # Row mixup (models.layers.RowMixup): with this probability a training row is replaced by a
    # random convex combination with another row of its batch, as input and target. It teaches
    # the space between training tracers, so it pays where coverage, not capacity, limits the
    # autoencoder. Measured (val / test mean |dlog10| of decode(encode(x)), 300 epochs, same
    # schedule): real UCLCHEM (uclchem_grav_train, 62 train tracers) seed 0 0.151 / 0.204 off,
    # 0.137 / 0.169 at 0.5; seed 1 0.155 / 0.202 off, 0.137 / 0.167 at 0.5; pairs taken from the
    # same time step 0.134 / 0.167 (seed 0), every row mixed 0.140 / 0.172; Gaussian input
    # noise 0.01 0.157 / 0.206; conditioning encoder and decoder on the physical parameters
    # 0.20 (worse: per-tracer constants let it memorise tracers). On the default data
    # (capacity-limited: train ~ val) it costs: 0.0149 -> 0.0181 dex val. Off there.
    c.model.row_mixup = 0.0
    if (c.dataset.get("n_species") or 0) > LARGE_NETWORK_SPECIES:
        c.model.hidden_dims = (512, 256)
        c.model.latent_dim = 32
        c.model.row_mixup = 0.5

    # --- optimisation --------------------------------------------------------------------------
    # A fixed budget with a warmup + cosine learning-rate schedule (no plateau heuristics), batch
    # 256. Measured (val split, default dataset): the old recipe (batch 64, reduce-on-plateau,
    # 600 epochs) reached 6.1% val mean relative error with 10x validation spikes (BatchNorm
    # statistics of small batches; val MRE printed as 1e12% on some epochs); this one 5.0% on
    # 44 train tracers and 4.1% on 90, no spike above 3x the running best, in 400 epochs; 1000
    # epochs (untied) 2.12% (see tied_weights). One epoch is ~0.15 s on 2 CPU cores.
    c.epochs = 1000
    # At most this many training examples (autoencoder: rows; emulators: windows; closed-loop
    # fine-tune: trajectories), i.e. the optimizer steps of `epochs` epochs on 90 train tracers
    # x 300 rows (a 128-tracer dataset). A larger train split trains fewer epochs of the same
    # cost (the default dataset's 180 train tracers: 500 epochs); a smaller one (the real
    # UCLCHEM file's 63) keeps `epochs`. None = always `epochs`.
    c.max_train_examples = 27_000_000
    c.batch_size = 256  # global batch, split over the devices (must divide the device count)
    c.eval_batch_size = 2048
    c.steps_per_call = 32  # training steps per jitted call (lax.scan): amortises dispatch
    c.lr = 2e-3
    c.betas = (0.9, 0.999)
    c.adam_eps = 1e-8
    c.weight_decay = 1e-4
    c.grad_clip_norm = 1.0
    # Exponential moving average of the parameters over about this many epochs (0 = off): the
    # average is what is validated, chosen as best checkpoint and exported (state.eval_params).
    c.ema_epochs = 0.0
    # BatchNorm statistics recomputed after every epoch from this many train items (rows of the
    # epoch's last chunk, evenly spread, whole batches), with the weights being validated; they
    # are what is validated, checkpointed and exported (0 = keep the running averages; no effect
    # on a model without BatchNorm; training itself is unchanged: it uses batch statistics).
    # The running averages (momentum 0.9: the last ~10 steps) lag the weights at the peak
    # learning rate, and that alone made single validation epochs 3.2-3.75x the running best
    # (4 of 10 shipped autoencoders). Measured, same weights step for step (validation loss,
    # largest / running best, epochs above 1.5x, best): default seed 0 3.66 / 53 / 4.00e-3 ->
    # 1.77 / 6 / 3.75e-3; grav_seed7 seed 4 3.75 / 152 / 4.06e-3 -> 1.82 / 31 / 4.04e-3;
    # momentum 0.99 instead was worse (validation 1.5-2x higher through training), 0.5 between.
    c.batchnorm_recalibration_items = 8192
    # Learning-rate schedule multiplying lr (state.lr_schedule_factor): "constant" or
    # "warmup_cosine" (linear warmup over warmup_epochs, cosine to lr x lr_final_factor).
    c.lr_schedule = "warmup_cosine"
    c.warmup_epochs = 5.0
    c.lr_final_factor = 0.01
    # The validation metric that chooses the best checkpoint and drives early stopping,
    # reduce-on-plateau, divergence and the convergence check (training.loop.validation_score):
    # "loss", or any scalar validation metric ("mean_abs_dlog10", "mean_relative_error").
    c.checkpoint_metric = "loss"
    # Reduce-on-plateau of the LR on the validation score, once per epoch (PyTorch semantics),
    # on top of the schedule; off here (patience beyond the epoch budget).
    c.plateau_factor = 0.7
    c.plateau_patience = 100_000
    c.plateau_threshold = 1e-3  # relative improvement that counts
    c.min_lr = 1e-6
    # Early stopping after this many epochs without a better validation score (off: the cosine
    # schedule's best epochs come last).
    c.stagnant_epoch_patience = 100_000
    # Divergence: an epoch with a NaN/inf loss (or, when divergence_factor is set, a validation
    # score > divergence_factor x the best) rolls back to the best checkpoint with lr x
    # rollback_lr_factor, at most max_rollbacks times (0 = never: a NaN stops the run).
    # divergence_factor is off by default (transient validation spikes recover on their own).
    c.divergence_factor = config_dict.placeholder(float)
    c.rollback_lr_factor = 0.5
    c.max_rollbacks = 4
    # A finished run counts as converged only if its best validation score is below this fraction
    # of the untrained model's (and it is finite, and not every rollback was used); otherwise
    # train exits with an error and summary.json says status "failed" (surrogates refuse it).
    c.converged_loss_ratio = 0.5
    # dropout and its AstroChemNet-style decay: after `dropout_decay_patience` epochs without a
    # better validation loss, dropout *= dropout_decay_factor (set to 0 below dropout_min).
    c.dropout = 0.0
    c.dropout_decay_patience = 0  # 0 = no decay
    c.dropout_decay_factor = 0.5
    c.dropout_min = 1e-3

    # --- loss (losses.total_loss) --------------------------------------------------------------
    c.loss = ConfigDict()
    c.loss.power_weight = 3.0  # elementwise 10^(power_weight |o - t|) - 1
    # AstroChemNet's alpha (2): off, the max-over-species term trades the mean fit for the worst
    # species of each row. Measured (val, default dataset): 0.0187 dex, MRE 4.3% with 2;
    # 0.0140 dex, MRE 3.3% with 0.
    c.loss.worst_weight = 0.0
    c.loss.conservation_weight = 0.1  # |log10(x_hat S) - log10(x S)|
    c.loss.relative_weight = 0.0  # log(1 + |x_hat - x| / x): see astrochem_jax/losses.py

    # --- emulators only (kept here so every config has the same fields) ------------------------
    c.horizon = 16  # rollout window length (steps)
    c.window_stride = 1  # training windows start every `window_stride` steps (validation: 1)
    c.t0_window_repeats = 1  # each tracer's window from t0 appears this many times per epoch
    # validation windows (stride 1): None = `horizon` steps, 0 = the full trajectory from t0
    c.val_horizon = config_dict.placeholder(int)
    c.autoencoder_component = config_dict.placeholder(str)
    # Truncated backpropagation through the window: no gradient through more than this many
    # consecutive steps (0 = through the whole window).
    c.gradient_window = 0

    # --- data placement, checkpoints, multi-host ------------------------------------------------
    c.device_resident_max_mb = 2048.0  # splits up to this size live on the devices
    c.checkpoint = ConfigDict()
    c.checkpoint.async_save = False
    # A checkpoint is written after every new best epoch, every `every_epochs` epochs and at the
    # end; an interrupted run resumes (exactly) from the last one written.
    c.checkpoint.every_epochs = 10
    c.distributed = False  # jax.distributed.initialize() (multi-host; see training/mesh.py)

    # --- numerics and operation ----------------------------------------------------------------
    # float32 matrix products (jax.default_matmul_precision), recorded in summary.json: "default"
    # is the backend's choice (TF32 on recent NVIDIA GPUs, bfloat16 passes on TPU; exact float32
    # on CPU), "highest" full float32 everywhere (slower on GPU / TPU).
    c.matmul_precision = "default"
    # Trace this many training steps with jax.profiler (0 = off), from the run's second jitted
    # call: outputs/runs/<name>/tensorboard/plugins/profile/.
    c.profile_steps = 0
    return c
