"""Training stage: artifacts, 1 vs 8 device parity, exact resume, clear errors, NaN guard,
sweeps. Tiny synthetic shards (tests/training_fixtures.py), tiny MLPs, 2-4 epochs."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import training_fixtures as tf
from flax import nnx

from astrochem_jax import paths
from astrochem_jax.shards import load_split
from astrochem_jax.training import (
    ComponentError,
    ComponentNotFoundError,
    NonFiniteLossError,
    ResumeMismatchError,
    checkpoints,
    components,
    load_component,
    loop,
    train_component,
)
from astrochem_jax.training import state as state_lib

tf.enable_compile_cache()


def _metrics(name: str) -> list[dict]:
    records = json.loads((paths.weights_dir(name) / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k not in loop.TIMING_FIELDS} for r in records]


@pytest.fixture(scope="module")
def trained_ae(tmp_path_factory) -> Path:
    """A tiny autoencoder trained once (8 devices, 2 epochs); returns the outputs root holding
    `preprocessed/`, `utils/` and `weights/tiny_autoencoder/`."""
    root = tmp_path_factory.mktemp("ae_outputs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASTROCHEM_JAX_OUTPUTS", str(root))
        dirs = tf.write_preprocessed()
        train_component(tf.tiny_config("autoencoder"), preprocessed_dir=dirs["timeless"])
    return root


@pytest.fixture
def outputs_with_ae(trained_ae) -> Path:
    """This test's outputs dir with a copy of the trained autoencoder and the synthetic data."""
    out = paths.outputs_dir()
    shutil.copytree(trained_ae, out, dirs_exist_ok=True)
    return out


def test_autoencoder_artifacts_and_load(outputs_with_ae):
    directory = paths.weights_dir("tiny_autoencoder")
    for name in ("config.json", "metrics.json", "summary.json", "latents_minmax.npy"):
        assert (directory / name).is_file(), name
    records = _metrics("tiny_autoencoder")
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in records)
    assert {"mean_relative_error", "mean_abs_dlog10"} <= set(records[0]["val"])
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["component_type"] == "autoencoder"
    assert summary["devices"]["count"] == 8
    assert summary["best_epoch"] == int(np.argmin([r["val_loss"] for r in records])) + 1
    assert summary["parameter_count"] > 0

    loaded = load_component("tiny_autoencoder")
    assert loaded.epoch == summary["best_epoch"]
    model = loaded.model()
    x = jnp.asarray(tf.trajectories(2, 3)[..., len(tf.PHYSICAL):].reshape(-1, len(tf.SPECIES)))
    x_hat, z = model(x)
    assert x_hat.shape == x.shape and z.shape == (6, 3)
    assert x_hat.dtype == jnp.float32

    # Latent min/max: over the TRAIN split, best weights, eval mode.
    from astrochem_jax import shards

    train = shards.load_split(paths.preprocessed_dir("synth", "timeless"), "train")
    z_train = np.asarray(loaded.model().encode(jnp.asarray(train)))
    minmax = np.load(directory / "latents_minmax.npy")
    assert minmax.shape == (2, 3)
    np.testing.assert_allclose(minmax, [z_train.min(0), z_train.max(0)], rtol=1e-5, atol=1e-6)


def test_one_vs_eight_devices_same_losses(outputs_with_ae):
    """Same data, config and seed on a 1-device mesh gives the 8-device run's losses."""
    c = tf.tiny_config("autoencoder", name="tiny_autoencoder_1dev")
    train_component(c, preprocessed_dir=paths.preprocessed_dir("synth", "timeless"),
                    devices=jax.devices()[:1])
    one, eight = _metrics("tiny_autoencoder_1dev"), _metrics("tiny_autoencoder")
    assert len(one) == len(eight) == 2
    for a, b in zip(one, eight, strict=True):
        assert a["steps"] == b["steps"] > 2
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
        # The biases of the Linear layers in front of BatchNorm get a zero gradient, so Adam
        # turns float rounding (which depends on the device count) into small drifts of them
        # and of the BatchNorm running means; the eval-mode validation loss feels that (~0.5%)
        # although the training losses agree to 1e-5.
        np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=2e-2)


def test_exact_resume_and_config_mismatch():
    """4 epochs straight == 2 epochs, then the same command with epochs=4 (resumed). Dropout
    decay and LR plateau steps happen in between, so their bookkeeping must be restored too.
    The straight run streams its (single) shard instead of keeping it device-resident, which
    must not change anything either."""
    dirs = tf.write_preprocessed()

    def config(name, epochs):
        c = tf.tiny_config("direct_emulator", name=name)
        c.epochs = epochs
        c.dropout = 0.2
        c.dropout_decay_patience = 1
        c.plateau_patience, c.plateau_factor = 0, 0.5
        c.plateau_threshold = 0.5  # every epoch counts as a plateau: the LR halves each epoch
        c.plateau_factor = 0.5
        return c

    streamed = config("straight", 4)
    streamed.device_resident_max_mb = 0.0  # one shard: streaming must match device-resident
    train_component(streamed, preprocessed_dir=dirs["sequential"])
    train_component(config("resumed", 2), preprocessed_dir=dirs["sequential"])
    assert len(_metrics("resumed")) == 2
    train_component(config("resumed", 4), preprocessed_dir=dirs["sequential"])
    straight, resumed = _metrics("straight"), _metrics("resumed")
    assert straight == resumed
    # The plateau schedule and the dropout decay really ran across the interruption.
    assert [r["lr"] for r in straight] == pytest.approx([3e-3, 3e-3, 1.5e-3, 7.5e-4])
    assert [r["dropout"] for r in straight] == pytest.approx([0.2, 0.2, 0.1, 0.05])

    changed = config("resumed", 4)
    changed.lr = 1e-2
    with pytest.raises(ResumeMismatchError, match=r"lr: 0\.003 -> 0\.01"):
        train_component(changed, preprocessed_dir=dirs["sequential"])


def test_emulator_trains_through_frozen_autoencoder(outputs_with_ae):
    c = tf.tiny_config("emulator")
    c.epochs = 1
    summary = train_component(c, preprocessed_dir=paths.preprocessed_dir("synth", "sequential"))
    assert np.isfinite(summary["best_val_loss"])
    info = json.loads((paths.weights_dir("tiny_emulator") / "config.json").read_text())
    assert info["data_info"]["state_dim"] == 3
    assert info["data_info"]["autoencoder_component"] == "tiny_autoencoder"
    loaded = load_component("tiny_emulator")
    model = loaded.model()
    out = model(jnp.zeros((4, 2), jnp.float32), jnp.zeros((4, 3), jnp.float32))
    assert out.shape == (4, 3)


def test_emulator_validates_closed_loop_over_full_trajectories(outputs_with_ae):
    """val_horizon = 0: one validation window per tracer from t0 over the whole trajectory, while
    training uses strided, t0-weighted windows of `horizon` steps; bad values are refused."""
    pre = paths.preprocessed_dir("synth", "sequential")
    c = tf.tiny_config("direct_emulator", name="closed_loop")
    c.epochs, c.val_horizon, c.window_stride, c.t0_window_repeats = 1, 0, 2, 3
    train_component(c, preprocessed_dir=pre)
    info = json.loads((paths.weights_dir("closed_loop") / "config.json").read_text())["data_info"]
    n_steps = np.load(sorted(pre.glob("val-*.npy"))[0]).shape[1]
    assert info["val_horizon"] == n_steps - 1 and info["horizon"] == 3
    assert (info["window_stride"], info["t0_window_repeats"]) == (2, 3)
    c.name, c.val_horizon = "bad_val_horizon", n_steps
    with pytest.raises(ComponentError, match="val_horizon"):
        train_component(c, preprocessed_dir=pre)


def test_autoencoder_row_mixup_trains_on_mixed_rows_for_any_device_count(outputs_with_ae):
    """row_mixup: the training target is the mixed row (so training differs from a run without
    it), evaluation sees the plain rows, and the pairs do not depend on the device count (the
    permutation is over the global batch): 1 and 2 devices give the same training losses."""
    pre = paths.preprocessed_dir("synth", "timeless")

    def config(name, mixup):
        c = tf.tiny_config("autoencoder", name=name)
        c.model.row_mixup = mixup
        return c

    one = train_component(config("mix_one", 0.5), preprocessed_dir=pre, devices=jax.devices()[:1])
    two = train_component(config("mix_two", 0.5), preprocessed_dir=pre, devices=jax.devices()[:2])
    plain = train_component(config("mix_off", 0.0), preprocessed_dir=pre,
                            devices=jax.devices()[:1])
    # Same criterion as test_one_vs_eight_devices_same_losses: the training losses (mixed rows)
    # agree to float rounding; eval-mode validation feels the pre-BatchNorm bias drift.
    for a, b, c in zip(_metrics("mix_one"), _metrics("mix_two"), _metrics("mix_off"), strict=True):
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=2e-2)
        assert abs(a["train_loss"] / c["train_loss"] - 1) > 1e-3  # mixed rows: another loss
    assert one["fingerprint"] != plain["fingerprint"]
    assert two["best_epoch"] == one["best_epoch"]
    loaded = load_component("mix_one")
    model = state_lib.merge_model(loaded.mdef, loaded.params, loaded.batch_stats, train=False)
    x = jnp.asarray(np.load(sorted(pre.glob("val-*.npy"))[0])[:8])
    x_hat, true, aux = components.get_component("autoencoder").predict(model, {"x": x}, None,
                                                                        None)
    np.testing.assert_array_equal(true, x)  # evaluation: no mixing
    assert aux == {}
    train_model = state_lib.merge_model(loaded.mdef, loaded.params, loaded.batch_stats,
                                        train=True)
    _, mixed, _ = components.get_component("autoencoder").predict(train_model, {"x": x}, None,
                                                                   None)
    assert float(jnp.max(jnp.abs(mixed - x))) > 1e-4  # training: the target is the mixed row


def test_warm_start_from_a_trained_emulator_on_full_trajectories(outputs_with_ae):
    """init_from: the run starts from the named component's best weights (its untrained-model
    validation loss is the source's best), horizon 0 trains on one window per tracer over the
    whole trajectory, and the source is recorded; a source of another model shape, type or
    autoencoder is refused."""
    pre = paths.preprocessed_dir("synth", "sequential")
    base = tf.tiny_config("emulator", name="ws_base")
    base.epochs = 3
    base_summary = train_component(base, preprocessed_dir=pre)
    c = tf.tiny_config("emulator", name="ws_fine")
    c.init_from, c.horizon, c.window_stride, c.t0_window_repeats = "ws_base", 0, 1 << 20, 1
    c.batch_size = c.eval_batch_size = 2  # 6 train tracers: one window each
    summary = train_component(c, preprocessed_dir=pre, devices=jax.devices()[:2])
    assert summary["initial_val_score"] == pytest.approx(base_summary["best_val_score"],
                                                         rel=1e-5)
    info = json.loads((paths.weights_dir("ws_fine") / "config.json").read_text())["data_info"]
    n_steps = np.load(sorted(pre.glob("train-*.npy"))[0]).shape[1]
    assert info["horizon"] == n_steps - 1
    assert info["init_from"]["component"] == "ws_base"
    assert info["init_from"]["fingerprint"] == base_summary["fingerprint"]
    n_train = np.load(sorted(pre.glob("train-*.npy"))[0]).shape[0]
    assert components.window_table(None, info["horizon"], stride=c.window_stride,
                                   lengths=np.full(n_train, n_steps)).tolist() == \
        [[k, 0] for k in range(n_train)]

    wider = tf.tiny_config("emulator", name="ws_wider")
    wider.init_from, wider.model.hidden_dims = "ws_base", (8, 4)
    with pytest.raises(ComponentError, match="config.init_from = 'ws_base'.*do not match"):
        train_component(wider, preprocessed_dir=pre)
    other_type = tf.tiny_config("emulator", name="ws_type")
    other_type.init_from = "tiny_autoencoder"
    with pytest.raises(ComponentError, match="type 'autoencoder'.*trains type 'emulator'"):
        train_component(other_type, preprocessed_dir=pre)
    path = paths.weights_dir("ws_base") / "config.json"  # as if trained on another autoencoder
    data = json.loads(path.read_text())
    data["data_info"]["autoencoder_fingerprint"] = "0" * 64
    path.write_text(json.dumps(data))
    other_ae = tf.tiny_config("emulator", name="ws_ae")
    other_ae.init_from = "ws_base"
    with pytest.raises(ComponentError, match="same autoencoder"):
        train_component(other_ae, preprocessed_dir=pre)
    for name in ("ws_wider", "ws_type", "ws_ae"):
        assert not paths.weights_dir(name).exists(), name


def test_warm_start_is_candidate_epoch_0_and_kept_when_nothing_beats_it(outputs_with_ae):
    """A warm-started run saves its starting weights as epoch 0: when no epoch beats them on
    validation (here lr 1e-30: no weight moves, every epoch only ties), the run converges to
    exactly the warm start's weights, says so in summary.json, and loads like any other."""
    pre = paths.preprocessed_dir("synth", "sequential")
    base = tf.tiny_config("emulator", name="keep_base")
    base.epochs = 2
    base_summary = train_component(base, preprocessed_dir=pre)
    c = tf.tiny_config("emulator", name="keep_fine")
    c.init_from, c.epochs, c.lr, c.converged_loss_ratio = "keep_base", 2, 1e-30, 0.5
    c.plateau_patience = 100
    summary = train_component(c, preprocessed_dir=pre)
    assert summary["status"] == "converged" and summary["kept_warm_start"]
    assert summary["best_epoch"] == 0 and summary["final_epoch"] == 2
    assert summary["best_val_loss"] == pytest.approx(base_summary["best_val_loss"], rel=1e-6)
    assert summary["fingerprint"] == base_summary["fingerprint"]
    loaded = load_component("keep_fine")
    for ours, theirs in zip(jax.tree.leaves(loaded.params),
                            jax.tree.leaves(load_component("keep_base").params),
                            strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    assert base_summary["kept_warm_start"] is False


def test_missing_autoencoder_names_the_command(outputs_with_ae):
    c = tf.tiny_config("emulator")
    c.autoencoder_component = "autoencoder_grav_small"
    with pytest.raises(ComponentNotFoundError) as err:
        train_component(c, preprocessed_dir=paths.preprocessed_dir("synth", "sequential"))
    assert ("python -m astrochem_jax.train --config=configs/components/autoencoder_grav_small.py"
            in str(err.value))


def test_incompatible_autoencoder_is_refused(outputs_with_ae):
    pre = paths.preprocessed_dir("synth", "sequential")
    c = tf.tiny_config("emulator")
    c.model.latent_dim = 5
    with pytest.raises(ComponentError, match="latent size is 3.*latent_dim = 5"):
        train_component(c, preprocessed_dir=pre)

    # An autoencoder trained on another species list.
    path = paths.weights_dir("tiny_autoencoder") / "config.json"
    data = json.loads(path.read_text())
    data["data_info"]["species"] = [*tf.SPECIES[:-1], "CH4"]
    path.write_text(json.dumps(data))
    with pytest.raises(ComponentError, match="species list differs.*index 5"):
        train_component(tf.tiny_config("emulator"), preprocessed_dir=pre)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(monkeypatch):
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="nan_run")
    c.max_rollbacks = 0
    r = tf.tiny_config("autoencoder", name="nan_rollback")
    r.max_rollbacks = 2
    for config in (c, r):
        config.epochs = 1
        train_component(config, preprocessed_dir=dirs["timeless"])
    good = (paths.weights_dir("nan_run") / "metrics.json").read_text()

    real = loop.total_loss

    def poisoned(pred, true, **kwargs):
        loss, parts = real(pred, true, **kwargs)
        return loss * jnp.nan, parts

    monkeypatch.setattr(loop, "total_loss", poisoned)
    c.epochs = 2
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, step 1 of the epoch.*epoch 1"):
        train_component(c, preprocessed_dir=dirs["timeless"])
    assert (paths.weights_dir("nan_run") / "metrics.json").read_text() == good
    kept = checkpoints.Checkpointer(paths.weights_dir("nan_run"), read_only=True)
    assert kept.latest_epoch() == 1

    # With rollbacks allowed, a loss that stays NaN uses them up (each from the best epoch 1,
    # halving the lr), then raises.
    r.epochs = 5
    with pytest.raises(NonFiniteLossError, match=r"at epoch 4, step 1 of the epoch"):
        train_component(r, preprocessed_dir=dirs["timeless"])
    history = json.loads((paths.weights_dir("nan_rollback") / "metrics.json").read_text())
    assert [h.get("rolled_back_to") for h in history] == [None, 1, 1]
    assert [h["val_loss"] is None for h in history] == [False, True, True]
    assert [h["lr"] for h in history] == pytest.approx([3e-3, 3e-3, 1.5e-3])
    kept = checkpoints.Checkpointer(paths.weights_dir("nan_rollback"), read_only=True)
    assert kept.best_epoch() == 1


def test_validation_score_reads_the_checkpoint_metric():
    c = tf.tiny_config("emulator")
    assert c.checkpoint_metric == "mean_abs_dlog10"  # emulators: the number the benchmark reports
    val = {"loss": 0.4, "mean_abs_dlog10": 0.8, "abs_dlog10_per_species": np.ones(3)}
    assert loop.validation_score(val, c) == 0.8
    assert math.isnan(loop.validation_score(dict(val, loss=math.nan), c))  # no score from NaN
    c.checkpoint_metric = "loss"
    assert loop.validation_score(val, c) == 0.4
    c.checkpoint_metric = "mean_abs_dex"
    with pytest.raises(ValueError, match="'mean_abs_dex' is not a validation metric.*"
                                         "mean_abs_dlog10"):
        loop.validation_score(val, c)
    c.checkpoint_metric = "abs_dlog10_per_species"
    with pytest.raises(ValueError, match="per-species array"):
        loop.validation_score(val, c)


def test_bookkeeping_of_older_checkpoints_is_upgraded():
    """Loops saved before checkpoint_metric held the loss under best_val_loss /
    initial_val_loss: they become the scores (such a run resumes with metric "loss")."""
    old = {"epoch": 4, "best_val_loss": 0.3, "initial_val_loss": 2.0, "best_epoch": 2,
           "history": [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": None}]}
    new = loop.upgraded_loop(old)
    assert new == {"epoch": 4, "best_val_score": 0.3, "initial_val_score": 2.0, "best_epoch": 2,
                   "history": [{"epoch": 1, "val_loss": 0.5, "val_score": 0.5},
                               {"epoch": 2, "val_loss": None, "val_score": None}]}
    assert "best_val_loss" in old  # not modified in place
    assert loop.upgraded_loop(new) == new


def test_checkpoints_are_chosen_by_the_checkpoint_metric(outputs_with_ae):
    """The best epoch is the first minimum of the configured validation metric over the
    epochs (an emulator's closed-loop mean |dlog10|, or the loss when asked), and the summary's
    metrics are those of that epoch."""
    pre = paths.preprocessed_dir("synth", "sequential")
    for name, metric in (("cm_dex", "mean_abs_dlog10"), ("cm_loss", "loss")):
        c = tf.tiny_config("emulator", name=name)
        c.epochs, c.lr, c.checkpoint_metric = 6, 3e-2, metric
        summary = train_component(c, preprocessed_dir=pre)
        history = _metrics(name)
        scores = [r["val_loss"] if metric == "loss" else r["val"][metric] for r in history]
        assert [r["val_score"] for r in history] == scores
        assert summary["checkpoint_metric"] == metric
        assert summary["best_epoch"] == 1 + int(np.argmin(scores))
        assert summary["best_val_score"] == pytest.approx(min(scores), rel=1e-6)
        assert summary["best_val_loss"] == pytest.approx(
            history[summary["best_epoch"] - 1]["val_loss"], rel=1e-6)


def test_divergence_rules():
    c = tf.tiny_config("autoencoder")
    c.divergence_factor, c.max_rollbacks, c.rollback_lr_factor = 3.0, 1, 0.25
    fresh = loop.initial_loop_state(c)
    assert loop.divergence(fresh, 1.0, 1e9, c) is None  # no best yet: nothing to compare with
    assert "training loss is nan" in loop.divergence(fresh, math.nan, 1.0, c)
    assert "validation loss is inf" in loop.divergence(fresh, 1.0, math.inf, c)
    assert not loop.can_roll_back(fresh, c)  # no best checkpoint to go back to
    seen = dict(fresh, best_val_score=2.0, best_epoch=3)
    assert loop.divergence(seen, 1.0, 6.0, c) is None
    assert "> 3 x best" in loop.divergence(seen, 1.0, 6.01, c)
    c.divergence_factor = None
    assert loop.divergence(seen, 1.0, 1e9, c) is None
    assert loop.can_roll_back(seen, c)
    after, lr = loop.rollback_bookkeeping(dict(seen, plateau_count=2), 1e-3, c)
    assert lr == pytest.approx(2.5e-4)
    assert (after["rollbacks"], after["stagnant_epochs"], after["plateau_count"]) == (1, 1, 0)
    assert not loop.can_roll_back(after, c)  # max_rollbacks used up
    c.min_lr = 1e-3
    assert loop.rollback_bookkeeping(seen, 1e-3, c)[1] == 1e-3  # never below min_lr
    assert loop.rollback_bookkeeping(seen, 1e-5, c)[1] == 1e-5  # ... and never raised to it
    c.plateau_patience, c.plateau_factor = 0, 0.5
    stalled = dict(seen, plateau_best=1.0)
    assert loop.update_bookkeeping(stalled, 2.0, 4e-3, c)[1] == pytest.approx(2e-3)
    assert loop.update_bookkeeping(stalled, 2.0, 1.5e-3, c)[1] == 1e-3  # floored at min_lr
    assert loop.update_bookkeeping(stalled, 2.0, 1e-5, c)[1] == 1e-5  # an lr below it stays
    c.stagnant_epoch_patience = 1
    assert "early stopping" in loop.rollback_bookkeeping(seen, 1e-3, c)[0]["stop_reason"]


def test_divergence_rolls_back_to_best_and_resumes_exactly(monkeypatch):
    """A validation loss 100x the best at epoch 3 (first pass only) -> back to the best epoch's
    state with half the lr; a run interrupted right after the rollback resumes to the same
    numbers."""
    dirs = tf.write_preprocessed()

    def config(name, epochs):
        c = tf.tiny_config("autoencoder", name=name)
        c.epochs, c.plateau_patience = epochs, 100  # the lr changes only by the rollback
        c.divergence_factor = 3.0
        return c

    train_component(config("clean", 4), preprocessed_dir=dirs["timeless"])
    clean = _metrics("clean")
    steps_after_3 = clean[2]["steps"]
    real = loop._evaluate

    def spiking(steps, state, *args):
        out = real(steps, state, *args)
        if int(state.step) == steps_after_3 and state_lib.learning_rate(state) > 2e-3:
            out = dict(out, loss=out["loss"] * 100.0)
        return out

    monkeypatch.setattr(loop, "_evaluate", spiking)
    train_component(config("straight", 4), preprocessed_dir=dirs["timeless"])
    straight = _metrics("straight")
    best = min((1, 2), key=lambda e: clean[e - 1]["val_loss"])
    assert straight[:2] == clean[:2]
    assert straight[2]["rolled_back_to"] == best
    assert straight[2]["steps"] == clean[best - 1]["steps"]  # the state really went back
    assert [r["lr"] for r in straight] == pytest.approx([3e-3, 3e-3, 3e-3, 1.5e-3])
    assert straight[3]["val_loss"] != clean[3]["val_loss"]  # epoch 4 retrained at half the lr

    train_component(config("resumed", 3), preprocessed_dir=dirs["timeless"])
    train_component(config("resumed", 4), preprocessed_dir=dirs["timeless"])
    assert _metrics("resumed") == straight


def test_batch_size_must_divide_device_count():
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder")
    c.batch_size = 12
    with pytest.raises(ValueError, match=r"batch_size = 12 is not divisible by .* \(8\)"):
        train_component(c, preprocessed_dir=dirs["timeless"])


def test_evaluation_batches_shrink_to_small_splits_and_cover_every_item_once():
    from astrochem_jax.training import data as data_lib

    # 19 whole-trajectory windows on 8 devices: 24 rows, not eval_batch_size = 1024.
    assert data_lib.eval_batch_size(19, 1024, 8) == 24
    assert data_lib.eval_batch_size(5000, 1024, 8) == 1024
    assert data_lib.eval_batch_size(0, 1024, 8) == 8
    for n_items, batch, shards in ((19, 1024, 8), (5000, 1024, 8), (7, 4, 2)):
        rows = data_lib.eval_batch_size(n_items, batch, shards)
        assert rows % shards == 0
        plan = data_lib.eval_batches(n_items, rows)
        seen = np.concatenate([idx[mask] for idx, mask in plan])
        assert seen.tolist() == list(range(n_items))


def test_window_table_reports_short_tracers(capsys):
    chunk = np.zeros((3, 6, 4), np.float32)
    chunk[1, 4:] = np.nan  # tracer 1 has 4 valid steps
    chunk[2, 2:] = np.nan  # tracer 2 has 2: too short for a 3-step window
    table = components.window_table(chunk, horizon=3)
    assert table.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0]]
    assert "1 of 3 tracers" in capsys.readouterr().err


def test_window_table_stride_staggers_starts():
    chunk = np.zeros((3, 10, 2), np.float32)
    table = components.window_table(chunk, horizon=4, stride=3)
    assert table.tolist() == [[0, 0], [0, 3], [1, 0], [1, 1], [1, 4], [2, 0], [2, 2], [2, 5]]
    assert components.window_table(chunk, horizon=4).shape == (18, 2)  # stride 1: all
    with pytest.raises(ValueError, match="stride"):
        components.window_table(chunk, horizon=4, stride=0)


def test_window_table_end_repeats_give_the_last_steps_the_middles_weight():
    """Strided windows reach a trajectory's last steps at most once; `end_repeats` adds windows
    ending at each tracer's last valid step (NaN padding respected), grouped with the tracer's
    others, and 0 leaves the table exactly as it was."""
    chunk = np.zeros((3, 10, 2), np.float32)
    chunk[1, 8:] = np.nan  # tracer 1 has 8 valid steps: its last window starts at 3
    plain = components.window_table(chunk, horizon=4, stride=3)
    table = components.window_table(chunk, horizon=4, stride=3, end_repeats=2)
    assert table.tolist() == [[0, 0], [0, 3], [0, 5], [0, 5], [1, 0], [1, 1], [1, 3], [1, 3],
                              [2, 0], [2, 2], [2, 5], [2, 5], [2, 5]]
    assert components.window_table(chunk, horizon=4, stride=3, end_repeats=0).tolist() == \
        plain.tolist()

    def targets_per_step(windows, n_steps=300, horizon=64):
        covered = np.zeros(n_steps)
        for _, start in windows:
            covered[start + 1:start + 1 + horizon] += 1
        return covered

    shipped = dict(horizon=64, stride=4, t0_repeats=32, lengths=np.full(4, 300))
    before = targets_per_step(components.window_table(None, **shipped)) / 4
    after = targets_per_step(components.window_table(None, **shipped, end_repeats=12)) / 4
    assert before[150] == after[150] == 16 and before[299] < 1 and before[290] < 3
    assert np.all(after[236:] >= 12)  # the last 64 steps: at least 3/4 of a middle step's
    with pytest.raises(ValueError, match="end_repeats"):
        components.window_table(chunk, horizon=4, end_repeats=-1)


def test_sweep_names_and_values():
    from astrochem_jax.train import SweepError, sweep_configs

    base = tf.tiny_config("autoencoder")
    runs = sweep_configs(base, "lr=1e-3,5e-4,1e-4")
    assert [r.name for r in runs] == [f"tiny_autoencoder/lr={v}" for v in ("1e-3", "5e-4", "1e-4")]
    assert [r.lr for r in runs] == [1e-3, 5e-4, 1e-4]
    grid = sweep_configs(base, "lr=1e-3,1e-4;model.latent_dim=4,8")
    assert len(grid) == 4 and grid[-1].model.latent_dim == 8
    assert grid[-1].name == "tiny_autoencoder/lr=1e-4,model.latent_dim=8"
    assert base.name == "tiny_autoencoder" and base.lr == 3e-3  # the base is left alone
    assert sweep_configs(base, None) == [base]
    with pytest.raises(SweepError, match="no field 'lrr'"):
        sweep_configs(base, "lrr=1")
    assert checkpoints.training_command("autoencoder_grav_large/lr=1e-3") == (
        'python -m astrochem_jax.train --config=configs/components/autoencoder_grav_large.py '
        '--sweep="lr=1e-3"'
    )
    # Names of components trained on a named dataset map back to the config that builds them,
    # variants (`<kind>_<variant>_<dataset>`) included.
    for name, spec in (("emulator_grav_seed7", "emulator_grav_sequential.py:grav_seed7"),
                       ("emulator_closed_loop_grav_seed7",
                        "emulator_grav_closed_loop.py:grav_seed7"),
                       ("emulator_ensemble_grav_seed7", "emulator_grav_ensemble.py:grav_seed7")):
        assert checkpoints.training_command(name).endswith(f"configs/components/{spec}"), name


@pytest.mark.slow
def test_end_to_end_from_raw_dataset(tmp_path):
    """generate (tiny) -> preprocess on demand -> autoencoder -> latent emulator."""
    from fixtures import make_tiny_raw_dataset, tiny_dataset_config

    raw = make_tiny_raw_dataset(tmp_path / "raw" / "tiny.h5", n_tracers=4, n_steps=20)
    ae = tf.tiny_config("autoencoder", name="e2e_ae", dataset="tiny")
    ae.dataset = tiny_dataset_config(raw, n_tracers=4, n_steps=20)
    ae.model.hidden_dims = (16,)
    summary = train_component(ae)  # builds outputs/preprocessed/tiny/timeless on demand
    assert summary["dataset"] == "tiny" and np.isfinite(summary["best_val_loss"])
    assert (paths.preprocessed_dir("tiny", "timeless") / "manifest.json").is_file()
    n_species = len(summary["species"])
    assert np.load(paths.weights_dir("e2e_ae") / "latents_minmax.npy").shape == (2, 3)

    emu = tf.tiny_config("emulator", name="e2e_emulator")
    emu.dataset = ae.dataset
    emu.autoencoder_component = "e2e_ae"
    emu.epochs = 1
    summary = train_component(emu)
    assert np.isfinite(summary["best_val_loss"])
    assert len(summary["best_val_per_species"]["relative_error_per_species"]) == n_species


# --- recipe mechanics: schedule, truncated backpropagation, non-finite guard, verdict ----------


def test_warmup_cosine_schedule():
    c = tf.tiny_config("autoencoder")
    c.epochs, c.lr_schedule, c.warmup_epochs, c.lr_final_factor = 10, "warmup_cosine", 2.0, 0.1
    f = state_lib.lr_schedule_factor(c, np.array([0.0, 1.0, 2.0, 6.0, 10.0, 12.0]))
    np.testing.assert_allclose(f, [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], atol=1e-9)
    assert np.all(np.diff(state_lib.lr_schedule_factor(c, np.linspace(2, 10, 50))) <= 0)
    c.lr_schedule = "constant"
    np.testing.assert_array_equal(state_lib.lr_schedule_factor(c, np.arange(4.0)), 1.0)
    c.lr_schedule = "cyclic"
    with pytest.raises(ValueError, match="lr_schedule = 'cyclic'"):
        state_lib.lr_schedule_factor(c, np.arange(2.0))


def test_example_budget_caps_epochs_and_trains_exactly_as_that_many_epochs():
    """config.max_train_examples = 3 epochs' rows (+ a remainder) with config.epochs = 50 trains
    exactly what config.epochs = 3 trains (same metrics, same learning-rate schedule), and
    summary.json says where the epochs came from; a cap above 50 epochs changes nothing."""
    dirs = tf.write_preprocessed()
    rows = json.loads((dirs["timeless"] / "manifest.json").read_text())["splits"]["train"]
    rows_per_epoch = int(rows["shape"][0])

    def config(name, epochs, cap):
        c = tf.tiny_config("autoencoder", name=name)
        c.epochs, c.lr_schedule, c.warmup_epochs, c.lr_final_factor = epochs, "warmup_cosine", \
            1.0, 0.1
        c.max_train_examples = cap
        return c

    three = train_component(config("three", 3, None), preprocessed_dir=dirs["timeless"])
    capped = train_component(config("capped", 50, 3 * rows_per_epoch + rows_per_epoch - 1),
                             preprocessed_dir=dirs["timeless"])
    assert _metrics("capped") == _metrics("three")
    assert len(_metrics("capped")) == 3
    assert capped["epoch_budget"] == {
        "configured_epochs": 50, "max_train_examples": 4 * rows_per_epoch - 1,
        "train_examples_per_epoch": rows_per_epoch, "epochs": 3}
    assert three["epoch_budget"]["epochs"] == 3
    assert capped["stop_reason"] == three["stop_reason"] == "epoch cap (3)"
    loose = train_component(config("loose", 3, 100 * rows_per_epoch),
                            preprocessed_dir=dirs["timeless"])
    assert _metrics("loose") == _metrics("three") and loose["epoch_budget"]["epochs"] == 3


def test_example_budget_rule():
    c = tf.tiny_config("autoencoder")
    c.epochs, c.max_train_examples = 10, None
    assert state_lib.epochs_within_budget(c, 10**9) == 10
    c.max_train_examples = 1000
    assert [state_lib.epochs_within_budget(c, n) for n in (1, 100, 101, 333, 999, 5000)] == \
        [10, 10, 9, 3, 1, 1]  # at most config.epochs, at least 1
    with pytest.raises(ValueError, match="examples_per_epoch = 0"):
        state_lib.epochs_within_budget(c, 0)


@pytest.mark.parametrize("train_tracers, n_steps, epochs", [
    (90, 300, (1000, 60, 60)),  # 128 generated tracers (grav_seed7)
    (180, 300, (500, 30, 30)),  # 256 generated tracers (grav, uclchem_gas_grav)
    (63, 301, (1000, 60, 60)),  # the real UCLCHEM file (uclchem_grav_train: 89 tracers)
])
def test_shipped_budgets_keep_the_optimizer_steps_of_90_train_tracers(train_tracers, n_steps,
                                                                      epochs):
    """The shipped component configs train the default dataset's 180 train tracers for half the
    epochs of the 90 of a 128-tracer dataset (the same optimizer steps); 90 or fewer train
    tracers keep config.epochs, so those datasets train exactly as before the cap existed."""
    from astrochem_jax import config_utils

    lengths = np.full(train_tracers, n_steps)
    found = []
    for name in ("autoencoder_grav_large", "emulator_grav_sequential",
                 "emulator_grav_closed_loop"):
        c = config_utils.load_config(name, "components")
        if c.type == "autoencoder":
            examples = train_tracers * n_steps
        else:
            horizon = int(c.horizon) or n_steps - 1
            examples = components.window_table(None, horizon, where="test",
                                               stride=int(c.window_stride),
                                               t0_repeats=int(c.t0_window_repeats),
                                               lengths=lengths).shape[0]
        found.append(state_lib.epochs_within_budget(c, examples))
    assert tuple(found) == epochs


def test_gradient_window_truncates_backpropagation_only():
    """Forward values are those of the full rollout; the gradient of a late step with respect to
    the first state vanishes past the window, and equals full backpropagation within it."""
    from flax import nnx

    from astrochem_jax.models import Emulator, rollout_module

    model = Emulator(2, 3, hidden_dims=(8,), rngs=nnx.Rngs(0))
    model.eval()
    graphdef, model_state = nnx.split(model)
    phys = jax.random.uniform(jax.random.key(1), (2, 6, 2))
    s0 = jax.random.uniform(jax.random.key(2), (2, 3))

    def roll(state0, k):
        return rollout_module(nnx.merge(graphdef, model_state, copy=True), state0, phys,
                              gradient_window=k)

    def last(state0, k, t):
        return jnp.sum(roll(state0, k)[:, t])

    np.testing.assert_array_equal(roll(s0, 2), roll(s0, 0))
    assert np.all(np.asarray(jax.grad(last)(s0, 2, 5)) == 0.0)  # step 5 is past the first cut
    np.testing.assert_allclose(jax.grad(last)(s0, 2, 1), jax.grad(last)(s0, 0, 1), rtol=1e-6)
    assert np.any(np.asarray(jax.grad(last)(s0, 0, 5)) != 0.0)


def test_non_finite_gradient_skips_the_step(monkeypatch):
    """A step whose gradient overflows changes nothing (params, moments) and is counted; an epoch
    made mostly of such steps stops the run with the last good checkpoint kept."""
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="skips")
    c.epochs, c.max_rollbacks = 1, 0
    real = loop.step_diagnostics
    calls = {"n": 0}

    def overflowing(loss, parts, grads, updates):
        out = real(loss, parts, grads, updates)
        # Every other step of the epoch reports an infinite gradient norm.
        return dict(out, grad_norm=jnp.where(out["loss"] > -1, jnp.inf, out["grad_norm"]))

    monkeypatch.setattr(loop, "step_diagnostics", overflowing)
    with pytest.raises(NonFiniteLossError, match="non-finite gradient"):
        train_component(c, preprocessed_dir=dirs["timeless"])
    kept = checkpoints.Checkpointer(paths.weights_dir("skips"), read_only=True)
    assert kept.latest_epoch() is None  # nothing trained, nothing saved as if it had
    del calls


def test_skipped_steps_leave_the_state_unchanged(monkeypatch):
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="frozen_by_skips")
    monkeypatch.setattr(loop, "MAX_SKIPPED_STEP_FRACTION", 1.0)  # never stop for skips here
    real = loop.step_diagnostics

    def overflowing(loss, parts, grads, updates):
        return dict(real(loss, parts, grads, updates), grad_norm=jnp.asarray(jnp.inf))

    monkeypatch.setattr(loop, "step_diagnostics", overflowing)
    c.epochs = 1
    train_component(c, preprocessed_dir=dirs["timeless"])
    history = _metrics("frozen_by_skips")
    assert history[0]["train"]["non_finite_steps"] == history[0]["steps"] > 0
    # Every step skipped: the saved weights are the initial ones.
    loaded = load_component("frozen_by_skips")
    mdef, params, _ = state_lib.build_split(lambda: components.get_component(
        "autoencoder").build_model(c, loaded.info, state_lib.model_rngs(int(c.seed))))
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_training_lowers_the_loss_and_records_diagnostics():
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="learns")
    c.epochs, c.lr_schedule, c.warmup_epochs, c.lr_final_factor = 40, "warmup_cosine", 2.0, 0.1
    c.lr, c.plateau_patience = 1e-2, 1000  # the schedule alone sets the learning rate
    c.converged_loss_ratio = 0.5
    summary = train_component(c, preprocessed_dir=dirs["timeless"])
    history = _metrics("learns")
    assert summary["status"] == "converged" and summary["failure"] is None
    assert summary["checkpoint_metric"] == "loss"  # the autoencoder's default
    assert summary["best_val_score"] == summary["best_val_loss"]
    assert summary["best_val_loss"] < 0.5 * summary["initial_val_score"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    for record in history:
        assert record["train"]["grad_norm_max"] >= record["train"]["grad_norm_mean"] > 0
        assert record["train"]["non_finite_steps"] == 0
        assert {"loss_mean", "loss_worst", "loss_conservation"} <= set(record["train"])
    assert history[-1]["lr_applied"] == pytest.approx(c.lr * 0.1)
    assert summary["package_versions"]["jax"] == jax.__version__


def test_a_run_that_does_not_converge_fails_loudly():
    """Best validation loss not below converged_loss_ratio x the untrained model's: train raises,
    summary.json says failed, and neither an emulator nor a surrogate will use it."""
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="stuck")
    c.epochs, c.lr = 1, 1e-9  # learns nothing
    c.converged_loss_ratio = 0.5
    with pytest.raises(loop.TrainingFailedError, match="FAILED to converge.*converged_loss_ratio"):
        train_component(c, preprocessed_dir=dirs["timeless"])
    summary = json.loads((paths.weights_dir("stuck") / "summary.json").read_text())
    assert summary["status"] == "failed" and "0.5 x the untrained" in summary["failure"]
    with pytest.raises(checkpoints.ComponentFailedError, match="failed to converge"):
        load_component("stuck")
    assert load_component("stuck", allow_failed=True).epoch == 1


def test_an_emulator_trapped_at_its_bounds_fails_loudly(outputs_with_ae):
    """Every epoch records the closed-loop validation pinned_state_fraction (states held on a
    bound while their true latent is inside); a chosen checkpoint above
    config.max_pinned_state_fraction fails the run and is refused downstream, while the same
    run without the check converges; the check needs bounds. Here the bounds (0, 0.2) cut
    through the latents (scaled to [0, 1]) and the limit is 0: any pinned state fails."""
    pre = paths.preprocessed_dir("synth", "sequential")
    c = tf.tiny_config("emulator", name="trapped")
    c.epochs, c.val_horizon = 1, 0
    c.model.state_bounds = (0.0, 0.2)
    c.max_pinned_state_fraction = 0.0
    with pytest.raises(loop.TrainingFailedError, match="sit on a state bound"):
        train_component(c, preprocessed_dir=pre)
    summary = json.loads((paths.weights_dir("trapped") / "summary.json").read_text())
    pinned = summary["best_val_metrics"]["pinned_state_fraction"]
    assert summary["status"] == "failed" and 0.0 < pinned < 1.0
    assert "max_pinned_state_fraction = 0%" in summary["failure"]
    assert _metrics("trapped")[0]["val"]["pinned_state_fraction"] == pytest.approx(pinned)
    with pytest.raises(checkpoints.ComponentFailedError):
        load_component("trapped")
    c.name, c.max_pinned_state_fraction = "trapped_unchecked", None
    assert train_component(c, preprocessed_dir=pre)["status"] == "converged"
    c.name, c.model.state_bounds, c.max_pinned_state_fraction = "unbounded", None, 0.05
    with pytest.raises(ComponentError, match="max_pinned_state_fraction.*state_bounds"):
        train_component(c, preprocessed_dir=pre)
    assert loop.convergence_verdict({}, 0.1, c, {"pinned_state_fraction": 0.05}) is None
    assert "18% of the best epoch" in loop.convergence_verdict(
        {}, 0.1, c, {"pinned_state_fraction": 0.18})


def test_frozen_autoencoder_stays_frozen(outputs_with_ae):
    """Training a latent emulator leaves the autoencoder's weights, checkpoints and latent
    scaling untouched."""
    ae_dir = paths.weights_dir("tiny_autoencoder")
    before = {p: p.read_bytes() for p in sorted(ae_dir.rglob("*")) if p.is_file()}
    params_before = jax.device_get(load_component("tiny_autoencoder").params)
    c = tf.tiny_config("emulator", name="on_frozen")
    c.epochs = 2
    train_component(c, preprocessed_dir=paths.preprocessed_dir("synth", "sequential"))
    after = {p: p.read_bytes() for p in sorted(ae_dir.rglob("*")) if p.is_file()}
    assert after == before
    for a, b in zip(jax.tree.leaves(params_before),
                    jax.tree.leaves(load_component("tiny_autoencoder").params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_parameter_average_step_and_decay():
    """updated_ema: e + (1 - d_t) (p - e) with d_t = min(decay, (1 + t) / (10 + t)); the decay
    spans ema_epochs epochs of steps; off is 0; a negative horizon is refused."""
    e, p = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
    first = state_lib.updated_ema(e, p, jnp.int32(0), 0.999)
    np.testing.assert_allclose(first["w"], 0.9)  # step 0: d_0 = 0.1, the init is mostly forgotten
    late = state_lib.updated_ema(e, p, jnp.int32(10**6), 0.99)
    np.testing.assert_allclose(late["w"], 0.01, rtol=1e-4)
    c = tf.tiny_config("direct_emulator")
    assert state_lib.ema_decay(c, 50) == 0.0 and not state_lib.uses_ema(c)
    c.ema_epochs = 2.0
    assert state_lib.ema_decay(c, 50) == pytest.approx(1 - 1 / 100) and state_lib.uses_ema(c)
    c.ema_epochs = -1.0
    with pytest.raises(ValueError, match="ema_epochs"):
        state_lib.uses_ema(c)


def test_parameter_average_is_what_is_validated_exported_and_resumed():
    """ema_epochs > 0: the moving average is evaluated (so validation differs from a run without
    it while training is identical), exported by load_component (not the raw weights of the
    best epoch), restored exactly on resume, and the same for 1 and 2 devices."""
    pre = tf.write_preprocessed()["sequential"]

    def config(name, epochs, ema):
        c = tf.tiny_config("direct_emulator", name=name)
        c.epochs, c.ema_epochs = epochs, ema
        return c

    train_component(config("ema_straight", 4, 1.0), preprocessed_dir=pre,
                    devices=jax.devices()[:2])
    train_component(config("ema_resumed", 2, 1.0), preprocessed_dir=pre,
                    devices=jax.devices()[:1])
    train_component(config("ema_resumed", 4, 1.0), preprocessed_dir=pre,
                    devices=jax.devices()[:1])
    train_component(config("ema_off", 4, 0.0), preprocessed_dir=pre, devices=jax.devices()[:1])
    straight, resumed, off = (_metrics(n) for n in ("ema_straight", "ema_resumed", "ema_off"))
    for a, b, c in zip(straight, resumed, off, strict=True):
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["train_loss"], c["train_loss"], rtol=1e-5)  # same steps
        assert abs(a["val_loss"] / c["val_loss"] - 1) > 1e-4  # another model is evaluated
    loaded = load_component("ema_resumed")
    ckpt = checkpoints.Checkpointer(paths.weights_dir("ema_resumed"), read_only=True)
    template = state_lib.init_state(loaded.params, loaded.batch_stats,
                                    state_lib.make_optimizer(loaded.config), 0, ema=True)
    best, _ = ckpt.restore(loaded.epoch, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), template))
    ckpt.close()
    for exported, ema in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(best.ema_params),
                             strict=True):
        np.testing.assert_array_equal(np.asarray(exported), np.asarray(ema))
    assert any(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) > 1e-6 for a, b in zip(
        jax.tree.leaves(best.ema_params), jax.tree.leaves(best.params), strict=True))
    assert "ema_params" not in state_lib.as_saved(dataclasses.replace(template, ema_params=None))


def test_physical_noise_trains_the_emulator_on_shifted_conditions(outputs_with_ae):
    """model.physical_noise_std: training sees shifted conditions (another training loss than
    without), the offsets do not depend on the device count, and evaluation is unshifted."""
    pre = paths.preprocessed_dir("synth", "sequential")

    def config(name, std):
        c = tf.tiny_config("emulator", name=name)
        c.model.physical_noise_std = std
        return c

    one = train_component(config("pn_one", 0.1), preprocessed_dir=pre,
                          devices=jax.devices()[:1])
    two = train_component(config("pn_two", 0.1), preprocessed_dir=pre,
                          devices=jax.devices()[:2])
    off = train_component(config("pn_off", 0.0), preprocessed_dir=pre,
                          devices=jax.devices()[:1])
    for a, b in zip(_metrics("pn_one"), _metrics("pn_two"), strict=True):
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["val_loss"], b["val_loss"], rtol=1e-5)
    # The untrained step barely depends on the conditions (its output layer starts near zero),
    # so 2 epochs change the losses little; the weights they reach differ.
    assert one["fingerprint"] != off["fingerprint"]
    for a, b in zip(jax.tree.leaves(load_component("pn_one").params),
                    jax.tree.leaves(load_component("pn_two").params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert two["best_epoch"] == one["best_epoch"]
    model = load_component("pn_one").model(train=False)
    seq = jnp.ones((2, 3, 2), jnp.float32)
    np.testing.assert_array_equal(model.perturb_conditions(seq), seq)


def test_runs_saved_before_new_fields_existed_still_resume(outputs_with_ae):
    """A run whose config.json predates ema_epochs / model.physical_noise_std /
    loss.relative_weight resumes (those fields' defaults are what it used); an emulator config
    has no model.row_mixup, and the autoencoder's default for it must not be demanded of it."""
    pre = paths.preprocessed_dir("synth", "sequential")
    c = tf.tiny_config("emulator", name="older_run")
    c.epochs, c.checkpoint_metric = 1, "loss"  # what runs before checkpoint_metric used
    train_component(c, preprocessed_dir=pre)
    path = paths.weights_dir("older_run") / "config.json"
    saved = json.loads(path.read_text())
    del saved["ema_epochs"], saved["model"]["physical_noise_std"], saved["checkpoint_metric"]
    del saved["loss"]["relative_weight"]
    path.write_text(json.dumps(saved))
    c.epochs = 2
    train_component(c, preprocessed_dir=pre)
    assert len(_metrics("older_run")) == 2
    assert "loss_relative" not in _metrics("older_run")[-1]["train"]  # off: not computed
    c.loss.relative_weight = 1.0  # the relative-error term is a change of the run
    with pytest.raises(ResumeMismatchError, match="relative_weight"):
        train_component(c, preprocessed_dir=pre)
    c.loss.relative_weight = 0.0
    c.model.physical_noise_std = 0.1  # a real change is still refused
    with pytest.raises(ResumeMismatchError, match="physical_noise_std"):
        train_component(c, preprocessed_dir=pre)
    c.model.physical_noise_std = 0.0  # ... and so is another checkpoint metric
    c.checkpoint_metric = "mean_abs_dlog10"
    with pytest.raises(ResumeMismatchError, match="checkpoint_metric"):
        train_component(c, preprocessed_dir=pre)


def test_recalibration_indices_spread_over_the_chunk():
    idx = loop.recalibration_indices(n_items=100, n_rows=10, multiple=4)
    assert idx.shape == (8,) and idx[0] == 0 and idx[-1] == 99 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(loop.recalibration_indices(6, 1000, 2), np.arange(6))
    with pytest.raises(ValueError, match="batchnorm_recalibration_items"):
        loop.recalibration_indices(n_items=100, n_rows=8, multiple=16)


def test_batchnorm_recalibration_is_exact_and_changes_no_weight():
    """batchnorm_recalibration_items > 0: training is step for step the run without it (same
    training losses), validation sees other statistics, and the exported statistics are exactly
    the mean and (biased) variance of the first hidden layer's pre-activations over the chosen
    train rows (64 of 72: whole batches of 16), the same for 1 and 2 devices."""
    dirs = tf.write_preprocessed()
    runs = {}
    for name, rows, devices in (("bn_off", 0, 1), ("bn_exact", 10_000, 1),
                                ("bn_exact_2dev", 10_000, 2)):
        c = tf.tiny_config("autoencoder", name=name)
        c.batchnorm_recalibration_items = rows
        train_component(c, preprocessed_dir=dirs["timeless"], devices=jax.devices()[:devices])
        runs[name] = _metrics(name)
    for off, exact, two in zip(runs["bn_off"], runs["bn_exact"], runs["bn_exact_2dev"],
                               strict=True):
        np.testing.assert_allclose(off["train_loss"], exact["train_loss"], rtol=1e-6)
        assert abs(off["val_loss"] / exact["val_loss"] - 1) > 1e-4
        np.testing.assert_allclose(exact["val_loss"], two["val_loss"], rtol=1e-5)
    x = load_split(dirs["timeless"], "train")  # [rows, S]
    x = x[loop.recalibration_indices(x.shape[0], 10_000, 16)]
    assert x.shape[0] == 64
    for name in ("bn_exact", "bn_exact_2dev"):
        loaded = load_component(name)
        params, stats = nnx.to_pure_dict(loaded.params), nnx.to_pure_dict(loaded.batch_stats)
        layer = params["encoder_layers"][0]
        h = x.astype(np.float64) @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
        norm = stats["encoder_norms"][0]
        np.testing.assert_allclose(norm["mean"], h.mean(axis=0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(norm["var"], h.var(axis=0), rtol=1e-3, atol=1e-6)


def test_batchnorm_recalibration_sees_the_rows_as_training_does():
    """With row mixup the recalibrated statistics are those of the MIXED rows (what training
    normalised with), drawn with the model's fixed keys: the exported first-layer mean and
    variance equal the hand-computed ones of the same mixed rows, and differ from the plain
    rows' (mixing shrinks the spread)."""
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="bn_mixup")
    c.batchnorm_recalibration_items, c.model.row_mixup, c.epochs = 10_000, 1.0, 1
    train_component(c, preprocessed_dir=dirs["timeless"])
    x = load_split(dirs["timeless"], "train")
    x = np.asarray(x[loop.recalibration_indices(x.shape[0], 10_000, 16)], np.float32)
    loaded = load_component("bn_mixup")
    config, info = checkpoints.read_config_json(paths.weights_dir("bn_mixup"))
    mdef, _, _ = state_lib.build_split(lambda: components.get_component(
        "autoencoder").build_model(config, info, state_lib.model_rngs(int(config.seed))))
    model = state_lib.merge_model(mdef, loaded.params, loaded.batch_stats, train=True)
    mixed = np.asarray(model.mix_rows(jnp.asarray(x)), np.float64)
    params, stats = nnx.to_pure_dict(loaded.params), nnx.to_pure_dict(loaded.batch_stats)
    layer, norm = params["encoder_layers"][0], stats["encoder_norms"][0]
    kernel, bias = np.asarray(layer["kernel"]), np.asarray(layer["bias"])
    h = mixed @ kernel + bias
    np.testing.assert_allclose(norm["mean"], h.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(norm["var"], h.var(axis=0), rtol=1e-3, atol=1e-6)
    plain = x.astype(np.float64) @ kernel + bias
    assert np.mean(np.asarray(norm["var"]) / plain.var(axis=0)) < 0.9
