"""Per-epoch scalars as TensorBoard event files: `outputs/runs/<component>/tensorboard/`.

    tensorboard --logdir outputs/runs

Written by process 0 with tensorboardX (pure Python over protobuf, both already pinned: no
TensorFlow, no PyTorch). clu's `metric_writers` were the other candidate, but clu writes event
files through TensorFlow's `tf.summary` (a ~600 MB dependency for one writer), and writing the
TFRecord framing + Event protobuf ourselves would duplicate tensorboardX's 300 lines with no
gain. metrics.json stays the source of truth (learning-curve plots read it); the event files are
for watching a run live.

A resumed run purges the events of the epochs it is about to redo (`purge_step`), so the curves
of an interrupted and resumed run are those of an uninterrupted one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from astrochem_jax import paths

TENSORBOARD_DIR = "tensorboard"


def run_directory(component: str) -> Path:
    """`outputs/runs/<component>/tensorboard` (next to the run's log file, never in its name)."""
    return paths.runs_dir() / component / TENSORBOARD_DIR


def epoch_scalars(record: dict) -> dict[str, float]:
    """A metrics.json record -> {tag: value} for every finite scalar: `train/...`, `val/...`,
    `lr`, `lr_applied`, `dropout`, `samples_per_s`, `seconds`."""
    out: dict[str, float] = {}

    def add(tag: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        if math.isfinite(float(value)):
            out[tag] = float(value)

    add("train/loss", record.get("train_loss"))
    add("val/loss", record.get("val_loss"))
    for key, value in (record.get("train") or {}).items():
        add(f"train/{key}", value)
    for key, value in (record.get("val") or {}).items():
        add(f"val/{key}", value)
    for key in ("lr", "lr_applied", "dropout", "samples_per_s", "seconds"):
        add(key, record.get(key))
    return out


class MetricWriter:
    """`write(epoch, record)` after every epoch; a no-op writer when `enabled` is False (every
    process but 0)."""

    def __init__(self, component: str, *, resume_epoch: int = 0, enabled: bool = True):
        self.directory = run_directory(component)
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.directory.mkdir(parents=True, exist_ok=True)
            # Events of epochs > resume_epoch from an interrupted run are discarded on display.
            self._writer = SummaryWriter(str(self.directory), purge_step=int(resume_epoch) + 1,
                                         flush_secs=30)

    def write(self, epoch: int, record: dict) -> None:
        if self._writer is None:
            return
        for tag, value in epoch_scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=int(epoch))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class StepProfiler:
    """`jax.profiler` trace of `n_steps` training steps (0 = off), written next to the event
    files (`<run>/tensorboard/plugins/profile/`: TensorBoard's profile tab, or Perfetto). The
    trace starts at the run's second jitted call (the first one compiles) and stops after the
    call that reaches `n_steps`, once the devices are done. Process 0 only."""

    def __init__(self, n_steps: int, directory: Path, *, enabled: bool = True):
        self.n_steps = int(n_steps) if enabled else 0
        self.directory = Path(directory)
        self.traced = 0
        self.active = False
        self.done = self.n_steps <= 0

    def before_call(self, call_index: int) -> None:
        if self.done or self.active or call_index < 2:
            return
        import jax

        self.directory.mkdir(parents=True, exist_ok=True)
        jax.profiler.start_trace(str(self.directory))
        self.active = True

    def after_call(self, outputs, n_steps: int) -> None:
        if not self.active:
            return
        self.traced += int(n_steps)
        if self.traced >= self.n_steps:
            self._stop(outputs)

    def _stop(self, outputs=None) -> None:
        import jax

        if outputs is not None:
            jax.block_until_ready(outputs)
        jax.profiler.stop_trace()
        self.active = False
        self.done = True

    def close(self) -> None:
        if self.active:
            self._stop()
