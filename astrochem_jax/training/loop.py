"""ONE generic training loop for every component type (`training.components.COMPONENTS`).

    summary = train_component(config)                 # preprocesses on demand
    summary = train_component(config, preprocessed_dir=d, devices=jax.devices()[:1])

Per epoch: a device-side permutation of the training items, one jitted step per batch
(`jax.jit(step, donate_argnums=0)`, state replicated `P()`, batch sharded `P("data")`), one host
fetch of the epoch's losses, a full validation pass in eval mode, reduce-on-plateau of the learning
rate, optional dropout decay, a checkpoint (latest + best) and `metrics.json`. A diverged epoch (a
NaN/inf loss, or a validation loss above `divergence_factor` x the best) rolls the state back to
the best checkpoint with the learning rate x `rollback_lr_factor`, at most `max_rollbacks` times;
a non-finite loss with no rollback left raises `NonFiniteLossError` (last good checkpoint kept).
Early stopping after `stagnant_epoch_patience` epochs without a new best validation loss.
Rerunning the same config resumes from the latest checkpoint and reproduces an uninterrupted run
exactly.
"""

from __future__ import annotations

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
from astrochem_jax.training import checks
from astrochem_jax.training import components as comp_lib
from astrochem_jax.training import data as data_lib
from astrochem_jax.training import mesh as mesh_lib
from astrochem_jax.training import state as state_lib

METRICS_JSON = "metrics.json"
SUMMARY_JSON = "summary.json"
# Config fields that may change between a run and its resumption (they do not change the result).
RESUME_IGNORED_FIELDS = ("epochs", "distributed", "checkpoint", "device_resident_max_mb")
# metrics.json fields that are timings (excluded when comparing runs).
TIMING_FIELDS = ("seconds", "samples_per_s")


class NonFiniteLossError(FloatingPointError):
    """A NaN / inf loss: training stops, the last good checkpoint stays in place."""


class TrainingFailedError(RuntimeError):
    """A run ended without converging (see `convergence_verdict`); summary.json says so."""


def convergence_verdict(loop: dict, best_val_loss: float, config) -> str | None:
    """Why a finished run does not count as converged, or None.

    - the best validation loss is not finite;
    - it is not below `config.converged_loss_ratio` x the untrained model's validation loss
      (the run learned next to nothing: e.g. it diverged early and rolled back to epoch 1);
    - every allowed rollback was used (the recipe is unstable on this data).
    """
    if not math.isfinite(best_val_loss):
        return f"the best validation loss is {best_val_loss}"
    ratio = config.get("converged_loss_ratio")
    initial = loop.get("initial_val_loss")
    if ratio and initial is not None and not best_val_loss < float(ratio) * initial:
        return (f"best validation loss {best_val_loss:.4e} is not below "
                f"config.converged_loss_ratio = {float(ratio):g} x the untrained model's "
                f"{initial:.4e}")
    allowed = int(config.get("max_rollbacks") or 0)
    if allowed and int(loop.get("rollbacks", 0)) >= allowed:
        return f"all {allowed} rollbacks after diverged epochs were used"
    return None


class ResumeMismatchError(ValueError):
    """An output directory that holds a run with a different config."""


# --- jitted steps ---------------------------------------------------------------------------------


def _loss_weights(config) -> dict:
    return {
        "power_weight": float(config.loss.power_weight),
        "worst_weight": float(config.loss.worst_weight),
        "conservation_weight": float(config.loss.conservation_weight),
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

    train(state, arrays, perm [n_batches, B], start, frozen, lr_factors [n], n) ->
    (state, diagnostics {name: [n]}): n
    consecutive steps (batches start .. start + n - 1 sliced on device) in ONE dispatch
    (`lax.scan`), so small models are not bound by per-step dispatch; `n` is static.
    train_on_batches(state, batches (leading axis n), frozen) -> (state, diagnostics): the same
    updates on batches already cut (benchmarks use it to time the input pipeline separately).
    evaluate(params, batch_stats, arrays, idx [B], frozen) -> batch-mean metrics.
    """

    train: Any
    train_on_batches: Any
    evaluate: Any


def make_steps(component: comp_lib.Component, setup: comp_lib.Setup, mdef: state_lib.ModelDef,
               tx: optax.GradientTransformation, config, mesh, abstract_state: Any) -> Steps:
    weights = _loss_weights(config)
    stoich = setup.stoich if weights["conservation_weight"] != 0 else None

    def loss_of(pred, true):
        return total_loss(pred, true, stoichiometric_matrix=stoich,
                          abundance_clip=setup.abundance_clip, **weights)

    def update(state: state_lib.TrainState, batch, frozen, lr_factor):
        batch = _constrain_batch(batch, mesh)
        key = state_lib.step_key(state)

        def loss_fn(params):
            model = state_lib.merge_model(mdef, params, state.batch_stats, train=True, key=key)
            pred, true = component.predict(model, batch, frozen, setup)
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
        params, opt_state, batch_stats = jax.tree.map(
            lambda new, old: jnp.where(ok, new, old), (params, opt_state, batch_stats),
            (state.params, state.opt_state, state.batch_stats))
        new = state_lib.TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                                   opt_state=opt_state, rng=state.rng)
        return new, diagnostics

    def train_steps(state: state_lib.TrainState, arrays, perm, start, frozen, lr_factors,
                    n: int):
        idx = jax.lax.dynamic_slice_in_dim(perm, start, n, axis=0)  # [n, B]
        return jax.lax.scan(
            lambda s, xs: update(s, component.make_batch(setup, arrays, xs[0]), frozen, xs[1]),
            state, (idx, lr_factors))

    def train_on_batches(state: state_lib.TrainState, batches, frozen):
        ones = jnp.ones((jax.tree.leaves(batches)[0].shape[0],), jnp.float32)
        return jax.lax.scan(lambda s, xs: update(s, xs[0], frozen, xs[1]), state,
                            (batches, ones))

    def eval_step(params, batch_stats, arrays, idx, frozen):
        batch = component.make_batch(setup, arrays, idx)
        model = state_lib.merge_model(mdef, params, batch_stats, train=False)
        pred, true = component.predict(model, batch, frozen, setup)
        loss, parts = loss_of(pred, true)
        metrics = validation_metrics(pred, true, setup.abundance_clip)
        metrics.pop("n_samples")
        out = {"loss": loss, **{f"loss_{k}": v for k, v in parts.items() if k != "total"}}
        out.update(metrics)
        return out

    state_sharding = jax.tree.map(lambda _: mesh_lib.replicated(mesh), abstract_state)
    repl = mesh_lib.replicated(mesh)
    train = jax.jit(
        train_steps,
        donate_argnums=0,
        static_argnums=6,
        in_shardings=(state_sharding, None, mesh_lib.batch_sharded(mesh, 2, axis=1), repl, None,
                      repl),
        out_shardings=(state_sharding, repl),
    )
    on_batches = jax.jit(train_on_batches, donate_argnums=0,
                         in_shardings=(state_sharding, None, None),
                         out_shardings=(state_sharding, repl))
    return Steps(train=train, train_on_batches=on_batches, evaluate=jax.jit(eval_step))


# --- bookkeeping --------------------------------------------------------------------------------


def initial_loop_state(config) -> dict:
    """JSON bookkeeping saved with every checkpoint (None stands for +inf)."""
    return {
        "epoch": 0,
        "best_val_loss": None,
        "best_epoch": None,
        "plateau_best": None,
        "plateau_count": 0,
        "stagnant_epochs": 0,
        "dropout": float(config.dropout),
        "dropout_count": 0,
        "stop_reason": None,
        "rollbacks": 0,
        "wall_time_s": 0.0,
        "initial_val_loss": None,
        "history": [],
    }


def _lt(a: float, b: float | None) -> bool:
    return b is None or a < b


def update_bookkeeping(loop: dict, val_loss: float, lr: float, config) -> tuple[dict, float]:
    """One epoch's val loss -> new bookkeeping and learning rate.

    - early stopping: `stagnant_epochs` counts epochs without a new best val loss;
    - reduce-on-plateau (PyTorch semantics, relative `plateau_threshold`): after more than
      `plateau_patience` epochs without a relative improvement, lr *= plateau_factor (>= min_lr);
    - dropout decay (AstroChemNet style): after `dropout_decay_patience` such epochs,
      dropout *= dropout_decay_factor (0 once below dropout_min).
    """
    loop = dict(loop)
    if _lt(val_loss, loop["best_val_loss"]):
        loop.update(best_val_loss=val_loss, best_epoch=loop["epoch"], stagnant_epochs=0)
    else:
        loop["stagnant_epochs"] += 1
    threshold = float(config.plateau_threshold)
    if loop["plateau_best"] is None or val_loss < loop["plateau_best"] * (1.0 - threshold):
        loop.update(plateau_best=val_loss, plateau_count=0, dropout_count=0)
    else:
        loop["plateau_count"] += 1
        loop["dropout_count"] += 1
    if loop["plateau_count"] > int(config.plateau_patience):
        lr = max(lr * float(config.plateau_factor), float(config.min_lr))
        loop["plateau_count"] = 0
    patience = int(config.dropout_decay_patience)
    if patience > 0 and loop["dropout"] > 0 and loop["dropout_count"] >= patience:
        loop["dropout"] = float(loop["dropout"] * float(config.dropout_decay_factor))
        if loop["dropout"] < float(config.dropout_min):
            loop["dropout"] = 0.0
        loop["dropout_count"] = 0
    if loop["stagnant_epochs"] >= int(config.stagnant_epoch_patience):
        loop["stop_reason"] = (
            f"early stopping: no better validation loss for {loop['stagnant_epochs']} epochs"
        )
    return loop, lr


# An epoch in which more than this fraction of the steps had a non-finite gradient (and were
# skipped) counts as diverged.
MAX_SKIPPED_STEP_FRACTION = 0.1


def divergence(loop: dict, train_loss: float, val_loss: float, config,
               skipped_fraction: float = 0.0) -> str | None:
    """Why this epoch counts as diverged, or None: a non-finite training or validation loss, more
    than MAX_SKIPPED_STEP_FRACTION of its steps skipped for a non-finite gradient, or a validation
    loss above `config.divergence_factor` (None/0 = off) times the best so far."""
    if not math.isfinite(train_loss):
        return f"training loss is {train_loss}"
    if skipped_fraction > MAX_SKIPPED_STEP_FRACTION:
        return (f"{100 * skipped_fraction:.0f}% of the epoch's steps had a non-finite gradient "
                "(skipped)")
    if not math.isfinite(val_loss):
        return f"validation loss is {val_loss}"
    factor = config.get("divergence_factor")
    best = loop["best_val_loss"]
    if factor and best is not None and val_loss > float(factor) * best:
        return f"validation loss {val_loss:.4e} > {float(factor):g} x best {best:.4e}"
    return None


def can_roll_back(loop: dict, config) -> bool:
    """A best checkpoint exists and fewer than `config.max_rollbacks` rollbacks were used."""
    used = int(loop.get("rollbacks", 0))
    return loop["best_epoch"] is not None and used < int(config.get("max_rollbacks") or 0)


def rollback_bookkeeping(loop: dict, lr: float, config) -> tuple[dict, float]:
    """Bookkeeping after rolling back to the best checkpoint: one more rollback, the epoch counts
    as stagnant (so early stopping still ends a run that keeps diverging), the plateau counter
    restarts, and the learning rate is lr x `rollback_lr_factor` (>= min_lr)."""
    loop = dict(loop)
    loop["rollbacks"] = int(loop.get("rollbacks", 0)) + 1
    loop["stagnant_epochs"] += 1
    loop["plateau_count"] = 0
    if loop["stagnant_epochs"] >= int(config.stagnant_epoch_patience):
        loop["stop_reason"] = (
            f"early stopping: no better validation loss for {loop['stagnant_epochs']} epochs"
        )
    new_lr = max(lr * float(config.rollback_lr_factor), float(config.min_lr))
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
    """Whether `<directory>/checkpoints/` holds at least one saved epoch."""
    checkpoint_dir = directory / ckpt_lib.CHECKPOINT_DIR
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
    """Build (or validate the cache of) the preprocessed data this component needs."""
    from astrochem_jax.preprocess import preprocess

    method = config_utils.load_config(config.preprocessing_method, "preprocessing")
    return Path(preprocess(config.dataset, method))


def _evaluate(steps: Steps, state, chunks, source, setup, component, put, frozen, batch_size,
              mesh) -> dict:
    """Weighted means over the whole split: scalars and per-species vectors (numpy)."""
    results, weights = [], []
    for prepared in chunks if chunks is not None else _stream(source, setup, component, put):
        for idx in data_lib.eval_index_batches(prepared.n_items, batch_size, mesh):
            results.append(steps.evaluate(state.params, state.batch_stats, prepared.arrays, idx,
                                          frozen))
            weights.append(idx.shape[0])
    if not results:
        raise ValueError(f"{source.directory}: split {source.split!r} has no items to evaluate")
    results = jax.device_get(results)
    w = np.asarray(weights, np.float64) / float(np.sum(weights))
    return {k: np.tensordot(w, np.stack([np.asarray(r[k], np.float64) for r in results]), axes=1)
            for k in results[0]}


def _stream(source, setup, component, put):
    for chunk in source.chunks():
        yield component.prepare(setup, chunk, put, source.split)


def _scalars(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def _is_main() -> bool:
    return jax.process_index() == 0


def train_component(config: ConfigDict, *, preprocessed_dir: str | Path | None = None,
                    devices=None) -> dict:
    """Train (or resume) component `config.name`; returns the summary written to summary.json.

    The config is checked first (`training.checks`). One run per component at a time: a lock
    under `outputs/runs/<name>/` refuses a second one. A run that fails before its first
    checkpoint leaves nothing in `outputs/weights/<name>/`."""
    checks.check_training_config(config)
    out_dir = paths.weights_dir(config.name)
    with locks.exclusive(paths.runs_dir() / config.name / "train.lock",
                         f"component {config.name!r} ({out_dir})"):
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
    wall_start = time.perf_counter()
    mesh_lib.initialize_distributed(bool(config.get("distributed", False)))
    component = comp_lib.get_component(config.type)
    mesh = mesh_lib.make_mesh(devices)
    mesh_lib.check_batch_size(int(config.batch_size), mesh)
    eval_batch_size = int(config.get("eval_batch_size") or config.batch_size)
    mesh_lib.check_batch_size(eval_batch_size, mesh, "eval_batch_size")

    if preprocessed_dir is None:
        preprocessed_dir = ensure_preprocessed(config)
    pre_dir = Path(preprocessed_dir)
    manifest = shards.read_manifest(pre_dir)
    setup = component.setup(config, manifest, pre_dir)
    out_dir = paths.weights_dir(config.name)
    check_resume_compatible(out_dir, config, setup.info)
    if _is_main():
        ckpt_lib.write_config_json(out_dir, config, setup.info)

    mdef, params, batch_stats = state_lib.build_split(
        lambda: component.build_model(config, setup.info, nnx.Rngs(int(config.seed))))
    n_params = state_lib.count_parameters(params)
    tx = state_lib.make_optimizer(config)
    state = state_lib.init_state(params, batch_stats, tx, int(config.seed))
    repl = mesh_lib.replicated(mesh)
    abstract = ckpt_lib.abstract_with_sharding(state, repl)
    state = jax.device_put(state, repl)

    checkpointer = ckpt_lib.Checkpointer(out_dir, async_save=bool(config.checkpoint.async_save))
    loop = initial_loop_state(config)
    resumed = checkpointer.restore_latest_intact(abstract, comp_lib.log_line)
    if resumed is not None:
        latest, state, loop = resumed
        comp_lib.log_line(f"{config.name}: resuming after epoch {latest} from "
                          f"{checkpointer.directory}")

    put = data_lib.device_put_fn(mesh)
    if setup.frozen is not None:  # frozen arrays (e.g. the autoencoder) replicated on the mesh
        setup = dataclasses.replace(setup, frozen=jax.device_put(setup.frozen, repl))
    frozen = setup.frozen
    resident_mb = float(config.device_resident_max_mb)
    train_src = data_lib.split_source(pre_dir, manifest, "train", resident_mb)
    val_src = data_lib.split_source(pre_dir, manifest, "val", resident_mb)
    train_res = [component.prepare(setup, c, put, "train") for c in train_src.chunks()] \
        if train_src.resident else None
    val_res = [component.prepare(setup, c, put, "val") for c in val_src.chunks()] \
        if val_src.resident else None

    batch_size = int(config.batch_size)
    steps_per_call = max(1, int(config.get("steps_per_call", 1)))
    base_key = jax.random.key(int(config.seed))
    steps_by_dropout: dict[float, Steps] = {}

    def steps_for(rate: float) -> Steps:
        if rate not in steps_by_dropout:
            m = mdef if rate == float(config.dropout) else set_dropout(mdef, state.params,
                                                                      state.batch_stats, rate)
            steps_by_dropout[rate] = make_steps(component, setup, m, tx, config, mesh, abstract)
        return steps_by_dropout[rate]

    if loop["epoch"] == 0 and loop.get("initial_val_loss") is None:
        # The untrained model's validation loss: the reference a run must beat to count as
        # converged (for emulators, whose output layer starts near zero, this is ~ persistence).
        initial = _evaluate(steps_for(float(loop["dropout"])), state, val_res, val_src, setup,
                            component, put, frozen, eval_batch_size, mesh)
        loop["initial_val_loss"] = _finite_or_none(float(initial["loss"]))

    while loop["stop_reason"] is None and loop["epoch"] < int(config.epochs):
        epoch = loop["epoch"]  # 0-based index of the epoch being trained
        t0 = time.perf_counter()
        dropout_used = float(loop["dropout"])
        steps = steps_for(dropout_used)
        epoch_key = jax.random.fold_in(base_key, epoch)
        order = np.random.default_rng([int(config.seed), epoch]).permutation(train_src.n_chunks)
        losses, n_samples = [], 0
        chunks = train_res if train_res is not None else list(
            _stream(train_src, setup, component, put))
        epoch_batches = max(1, sum(c.n_items // batch_size for c in chunks))
        batches_done = 0
        for ci in order:
            prepared = chunks[ci]
            if prepared.n_items < batch_size:
                continue
            perm = data_lib.epoch_batches(jax.random.fold_in(epoch_key, int(ci)),
                                          prepared.n_items, batch_size, mesh)
            for start in range(0, perm.shape[0], steps_per_call):
                n = min(steps_per_call, perm.shape[0] - start)
                done = batches_done + start + np.arange(n)
                factors = state_lib.lr_schedule_factor(config, epoch + done / epoch_batches)
                state, chunk_losses = steps.train(state, prepared.arrays, perm, np.int32(start),
                                                  frozen, factors.astype(np.float32), n)
                losses.append(chunk_losses)
            batches_done += perm.shape[0]
            n_samples += perm.shape[0] * batch_size
        if not losses:
            raise ValueError(
                f"{pre_dir}: the train split has fewer {component.item} per chunk than "
                f"config.batch_size = {batch_size}; lower the batch size"
            )
        diagnostics = {k: np.concatenate([np.asarray(d[k]) for d in jax.device_get(losses)])
                       for k in losses[0]}
        losses = diagnostics["loss"]
        train_seconds = time.perf_counter() - t0
        bad = np.flatnonzero(~np.isfinite(losses))
        train_loss = float(losses[bad[0]]) if bad.size else float(np.mean(losses))
        val, val_loss = {}, math.nan
        if not bad.size:
            val = _evaluate(steps, state, val_res, val_src, setup, component, put, frozen,
                            eval_batch_size, mesh)
            val_loss = float(val["loss"])
        lr = state_lib.learning_rate(state)
        skipped = float(np.mean(~np.isfinite(diagnostics["grad_norm"])))
        diverged = divergence(loop, train_loss, val_loss, config, skipped)
        rolled_back_to = None
        if diverged is not None and can_roll_back(loop, config):
            rolled_back_to = int(loop["best_epoch"])
            checkpointer.wait()
            state, _ = checkpointer.restore(rolled_back_to, abstract)
            loop["epoch"] = epoch + 1
            loop, new_lr = rollback_bookkeeping(loop, lr, config)
            state = state_lib.with_learning_rate(state, new_lr)
            comp_lib.log_line(
                f"{config.name} epoch {epoch + 1}: diverged ({diverged}); rolled back to epoch "
                f"{rolled_back_to}, lr {lr:.2e} -> {new_lr:.2e} "
                f"(rollback {loop['rollbacks']} of {int(config.max_rollbacks)})"
            )
        elif bad.size:
            k = int(bad[0])
            raise NonFiniteLossError(
                f"{config.name}: training loss is {losses[k]} at epoch {epoch + 1}, step {k + 1} "
                f"of the epoch (global step {int(state.step) - len(losses) + k + 1}); stopping. "
                f"The last good checkpoint (epoch {checkpointer.latest_epoch()}) is kept in "
                f"{checkpointer.directory}; lower config.lr or check the data"
            )
        elif skipped > MAX_SKIPPED_STEP_FRACTION:
            raise NonFiniteLossError(
                f"{config.name}: epoch {epoch + 1}: {diverged}; stopping. The last good "
                f"checkpoint (epoch {checkpointer.latest_epoch()}) is kept in "
                f"{checkpointer.directory}; lower config.lr or check the data"
            )
        elif not math.isfinite(val_loss):
            raise NonFiniteLossError(
                f"{config.name}: validation loss is {val_loss} after epoch {epoch + 1}; stopping. "
                f"The last good checkpoint (epoch {checkpointer.latest_epoch()}) is kept in "
                f"{checkpointer.directory}"
            )
        else:
            loop["epoch"] = epoch + 1
            loop, new_lr = update_bookkeeping(loop, val_loss, lr, config)
            if new_lr != lr:
                state = state_lib.with_learning_rate(state, new_lr)
        seconds = time.perf_counter() - t0
        record = {
            "epoch": epoch + 1,
            "train_loss": _finite_or_none(float(np.mean(losses))),
            "train": train_summary(diagnostics),
            "val_loss": _finite_or_none(val_loss),
            "val": _scalars(val),
            "lr": lr,  # config.lr x plateau / rollback reductions, at the start of the epoch
            # ... x the schedule factor at the epoch's last step: what the optimizer applied
            "lr_applied": lr * float(state_lib.lr_schedule_factor(config, epoch + 1.0)),
            "dropout": dropout_used,
            "steps": int(state.step),
            "seconds": seconds,
            "samples_per_s": n_samples / train_seconds,
        }
        if rolled_back_to is not None:
            record["rolled_back_to"] = rolled_back_to
        loop["history"] = [*loop["history"], record]
        loop["wall_time_s"] = float(loop["wall_time_s"]) + seconds
        every = max(1, int(config.checkpoint.get("every_epochs", 1)))
        if (loop["best_epoch"] == loop["epoch"] or loop["epoch"] % every == 0
                or loop["epoch"] >= int(config.epochs) or loop["stop_reason"]):
            # The metric is the loss this epoch measured, so after a rollback the best checkpoint
            # stays the original one (a non-finite loss is saved as the largest float).
            saved_loss = val_loss if math.isfinite(val_loss) else float(np.finfo(np.float64).max)
            checkpointer.save(loop["epoch"], state, loop, saved_loss)
        if _is_main():
            atomic.write_json(out_dir / METRICS_JSON, loop["history"])
        comp_lib.log_line(
            f"{config.name} epoch {epoch + 1}/{int(config.epochs)}  "
            f"train {float(np.mean(losses)):.4e}  val {val_loss:.4e}  "
            f"|g| {record['train']['grad_norm_mean'] or math.nan:.2g}/"
            f"{record['train']['grad_norm_max'] or math.nan:.2g}  "
            f"mre {100 * record['val'].get('mean_relative_error', math.nan):.3g}%  "
            f"dex {record['val'].get('mean_abs_dlog10', math.nan):.3g}  "
            f"lr {record['lr_applied']:.2e}  "
            f"{seconds:.1f} s  {record['samples_per_s']:.3g} {component.item}/s"
            + (f"  [{loop['stop_reason']}]" if loop["stop_reason"] else "")
        )
    checkpointer.wait()
    if loop["stop_reason"] is None:  # not saved: a rerun with more epochs continues
        loop["stop_reason"] = f"epoch cap ({config.epochs})"
    summary = _finish(config, component, setup, checkpointer, abstract, mdef, loop, n_params,
                      train_src, val_src, val_res, put, frozen, eval_batch_size, mesh, out_dir,
                      time.perf_counter() - wall_start, steps_for(float(config.dropout)))
    checkpointer.close()
    return summary


def _finish(config, component, setup, checkpointer, abstract, mdef, loop, n_params, train_src,
            val_src, val_res, put, frozen, eval_batch_size, mesh, out_dir, wall_s,
            steps: Steps) -> dict:
    """Best weights -> after-training hook (latents min/max), final validation, summary.json."""
    best = checkpointer.best_epoch()
    if best is None:
        raise ValueError(f"{config.name}: no checkpoint was written (config.epochs = "
                         f"{config.epochs}); nothing to summarise")
    best_state, _ = checkpointer.restore(best, abstract)
    val = _evaluate(steps, best_state, val_res, val_src, setup, component, put, frozen,
                    eval_batch_size, mesh)
    component.after_training(comp_lib.Finished(
        config=config, setup=setup, mdef=mdef, params=best_state.params,
        batch_stats=best_state.batch_stats, train_chunks=train_src.chunks, directory=out_dir,
    ))
    verdict = convergence_verdict(loop, float(val["loss"]), config)
    summary = {
        "status": "failed" if verdict else "converged",
        "failure": verdict,
        "initial_val_loss": loop.get("initial_val_loss"),
        "rollbacks": int(loop.get("rollbacks", 0)),
        "component": config.name,
        "component_type": config.type,
        "dataset": setup.info["dataset"],
        "preprocessing_method": config.preprocessing_method,
        "best_val_loss": float(val["loss"]),
        "best_epoch": int(best),
        "final_epoch": int(loop["epoch"]),
        "stop_reason": loop["stop_reason"],
        "best_val_metrics": _scalars(val),
        "best_val_per_species": {
            k: np.asarray(v).tolist() for k, v in val.items() if np.ndim(v) == 1
        },
        "species": setup.info["species"],
        "parameter_count": int(n_params),
        "devices": {"count": int(mesh.devices.size),
                    "kinds": sorted({d.device_kind for d in mesh.devices.flat}),
                    "processes": int(jax.process_count())},
        "train_split_shape": list(train_src.shape),
        "wall_time_s": float(wall_s),
        "training_time_s": float(loop["wall_time_s"]),
        "package_versions": runtime.package_versions(),
    }
    if _is_main():
        atomic.write_json(out_dir / SUMMARY_JSON, summary)
    if verdict:
        raise TrainingFailedError(
            f"{config.name}: training FAILED to converge: {verdict}. The checkpoints and "
            f"{out_dir / SUMMARY_JSON} (status 'failed') are kept for inspection; surrogates "
            "refuse this component. Check the data, or lower config.lr")
    mre = 100 * summary["best_val_metrics"].get("mean_relative_error", math.nan)
    comp_lib.log_line(
        f"{config.name}: best epoch {best}, val loss {summary['best_val_loss']:.4e}, mean "
        f"relative error {mre:.3g}%, {loop['stop_reason']}; artifacts in {out_dir}"
    )
    return summary
