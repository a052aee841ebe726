"""Multi-process data parallel, tested on this machine: 2 processes x 4 CPU devices on localhost
(jax.distributed with a coordinator on 127.0.0.1, gloo collectives) train the autoencoder and
then the latent emulator for 3 epochs, and must reproduce the 1 process x 8 devices run: losses,
latents_minmax and final parameters within 1e-5, although the 2-process run is preempted
(SIGTERM to one process) in the middle and resumed. The shards are uneven (3 shards of different
sizes, row counts that do not divide the process or device count), so the processes read
overlapping parts of shards and the global arrays carry padding rows. The autoencoder is the
shipped option without BatchNorm (`model.normalization = "none"`): with BatchNorm the bias in
front of it has a zero gradient that Adam turns into drifts of float rounding, and an in-process
all-reduce and gloo sum in different orders (the training losses still agree to 1e-6, the
BatchNorm running means do not)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import training_fixtures as tf

from astrochem_jax import paths
from astrochem_jax.training import checkpoints, load_component
from astrochem_jax.training import state as state_lib

HERE = Path(__file__).resolve().parent
WORKER = HERE / "multiprocess_train.py"
EPOCHS = 3
TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(outputs: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "XLA_FLAGS", "ASTROCHEM_JAX"))}
    env.update(OPENBLAS_NUM_THREADS="1", ASTROCHEM_JAX_OUTPUTS=str(outputs))
    return env


def _run(outputs: Path, n_processes: int, n_devices: int, log_dir: Path, tag: str = "",
         sigterm_at: str | None = None, expect_code: int = 0) -> list[str]:
    """Run the worker on n_processes x n_devices; returns the processes' logs."""
    port = _free_port()
    procs, logs = [], []
    for pid in range(n_processes):
        env = _env(outputs)
        if n_processes > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       JAX_NUM_PROCESSES=str(n_processes), JAX_PROCESS_ID=str(pid))
        if sigterm_at:
            env["SIGTERM_AT"] = sigterm_at
        log = open(log_dir / f"{n_processes}x{n_devices}{tag}-{pid}.log", "w")  # noqa: SIM115
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(outputs), str(n_devices), str(EPOCHS)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(HERE.parent)))
    try:
        codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    files = sorted(log_dir.glob(f"{n_processes}x{n_devices}{tag}-*.log"))
    if any(code != expect_code for code in codes):
        tails = "\n".join(f"--- {f.name} ---\n" + f.read_text()[-3000:] for f in files)
        raise AssertionError(f"{n_processes} x {n_devices} run: exit codes {codes}, expected "
                             f"{expect_code}:\n{tails}")
    return [f.read_text() for f in files]


def _latest_params(name: str):
    """The parameters of the last epoch's checkpoint (host numpy)."""
    loaded = load_component(name, allow_failed=True)
    tx = state_lib.make_optimizer(loaded.config)
    template = state_lib.init_state(loaded.params, loaded.batch_stats, tx, int(loaded.config.seed))
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    ckpt = checkpoints.Checkpointer(loaded.directory, read_only=True)
    try:
        state, _ = ckpt.restore(ckpt.latest_epoch(),
                                checkpoints.abstract_with_sharding(template, sharding))
    finally:
        ckpt.close()
    return jax.device_get((state.params, state.batch_stats)), jax.device_get(
        (loaded.params, loaded.batch_stats))


@pytest.mark.slow
def test_two_processes_reproduce_one_process(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    os.environ["ASTROCHEM_JAX_OUTPUTS"] = str(single)  # the autouse fixture restores it
    # 11 tracers x 12 steps: 9 train tracers (108 timeless rows in shards of 40, 40, 28;
    # sequential shards of 4, 4, 1 tracers), 2 val tracers.
    tf.write_preprocessed(n_tracers=11, shard_items={"timeless": 40, "sequential": 4})
    shutil.copytree(single, multi)
    manifest = json.loads((paths.preprocessed_dir("synth", "timeless")
                           / "manifest.json").read_text())
    assert [s["shape"][0] for s in manifest["splits"]["train"]["shards"]] == [40, 40, 28]

    _run(single, 1, 8, tmp_path)
    # Process 1 gets SIGTERM during the autoencoder's first epoch (3 calls of 2 steps per epoch).
    # The notice takes a moment to reach process 0; JAX's preemption service then stops both
    # processes at the same step (wherever that falls: autoencoder or emulator), they save one
    # checkpoint and exit with 143; the rerun resumes it and must end like the 1 x 8 run.
    logs = _run(multi, 2, 4, tmp_path, "-stopped", sigterm_at="1:2", expect_code=143)
    # Mid-epoch: "(epoch E, batch B); checkpoint saved in .../interrupted"; at an epoch
    # boundary whose checkpoint was just written: "after epoch E (checkpointed)".
    stops = [re.search(r"interrupted: (\w+): stopped by signal 15 (\(epoch \d+, batch \d+\)|"
                       r"after epoch \d+ \(checkpointed\))", log) for log in logs]
    assert all(stops), logs[0][-2000:]
    assert stops[0].groups() == stops[1].groups()  # the same component, epoch and batch
    stopped = multi / "weights" / stops[0].group(1) / "interrupted"
    assert stopped.is_dir() == ("checkpoint saved in" in logs[0])
    _run(multi, 2, 4, tmp_path)
    assert not stopped.exists()

    for name in ("tiny_autoencoder", "tiny_emulator"):
        runs = {}
        for label, root in (("single", single), ("multi", multi)):
            os.environ["ASTROCHEM_JAX_OUTPUTS"] = str(root)
            directory = paths.weights_dir(name)
            metrics = json.loads((directory / "metrics.json").read_text())
            summary = json.loads((directory / "summary.json").read_text())
            runs[label] = (metrics, summary, _latest_params(name))
        (m1, s1, (last1, best1)), (m2, s2, (last2, best2)) = runs["single"], runs["multi"]
        assert s1["devices"] == {"count": 8, "kinds": s1["devices"]["kinds"], "processes": 1}
        assert s2["devices"]["count"] == 8 and s2["devices"]["processes"] == 2
        assert [r["epoch"] for r in m1] == [r["epoch"] for r in m2] == [1, 2, 3]
        for a, b in zip(m1, m2, strict=True):
            assert a["steps"] == b["steps"]
            for key in ("train_loss", "val_loss"):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"{name} {key}")
            for key, value in a["val"].items():
                np.testing.assert_allclose(value, b["val"][key], rtol=1e-5, atol=1e-7,
                                           err_msg=f"{name} val {key}")
        assert s1["best_epoch"] == s2["best_epoch"]
        for x, y in zip(jax.tree.leaves((last1, best1)), jax.tree.leaves((last2, best2)),
                        strict=True):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name} parameters")
        if name == "tiny_autoencoder":
            minmax = [np.load(root / "weights" / name / "latents_minmax.npy")
                      for root in (single, multi)]
            np.testing.assert_allclose(minmax[0], minmax[1], rtol=1e-5, atol=1e-7)
