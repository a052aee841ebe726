"""Preemption: SIGTERM / SIGINT save a checkpoint mid-epoch and stop cleanly; the rerun resumes
exactly (the metrics of an uninterrupted run).

- `PreemptionGuard` (a context manager around the training loop) turns SIGTERM and SIGINT into a
  flag that the loop polls between jitted calls (`should_stop(step)`). With several processes a
  signal reaches each process at its own time, so they must agree on the step to stop at: there
  SIGTERM (what schedulers send before preempting) goes through JAX's preemption sync service
  (`multihost_utils.reached_preemption_sync_point`, started by `jax.distributed.initialize`),
  which picks a step every process reaches; SIGINT keeps its default (KeyboardInterrupt).
- `InterruptCheckpoint`: one checkpoint slot in `outputs/weights/<component>/interrupted/` (the
  train state and the loop bookkeeping, including how far into the epoch the run got and the
  epoch's per-step diagnostics so far), apart from the epoch checkpoints so it never competes for
  "latest" or "best". The rerun restores it when it is newer than the latest epoch checkpoint
  and removes it once a later epoch checkpoint exists.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from astrochem_jax.training import mesh as mesh_lib
from astrochem_jax.training import state as state_lib

INTERRUPTED_DIR = "interrupted"
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Step ids of the preemption sync point: increasing over the whole process (several trainings in
# one process, e.g. an autoencoder then an emulator), as the sync protocol needs: the notice
# takes a moment to reach every process, and the step it picks must still lie ahead.
_SYNC_IDS = itertools.count(1)


class LoopSyncedCheckpointManager(ocp.CheckpointManager):
    """An orbax CheckpointManager that leaves JAX's preemption sync protocol to the training
    loop (`PreemptionGuard.should_stop`).

    orbax's `save` / `should_save` call `multihost_utils.reached_preemption_sync_point(step)`
    with the checkpoint's step (our epoch), and the protocol answers True once, to whichever
    caller reaches the agreed step id first. With two callers counting steps differently, orbax
    could take the notice (it then logs "Reached preemption sync point" and saves) while the loop
    never sees it, and a preempted multi-process run trained on to the end. Only the loop polls."""

    def reached_preemption(self, step: int) -> bool:
        return False


class TrainingInterrupted(Exception):  # noqa: N818 (not an error: the run stopped on request)
    """Training stopped on SIGTERM / SIGINT after saving a checkpoint; rerun to resume.

    `exit_code`: 128 + the signal number (the shell convention: 143 SIGTERM, 130 SIGINT)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


class PreemptionGuard:
    """`with PreemptionGuard() as guard: ... if guard.should_stop(step): save; raise`."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._multi = jax.process_count() > 1

    def _handler(self, signum, frame) -> None:
        self.signum = int(signum)

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are delivered to the main thread only
        # Several processes: SIGTERM is JAX's preemption service's (its handler must stay), and
        # SIGINT keeps its default (a flag could not be agreed on without the service).
        for sig in () if self._multi else SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def should_stop(self) -> bool:
        """True when the run must save and stop now. Call between jitted calls, at the same
        points on every process (each call is one step of the preemption sync protocol)."""
        step = next(_SYNC_IDS)
        if self._multi:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(int(step)):
                    self.signum = int(signal.SIGTERM)
                    return True
            except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
                pass
            return False
        return self.signum is not None


def encode_diagnostics(diagnostics: dict[str, np.ndarray]) -> dict[str, list]:
    """Per-step float32 diagnostics -> JSON lists (float32 -> float is exact; NaN / inf kept as
    strings so the JSON stays standard)."""
    def one(v: float):
        return v if np.isfinite(v) else str(v)

    return {k: [one(float(x)) for x in np.asarray(v).reshape(-1)] for k, v in diagnostics.items()}


def decode_diagnostics(data: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.asarray([float(x) for x in v], np.float32) for k, v in data.items()}


class InterruptCheckpoint:
    """The one mid-epoch checkpoint slot of a component (process 0 writes through orbax; every
    process takes part in the save, as orbax requires)."""

    def __init__(self, component_dir: str | Path):
        self.directory = Path(component_dir).resolve() / INTERRUPTED_DIR

    def _manager(self, read_only: bool = False) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=not read_only,
                                               read_only=read_only)
        return LoopSyncedCheckpointManager(self.directory, options=options,
                                           item_names=("state", "loop"))

    def exists(self) -> bool:
        return self.directory.is_dir() and any(p.name.isdigit() for p in self.directory.iterdir())

    def save(self, step: int, state: Any, loop: dict) -> None:
        manager = self._manager()
        try:
            manager.save(int(step), args=ocp.args.Composite(
                state=ocp.args.StandardSave(state_lib.as_saved(state)),
                loop=ocp.args.JsonSave(loop)), force=True)
            manager.wait_until_finished()
        finally:
            manager.close()

    def restore(self, abstract_state: Any) -> tuple[Any, dict] | None:
        if not self.exists():
            return None
        manager = self._manager(read_only=True)
        try:
            step = manager.latest_step()
            if step is None:
                return None
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(state_lib.as_saved(abstract_state)),
                loop=ocp.args.JsonRestore()))
        finally:
            manager.close()
        return state_lib.from_saved(restored.state), dict(restored.loop)

    def remove(self) -> None:
        """Drop the slot (process 0; every process waits)."""
        if mesh_lib.is_main_process() and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)
        mesh_lib.barrier("interrupted_checkpoint_removed")
