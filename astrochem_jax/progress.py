"""A dependency-free progress line for long loops (tracers, rows, epochs)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints `label: done/total (rate unit/s, eta)` at most every `min_interval_s` seconds.

    Use as a context manager; `update(n)` adds `n` finished units.
    """

    def __init__(self, total: int, label: str, unit: str = "it", min_interval_s: float = 1.0,
                 stream=None):
        self.total = int(total)
        self.label = label
        self.unit = unit
        self.min_interval_s = min_interval_s
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._start = time.perf_counter()
        self._last = 0.0

    def __enter__(self) -> Progress:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._print(final=True)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        now = time.perf_counter()
        if now - self._last >= self.min_interval_s:
            self._print()
            self._last = now

    def _print(self, final: bool = False) -> None:
        rate = self.rate
        remaining = (self.total - self.done) / rate if rate > 0 else float("nan")
        end = "\n" if final else "\r"
        eta = "" if final else f", eta {remaining:5.0f} s"
        self.stream.write(
            f"{self.label}: {self.done}/{self.total} {self.unit} ({rate:.3g} {self.unit}/s{eta})"
            + " " * 4 + end
        )
        self.stream.flush()
