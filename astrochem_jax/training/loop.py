"""ONE generic training loop for every component type (`training.components.COMPONENTS`).

    summary = train_component(config)                 # preprocesses on demand
    summary = train_component(config, preprocessed_dir=d, devices=jax.devices()[:1])

Per epoch: a permutation of the training items drawn from the data key, `steps_per_call`
jitted steps per dispatch (`jax.jit(step, donate_argnums=0)`, state replicated `P()`, batch cut
from the data chunk on device and sharded `P("data")`, see `training.data`), one host fetch of
the epoch's losses, a full validation pass in eval mode (padded, masked batches), reduce-on-plateau
of the learning rate, optional dropout decay, a checkpoint (latest + best), `metrics.json` and
TensorBoard scalars (`training.metric_writer`, process 0). Multi-process runs (config.distributed)
run the same code: every process reads its own rows, process 0 preprocesses and writes every
artifact while the others wait. SIGTERM / SIGINT save a checkpoint between two dispatches and
stop (`training.preemption.TrainingInterrupted`); `config.profile_steps` traces that many steps
with `jax.profiler`. Everything runs under `config.matmul_precision`. A diverged epoch (a
NaN/inf loss, or a validation score above `divergence_factor` x the best) rolls the state back to
the best checkpoint with the learning rate x `rollback_lr_factor`, at most `max_rollbacks` times;
a non-finite loss with no rollback left raises `NonFiniteLossError` (last good checkpoint kept).
Early stopping after `stagnant_epoch_patience` epochs without a new best validation score. The
score is the validation metric `config.checkpoint_metric` (`validation_score`; the loss unless
set: emulators use the closed-loop mean |dlog10|), and it also chooses the best checkpoint.
Rerunning the same config resumes from the latest checkpoint and reproduces an uninterrupted run
exactly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from ml_collections import ConfigDict

from astrochem_jax import atomic, config_utils, locks, paths, runtime, shards
from astrochem_jax.losses import total_loss, validation_metrics
from astrochem_jax.training import checkpoints as ckpt_lib
from astrochem_jax.training import checks, preemption
from astrochem_jax.training import components as comp_lib
from astrochem_jax.training import data as data_lib
from astrochem_jax.training import mesh as mesh_lib
from astrochem_jax.training import metric_writer as writer_lib
from astrochem_jax.training import state as state_lib
from astrochem_jax.training.preemption import TrainingInterrupted

METRICS_JSON = "metrics.json"
SUMMARY_JSON = "summary.json"
# Config fields that may change between a run and its resumption (they do not change the result).
RESUME_IGNORED_FIELDS = ("epochs", "max_train_examples", "distributed", "checkpoint",
                         "device_resident_max_mb", "profile_steps",
                         # a verdict on the finished run, not a training setting
                         "max_pinned_state_fraction")
# Fields added after runs were saved, with the value those runs used (resume compares them).
NEW_FIELD_DEFAULTS = {"matmul_precision": "default", "init_from": None, "ema_epochs": 0.0,
                      "model.row_mixup": 0.0, "model.physical_noise_std": 0.0,
                      "checkpoint_metric": "loss", "loss.relative_weight": 0.0,
                      "loss.partition_weight": 0.0}
# metrics.json fields that are timings (excluded when comparing runs).
TIMING_FIELDS = ("seconds", "samples_per_s")


class NonFiniteLossError(FloatingPointError):
    """A NaN / inf loss: training stops, the last good checkpoint stays in place."""


class TrainingFailedError(RuntimeError):
    """A run ended without converging (see `convergence_verdict`); summary.json says so."""


def _metric_name(config) -> str:
    """config.checkpoint_metric, "loss" when unset."""
    return str(config.get("checkpoint_metric") or "loss")


def validation_score(val: dict, config) -> float:
    """The number that chooses checkpoints: the validation metric `config.checkpoint_metric`
    ("loss" when unset; emulators: "mean_abs_dlog10", the closed-loop error the benchmark
    reports), NaN when the validation loss itself is not finite. Lower is better.

    val: {metric name: scalar or [S] array} from the evaluation step."""
    metric = _metric_name(config)
    if metric not in val:
        raise ValueError(f"config.checkpoint_metric = {metric!r} is not a validation metric of "
                         f"{config.name}; expected one of {sorted(val)}")
    if np.ndim(val[metric]) != 0:
        raise ValueError(f"config.checkpoint_metric = {metric!r} is a per-species array; "
                         "expected a scalar validation metric")
    loss = float(val["loss"])
    return float(val[metric]) if math.isfinite(loss) else math.nan


def upgraded_loop(loop: dict) -> dict:
    """Bookkeeping restored from a checkpoint written before checkpoints were chosen by a
    configurable metric: its `best_val_loss` / `initial_val_loss`, and each history record's
    `val_loss`, are the scores of the default metric, the loss (NEW_FIELD_DEFAULTS: such a run
    resumes with checkpoint_metric "loss")."""
    loop = dict(loop)
    for old, new in (("best_val_loss", "best_val_score"),
                     ("initial_val_loss", "initial_val_score")):
        if old in loop and new not in loop:
            loop[new] = loop.pop(old)
    if "history" in loop:
        loop["history"] = [r if "val_score" in r else dict(r, val_score=r.get("val_loss"))
                           for r in loop["history"]]
    return loop


def convergence_verdict(loop: dict, best_val_score: float, config,
                        best_val: dict | None = None) -> str | None:
    """Why a finished run does not count as converged, or None.

    - the best validation score (`validation_score`) is not finite;
    - it is not below `config.converged_loss_ratio` x the untrained model's validation score
      (the run learned next to nothing: e.g. it diverged early and rolled back to epoch 1);
      not applied to a warm-started run (`config.init_from`), whose starting point is a trained
      model that stands as candidate epoch 0: such a run never ends worse than its warm start,
      and one that does not improve keeps it (`summary.json` "kept_warm_start");
    - every allowed rollback was used (the recipe is unstable on this data);
    - more than `config.max_pinned_state_fraction` of the best checkpoint's closed-loop
      validation states sit on a state bound while their truth is inside
      (`best_val`["pinned_state_fraction"], bounded emulators): an emulator trapped at its
      bounds can still beat the untrained model by far (measured: 0.45 dex against ~1.3) with
      17.5% of its states pinned, while the shipped recipe's runs pin 0.006-1.7%.
    """
    metric = _metric_name(config)
    if not math.isfinite(best_val_score):
        return f"the best validation {metric} is {best_val_score}"
    ratio = config.get("converged_loss_ratio")
    initial = loop.get("initial_val_score")
    if (ratio and initial is not None and not config.get("init_from")
            and not best_val_score < float(ratio) * initial):
        return (f"best validation {metric} {best_val_score:.4e} is not below "
                f"config.converged_loss_ratio = {float(ratio):g} x the untrained model's "
                f"{initial:.4e}")
    allowed = int(config.get("max_rollbacks") or 0)
    if allowed and int(loop.get("rollbacks", 0)) >= allowed:
        return f"all {allowed} rollbacks after diverged epochs were used"
    limit = config.get("max_pinned_state_fraction")
    pinned = (best_val or {}).get("pinned_state_fraction")
    if limit is not None and pinned is not None and float(pinned) > float(limit):
        return (f"{100 * float(pinned):.2g}% of the best epoch's closed-loop validation states "
                f"sit on a state bound while their truth is inside, above "
                f"config.max_pinned_state_fraction = {100 * float(limit):g}%: the emulator is "
                "trapped at its bounds (the shipped recipe's runs pin 0.006-1.7%; "
                "docs/architecture.md, \"Pinned states\"). Retrain with another config.seed, "
                "or check the autoencoder's latent range")
    return None


class ResumeMismatchError(ValueError):
    """An output directory that holds a run with a different config."""


# --- jitted steps ---------------------------------------------------------------------------------


def _loss_weights(config) -> dict:
    return {
        "power_weight": float(config.loss.power_weight),
        "worst_weight": float(config.loss.worst_weight),
        "conservation_weight": float(config.loss.conservation_weight),
        # absent in configs saved before the term existed: off
        "relative_weight": float(config.loss.get("relative_weight", 0.0)),
        "partition_weight": float(config.loss.get("partition_weight", 0.0)),
    }


def step_diagnostics(loss, parts: dict, grads, updates) -> dict:
    """Per-step scalars recorded for every training step: the loss, its unweighted terms, the
    global norm of the raw gradient (before clipping) and of the applied update."""
    out = {"loss": loss, "grad_norm": optax.global_norm(grads),
           "update_norm": optax.global_norm(updates)}
    out.update({f"loss_{k}": v for k, v in parts.items() if k != "total"})
    return out


def train_summary(diagnostics: dict) -> dict:
    """One epoch's per-step diagnostics [n_steps] each -> JSON scalars: the mean of every loss
    term, mean and max of the gradient norm, and the number of non-finite steps."""
    out = {k: _finite_or_none(float(np.mean(v))) for k, v in diagnostics.items()
           if k.startswith("loss_")}
    norms = diagnostics["grad_norm"]
    out["grad_norm_mean"] = _finite_or_none(float(np.mean(norms)))
    out["grad_norm_max"] = _finite_or_none(float(np.max(norms)))
    out["update_norm_mean"] = _finite_or_none(float(np.mean(diagnostics["update_norm"])))
    out["non_finite_steps"] = int(np.count_nonzero(~np.isfinite(diagnostics["loss"])
                                                   | ~np.isfinite(norms)))
    return out


def _constrain_batch(batch: Any, mesh) -> Any:
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, mesh_lib.batch_sharded(mesh, x.ndim)), batch
    )


@dataclasses.dataclass(frozen=True)
class Steps:
    """Jitted functions for one model definition (rebuilt if dropout changes).

    train(state, arrays, idx [n, B], frozen, lr_factors [n]) -> (state, diagnostics {name: [n]}):
    n consecutive steps on the batches of global item indices `idx` (cut from the chunk's arrays
    on device) in ONE dispatch (`lax.scan`), so small models are not bound by per-step dispatch.
    train_on_batches(state, batches (leading axis n), frozen) -> (state, diagnostics): the same
    updates on batches already cut (benchmarks use it to time the input pipeline separately).
    evaluate(params, batch_stats, arrays, idx [B], mask [B], frozen) -> {metric: sum over the
    unmasked items, "count": their number} (per-item metrics: padded batches count exactly).
    recalibrate(params, batch_stats, arrays, idx [B], frozen) -> batch_stats: the exact BatchNorm
    statistics of `params` on the items idx (see `recalibrated_batch_stats`).
    """

    train: Any
    train_on_batches: Any
    evaluate: Any
    recalibrate: Any


def _population_statistics_mode(model: nnx.Module) -> nnx.Module:
    """Every BatchNorm of `model` normalises with the statistics of its input batch and stores
    exactly them (momentum 0); the rest stays in evaluation mode."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
            module.use_running_average = False
            module.momentum = 0.0
    return model


def make_steps(component: comp_lib.Component, setup: comp_lib.Setup, mdef: state_lib.ModelDef,
               tx: optax.GradientTransformation, config, mesh, abstract_state: Any,
               members: int = 1, ema_decay: float = 0.0) -> Steps:
    """The jitted steps; with `members` > 1 the state carries a leading member axis and every
    function is `jax.vmap`ped over it (one dispatch trains every member): `idx` is then
    [n, M, B] (each member its own batches), diagnostics [n, M], evaluation sums [M]. The frozen
    arrays are shared, or per member when `setup.frozen_per_member` (autoencoder ensembles).
    A state with `ema_params` updates them after every step with `ema_decay`
    (`state.updated_ema`)."""
    weights = _loss_weights(config)
    stoich = (setup.stoich if weights["conservation_weight"] != 0
              or weights["partition_weight"] != 0 else None)

    def loss_of(pred, true):
        return total_loss(pred, true, stoichiometric_matrix=stoich,
                          abundance_clip=setup.abundance_clip, **weights)

    def update(state: state_lib.TrainState, batch, frozen, lr_factor):
        batch = _constrain_batch(batch, mesh)
        keys = state_lib.step_keys(state)

        def loss_fn(params):
            model = state_lib.merge_model(mdef, params, state.batch_stats, train=True, key=keys)
            pred, true, _ = component.predict(model, batch, frozen, setup)
            loss, parts = loss_of(pred, true)
            return loss, (parts, nnx.state(model, nnx.BatchStat))

        (loss, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        # The schedule's factor scales the whole update: for AdamW exactly lr x factor.
        updates = jax.tree.map(lambda u: u * lr_factor.astype(u.dtype), updates)
        params = optax.apply_updates(state.params, updates)
        diagnostics = step_diagnostics(loss, parts, grads, updates)
        # A step whose loss or gradient is not finite (e.g. a float32 overflow of the gradient
        # norm) changes nothing: params, optimizer moments and BatchNorm statistics stay as
        # they were. It is counted (`non_finite_steps`), and an epoch made of such steps still
        # reads as diverged through its NaN loss.
        ok = jnp.isfinite(loss) & jnp.isfinite(diagnostics["grad_norm"])
        ema = (None if state.ema_params is None
               else state_lib.updated_ema(state.ema_params, params, state.step, ema_decay))
        params, opt_state, batch_stats, ema = jax.tree.map(
            lambda new, old: jnp.where(ok, new, old), (params, opt_state, batch_stats, ema),
            (state.params, state.opt_state, state.batch_stats, state.ema_params))
        new = state_lib.TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                                   opt_state=opt_state, rng=state.rng, ema_params=ema)
        return new, diagnostics

    frozen_axis = 0 if setup.frozen_per_member else None
    step_fn = (update if members == 1
               else jax.vmap(update, in_axes=(0, 0, frozen_axis, None)))

    def cut(arrays, idx):
        """Batch of item indices idx [B] (or [M, B]: every member's batch cut at once, then
        split along a leading member axis)."""
        if members == 1:
            return component.make_batch(setup, arrays, idx, mesh)
        batch = component.make_batch(setup, arrays, idx.reshape(-1), mesh)
        return jax.tree.map(lambda x: x.reshape(members, -1, *x.shape[1:]), batch)

    def train_steps(state: state_lib.TrainState, arrays, idx, frozen, lr_factors):
        return jax.lax.scan(
            lambda s, xs: step_fn(s, cut(arrays, xs[0]), frozen, xs[1]), state, (idx, lr_factors))

    def train_on_batches(state: state_lib.TrainState, batches, frozen):
        ones = jnp.ones((jax.tree.leaves(batches)[0].shape[0],), jnp.float32)
        return jax.lax.scan(lambda s, xs: step_fn(s, xs[0], frozen, xs[1]), state,
                            (batches, ones))

    def per_item(pred, true):
        """Metrics of ONE item (a row, or a window [H, S]): the batch means are their means."""
        loss, parts = loss_of(pred[None], true[None])
        metrics = validation_metrics(pred[None], true[None], setup.abundance_clip)
        metrics.pop("n_samples")
        out = {"loss": loss, **{f"loss_{k}": v for k, v in parts.items() if k != "total"}}
        out.update(metrics)
        return out

    def eval_member(params, batch_stats, batch, mask, frozen):
        model = state_lib.merge_model(mdef, params, batch_stats, train=False)
        pred, true, aux = component.predict(model, batch, frozen, setup)
        items = jax.vmap(per_item)(pred, true)
        items.update(aux)  # per-item diagnostics [B] (pinned_state_fraction)
        w = mask.astype(jnp.float32)
        return {k: jnp.tensordot(w, v.astype(jnp.float32), axes=1) for k, v in items.items()}

    def eval_step(params, batch_stats, arrays, idx, mask, frozen):
        batch = _constrain_batch(component.make_batch(setup, arrays, idx, mesh), mesh)
        if members == 1:
            out = eval_member(params, batch_stats, batch, mask, frozen)
        else:  # every member on the same items: sums [M]
            out = jax.vmap(eval_member, in_axes=(0, 0, None, None, frozen_axis))(
                params, batch_stats, batch, mask, frozen)
        out["count"] = jnp.sum(mask.astype(jnp.float32))
        return out

    def recalibrate_member(params, batch_stats, batch, frozen):
        # Training mode: the rows are transformed as training transforms them (row mixup), so
        # the statistics are those of the batches the weights were trained to be normalised
        # by; with the model's own fixed random keys (the same draws every epoch, any device
        # count). Eval-mode rows gave a mixup autoencoder 0.168 instead of 0.160 dex (test).
        model = _population_statistics_mode(
            state_lib.merge_model(mdef, params, batch_stats, train=True))
        component.predict(model, batch, frozen, setup)
        return nnx.state(model, nnx.BatchStat)

    def recalibrate_step(params, batch_stats, arrays, idx, frozen):
        batch = _constrain_batch(component.make_batch(setup, arrays, idx, mesh), mesh)
        if members == 1:
            return recalibrate_member(params, batch_stats, batch, frozen)
        return jax.vmap(recalibrate_member, in_axes=(0, 0, None, frozen_axis))(
            params, batch_stats, batch, frozen)

    state_sharding = jax.tree.map(lambda _: mesh_lib.replicated(mesh), abstract_state)
    repl = mesh_lib.replicated(mesh)
    train = jax.jit(
        train_steps,
        donate_argnums=0,
        in_shardings=(state_sharding, None, repl, None, repl),
        out_shardings=(state_sharding, repl),
    )
    on_batches = jax.jit(train_on_batches, donate_argnums=0,
                         in_shardings=(state_sharding, None, None),
                         out_shardings=(state_sharding, repl))
    evaluate = jax.jit(eval_step, in_shardings=(repl, repl, None, repl, repl, None),
                       out_shardings=repl)
    recalibrate = jax.jit(recalibrate_step, in_shardings=(repl, repl, None, repl, None),
                          out_shardings=repl)
    return Steps(train=train, train_on_batches=on_batches, evaluate=evaluate,
                 recalibrate=recalibrate)


# --- bookkeeping --------------------------------------------------------------------------------


def initial_loop_state(config) -> dict:
    """JSON bookkeeping saved with every checkpoint (None stands for +inf)."""
    return {
        "epoch": 0,
        "best_val_score": None,  # of config.checkpoint_metric (validation_score)
        "best_epoch": None,
        "plateau_best": None,
        "plateau_count": 0,
        "stagnant_epochs": 0,
        "dropout": float(config.dropout),
        "dropout_count": 0,
        "stop_reason": None,
        "rollbacks": 0,
        "wall_time_s": 0.0,
        "initial_val_score": None,
        "excluded_members": [],  # ensembles: [{member, epoch, reason}]
        "history": [],
    }


def _lt(a: float, b: float | None) -> bool:
    return b is None or a < b


def reduced_lr(lr: float, factor: float, config) -> float:
    """lr x factor, floored at `config.min_lr` but never above lr itself (a learning rate that
    is already below min_lr is not raised by a reduction)."""
    return max(lr * float(factor), min(float(config.min_lr), lr))


def update_bookkeeping(loop: dict, val_score: float, lr: float, config) -> tuple[dict, float]:
    """One epoch's validation score (`validation_score`) -> new bookkeeping and learning rate.

    - early stopping: `stagnant_epochs` counts epochs without a new best score;
    - reduce-on-plateau (PyTorch semantics, relative `plateau_threshold`): after more than
      `plateau_patience` epochs without a relative improvement, lr *= plateau_factor (>= min_lr,
      and never raised: an lr already below min_lr stays);
    - dropout decay (AstroChemNet style): after `dropout_decay_patience` such epochs,
      dropout *= dropout_decay_factor (0 once below dropout_min).
    """
    loop = dict(loop)
    if _lt(val_score, loop["best_val_score"]):
        loop.update(best_val_score=val_score, best_epoch=loop["epoch"], stagnant_epochs=0)
    else:
        loop["stagnant_epochs"] += 1
    threshold = float(config.plateau_threshold)
    if loop["plateau_best"] is None or val_score < loop["plateau_best"] * (1.0 - threshold):
        loop.update(plateau_best=val_score, plateau_count=0, dropout_count=0)
    else:
        loop["plateau_count"] += 1
        loop["dropout_count"] += 1
    if loop["plateau_count"] > int(config.plateau_patience):
        lr = reduced_lr(lr, config.plateau_factor, config)
        loop["plateau_count"] = 0
    patience = int(config.dropout_decay_patience)
    if patience > 0 and loop["dropout"] > 0 and loop["dropout_count"] >= patience:
        loop["dropout"] = float(loop["dropout"] * float(config.dropout_decay_factor))
        if loop["dropout"] < float(config.dropout_min):
            loop["dropout"] = 0.0
        loop["dropout_count"] = 0
    if loop["stagnant_epochs"] >= int(config.stagnant_epoch_patience):
        loop["stop_reason"] = (
            f"early stopping: no better validation {_metric_name(config)} for "
            f"{loop['stagnant_epochs']} epochs"
        )
    return loop, lr


# An epoch in which more than this fraction of the steps had a non-finite gradient (and were
# skipped) counts as diverged.
MAX_SKIPPED_STEP_FRACTION = 0.1


def divergence(loop: dict, train_loss: float, val_score: float, config,
               skipped_fraction: float = 0.0) -> str | None:
    """Why this epoch counts as diverged, or None: a non-finite training loss or validation
    score (`validation_score`: NaN when the validation loss is not finite), more than
    MAX_SKIPPED_STEP_FRACTION of its steps skipped for a non-finite gradient, or a validation
    score above `config.divergence_factor` (None/0 = off) times the best so far."""
    if not math.isfinite(train_loss):
        return f"training loss is {train_loss}"
    if skipped_fraction > MAX_SKIPPED_STEP_FRACTION:
        return (f"{100 * skipped_fraction:.0f}% of the epoch's steps had a non-finite gradient "
                "(skipped)")
    metric = _metric_name(config)
    if not math.isfinite(val_score):
        return f"validation {metric} is {val_score}"
    factor = config.get("divergence_factor")
    best = loop["best_val_score"]
    if factor and best is not None and val_score > float(factor) * best:
        return f"validation {metric} {val_score:.4e} > {float(factor):g} x best {best:.4e}"
    return None


def can_roll_back(loop: dict, config) -> bool:
    """A best checkpoint exists and fewer than `config.max_rollbacks` rollbacks were used."""
    used = int(loop.get("rollbacks", 0))
    return loop["best_epoch"] is not None and used < int(config.get("max_rollbacks") or 0)


def rollback_bookkeeping(loop: dict, lr: float, config) -> tuple[dict, float]:
    """Bookkeeping after rolling back to the best checkpoint: one more rollback, the epoch counts
    as stagnant (so early stopping still ends a run that keeps diverging), the plateau counter
    restarts, and the learning rate is lr x `rollback_lr_factor` (>= min_lr, never raised)."""
    loop = dict(loop)
    loop["rollbacks"] = int(loop.get("rollbacks", 0)) + 1
    loop["stagnant_epochs"] += 1
    loop["plateau_count"] = 0
    if loop["stagnant_epochs"] >= int(config.stagnant_epoch_patience):
        loop["stop_reason"] = (
            f"early stopping: no better validation {_metric_name(config)} for "
            f"{loop['stagnant_epochs']} epochs"
        )
    new_lr = reduced_lr(lr, config.rollback_lr_factor, config)
    return loop, new_lr


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def set_dropout(mdef: state_lib.ModelDef, params, batch_stats, rate: float) -> state_lib.ModelDef:
    """The same model definition with every `nnx.Dropout` at `rate`."""
    model = state_lib.merge_model(mdef, params, batch_stats, train=True)
    for _, module in model.iter_modules():
        if isinstance(module, nnx.Dropout):
            module.rate = float(rate)
    new, _, _ = state_lib.split_model(model)
    return new


# --- resume checks --------------------------------------------------------------------------------


def _flatten(d: Any, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def has_checkpoint(directory: Path) -> bool:
    """Whether `<directory>/checkpoints/` holds at least one saved epoch, or an interrupted run
    left its mid-epoch checkpoint (`preemption.INTERRUPTED_DIR`)."""
    checkpoint_dir = directory / ckpt_lib.CHECKPOINT_DIR
    if (directory / preemption.INTERRUPTED_DIR).is_dir():
        return True
    return checkpoint_dir.is_dir() and any(p.is_dir() and p.name.isdigit()
                                           for p in checkpoint_dir.iterdir())


def check_resume_compatible(directory: Path, config, info: dict) -> None:
    """Refuse to resume into a directory whose config.json describes a different run. Only a
    directory with a checkpoint holds a run: a run that failed before its first checkpoint does
    not block its corrected rerun."""
    path = directory / ckpt_lib.CONFIG_JSON
    if not path.exists() or not has_checkpoint(directory):
        return
    old_config, old_info = ckpt_lib.read_config_json(directory)
    old_fp, new_fp = old_info.get("autoencoder_fingerprint"), info.get("autoencoder_fingerprint")
    if old_fp and new_fp and old_fp != new_fp:
        ae = info.get("autoencoder_component")
        raise ResumeMismatchError(
            f"{path}: the checkpoints in {directory} were trained on autoencoder {ae!r} with "
            f"fingerprint {old_fp[:16]}, but {ae!r} now has fingerprint {new_fp[:16]} (it was "
            "retrained since): resuming would continue in a latent space these checkpoints never "
            f"saw. Delete {directory} and train this emulator again (or restore the autoencoder)")
    old = _flatten({k: v for k, v in config_utils.to_dict(old_config).items()
                    if k not in RESUME_IGNORED_FIELDS})
    new = _flatten({k: v for k, v in config_utils.to_dict(config).items()
                    if k not in RESUME_IGNORED_FIELDS})
    for key, value in NEW_FIELD_DEFAULTS.items():
        if key in new:  # a field this kind of config has (emulators have no row_mixup)
            old.setdefault(key, value)
    old.update(_flatten(old_info, "data_info"))
    new.update(_flatten(json.loads(json.dumps(info)), "data_info"))
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if differ:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:6])
        raise ResumeMismatchError(
            f"{path}: {directory} holds checkpoints of a different run ({shown}"
            f"{', ...' if len(differ) > 6 else ''}); only {list(RESUME_IGNORED_FIELDS)} may "
            f"change on resume. Use another --config.name or delete {directory}"
        )


# --- the loop -------------------------------------------------------------------------------------



def ensure_preprocessed(config) -> Path:
    """Build (or validate the cache of) the preprocessed data this component needs. With several
    processes, process 0 builds it while the others wait, then they only check the cache."""
    from astrochem_jax.preprocess import is_cached, output_dirs, preprocess

    method = config_utils.load_config(config.preprocessing_method, "preprocessing")
    if jax.process_count() == 1:
        return Path(preprocess(config.dataset, method))
    failure = None
    if mesh_lib.is_main_process():
        try:
            preprocess(config.dataset, method)
        except Exception as err:  # the others must still leave the barrier
            failure = err
    mesh_lib.barrier("preprocessed")
    if failure is not None:
        raise failure
    directory, _ = output_dirs(config.dataset, method)
    if not is_cached(config.dataset, method):
        raise RuntimeError(f"process {jax.process_index()}: {directory} is not a valid "
                           "preprocessed cache after process 0 built it (do all processes see "
                           "the same outputs/ directory?)")
    return Path(directory)


def _evaluate(steps: Steps, state, loader: data_lib.ChunkLoader, frozen, batch_size) -> dict:
    """Means over the whole split (every item once): scalars and per-species vectors (numpy)."""
    sums = []
    for _, _, prepared in loader.iterate():
        rows = data_lib.eval_batch_size(prepared.n_items, batch_size,
                                        mesh_lib.n_data_shards(loader.mesh))
        for idx, mask in data_lib.eval_batches(prepared.n_items, rows):
            sums.append(steps.evaluate(state_lib.eval_params(state), state.batch_stats,
                                       prepared.arrays, idx, mask, frozen))
        loader.fence = sums[-1] if sums else None
    if not sums:
        source = loader.source
        raise ValueError(f"{source.directory}: split {source.split!r} has no items to evaluate")
    sums = mesh_lib.fetch(sums)
    count = float(np.sum([s["count"] for s in sums], dtype=np.float64))
    return {k: np.sum([np.asarray(s[k], np.float64) for s in sums], axis=0) / count
            for k in sums[0] if k != "count"}


def recalibration_indices(n_items: int, n_rows: int, multiple: int) -> np.ndarray:
    """min(n_rows, n_items) item indices evenly spread over [0, n_items) (every tracer and time
    of a chunk, deterministic), rounded down to a multiple of `multiple` (the global batch size,
    which every device count divides: the same rows on 1 or 8 devices): int32 [k]."""
    k = min(int(n_rows), int(n_items)) // multiple * multiple
    if k < 1:
        raise ValueError(f"BatchNorm recalibration: {min(n_rows, n_items)} rows are fewer than "
                         f"one batch of {multiple} (config.batchnorm_recalibration_items = "
                         f"{n_rows}; use at least config.batch_size)")
    return np.round(np.linspace(0, n_items - 1, k)).astype(np.int32)


def recalibrated_batch_stats(steps: Steps, state, chunk, frozen, config):
    """`state` with its BatchNorm running statistics replaced by those of its evaluated
    parameters on `config.batchnorm_recalibration_items` rows of `chunk` (0 / a model without
    BatchNorm / no chunk: unchanged).

    Why: evaluation normalises with running averages that lag the weights (momentum 0.9
    averages the last ~10 steps, taken with other weights). At a high learning rate that
    mismatch alone made single validation epochs 2-4x worse than their neighbours while the
    training loss stayed smooth (docs/architecture.md, "BatchNorm statistics"). Training uses
    batch statistics, so this changes what is validated, chosen and exported, never a weight.
    The rows pass through the model in training mode (row mixup applied, with the model's fixed
    keys): the statistics the running averages would hold if they did not lag."""
    n_rows = int(config.get("batchnorm_recalibration_items") or 0)
    if n_rows <= 0 or chunk is None or not jax.tree.leaves(state.batch_stats):
        return state
    idx = recalibration_indices(chunk.n_items, n_rows, int(config.batch_size))
    stats = steps.recalibrate(state_lib.eval_params(state), state.batch_stats, chunk.arrays,
                              idx, frozen)
    return dataclasses.replace(state, batch_stats=stats)


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def _is_main() -> bool:
    return mesh_lib.is_main_process()


def train_component(config: ConfigDict, *, preprocessed_dir: str | Path | None = None,
                    devices=None) -> dict:
    """Train (or resume) component `config.name`; returns the summary written to summary.json.

    The config is checked first (`training.checks`). One run per component at a time: a lock
    under `outputs/runs/<name>/` refuses a second one. A run that fails before its first
    checkpoint leaves nothing in `outputs/weights/<name>/`. Raises `TrainingInterrupted` after
    saving a checkpoint when SIGTERM / SIGINT arrive."""
    checks.check_training_config(config)
    mesh_lib.initialize_distributed(bool(config.get("distributed", False)))
    out_dir = paths.weights_dir(config.name)
    # One lock per run, held by process 0 (the processes of one multi-host run share outputs/).
    lock = (locks.exclusive(paths.runs_dir() / config.name / "train.lock",
                            f"component {config.name!r} ({out_dir})") if _is_main()
            else contextlib.nullcontext())
    with lock:
        try:
            return _train_component(config, preprocessed_dir=preprocessed_dir, devices=devices)
        except BaseException:
            if _is_main():
                _discard_unless_checkpointed(out_dir)
            raise


def _discard_unless_checkpointed(out_dir: Path) -> None:
    """Remove what a run wrote before its first checkpoint (config.json, metrics.json, an empty
    checkpoints/): nothing of it can be resumed."""
    if not out_dir.is_dir() or has_checkpoint(out_dir):
        return
    for name in (ckpt_lib.CONFIG_JSON, METRICS_JSON):
        (out_dir / name).unlink(missing_ok=True)
    checkpoint_dir = out_dir / ckpt_lib.CHECKPOINT_DIR
    if checkpoint_dir.is_dir():
        import shutil

        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    locks.remove_empty_dirs(out_dir, paths.outputs_dir())


def _train_component(config: ConfigDict, *, preprocessed_dir: str | Path | None = None,
                     devices=None) -> dict:
    """train_component without the checks and the lock: distributed set-up, matmul precision."""
    wall_start = time.perf_counter()
    precision = runtime.matmul_precision(config.get("matmul_precision"))
    with jax.default_matmul_precision(precision):
        return _train(config, preprocessed_dir, devices, wall_start)


def _component_arrays(component, setup, split: str):
    return lambda chunk: component.prepare(setup, chunk, split)


def _budgeted(config: ConfigDict, examples_per_epoch: int, item: str) -> tuple[ConfigDict, dict]:
    """(config with the epochs this run trains, summary.json's "epoch_budget"): fewer than
    `config.epochs` where `config.max_train_examples` is reached first
    (state.epochs_within_budget); a run never trains more examples than the cap."""
    epochs = state_lib.epochs_within_budget(config, examples_per_epoch)
    budget = {"configured_epochs": int(config.epochs),
              "max_train_examples": config.get("max_train_examples"),
              "train_examples_per_epoch": int(examples_per_epoch), "epochs": epochs}
    if epochs == int(config.epochs):
        return config, budget
    comp_lib.log_line(
        f"{config.name}: {epochs} epochs, not config.epochs = {config.epochs}: "
        f"config.max_train_examples = {config.max_train_examples} allows {epochs} epochs of "
        f"{examples_per_epoch} train {item}")
    warmup = float(config.get("warmup_epochs") or 0.0)
    if warmup > 0.25 * epochs:
        comp_lib.log_line(
            f"{config.name}: WARNING: config.warmup_epochs = {warmup:g} is more than a quarter "
            f"of the {epochs} epochs this budget leaves; lower it (e.g. "
            f"--config.warmup_epochs={max(epochs / 20, 0.05):.2g}) or raise "
            "config.max_train_examples")
    budgeted = copy.deepcopy(config)
    with budgeted.unlocked():
        budgeted.epochs = epochs
    return budgeted, budget


def _train_item_counts(component, setup, loader: data_lib.ChunkLoader) -> list[int]:
    """Items (rows / windows) of every train chunk: from the kept chunks, or counted on the
    host chunk by chunk (nothing is put on the devices)."""
    source = loader.source
    if source.resident:
        return [loader.get(k).n_items for k in range(source.n_chunks)]
    return [int(component.count_items(setup, source.load(k, loader.mesh), "train"))
            for k in range(source.n_chunks)]


def load_warm_start(config, info: dict) -> ckpt_lib.LoadedComponent | None:
    """The trained component named by `config.init_from` (its best weights), checked to fit this
    run: same type and ensemble size, and for latent emulators the same exact autoencoder
    (`data_info.autoencoder_fingerprint`). None when `init_from` is unset."""
    name = config.get("init_from")
    if not name:
        return None
    loaded = ckpt_lib.load_component(str(name))
    where = f"config.init_from = {name!r} ({loaded.directory})"
    accepted = (str(config.type), *comp_lib.get_component(config.type).warm_start_types)
    if loaded.type not in accepted:
        raise comp_lib.ComponentError(f"{where}: a component of type {loaded.type!r}, but this "
                                      f"run trains type {config.type!r} (warm starts from "
                                      f"{' or '.join(repr(t) for t in accepted)})")
    if loaded.ensemble_size != ensemble_size(config):
        raise comp_lib.ComponentError(
            f"{where}: {loaded.ensemble_size} ensemble member(s), this run has "
            f"config.ensemble_size = {ensemble_size(config)}")
    # Latent emulators: the autoencoder both were trained on; a component warm-started from
    # an autoencoder itself: that autoencoder.
    theirs = (loaded.fingerprint if loaded.type == "autoencoder" != str(config.type)
              else loaded.info.get("autoencoder_fingerprint"))
    ours = info.get("autoencoder_fingerprint")
    if ours != theirs:
        raise comp_lib.ComponentError(
            f"{where}: trained on the autoencoder with fingerprint {str(theirs)[:16]}, but this "
            f"run's autoencoder ({info.get('autoencoder_component')!r}) has {str(ours)[:16]}; "
            "warm-start only from an emulator of the same autoencoder")
    return loaded


def warm_started(state: state_lib.TrainState, loaded: ckpt_lib.LoadedComponent | None,
                 where: str) -> state_lib.TrainState:
    """`state` with the parameters and batch statistics of `loaded` (a fresh optimizer state;
    a kept moving average starts at them too); the trees must match leaf for leaf in shape."""
    if loaded is None:
        return state
    for what, ours, theirs in (("params", state.params, loaded.params),
                               ("batch_stats", state.batch_stats, loaded.batch_stats)):
        shapes = [np.shape(x) for x in jax.tree.leaves(ours)]
        found = [np.shape(x) for x in jax.tree.leaves(theirs)]
        if jax.tree.structure(ours) != jax.tree.structure(theirs) or shapes != found:
            raise comp_lib.ComponentError(
                f"{where}: its {what} do not match this run's model (shapes {found} against "
                f"{shapes}); use the same config.model")
    ema = None if state.ema_params is None else jax.tree.map(jnp.array, loaded.params)
    return dataclasses.replace(state, params=loaded.params, batch_stats=loaded.batch_stats,
                               ema_params=ema)


def _train(config: ConfigDict, preprocessed_dir, devices, wall_start: float) -> dict:
    component = comp_lib.get_component(config.type)
    mesh = mesh_lib.make_mesh(devices)
    mesh_lib.check_batch_size(int(config.batch_size), mesh)
    eval_batch_size = int(config.get("eval_batch_size") or config.batch_size)
    mesh_lib.check_batch_size(eval_batch_size, mesh, "eval_batch_size")
    seed = int(config.seed)

    if preprocessed_dir is None:
        preprocessed_dir = ensure_preprocessed(config)
    pre_dir = Path(preprocessed_dir)
    manifest = shards.read_manifest(pre_dir)
    setup = component.setup(config, manifest, pre_dir)
    out_dir = paths.weights_dir(config.name)
    warm = load_warm_start(config, setup.info)
    if warm is not None:
        setup.info["init_from"] = {"component": warm.name, "fingerprint": warm.fingerprint,
                                   "epoch": warm.epoch}
    check_resume_compatible(out_dir, config, setup.info)
    mesh_lib.barrier("resume_checked")
    if _is_main():
        ckpt_lib.write_config_json(out_dir, config, setup.info)

    members = ensemble_size(config)
    tx = state_lib.make_optimizer(config)
    mdef, state = state_lib.build_members(
        lambda m: component.build_model(config, setup.info, state_lib.model_rngs(seed, m)),
        tx, seed, members, ema=state_lib.uses_ema(config))
    state = warm_started(state, warm, f"config.init_from = {config.get('init_from')!r}")
    n_params = state_lib.count_parameters(state.params) // members
    repl = mesh_lib.replicated(mesh)
    abstract = ckpt_lib.abstract_with_sharding(state, repl)
    state = mesh_lib.put_replicated(state, mesh)

    checkpointer = ckpt_lib.Checkpointer(out_dir, async_save=bool(config.checkpoint.async_save))
    interrupted = preemption.InterruptCheckpoint(out_dir)
    loop = initial_loop_state(config)
    latest = None  # the newest intact epoch checkpoint (none before epoch 1 ends)
    resumed = checkpointer.restore_latest_intact(abstract, comp_lib.log_line)
    if resumed is not None:
        latest, state, loop = resumed
        loop = upgraded_loop(loop)
        comp_lib.log_line(f"{config.name}: resuming after epoch {latest} from "
                          f"{checkpointer.directory}")
    saved = interrupted.restore(abstract) if interrupted.exists() else None
    if saved is not None and int(saved[1]["epoch"]) >= int(latest or 0):
        state, loop = saved[0], upgraded_loop(saved[1])
        where = loop.get("in_epoch")
        comp_lib.log_line(
            f"{config.name}: resuming the interrupted run from {interrupted.directory} (epoch "
            f"{int(loop['epoch']) + (1 if where else 0)}"
            + (f", batch {where['batches_done'] + where['batch'] + 1}" if where else "") + ")")
    elif saved is not None:
        interrupted.remove()  # older than the latest epoch checkpoint

    if setup.frozen is not None:  # frozen arrays (e.g. the autoencoder) replicated on the mesh
        setup = dataclasses.replace(setup, frozen=mesh_lib.put_replicated(setup.frozen, mesh))
    frozen = setup.frozen
    resident_mb = float(config.device_resident_max_mb)
    train_src = data_lib.split_source(pre_dir, manifest, "train", resident_mb)
    val_src = data_lib.split_source(pre_dir, manifest, "val", resident_mb)
    train_loader = data_lib.ChunkLoader(train_src, mesh,
                                        _component_arrays(component, setup, "train"))
    val_loader = data_lib.ChunkLoader(val_src, mesh, _component_arrays(component, setup, "val"))

    batch_size = int(config.batch_size)
    steps_per_call = max(1, int(config.get("steps_per_call", 1)))
    steps_by_dropout: dict[float, Steps] = {}

    def steps_for(rate: float) -> Steps:
        if rate not in steps_by_dropout:
            one = state if members == 1 else state_lib.member_of(state, 0)
            m = mdef if rate == float(config.dropout) else set_dropout(mdef, one.params,
                                                                      one.batch_stats, rate)
            steps_by_dropout[rate] = make_steps(
                component, setup, m, tx, config, mesh, abstract, members,
                state_lib.ema_decay(config, epoch_batches))
        return steps_by_dropout[rate]

    train_items = _train_item_counts(component, setup, train_loader)
    epoch_batches = max(1, sum(n // batch_size for n in train_items))
    if all(n < batch_size for n in train_items):
        raise ValueError(
            f"{pre_dir}: the train split has fewer {component.item} per chunk than "
            f"config.batch_size = {batch_size}; lower the batch size"
        )
    config, epoch_budget = _budgeted(config, sum(train_items), component.item)

    if loop["epoch"] == 0 and loop.get("initial_val_score") is None:
        # The untrained model's validation score: the reference a run must beat to count as
        # converged (for emulators, whose output layer starts near zero, this is ~ persistence).
        initial = _evaluate(steps_for(float(loop["dropout"])), state, val_loader, frozen,
                            eval_batch_size)
        if members > 1:  # the members' mean, as each epoch's (no member is excluded here)
            initial = {k: np.mean(np.asarray(v), axis=0) for k, v in initial.items()}
        loop["initial_val_score"] = _finite_or_none(validation_score(initial, config))
        if warm is not None and loop["initial_val_score"] is not None:
            # The warm start is candidate epoch 0: the best checkpoint (and a rollback target)
            # until an epoch beats it, so a fine-tune never ends worse than where it started.
            loop.update(best_val_score=loop["initial_val_score"], best_epoch=0,
                        plateau_best=loop["initial_val_score"])
            checkpointer.save(0, state, loop, loop["initial_val_score"])
            comp_lib.log_line(f"{config.name}: warm start {warm.name!r} (epoch {warm.epoch}) "
                              f"saved as epoch 0, val {_metric_name(config)} "
                              f"{loop['initial_val_score']:.4e}: the checkpoint to beat")

    writer = writer_lib.MetricWriter(config.name, resume_epoch=int(loop["epoch"]),
                                     enabled=_is_main())
    profiler = writer_lib.StepProfiler(int(config.get("profile_steps") or 0),
                                       writer.directory, enabled=_is_main())
    calls = 0  # jitted train calls in this invocation (the profiler skips the first)

    def stop_here(loop_now: dict, state_now, guard) -> None:
        """Save the interrupted-run checkpoint and raise TrainingInterrupted."""
        checkpointer.wait()
        # step_count: an ensemble's counter has one entry per member (they step together)
        interrupted.save(state_lib.step_count(state_now), state_now, loop_now)
        where = loop_now.get("in_epoch")
        position = (f"epoch {int(loop_now['epoch']) + 1}, batch "
                    f"{where['batches_done'] + where['batch'] + 1}" if where else
                    f"after epoch {int(loop_now['epoch'])}")
        message = (f"{config.name}: stopped by signal {guard.signum} ({position}); checkpoint "
                   f"saved in {interrupted.directory}. Rerun the same command to resume "
                   "exactly")
        comp_lib.log_line(message)
        writer.close()
        profiler.close()
        checkpointer.close()
        raise TrainingInterrupted(message, guard.signum)

    with preemption.PreemptionGuard() as guard:
        while loop["stop_reason"] is None and loop["epoch"] < int(config.epochs):
            epoch = loop["epoch"]  # 0-based index of the epoch being trained
            where = loop.pop("in_epoch", None) or {"pos": 0, "batch": 0, "batches_done": 0,
                                                   "n_samples": 0, "diagnostics": None,
                                                   "seconds": 0.0}
            t0 = time.perf_counter() - float(where["seconds"])
            dropout_used = float(loop["dropout"])
            steps = steps_for(dropout_used)
            order = state_lib.data_rng(seed, epoch, 0).permutation(train_src.n_chunks)
            done_parts = ([_member_shaped(preemption.decode_diagnostics(where["diagnostics"]),
                                          members)] if where["diagnostics"] else [])
            losses = []
            batches_done, n_samples = int(where["batches_done"]), int(where["n_samples"])
            last_chunk = None  # the epoch's last trained chunk: BatchNorm recalibration rows
            for pos, ci, prepared in train_loader.iterate(order, int(where["pos"])):
                if prepared.n_items < batch_size:
                    continue
                last_chunk = prepared
                perm = member_batches(seed, epoch, int(ci), prepared.n_items, batch_size,
                                      members)
                first = int(where["batch"]) if pos == int(where["pos"]) else 0
                for start in range(first, perm.shape[0], steps_per_call):
                    calls += 1
                    if guard.should_stop():
                        fetched = mesh_lib.fetch(losses)
                        so_far = _concat_diagnostics(done_parts + fetched)
                        stop_here(dict(loop, in_epoch={
                            "pos": int(pos), "batch": int(start), "batches_done": batches_done,
                            "n_samples": n_samples,
                            "diagnostics": preemption.encode_diagnostics(so_far) if so_far
                            else None,
                            "seconds": time.perf_counter() - t0}), state, guard)
                    n = min(steps_per_call, perm.shape[0] - start)
                    done = batches_done + start + np.arange(n)
                    factors = state_lib.lr_schedule_factor(config, epoch + done / epoch_batches)
                    profiler.before_call(calls)
                    state, chunk_losses = steps.train(state, prepared.arrays,
                                                      perm[start:start + n], frozen,
                                                      factors.astype(np.float32))
                    profiler.after_call(chunk_losses, n)
                    losses.append(chunk_losses)
                train_loader.fence = losses[-1] if losses else None
                batches_done += perm.shape[0]
                n_samples += perm.shape[0] * batch_size
            prepared = None  # a streamed chunk must not outlive its epoch (device memory bound)
            diagnostics = _concat_diagnostics(done_parts + mesh_lib.fetch(losses))
            member_records = None
            if members > 1:  # members that diverge are excluded (recorded), the rest go on
                member_records = [{"member": m} for m in range(members)]
                diagnostics = ensemble_train_diagnostics(diagnostics, loop, epoch,
                                                         member_records)
            losses = diagnostics["loss"]
            train_seconds = time.perf_counter() - t0
            bad = np.flatnonzero(~np.isfinite(losses))
            train_loss = float(losses[bad[0]]) if bad.size else float(np.mean(losses))
            val, val_loss, val_score = {}, math.nan, math.nan
            if not bad.size:
                state = recalibrated_batch_stats(steps, state, last_chunk, frozen, config)
            last_chunk = None  # released before the validation chunks load (as `prepared`)
            if not bad.size:
                val = _evaluate(steps, state, val_loader, frozen, eval_batch_size)
                if members > 1:
                    val = ensemble_val_metrics(val, loop, epoch, member_records)
                val_loss = float(val["loss"])
                val_score = validation_score(val, config)
            lr = state_lib.learning_rate(state)
            skipped = float(np.mean(~np.isfinite(diagnostics["grad_norm"])))
            diverged = divergence(loop, train_loss, val_score, config, skipped)
            rolled_back_to = None
            if diverged is not None and can_roll_back(loop, config):
                rolled_back_to = int(loop["best_epoch"])
                checkpointer.wait()
                state, _ = checkpointer.restore(rolled_back_to, abstract)
                loop["epoch"] = epoch + 1
                loop, new_lr = rollback_bookkeeping(loop, lr, config)
                state = state_lib.with_learning_rate(state, new_lr)
                # The restored step would replay the dropout / noise keys that led here.
                state = state_lib.with_generation(state, seed, int(loop["rollbacks"]))
                comp_lib.log_line(
                    f"{config.name} epoch {epoch + 1}: diverged ({diverged}); rolled back to "
                    f"epoch {rolled_back_to}, lr {lr:.2e} -> {new_lr:.2e} "
                    f"(rollback {loop['rollbacks']} of {int(config.max_rollbacks)})"
                )
            elif bad.size:
                k = int(bad[0])
                raise NonFiniteLossError(
                    f"{config.name}: training loss is {losses[k]} at epoch {epoch + 1}, step "
                    f"{k + 1} of the epoch (global step "
                    f"{state_lib.step_count(state) - len(losses) + k + 1});"
                    f" stopping. The last good checkpoint (epoch {checkpointer.latest_epoch()}) "
                    f"is kept in {checkpointer.directory}; lower config.lr or check the data"
                )
            elif skipped > MAX_SKIPPED_STEP_FRACTION:
                raise NonFiniteLossError(
                    f"{config.name}: epoch {epoch + 1}: {diverged}; stopping. The last good "
                    f"checkpoint (epoch {checkpointer.latest_epoch()}) is kept in "
                    f"{checkpointer.directory}; lower config.lr or check the data"
                )
            elif not math.isfinite(val_loss):
                raise NonFiniteLossError(
                    f"{config.name}: validation loss is {val_loss} after epoch {epoch + 1}; "
                    f"stopping. The last good checkpoint (epoch {checkpointer.latest_epoch()}) "
                    f"is kept in {checkpointer.directory}"
                )
            else:
                loop["epoch"] = epoch + 1
                loop, new_lr = update_bookkeeping(loop, val_score, lr, config)
                if new_lr != lr:
                    state = state_lib.with_learning_rate(state, new_lr)
            seconds = time.perf_counter() - t0
            record = {
                "epoch": epoch + 1,
                "train_loss": _finite_or_none(float(np.mean(losses))),
                "train": train_summary(diagnostics),
                "val_loss": _finite_or_none(val_loss),
                "val_score": _finite_or_none(val_score),  # of config.checkpoint_metric
                "val": _scalars(val),
                "lr": lr,  # config.lr x plateau / rollback reductions, at the epoch's start
                # ... x the schedule factor at the epoch's last step: what the optimizer applied
                "lr_applied": lr * float(state_lib.lr_schedule_factor(config, epoch + 1.0)),
                "dropout": dropout_used,
                "steps": state_lib.step_count(state),
                "seconds": seconds,
                "samples_per_s": n_samples / train_seconds,
            }
            if rolled_back_to is not None:
                record["rolled_back_to"] = rolled_back_to
            if member_records is not None:
                record["members"] = member_records
            loop["history"] = [*loop["history"], record]
            loop["wall_time_s"] = float(loop["wall_time_s"]) + seconds
            every = max(1, int(config.checkpoint.get("every_epochs", 1)))
            saved_now = (loop["best_epoch"] == loop["epoch"] or loop["epoch"] % every == 0
                         or loop["epoch"] >= int(config.epochs) or bool(loop["stop_reason"]))
            if saved_now:
                # The metric is the score this epoch measured, so after a rollback the best
                # checkpoint stays the original one (a non-finite score is saved as the largest
                # float).
                saved_score = (val_score if math.isfinite(val_score)
                               else float(np.finfo(np.float64).max))
                if loop["best_epoch"] != loop["epoch"] and loop["best_val_score"] is not None:
                    # A tie is not a new best (strict <, as in the bookkeeping): orbax keeps and
                    # picks the LATEST of equal metrics, so rank this epoch just behind the best.
                    saved_score = max(saved_score, float(np.nextafter(loop["best_val_score"],
                                                                      math.inf)))
                checkpointer.save(loop["epoch"], state, loop, saved_score)
                if saved is not None:  # the interrupted-run slot is superseded
                    checkpointer.wait()
                    interrupted.remove()
                    saved = None
            if _is_main():
                atomic.write_json(out_dir / METRICS_JSON, loop["history"])
            writer.write(epoch + 1, record)
            comp_lib.log_line(
                f"{config.name} epoch {epoch + 1}/{int(config.epochs)}  "
                f"train {float(np.mean(losses)):.4e}  val {val_loss:.4e}  "
                f"|g| {record['train']['grad_norm_mean'] or math.nan:.2g}/"
                f"{record['train']['grad_norm_max'] or math.nan:.2g}  "
                f"mre {100 * record['val'].get('mean_relative_error', math.nan):.3g}%  "
                f"dex {record['val'].get('mean_abs_dlog10', math.nan):.3g}  "
                + (f"pinned {100 * record['val']['pinned_state_fraction']:.2g}%  "
                   if record["val"].get("pinned_state_fraction") is not None else "")
                + f"lr {record['lr_applied']:.2e}  "
                f"{seconds:.1f} s  {record['samples_per_s']:.3g} {component.item}/s"
                + (f"  [{loop['stop_reason']}]" if loop["stop_reason"] else "")
            )
            if guard.should_stop():
                if saved_now:
                    saved = None
                    checkpointer.wait()
                    message = (f"{config.name}: stopped by signal {guard.signum} after epoch "
                               f"{loop['epoch']} (checkpointed). Rerun the same command to "
                               "resume exactly")
                    comp_lib.log_line(message)
                    writer.close()
                    profiler.close()
                    checkpointer.close()
                    raise TrainingInterrupted(message, guard.signum)
                stop_here(loop, state, guard)
    writer.close()
    profiler.close()
    checkpointer.wait()
    if loop["stop_reason"] is None:  # not saved: a rerun with more epochs continues
        loop["stop_reason"] = f"epoch cap ({config.epochs})"
    summary = _finish(config, component, setup, checkpointer, abstract, mdef, loop, n_params,
                      train_loader, val_loader, frozen, eval_batch_size, mesh, out_dir,
                      time.perf_counter() - wall_start, steps_for(float(config.dropout)),
                      epoch_budget)
    checkpointer.close()
    return summary


def _concat_diagnostics(parts: list[dict]) -> dict:
    """Per-call diagnostics {name: [n]} or {name: [n, M]} (ensembles; host) -> {name: [steps so
    far(, M)]} float32."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    return {k: np.concatenate([np.asarray(p[k], np.float32).reshape(
        -1, *np.shape(p[k])[1:]) for p in parts]) for k in parts[0]}


def _member_shaped(diagnostics: dict, members: int) -> dict:
    """Diagnostics decoded from JSON (flat) -> [steps, M] for an ensemble."""
    if members == 1:
        return diagnostics
    return {k: np.asarray(v).reshape(-1, members) for k, v in diagnostics.items()}


# --- ensembles ------------------------------------------------------------------------------------


def ensemble_size(config) -> int:
    """config.ensemble_size (absent in configs saved before the field existed: 1)."""
    members = int(config.get("ensemble_size") or 1)
    if members < 1:
        raise ValueError(f"config.ensemble_size must be >= 1, found {members}")
    return members


def member_batches(seed: int, epoch: int, chunk: int, n_items: int, batch_size: int,
                   members: int) -> np.ndarray:
    """This epoch's batches of one chunk: int32 [n_batches, B], or [n_batches, M, B] for an
    ensemble (each member its own permutation of the items, from its own data stream; member 0
    draws exactly the plain component's)."""
    perms = [data_lib.epoch_batches(state_lib.data_rng(seed, epoch, 1 + chunk, member=m),
                                    n_items, batch_size) for m in range(members)]
    return perms[0] if members == 1 else np.stack(perms, axis=1)


def _excluded(loop: dict) -> set[int]:
    return {int(e["member"]) for e in loop.get("excluded_members", [])}


def _exclude(loop: dict, member: int, epoch: int, reason: str) -> None:
    loop["excluded_members"] = [*loop.get("excluded_members", []),
                                {"member": int(member), "epoch": int(epoch) + 1, "reason": reason}]
    comp_lib.log_line(f"ensemble member {member} excluded at epoch {epoch + 1}: {reason}")


def ensemble_train_diagnostics(diagnostics: dict, loop: dict, epoch: int,
                               records: list[dict]) -> dict:
    """Per-member diagnostics {name: [n, M]} -> each member's training summary in `records`;
    members whose loss is not finite, or that skipped more than MAX_SKIPPED_STEP_FRACTION of the
    steps, are excluded from now on (loop["excluded_members"], never silently). Returns the
    diagnostics of the included members averaged per step {name: [n]} (all NaN when none is
    left, which stops the run as a diverged one)."""
    members = records.__len__()
    for m in range(members):
        one = {k: v[:, m] for k, v in diagnostics.items()}
        records[m]["train"] = train_summary(one)
        if m in _excluded(loop):
            continue
        skipped = float(np.mean(~np.isfinite(one["grad_norm"])))
        if not np.all(np.isfinite(one["loss"])):
            _exclude(loop, m, epoch, "training loss is not finite")
        elif skipped > MAX_SKIPPED_STEP_FRACTION:
            _exclude(loop, m, epoch, f"{100 * skipped:.0f}% of its steps had a non-finite "
                                     "gradient")
    keep = [m for m in range(members) if m not in _excluded(loop)]
    for m in range(members):
        records[m]["excluded"] = m not in keep
    if not keep:
        return {k: np.full(v.shape[0], np.nan, np.float32) for k, v in diagnostics.items()}
    return {k: np.mean(v[:, keep], axis=1) for k, v in diagnostics.items()}


def ensemble_val_metrics(val: dict, loop: dict, epoch: int, records: list[dict] | None) -> dict:
    """Per-member validation metrics {name: [M] or [M, S]} -> each member's in `records` (when
    given); members with a non-finite validation loss are excluded from now on. Returns the
    mean over the included members: the ensemble's validation metrics, which choose its
    checkpoint (all NaN when no member is left)."""
    members = int(np.shape(val["loss"])[0])
    for m in range(members):
        if records is not None:
            records[m]["val_loss"] = _finite_or_none(float(val["loss"][m]))
            records[m]["val"] = _scalars({k: v[m] for k, v in val.items()})
        if m not in _excluded(loop) and not np.isfinite(val["loss"][m]):
            _exclude(loop, m, epoch, f"validation loss is {float(val['loss'][m])}")
    keep = [m for m in range(members) if m not in _excluded(loop)]
    if records is not None:
        for m in range(members):
            records[m]["excluded"] = m not in keep
    if not keep:
        return {k: np.full(np.shape(v)[1:], np.nan) for k, v in val.items()}
    return {k: np.mean(np.asarray(v)[keep], axis=0) for k, v in val.items()}


def _finish(config, component, setup, checkpointer, abstract, mdef, loop, n_params,
            train_loader, val_loader, frozen, eval_batch_size, mesh, out_dir, wall_s,
            steps: Steps, epoch_budget: dict) -> dict:
    """Best weights -> after-training hook (latents min/max), final validation, summary.json."""
    best = checkpointer.best_epoch()
    if best is None:
        raise ValueError(f"{config.name}: no checkpoint was written (config.epochs = "
                         f"{config.epochs}); nothing to summarise")
    best_state, _ = checkpointer.restore(best, abstract)
    members = ensemble_size(config)
    val = _evaluate(steps, best_state, val_loader, frozen, eval_batch_size)
    member_summaries = None
    if members > 1:  # a copy of the bookkeeping: this re-evaluation excludes no one for good
        member_summaries = [{"member": m} for m in range(members)]
        val = ensemble_val_metrics(val, dict(loop), int(best) - 1, member_summaries)
    component.after_training(comp_lib.Finished(
        config=config, setup=setup, mdef=mdef, params=state_lib.eval_params(best_state),
        batch_stats=best_state.batch_stats,
        train_chunks=lambda: (prepared for _, _, prepared in train_loader.iterate()),
        directory=out_dir, mesh=mesh, members=members,
    ))
    best_score = validation_score(val, config)
    verdict = convergence_verdict(loop, best_score, config, val)
    kept_warm_start = bool(config.get("init_from")) and int(best) == 0
    train_src = train_loader.source
    summary = {
        "status": "failed" if verdict else "converged",
        "failure": verdict,
        # checkpoints are chosen by this validation metric (validation_score)
        "checkpoint_metric": _metric_name(config),
        "initial_val_score": loop.get("initial_val_score"),
        # warm-started runs: no epoch beat the warm start, whose weights are the result
        "kept_warm_start": kept_warm_start,
        "rollbacks": int(loop.get("rollbacks", 0)),
        "component": config.name,
        "component_type": config.type,
        "dataset": setup.info["dataset"],
        "preprocessing_method": config.preprocessing_method,
        "best_val_loss": float(val["loss"]),
        "best_val_score": best_score,
        "best_epoch": int(best),
        "final_epoch": int(loop["epoch"]),
        # the epochs trained: config.epochs, or fewer under config.max_train_examples
        "epoch_budget": epoch_budget,
        "stop_reason": loop["stop_reason"],
        "best_val_metrics": _scalars(val),
        "ensemble_size": members,
        # ensembles: each member's validation metrics at the best epoch; members excluded for
        # a non-finite loss (never used by surrogates)
        "members": member_summaries,
        "excluded_members": list(loop.get("excluded_members", [])),
        "best_val_per_species": {
            k: np.asarray(v).tolist() for k, v in val.items() if np.ndim(v) == 1
        },
        "species": setup.info["species"],
        "parameter_count": int(n_params),
        "devices": {"count": int(mesh.devices.size),
                    "kinds": sorted({d.device_kind for d in mesh.devices.flat}),
                    "processes": int(jax.process_count())},
        "numerics": {"matmul_precision": runtime.matmul_precision(
                         config.get("matmul_precision")),
                     "x64": bool(jax.config.jax_enable_x64)},
        "data": {"train_resident": bool(train_src.resident),
                 "train_chunks": int(train_src.n_chunks),
                 "device_resident_max_mb": float(config.device_resident_max_mb)},
        "train_split_shape": list(train_src.shape),
        "wall_time_s": float(wall_s),
        "training_time_s": float(loop["wall_time_s"]),
        "package_versions": runtime.package_versions(),
    }
    if _is_main():
        # The trained numbers this summary describes (load_component refuses other weights, and
        # an emulator records the same fingerprint of the autoencoder it was trained on).
        minmax_path = out_dir / "latents_minmax.npy"
        summary["fingerprint"] = ckpt_lib.fingerprint(
            state_lib.eval_params(best_state), best_state.batch_stats,
            np.load(minmax_path, allow_pickle=False) if minmax_path.exists() else None)
        atomic.write_json(out_dir / SUMMARY_JSON, summary)
    mesh_lib.barrier("summary_written")
    if verdict:
        raise TrainingFailedError(
            f"{config.name}: training FAILED to converge: {verdict}. The checkpoints and "
            f"{out_dir / SUMMARY_JSON} (status 'failed') are kept for inspection; surrogates "
            "refuse this component. Check the data, or lower config.lr")
    if kept_warm_start:
        tried = min((float(r["val_score"]) for r in loop["history"]
                     if r["val_score"] is not None), default=math.inf)
        comp_lib.log_line(
            f"{config.name}: WARNING: no epoch beat the warm start {config.init_from!r} on "
            f"validation {summary['checkpoint_metric']} (best epoch {tried:.4e} against "
            f"{summary['initial_val_score']:.4e}); "
            "the result is the warm start's weights unchanged (summary.json: kept_warm_start)")
    mre = 100 * summary["best_val_metrics"].get("mean_relative_error", math.nan)
    comp_lib.log_line(
        f"{config.name}: best epoch {best} (by val {summary['checkpoint_metric']}), val loss "
        f"{summary['best_val_loss']:.4e}, mean "
        f"relative error {mre:.3g}%, {loop['stop_reason']}; artifacts in {out_dir}"
    )
    return summary
