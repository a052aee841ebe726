"""Operating a run: independent random streams, SIGTERM mid-epoch then an exact resume,
TensorBoard event files, a profiler trace, streamed chunks that match the resident split."""

from __future__ import annotations

import json
import os
import signal
import struct
from pathlib import Path

import jax
import numpy as np
import pytest
import training_fixtures as tf

from astrochem_jax import paths
from astrochem_jax.training import data as data_lib
from astrochem_jax.training import loop, metric_writer, preemption, train_component
from astrochem_jax.training import mesh as mesh_lib
from astrochem_jax.training import state as state_lib

tf.enable_compile_cache()


def _metrics(name: str) -> list[dict]:
    records = json.loads((paths.weights_dir(name) / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k not in loop.TIMING_FIELDS} for r in records]


def _raw(key) -> tuple:
    return tuple(np.asarray(jax.random.key_data(key)).tolist())


def test_random_streams_are_distinct_across_streams_seeds_and_rollbacks():
    seen = {}
    for seed in range(4):
        for generation in range(3):
            keys = state_lib.stream_keys(seed, generation)
            assert set(keys) == set(state_lib.STREAMS)
            for name, key in keys.items():
                seen.setdefault(_raw(key), []).append((seed, generation, name))
            # The keys the model draws from during training, a few steps of every generation.
            state = state_lib.TrainState(step=np.int32(0), params=None, batch_stats=None,
                                         opt_state=None,
                                         rng=jax.random.key_data(
                                             state_lib.generation_key(seed, generation)))
            for step in range(3):
                state = state_lib.TrainState(**{**state.__dict__, "step": np.int32(step)})
                for name, key in state_lib.step_keys(state).items():
                    seen.setdefault(_raw(key), []).append((seed, generation, name, step))
        # Epoch orders / batch permutations: a numpy generator per (seed, epoch, part).
        orders = [tuple(state_lib.data_rng(seed, epoch, 0).permutation(50)) for epoch in range(3)]
        assert len(set(orders)) == 3
    duplicates = {k: v for k, v in seen.items() if len(v) > 1}
    assert not duplicates
    # The previous scheme's overlap: seed s's dropout stream was seed s + 1's data stream.
    assert _raw(state_lib.stream_keys(0)["dropout"]) != _raw(state_lib.stream_keys(1)["data"])
    # The model is built with the init stream for parameters and tagged dropout / noise keys.
    rngs = state_lib.model_rngs(0)
    assert {"dropout", "noise"} <= set(rngs)


def test_rollback_draws_fresh_dropout_keys():
    state = state_lib.TrainState(step=np.int32(7), params=None, batch_stats=None, opt_state=None,
                                 rng=jax.random.key_data(state_lib.generation_key(0, 0)))
    before = state_lib.step_keys(state)
    after = state_lib.step_keys(state_lib.with_generation(state, 0, 1))
    assert _raw(before["dropout"]) != _raw(after["dropout"])
    assert _raw(before["noise"]) != _raw(after["noise"])


def _kill_at_call(monkeypatch, call: int, signum=signal.SIGTERM):
    """Send `signum` to this process just before the `call`-th jitted train call."""
    real = state_lib.lr_schedule_factor
    count = {"n": 0}

    def factor(config, progress):
        if np.ndim(progress) == 1:  # the per-call factors (not the per-epoch record)
            count["n"] += 1
            if count["n"] == call:
                os.kill(os.getpid(), signum)
        return real(config, progress)

    monkeypatch.setattr(state_lib, "lr_schedule_factor", factor)
    count["restore"] = lambda: monkeypatch.setattr(state_lib, "lr_schedule_factor", real)
    return count


@pytest.mark.parametrize("streamed", [False, True])
def test_sigterm_mid_epoch_then_rerun_matches_an_uninterrupted_run(monkeypatch, streamed):
    """SIGTERM during epoch 2 (every_epochs = 10: no epoch checkpoint since epoch 1's best)
    saves the state mid-epoch and stops; the same command resumes and ends with the metrics of
    an uninterrupted run, in device-resident and in streamed mode."""
    dirs = tf.write_preprocessed(n_tracers=10, shard_items={"sequential": 3})

    def config(name):
        c = tf.tiny_config("direct_emulator", name=name)
        c.epochs, c.dropout, c.steps_per_call = 3, 0.1, 1
        c.checkpoint.every_epochs = 10
        c.divergence_factor = None
        if streamed:
            c.device_resident_max_mb = 0.0  # one chunk per shard, reshuffled every epoch
        return c

    train_component(config("straight"), preprocessed_dir=dirs["sequential"])
    straight = _metrics("straight")
    steps_per_epoch = straight[0]["steps"]
    assert steps_per_epoch >= 4

    # The signal arrives during epoch 2's 3rd call; the run stops before the 4th batch.
    count = _kill_at_call(monkeypatch, steps_per_epoch + 3)
    with pytest.raises(preemption.TrainingInterrupted, match="epoch 2, batch 4") as stop:
        train_component(config("resumed"), preprocessed_dir=dirs["sequential"])
    assert stop.value.exit_code == 128 + signal.SIGTERM
    assert count["n"] == steps_per_epoch + 3
    out = paths.weights_dir("resumed")
    assert (out / preemption.INTERRUPTED_DIR).is_dir()
    assert len(_metrics("resumed")) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    count["restore"]()
    train_component(config("resumed"), preprocessed_dir=dirs["sequential"])
    assert _metrics("resumed") == straight
    assert not (out / preemption.INTERRUPTED_DIR).exists()  # superseded by epoch 3's checkpoint


def test_sigterm_in_the_first_epoch_resumes_without_an_epoch_checkpoint(monkeypatch):
    """Stopped before any epoch checkpoint exists: the rerun starts from the mid-epoch slot
    alone (the multi-process CI run hit this) and ends like an uninterrupted run."""
    dirs = tf.write_preprocessed(n_tracers=10, shard_items={"sequential": 3})

    def config(name):
        c = tf.tiny_config("direct_emulator", name=name)
        c.epochs, c.steps_per_call, c.divergence_factor = 2, 1, None
        return c

    train_component(config("straight"), preprocessed_dir=dirs["sequential"])
    count = _kill_at_call(monkeypatch, 2)
    with pytest.raises(preemption.TrainingInterrupted, match="epoch 1, batch 3"):
        train_component(config("resumed"), preprocessed_dir=dirs["sequential"])
    out = paths.weights_dir("resumed")
    assert (out / preemption.INTERRUPTED_DIR).is_dir()
    assert not any((out / "checkpoints").glob("[0-9]*"))
    count["restore"]()
    train_component(config("resumed"), preprocessed_dir=dirs["sequential"])
    assert _metrics("resumed") == _metrics("straight")


def test_sigterm_in_the_first_epoch_of_a_warm_started_run_resumes_exactly(monkeypatch):
    """A warm-started run saves its warm start as epoch 0 before it trains: stopped in epoch 1,
    it resumes from that checkpoint plus the mid-epoch slot and ends like an uninterrupted run
    (same metrics, same chosen epoch, same weights)."""
    dirs = tf.write_preprocessed(n_tracers=10, shard_items={"sequential": 3})
    source = tf.tiny_config("direct_emulator", name="warm_source")
    source.divergence_factor = None
    train_component(source, preprocessed_dir=dirs["sequential"])

    def config(name):
        c = tf.tiny_config("direct_emulator", name=name)
        c.epochs, c.steps_per_call, c.divergence_factor = 2, 1, None
        c.init_from = "warm_source"
        return c

    straight = train_component(config("straight"), preprocessed_dir=dirs["sequential"])
    count = _kill_at_call(monkeypatch, 2)
    with pytest.raises(preemption.TrainingInterrupted, match="epoch 1, batch 3"):
        train_component(config("resumed"), preprocessed_dir=dirs["sequential"])
    out = paths.weights_dir("resumed")
    assert (out / preemption.INTERRUPTED_DIR).is_dir()
    assert sorted(p.name for p in (out / "checkpoints").glob("[0-9]*")) == ["0"]
    count["restore"]()
    resumed = train_component(config("resumed"), preprocessed_dir=dirs["sequential"])
    assert _metrics("resumed") == _metrics("straight")
    for key in ("best_epoch", "initial_val_score", "kept_warm_start", "fingerprint"):
        assert resumed[key] == straight[key], key


def test_sigterm_mid_epoch_of_an_ensemble_resumes_exactly(monkeypatch):
    """An ensemble's step counter has one entry per member: the mid-epoch checkpoint of a
    stopped ensemble run is saved (it crashed on that counter) and resumes exactly."""
    dirs = tf.write_preprocessed(n_tracers=10, shard_items={"sequential": 3})

    def config(name):
        c = tf.tiny_config("direct_emulator", name=name)
        c.epochs, c.steps_per_call, c.divergence_factor = 2, 1, None
        c.ensemble_size = 2
        c.checkpoint.every_epochs = 10
        return c

    train_component(config("straight"), preprocessed_dir=dirs["sequential"])
    straight = _metrics("straight")
    count = _kill_at_call(monkeypatch, straight[0]["steps"] + 2)
    with pytest.raises(preemption.TrainingInterrupted, match="epoch 2, batch 3"):
        train_component(config("resumed"), preprocessed_dir=dirs["sequential"])
    assert (paths.weights_dir("resumed") / preemption.INTERRUPTED_DIR).is_dir()
    count["restore"]()
    train_component(config("resumed"), preprocessed_dir=dirs["sequential"])
    assert _metrics("resumed") == straight


def test_sigint_at_an_epoch_boundary_also_resumes_exactly(monkeypatch):
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="straight")
    c.epochs, c.steps_per_call, c.checkpoint.every_epochs = 3, 100, 10
    train_component(c, preprocessed_dir=dirs["timeless"])
    # One call per epoch: the signal lands before epoch 2's call, i.e. on the check at its start.
    count = _kill_at_call(monkeypatch, 2, signal.SIGINT)
    c.name = "resumed"
    with pytest.raises(preemption.TrainingInterrupted) as stop:
        train_component(c, preprocessed_dir=dirs["timeless"])
    assert stop.value.exit_code == 130
    count["restore"]()
    train_component(c, preprocessed_dir=dirs["timeless"])
    assert _metrics("resumed") == _metrics("straight")


def _event_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every TensorBoard event file under `directory` (TFRecord framing + Event
    protobuf, read with tensorboardX's generated classes)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out


def test_tensorboard_events_and_profile_trace():
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="watched")
    c.epochs, c.steps_per_call, c.profile_steps = 2, 2, 2
    summary = train_component(c, preprocessed_dir=dirs["timeless"])
    assert summary["numerics"]["matmul_precision"] == "default"
    run = metric_writer.run_directory("watched")
    assert run == paths.runs_dir() / "watched" / "tensorboard"
    scalars = _event_scalars(run)
    history = json.loads((paths.weights_dir("watched") / "metrics.json").read_text())
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    np.testing.assert_allclose([v for _, v in scalars["val/loss"]],
                               [r["val_loss"] for r in history], rtol=1e-6)
    assert {"lr", "lr_applied", "train/grad_norm_mean", "val/mean_relative_error"} <= set(scalars)
    traces = list((run / "plugins" / "profile").rglob("*.xplane.pb"))
    assert traces, sorted(p.relative_to(run) for p in run.rglob("*"))


def test_matmul_precision_is_applied_checked_and_recorded():
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="highest")
    c.epochs, c.matmul_precision = 1, "highest"
    summary = train_component(c, preprocessed_dir=dirs["timeless"])
    assert summary["numerics"]["matmul_precision"] == "highest"
    saved = json.loads((paths.weights_dir("highest") / "config.json").read_text())
    assert saved["matmul_precision"] == "highest"
    c.name, c.matmul_precision = "bogus", "fp8"
    with pytest.raises(ValueError, match="matmul_precision"):
        train_component(c, preprocessed_dir=dirs["timeless"])


def test_streamed_chunks_hold_at_most_two_on_device_and_match_the_resident_split():
    dirs = tf.write_preprocessed(n_tracers=14, shard_items={"timeless": 20})
    manifest = json.loads((dirs["timeless"] / "manifest.json").read_text())
    mesh = mesh_lib.make_mesh()
    resident = data_lib.split_source(dirs["timeless"], manifest, "train", 2048.0)
    streamed = data_lib.split_source(dirs["timeless"], manifest, "train", 0.0)
    assert resident.n_chunks == 1 and streamed.n_chunks == len(manifest["splits"]["train"]
                                                                ["shards"]) > 2
    whole = np.concatenate([np.asarray(p) for p in
                            __import__("astrochem_jax").shards.iter_split(dirs["timeless"],
                                                                          "train")])
    live = []

    def prepare(chunk):
        array = chunk.put(np.nan_to_num(chunk.local))
        live.append(array)
        return array, chunk.n_valid

    loader = data_lib.ChunkLoader(streamed, mesh, prepare)
    parts = []
    for pos, _, (array, n_valid) in loader.iterate():
        # The next chunk is read only once the consumer has queued its work on this one (and
        # the one before is finished): at most the current and the prefetched chunk live.
        assert len(live) == pos + 1
        parts.append(np.asarray(array)[:n_valid])
        assert array.shape[0] % 8 == 0
        assert array.sharding.spec == jax.sharding.PartitionSpec("data", None)
        loader.fence = array
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    # A budget of 1 row-pair per chunk cuts shards into pieces (never across shard boundaries).
    assert data_lib.chunk_bounds([5, 3], 2) == ((0, 2), (2, 4), (4, 5), (5, 7), (7, 8))


def test_distributed_settings_come_from_the_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": "1", "JAX_LOCAL_DEVICE_IDS": "0,1"}
    assert mesh_lib.distributed_settings(env) == {
        "coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1,
        "local_device_ids": [0, 1]}
    assert mesh_lib.distributed_settings({}) == {}  # JAX's cluster auto-detection
    with pytest.raises(ValueError, match=r"\['JAX_PROCESS_ID'\] are not"):
        mesh_lib.distributed_settings({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="not in 0 .. JAX_NUM_PROCESSES - 1 = 1"):
        mesh_lib.distributed_settings({**env, "JAX_PROCESS_ID": "2"})
    # Without the flag nothing is initialised (single-process runs never touch the service).
    mesh_lib.initialize_distributed(False)
    assert not jax.distributed.is_initialized()


def test_checkpoint_saves_leave_the_preemption_sync_point_to_the_loop(monkeypatch, tmp_path):
    """orbax's CheckpointManager polls JAX's preemption sync point on every save with its own
    step ids (the epoch); a notice it takes never reaches the loop, and a preempted multi-process
    run trained on. The epoch and mid-epoch checkpoints must not poll; the loop alone does."""
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils

    from astrochem_jax.training import checkpoints

    polled = []

    def sync_point(step):
        polled.append(int(step))
        return False

    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", sync_point)
    tree = {"w": np.arange(6.0, dtype=np.float32).reshape(2, 3)}
    plain = ocp.CheckpointManager(tmp_path / "plain", item_names=("state",))
    plain.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(tree)))
    plain.wait_until_finished()
    plain.close()
    assert 3 in polled  # what the subclass guards against (drop it when orbax stops polling)

    polled.clear()
    ckpt = checkpoints.Checkpointer(tmp_path / "component")
    try:
        ckpt.save(1, tree, {"epoch": 1}, val_loss=0.5)
        ckpt.save(2, tree, {"epoch": 2}, val_loss=0.4)
        ckpt.wait()
    finally:
        ckpt.close()
    preemption.InterruptCheckpoint(tmp_path / "component").save(7, tree, {"batch": 3})
    assert polled == []
