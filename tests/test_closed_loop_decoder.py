"""The closed-loop decoder (`training.closed_loop_decoder`): the autoencoder's decoder refit on a
frozen emulator's closed-loop states. What it trains, what it must leave alone, that its
validation is the surrogate's closed-loop error, parity across device counts, and the
surrogate's refusal of a decoder refit on another emulator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import training_fixtures as tf

from astrochem_jax import benchmark as bench
from astrochem_jax import config_utils, metrics, paths, surrogates
from astrochem_jax.training import (
    ComponentError,
    closed_loop_decoder,
    load_component,
    train_component,
)
from astrochem_jax.training import state as state_lib

tf.enable_compile_cache()


def decoder_config(name: str = "tiny_decoder", emulator: str = "tiny_emulator"):
    """The shipped `decoder_grav_closed_loop` settings on the tiny synthetic components."""
    c = tf.tiny_config("autoencoder", name=name)
    shipped = config_utils.load_config("decoder_grav_closed_loop", "components")
    for field in ("type", "preprocessing_method", "trainable_params", "checkpoint_metric",
                  "converged_loss_ratio", "lr_schedule", "warmup_epochs", "lr_final_factor"):
        c[field] = shipped[field]
    c.emulator_component, c.init_from = emulator, "tiny_autoencoder"
    c.epochs, c.lr = 4, 3e-3
    return c


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory) -> Path:
    """A tiny autoencoder and a latent emulator on it, trained once on learnable synthetic
    trajectories (the emulator briefly, so its closed-loop states drift)."""
    root = tmp_path_factory.mktemp("decoder_outputs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASTROCHEM_JAX_OUTPUTS", str(root))
        dirs = tf.write_preprocessed(n_tracers=12, n_steps=16, n_val=3, learnable=True)
        ae = tf.tiny_config("autoencoder")
        ae.epochs = 6
        train_component(ae, preprocessed_dir=dirs["timeless"])
        emulator = tf.tiny_config("emulator", name="tiny_emulator")
        emulator.epochs = 3
        train_component(emulator, preprocessed_dir=dirs["sequential"])
    return root


@pytest.fixture
def outputs_with_pair(trained_pair) -> Path:
    out = paths.outputs_dir()
    shutil.copytree(trained_pair, out, dirs_exist_ok=True)
    return out


def _leaves(tree, prefix: str) -> list[np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    return [np.asarray(v) for p, v in flat if state_lib._top_name(p).startswith(prefix)]


def test_step_table_lists_every_valid_step():
    assert closed_loop_decoder.step_table(np.array([3, 0, 2])).tolist() == \
        [[0, 0], [0, 1], [0, 2], [2, 0], [2, 1]]
    assert closed_loop_decoder.step_table(np.array([0, 0])).shape == (0, 2)


def test_trainable_params_update_only_the_named_parameters():
    """config.trainable_params: the other parameters get exactly zero updates (weight decay
    included); a prefix matching nothing is refused instead of freezing the whole model."""
    params = {"decoder_w": jax.numpy.ones((3,)), "encoder_w": jax.numpy.ones((2,))}
    grads = {"decoder_w": jax.numpy.full((3,), 0.5), "encoder_w": jax.numpy.full((2,), 0.5)}
    config = tf.tiny_config("autoencoder")
    config.trainable_params = ("decoder_",)
    tx = state_lib.make_optimizer(config)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert np.all(np.asarray(updates["encoder_w"]) == 0.0)
    assert np.all(np.asarray(updates["decoder_w"]) < 0.0)
    config.trainable_params = ("decoderr_",)
    with pytest.raises(ValueError, match="matches no parameter.*decoder_w"):
        state_lib.make_optimizer(config).init(params)


def test_decoder_refit_trains_only_the_decoder_and_validates_the_surrogates_closed_loop(
        outputs_with_pair):
    """The refit improves on the autoencoder's decoder (its warm start, epoch 0), moves only
    decoder parameters, copies the latent scaling, leaves the autoencoder's files untouched, and
    its validation score is the closed-loop error of the surrogate that uses it."""
    ae_dir = paths.weights_dir("tiny_autoencoder")
    before = {p: p.read_bytes() for p in sorted(ae_dir.rglob("*")) if p.is_file()}
    summary = train_component(decoder_config(),
                              preprocessed_dir=paths.preprocessed_dir("synth", "sequential"))
    assert summary["status"] == "converged"
    assert summary["best_epoch"] > 0 and not summary["kept_warm_start"]
    assert summary["best_val_score"] < summary["initial_val_score"]
    assert {p: p.read_bytes() for p in sorted(ae_dir.rglob("*")) if p.is_file()} == before

    ae, refit = load_component("tiny_autoencoder"), load_component("tiny_decoder")
    for ours, theirs in zip(_leaves(refit.params, "encoder_"), _leaves(ae.params, "encoder_"),
                            strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for ours, theirs in zip(_leaves(refit.batch_stats, ""), _leaves(ae.batch_stats, ""),
                            strict=True):  # BatchNorm statistics: the autoencoder's, fixed
        np.testing.assert_array_equal(ours, theirs)
    assert any(not np.array_equal(a, b) for a, b in zip(
        _leaves(refit.params, "decoder_"), _leaves(ae.params, "decoder_"), strict=True))
    np.testing.assert_array_equal(refit.latents_minmax, ae.latents_minmax)
    info = json.loads((paths.weights_dir("tiny_decoder") / "config.json").read_text())
    assert info["data_info"]["emulator_fingerprint"] == load_component("tiny_emulator").fingerprint
    assert info["data_info"]["init_from"]["component"] == "tiny_autoencoder"

    surrogate_config = config_utils.load_config("ae_emulator_grav", "surrogates")
    surrogate_config.components.encoder = "tiny_autoencoder"
    surrogate_config.components.emulator = "tiny_emulator"
    surrogate_config.components.decoder = "tiny_decoder"
    surrogate = surrogates.build(surrogate_config)
    val = bench.load_split_tracers(surrogate, None, "val")
    closed_loop = metrics.abs_dlog10(val.abundances, bench.predict(surrogate, val)).mean()
    assert closed_loop == pytest.approx(summary["best_val_score"], rel=1e-3)
    # decode(encode(x)) with this decoder is no floor of the rollout: the report says so.
    floor = bench.reconstruction_floor(surrogate, val)
    assert "closed-loop decoder 'tiny_decoder'" in floor["what"]
    assert floor["closed_loop_decoder"] == "tiny_decoder"


def test_shipped_loss_terms_lower_the_refits_relative_and_element_errors(outputs_with_pair):
    """The shipped decoder's loss terms, each against the same refit without it: the
    relative-error term (loss.relative_weight, recorded per epoch) lowers the validation mean
    relative error; its element-total weight (above the autoencoder's 0.1) lowers the validation
    element-total term over the run (tiny pair: 1.74 against 2.10, mean over 4 epochs)."""
    pre = paths.preprocessed_dir("synth", "sequential")
    shipped = config_utils.load_config("decoder_grav_closed_loop", "components")
    assert shipped.loss.relative_weight > 0
    assert shipped.loss.conservation_weight > 0.1
    best, allrec = {}, {}
    for name, relative, conservation in (
            ("plain", 0.0, shipped.loss.conservation_weight),
            ("shipped", shipped.loss.relative_weight, shipped.loss.conservation_weight),
            ("low_conservation", shipped.loss.relative_weight, 0.1)):
        c = decoder_config(name=f"tiny_decoder_{name}")
        c.loss.relative_weight, c.loss.conservation_weight = relative, conservation
        c.checkpoint_metric = "mean_relative_error"
        train_component(c, preprocessed_dir=pre)
        records = json.loads((paths.weights_dir(c.name) / "metrics.json").read_text())
        trained = [r for r in records if "train" in r]
        assert all(("loss_relative" in r["train"]) == (relative > 0) for r in trained)
        allrec[name] = trained
        best[name] = min(trained, key=lambda r: r["val"]["mean_relative_error"])["val"]
    assert best["shipped"]["mean_relative_error"] < best["plain"]["mean_relative_error"]
    # The element-total term over the run (the epochs the checkpoint rule picks differ).
    conservation = {n: np.mean([r["val"]["loss_conservation"] for r in allrec[n]])
                    for n in ("shipped", "low_conservation")}
    assert conservation["shipped"] < conservation["low_conservation"]


def test_decoder_refit_is_the_same_on_one_and_eight_devices(outputs_with_pair):
    pre = paths.preprocessed_dir("synth", "sequential")
    runs = []
    for n, name in ((1, "dec_one"), (8, "dec_eight")):
        c = decoder_config(name)
        c.epochs = 2
        train_component(c, preprocessed_dir=pre, devices=jax.devices()[:n])
        runs.append([r["val_loss"] for r in json.loads(
            (paths.weights_dir(name) / "metrics.json").read_text())])
    np.testing.assert_allclose(runs[0], runs[1], rtol=2e-4)


def test_surrogate_and_trainer_refuse_mismatched_components(outputs_with_pair):
    """A decoder refit on one emulator is refused with another; the trainer refuses an
    emulator_component of another type and a warm start of another type."""
    pre = paths.preprocessed_dir("synth", "sequential")
    c = decoder_config()
    c.epochs = 1
    train_component(c, preprocessed_dir=pre)
    other = tf.tiny_config("emulator", name="other_emulator")
    other.epochs, other.seed = 1, 5
    train_component(other, preprocessed_dir=pre)
    config = config_utils.load_config("ae_emulator_grav", "surrogates")
    config.components.encoder = "tiny_autoencoder"
    config.components.emulator = "other_emulator"
    config.components.decoder = "tiny_decoder"
    with pytest.raises(surrogates.SurrogateError,
                       match="refit on the closed-loop states of emulator 'tiny_emulator'"):
        surrogates.build(config)

    wrong = decoder_config("dec_wrong", emulator="tiny_autoencoder")
    with pytest.raises(ComponentError, match="type is 'autoencoder', expected 'emulator'"):
        train_component(wrong, preprocessed_dir=pre)
    wrong_start = decoder_config("dec_wrong_start")
    wrong_start.init_from = "tiny_emulator"
    with pytest.raises(ComponentError, match="type 'emulator'.*warm starts from"):
        train_component(wrong_start, preprocessed_dir=pre)
