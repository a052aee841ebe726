"""One process at a time per output: an exclusive `fcntl.flock` on a lock file.

    with locks.exclusive(paths.runs_dir() / name / "train.lock", f"component {name!r}"):
        ...   # a second process refuses (LockError) or, with wait=True, waits

The operating system releases the lock when its process exits or crashes, so a killed run never
blocks the next one; the lock file is removed on a clean release. The file holds the owner's pid
and command line for the refusal message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from astrochem_jax import paths


class LockError(RuntimeError):
    """Another process holds the lock of this output."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def exclusive(path: str | Path, what: str, *, wait: bool = False,
              say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock file `path` for the duration of the block.

    what: the thing protected, for messages (e.g. "component 'autoencoder_grav_large'").
    wait: block until the holder releases it (saying so once through `say`) instead of raising
    `LockError`.
    """
    path = Path(path)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a releasing holder removed the empty directory meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                os.close(fd)
                raise LockError(
                    f"{what} is in use by {holder} (lock file {path}); wait for that run to "
                    "finish or stop it (its lock goes when it exits), then run again"
                ) from None
            if say is not None:
                say(f"waiting for {holder}, which holds {what} (lock file {path}) ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        # The previous holder may have removed the file between our open and our lock: then we
        # hold a lock on a file nobody else will open. Retry on the current file.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (f"pid {os.getpid()} ({' '.join(sys.argv) or 'python'}), since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        remove_empty_dirs(path.parent, paths.outputs_dir())


def remove_empty_dirs(directory: Path, stop: Path) -> None:
    """Remove `directory` and its parents while they are empty, up to (not including) `stop`."""
    directory, stop = Path(directory).absolute(), Path(stop).absolute()
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
