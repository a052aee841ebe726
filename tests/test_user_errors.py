"""First contact with real data and real users: every program's one-line `error:` (exit code
2), nothing partial left behind, one run per output at a time, and no silent wrong result
(missing or unreadable checkpoints, a retrained autoencoder under an emulator)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import training_fixtures as tf
from ml_collections import ConfigDict

from astrochem_jax import config_utils, locks, paths, shards
from astrochem_jax.preprocess import preprocess
from astrochem_jax.preprocess import synthetic as syn
from astrochem_jax.surrogates import SurrogateError, build, load
from astrochem_jax.training import (
    ResumeMismatchError,
    checkpoints,
    load_component,
    loop,
    train_component,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
tf.enable_compile_cache()


# ------------------------------------------------------------------------------------------------
# Command line: one `error:` line, exit code 2


def run_cli(module: str, *args: str, outputs: Path, timeout: int = 300):
    env = {**os.environ, "ASTROCHEM_JAX_OUTPUTS": str(outputs), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", f"astrochem_jax.{module}", *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(proc, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "FATAL" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def leftovers(outputs: Path) -> list[str]:
    """What a run left under outputs/, less the compile cache and the run logs."""
    if not outputs.exists():
        return []
    return sorted(str(p.relative_to(outputs)) for p in outputs.rglob("*")
                  if not str(p.relative_to(outputs)).startswith(("jax_cache", "runs")))


@pytest.mark.parametrize("module, args, fragments", [
    ("train", ["--config=configs/components/autoencoder_grav_large.py", "--config.lr_typo=1"],
     ["--config.lr_typo", "close matches", "--config.lr"]),
    ("train", ["--config=autoencoder_grav_large", "--config.model.latnt_dim=3"],
     ["--config.model.latent_dim"]),
    ("train", ["--config=autoencoder_grav_large:nope"], ["dataset 'nope' not found",
                                                          "uclchem_grav_train"]),
    ("benchmark", ["--config=configs/surrogates/nope.py"], ["nope.py", "not found",
                                                            "ae_emulator_grav"]),
    ("generate", ["--config=grav", "--config.n_tracer=3"], ["--config.n_tracers"]),
    ("generate", ["--config=grav", "--config.n_steps=1"], ["n_steps", ">= 2", "found 1"]),
    ("preprocess", ["--dataset=grav", "--method=timeless", "--dataset.columns_to_dorp=x"],
     ["--dataset.columns_to_drop"]),
    ("train", ["--config=autoencoder_grav_large", "--config.batch_size=abc"],
     ["--config.batch_size", "abc"]),
])
def test_bad_command_lines_are_one_error_line(tmp_path, module, args, fragments):
    proc = run_cli(module, *args, outputs=tmp_path / "outputs")
    assert_one_error_line(proc, *fragments)
    assert leftovers(tmp_path / "outputs") == []


@pytest.fixture()
def uclchem_file(tmp_path) -> Path:
    return syn.write_uclchem_fixed(tmp_path / "u.h5", syn.make_trajectories(4, 5, seed=3))


def _train_args(raw: Path, *extra: str, config: str = "autoencoder_grav_large") -> list[str]:
    return [f"--config={config}:uclchem_grav", f"--config.dataset.raw_path={raw}",
            "--config.dataset.n_species=10", "--config.dataset.max_element_drift=inf",
            "--config.name=cli_run", *extra]


def _empty_frame(path: Path) -> Path:
    import h5py

    with h5py.File(path, "r+") as f:
        g = f["df"]
        for name in ("axis1", "block0_values", "block1_values"):
            shape, dtype = (0, *g[name].shape[1:]), g[name].dtype
            del g[name]
            g.create_dataset(name, shape=shape, dtype=dtype).attrs["transposed"] = 1
    return path


def _text_column(path: Path) -> Path:
    from test_preprocess_errors import _add_text_column

    _add_text_column(path, "comment")
    return path


@pytest.mark.parametrize("case, extra, fragments", [
    ("batch 0", ["--config.batch_size=0"], ["config.batch_size = 0", "positive"]),
    ("negative lr", ["--config.lr=-0.001"], ["config.lr = -0.001", "> 0"]),
    ("empty frame", [], ["no rows"]),
    ("text column", [], ["['comment']", "hold text", "columns_to_drop"]),
    ("short tracers", ["--config.horizon=64"], ["5 steps", "config.horizon = 64",
                                                "at most 4"]),
])
def test_training_errors_are_one_error_line(tmp_path, uclchem_file, case, extra, fragments):
    outputs = tmp_path / "outputs"
    if case == "empty frame":
        _empty_frame(uclchem_file)
    if case == "text column":
        _text_column(uclchem_file)
    config = "direct_emulator_grav" if case == "short tracers" else "autoencoder_grav_large"
    proc = run_cli("train", *_train_args(uclchem_file, *extra, config=config), outputs=outputs)
    assert_one_error_line(proc, *fragments)
    assert not (outputs / "weights").exists()
    assert not list((outputs / "runs").rglob("*.lock")) if (outputs / "runs").exists() else True
    if case in ("empty frame", "text column", "short tracers"):  # raised inside main: logged
        log = (outputs / "runs" / "cli_run" / "train.log").read_text()
        assert "Traceback" in log and fragments[-1] in log


def test_list_fields_are_overridable_from_the_command_line(tmp_path, uclchem_file):
    outputs = tmp_path / "outputs"
    proc = run_cli("preprocess", "--dataset=uclchem_grav", "--method=timeless",
                   f"--dataset.raw_path={uclchem_file}", "--dataset.n_species=None",
                   "--dataset.max_element_drift=None",
                   "--dataset.physical_parameters=Density,Radfield,Av,gasTemp",
                   "--dataset.columns_to_drop=('dustTemp', 'dstep', 'zeta', 'E-')",
                   "--dataset.metadata_columns=Index,Model,Time", outputs=outputs)
    assert proc.returncode == 0, proc.stderr
    manifest = shards.read_manifest(outputs / "preprocessed" / "uclchem_grav" / "timeless")
    assert manifest["physical_parameters"] == ["Density", "Radfield", "Av", "gasTemp"]
    assert "E-" not in manifest["species"] and manifest["n_species"] == 9
    assert manifest["config"]["dataset"]["max_element_drift"] is None  # `=None` works too
    # The console has the program's lines only; absl's go to the log file.
    assert not [line for line in proc.stderr.splitlines() if line[:1] in "IW" and
                line[1:5].isdigit()], proc.stderr
    assert (outputs / "runs" / "uclchem_grav" / "preprocess.log").is_file()


# ------------------------------------------------------------------------------------------------
# Training: config checks, failed first runs, locks, corrupt checkpoints


@pytest.mark.parametrize("field, value, fragment", [
    ("batch_size", 0, "config.batch_size = 0"),
    ("batch_size", -8, "config.batch_size = -8"),
    ("lr", -1e-3, "config.lr = -0.001"),
    ("lr", 0.0, "config.lr = 0.0"),
    ("lr", float("nan"), "config.lr = nan"),
    ("epochs", 0, "config.epochs = 0"),
    ("max_train_examples", 0, "config.max_train_examples = 0"),
    ("max_train_examples", -5, "config.max_train_examples = -5"),
    ("batchnorm_recalibration_items", -1, "config.batchnorm_recalibration_items = -1"),
    ("max_pinned_state_fraction", 1.5, "config.max_pinned_state_fraction = 1.5"),
    ("max_pinned_state_fraction", -0.1, "config.max_pinned_state_fraction = -0.1"),
])
def test_impossible_training_configs_are_refused_before_anything(field, value, fragment):
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="bad_config")
    c[field] = value
    with pytest.raises(config_utils.ConfigError, match=fragment.replace(".", r"\.")):
        train_component(c, preprocessed_dir=dirs["timeless"])
    assert not paths.weights_dir("bad_config").exists()
    assert not (paths.runs_dir() / "bad_config").exists()


def test_a_failed_first_run_does_not_block_its_fix():
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="first_run")
    c.batch_size = 100_000  # more rows than the train split holds: fails in the first epoch
    with pytest.raises(ValueError, match="batch size"):
        train_component(c, preprocessed_dir=dirs["timeless"])
    assert not paths.weights_dir("first_run").exists()  # no config.json, no empty checkpoints/
    c.batch_size = 16
    summary = train_component(c, preprocessed_dir=dirs["timeless"])
    assert summary["final_epoch"] == 2
    # Leftovers of an older failed run (config.json, empty checkpoints/) do not block either.
    directory = paths.weights_dir("older_failure")
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"type": "autoencoder", "lr": 1.0,
                                                       "data_info": {}}))
    train_component(tf.tiny_config("autoencoder", name="older_failure"),
                    preprocessed_dir=dirs["timeless"])


def test_two_runs_of_one_component_at_once_refuse_the_second():
    dirs = tf.write_preprocessed()
    lock = paths.runs_dir() / "busy" / "train.lock"
    with locks.exclusive(lock, "test"):
        with pytest.raises(locks.LockError, match=r"component 'busy'.*in use by pid"):
            train_component(tf.tiny_config("autoencoder", name="busy"),
                            preprocessed_dir=dirs["timeless"])
        assert not paths.weights_dir("busy").exists()
    assert not lock.exists()
    train_component(tf.tiny_config("autoencoder", name="busy"), preprocessed_dir=dirs["timeless"])
    assert not lock.exists()


def _corrupt(step_dir: Path) -> None:
    (step_dir / "state" / "manifest.ocdbt").unlink()


def test_corrupt_checkpoint_resume_falls_back_to_an_intact_one_and_says_so(capfd):
    dirs = tf.write_preprocessed()

    def config(name, epochs):
        c = tf.tiny_config("autoencoder", name=name)
        c.epochs, c.checkpoint.every_epochs = epochs, 1
        return c

    train_component(config("straight", 3), preprocessed_dir=dirs["timeless"])
    ckpts = paths.weights_dir("resumed") / "checkpoints"
    train_component(config("resumed", 1), preprocessed_dir=dirs["timeless"])
    epoch1 = paths.outputs_dir() / "epoch1"
    shutil.copytree(ckpts / "1", epoch1)
    train_component(config("resumed", 2), preprocessed_dir=dirs["timeless"])
    if not (ckpts / "1").exists():  # epoch 2 was the best: the policy dropped epoch 1
        shutil.copytree(epoch1, ckpts / "1")
    _corrupt(ckpts / "2")
    capfd.readouterr()
    train_component(config("resumed", 3), preprocessed_dir=dirs["timeless"])
    said = capfd.readouterr().err
    assert f"checkpoint {ckpts / '2'} is unreadable" in said and "resuming from epoch 1" in said
    moved = paths.weights_dir("resumed") / "corrupt_checkpoints" / "2"
    assert moved.is_dir() and f"moved to {moved}" in said
    # ... and the resumed run is the uninterrupted one, exactly.
    strip = [{k: v for k, v in r.items() if k not in loop.TIMING_FIELDS}
             for r in json.loads((paths.weights_dir("straight") / "metrics.json").read_text())]
    again = [{k: v for k, v in r.items() if k not in loop.TIMING_FIELDS}
             for r in json.loads((paths.weights_dir("resumed") / "metrics.json").read_text())]
    assert again == strip

    # No intact step left: the error names the step directory and what to delete.
    for step in ckpts.iterdir():
        if step.name.isdigit():
            _corrupt(step)
    with pytest.raises(checkpoints.CheckpointError) as info:
        train_component(config("resumed", 4), preprocessed_dir=dirs["timeless"])
    assert f"Delete {ckpts}" in str(info.value) and str(ckpts / "3") in str(info.value)
    assert paths.weights_dir("resumed").joinpath("summary.json").exists()  # nothing deleted


def test_load_refuses_a_missing_or_unreadable_best_checkpoint():
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="no_best")
    c.epochs, c.checkpoint.every_epochs = 1, 1
    train_component(c, preprocessed_dir=dirs["timeless"])
    ckpts = paths.weights_dir("no_best") / "checkpoints"
    epoch1 = paths.outputs_dir() / "epoch1"
    shutil.copytree(ckpts / "1", epoch1)
    c.epochs = 3
    train_component(c, preprocessed_dir=dirs["timeless"])
    best = json.loads((ckpts.parent / "summary.json").read_text())["best_epoch"]
    assert best > 1
    shutil.copytree(ckpts / str(best), paths.outputs_dir() / "best")
    # The best epoch deleted, an older one present: no silent fallback to it.
    for step in ckpts.iterdir():
        shutil.rmtree(step)
    shutil.copytree(epoch1, ckpts / "1")
    with pytest.raises(checkpoints.CheckpointError) as info:
        load_component("no_best")
    message = str(info.value)
    for fragment in (f"epoch {best}", str(ckpts / str(best)), "epochs found: [1]",
                     "No other epoch is used", "retrain"):
        assert fragment in message, message
    # The best epoch present but unreadable.
    shutil.copytree(paths.outputs_dir() / "best", ckpts / str(best))
    assert load_component("no_best").epoch == best
    _corrupt(ckpts / str(best))
    with pytest.raises(checkpoints.CheckpointError, match="is unreadable"):
        load_component("no_best")


def test_load_refuses_an_unfinished_component_and_replaced_weights():
    """No summary.json (training still running, interrupted or crashed): the best-so-far weights
    are refused unless asked for. summary.json records the fingerprint of the trained numbers;
    a latents_minmax.npy (or checkpoint) replaced after training is refused, naming both."""
    dirs = tf.write_preprocessed()
    c = tf.tiny_config("autoencoder", name="finished")
    c.epochs = 2
    train_component(c, preprocessed_dir=dirs["timeless"])
    directory = paths.weights_dir("finished")
    summary = json.loads((directory / "summary.json").read_text())
    loaded = load_component("finished")
    assert summary["fingerprint"] == loaded.fingerprint

    minmax = np.load(directory / "latents_minmax.npy")
    np.save(directory / "latents_minmax.npy", minmax * 1.5)
    with pytest.raises(checkpoints.CheckpointError) as info:
        load_component("finished")
    for fragment in ("replaced after training", summary["fingerprint"][:16], "retrain"):
        assert fragment in str(info.value), str(info.value)
    np.save(directory / "latents_minmax.npy", minmax)
    assert load_component("finished").fingerprint == summary["fingerprint"]

    (directory / "summary.json").unlink()
    with pytest.raises(checkpoints.ComponentUnfinishedError) as info:
        load_component("finished")
    for fragment in ("has not finished", "summary.json", "Resume it with"):
        assert fragment in str(info.value), str(info.value)
    assert load_component("finished", allow_unfinished=True).epoch == loaded.epoch


# ------------------------------------------------------------------------------------------------
# The exact autoencoder under an emulator, and loading from anywhere


def _ae_and_emulator(seed: int = 0) -> None:
    dirs = tf.write_preprocessed()
    ae = tf.tiny_config("autoencoder")
    ae.seed = seed
    train_component(ae, preprocessed_dir=dirs["timeless"])
    emulator = tf.tiny_config("emulator", name="tiny_emulator")
    emulator.epochs = 1
    train_component(emulator, preprocessed_dir=dirs["sequential"])


def _surrogate_config() -> ConfigDict:
    return ConfigDict({"name": "tiny_surrogate", "type": "ae_emulator",
                       "components": {"encoder": "tiny_autoencoder",
                                      "decoder": "tiny_autoencoder",
                                      "emulator": "tiny_emulator"}})


def test_a_retrained_autoencoder_is_refused_under_its_emulator():
    _ae_and_emulator()
    recorded = json.loads((paths.weights_dir("tiny_emulator") / "config.json").read_text())[
        "data_info"]["autoencoder_fingerprint"]
    assert recorded == load_component("tiny_autoencoder").fingerprint
    build(_surrogate_config())  # the one it was trained on: fine

    shutil.rmtree(paths.weights_dir("tiny_autoencoder"))
    ae = tf.tiny_config("autoencoder")
    ae.seed = 1
    train_component(ae, preprocessed_dir=paths.preprocessed_dir("synth", "timeless"))
    now = load_component("tiny_autoencoder").fingerprint
    assert now != recorded
    with pytest.raises(SurrogateError) as info:
        build(_surrogate_config())
    for fragment in (recorded[:16], now[:16], "retrained after the emulator", "Delete"):
        assert fragment in str(info.value), str(info.value)
    emulator = tf.tiny_config("emulator", name="tiny_emulator")
    emulator.epochs = 2
    with pytest.raises(ResumeMismatchError) as info:
        train_component(emulator, preprocessed_dir=paths.preprocessed_dir("synth", "sequential"))
    for fragment in (recorded[:16], now[:16], "retrained since"):
        assert fragment in str(info.value), str(info.value)


def test_load_from_any_working_directory(tmp_path, monkeypatch):
    _ae_and_emulator()
    project = tmp_path  # conftest: outputs at tmp_path / "outputs"
    elsewhere = tmp_path / "notebooks"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("ASTROCHEM_JAX_OUTPUTS")
    for workdir in (project, project / "outputs", str(project / "outputs")):
        surrogate = load(_surrogate_config(), workdir=workdir)
        assert surrogate.outputs_dir == (project / "outputs").resolve()
        x0 = np.full((1, len(tf.SPECIES)), 1e-3, np.float32)
        physical = np.full((1, 4, len(tf.PHYSICAL)), 10.0, np.float32)
        assert np.isfinite(np.asarray(surrogate(x0, physical))).all()
    monkeypatch.setenv("ASTROCHEM_JAX_OUTPUTS", str(project / "outputs"))
    assert load(_surrogate_config()).outputs_dir == (project / "outputs").resolve()
    monkeypatch.delenv("ASTROCHEM_JAX_OUTPUTS")
    with pytest.raises(SurrogateError) as info:  # the project's outputs/: not trained there
        load(_surrogate_config())
    assert str(REPO_ROOT / "outputs") in str(info.value)
    assert "outputs root searched" in str(info.value)
    with pytest.raises(SurrogateError, match="found neither .*weights.* nor .*outputs"):
        load(_surrogate_config(), workdir=elsewhere)


# ------------------------------------------------------------------------------------------------
# Benchmark and preprocess: output checks, locks, stale temporaries


def test_benchmark_checks_its_output_directory_before_working():
    from astrochem_jax.benchmark import BenchmarkError, run_benchmark

    paths.outputs_dir().mkdir(parents=True, exist_ok=True)
    (paths.outputs_dir() / "benchmarks").write_text("not a directory")
    config = config_utils.load_config("ae_emulator_grav", "surrogates")
    config.name = "tiny_surrogate"  # nothing trained: the check must come first
    start = time.perf_counter()
    with pytest.raises(BenchmarkError, match="cannot write the benchmark outputs to"):
        run_benchmark(config, log=lambda m: None)
    assert time.perf_counter() - start < 5
    (paths.outputs_dir() / "benchmarks").unlink()
    with pytest.raises(SurrogateError):  # writable now: fails later, leaves no directory
        run_benchmark(config, log=lambda m: None)
    assert not paths.benchmarks_dir("tiny_surrogate").exists()


def _tiny_uclchem(tmp_path):
    ds = config_utils.load_config("uclchem_grav", "datasets")
    ds.raw_path = str(syn.write_uclchem_fixed(tmp_path / "u.h5", syn.make_trajectories(4, 5)))
    ds.name, ds.n_species, ds.max_element_drift = "small", None, None
    return ds


def test_preprocess_removes_what_killed_runs_left(tmp_path, capsys):
    ds = _tiny_uclchem(tmp_path)
    stale = [paths.outputs_dir() / "preprocessed" / "small" / ".timeless.k1ll3d.tmp",
             paths.outputs_dir() / "preprocessed" / "small" / ".sequential.old",
             paths.outputs_dir() / "utils" / ".small.x9.tmp"]
    other = paths.outputs_dir() / "utils" / ".small_other.x9.tmp"  # another dataset's
    for d in [*stale, other]:
        d.mkdir(parents=True)
        (d / "shard.npy").write_bytes(b"0" * 1000)
    preprocess(ds, "timeless")
    assert not any(d.exists() for d in stale) and other.exists()
    assert "removed 3 temporary directories left by an interrupted run" in capsys.readouterr().out


def test_concurrent_preprocess_waits_for_the_first(tmp_path, capsys):
    from astrochem_jax.preprocess.pipeline import lock_path

    ds = _tiny_uclchem(tmp_path)
    held = threading.Event()

    def hold():
        with locks.exclusive(lock_path("small"), "test"):
            held.set()
            time.sleep(1.0)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    start = time.perf_counter()
    out = preprocess(ds, "timeless")
    thread.join()
    assert time.perf_counter() - start >= 0.9
    assert "waiting for pid" in capsys.readouterr().out
    assert shards.read_manifest(out)["n_species"] == 10
    assert not lock_path("small").exists()
