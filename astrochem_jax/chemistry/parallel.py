"""The stiff solver on every CPU core: batches of tracers farmed out to worker processes.

Why processes: the jitted, vmapped diffrax solve (`solver.make_solver`) runs on one core. Inside
one process, JAX cannot spread it: with `jax_num_cpu_devices=2`, dispatching the jitted solver
asynchronously to two CPU devices deadlocks (0% CPU, every XLA thread parked, also with
`--xla_cpu_multi_thread_eigen=false`), and `jax.shard_map` breaks lineax inside diffrax
("pytree does not match out_structure" / vma mismatch). So each worker is its own process with
one CPU device and one compiled solver.

Cost: a worker starts in ~2-5 s (Python + JAX import ~1 s, tracing diffrax ~3 s, the compile
from the parent's persistent compilation cache; measured 4-5 s for the default network with two
workers on 2 cores). A cold compile adds 10-25 s, paid by all workers at once. `SolverPool` starts
and warms every worker (compile + one cheap solve of the batch shape) before its constructor
returns, so a timed `solve` measures the warm solve alone. Batches travel pickled (inputs out,
abundances [batch, T, S] back): negligible next to a solve.

Determinism: `SolverPool.solve` forms exactly the batches `solver.solve_tracks` forms (same
`batch_size`, the last batch padded with copies of its last tracer) and every worker runs the
same function, compiled for one CPU device, on them. Results are bitwise identical to
`solve_tracks`, whatever the worker count.

    with SolverPool(network, settings, n_workers=2, initial_abundances=x0[0],
                    physical=node_physical[0, 0], n_nodes=N, n_outputs=T) as pool:
        result = pool.solve(x0, node_time_years, node_physical, output_time_years)

or simply `solve_tracks_parallel(...)`, which falls back to the in-process `solve_tracks` when one
worker (or one batch) is enough.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from astrochem_jax import runtime
from astrochem_jax.chemistry import solver as solver_mod
from astrochem_jax.chemistry import solver_worker
from astrochem_jax.chemistry.network import Network
from astrochem_jax.chemistry.solver import (
    SolveResult,
    SolverSettings,
    assemble_result,
    batch_plan,
    prepare_inputs,
)
from astrochem_jax.chemistry.solver_worker import SolverPoolError

__all__ = ["SolverPool", "SolverPoolError", "effective_n_workers", "solve_tracks_parallel"]

# Batches submitted ahead of the finished ones, per worker: enough to keep every worker busy
# without pickling the whole input set at once.
BATCHES_IN_FLIGHT_PER_WORKER = 2
# After a first failure during warm-up, how long to wait for the failing worker's own error
# (siblings report only a broken barrier).
FAILURE_REPORT_WAIT_S = 60.0
DEFAULT_SETTINGS = SolverSettings()
# The warm-up solve spans this much model time (~30 s) from the first tracer's initial
# abundances at its first conditions: the compile, and ~5 solver steps (measured). It must start
# from realistic abundances: from all zeros, or all in one species, the solver runs to max_steps.
WARMUP_END_YEARS = 1.0e-6


def effective_n_workers(n_workers: int | None, n_tracers: int, batch_size: int) -> int:
    """Worker processes worth starting: `n_workers` (None: `runtime.usable_cores()`), never more
    than there are batches, at least 1."""
    if n_workers is not None and int(n_workers) < 1:
        raise ValueError(f"n_workers: expected None (every core) or >= 1, found {n_workers}")
    wanted = runtime.usable_cores() if n_workers is None else int(n_workers)
    return max(1, min(wanted, len(batch_plan(n_tracers, batch_size))))


def warmup_inputs(initial_abundances, physical, batch_size: int, n_nodes: int,
                  n_outputs: int):
    """A cheap problem of the batch shape: initial_abundances [S] and physical [5] (constant)
    over `WARMUP_END_YEARS`. Returns float64 x0 [batch, S], node_time_years [batch, N],
    node_physical [batch, N, 5], output_time_years [T]."""
    x0 = np.asarray(initial_abundances, dtype=np.float64)
    physical = np.asarray(physical, dtype=np.float64)
    node_time = np.linspace(0.0, WARMUP_END_YEARS, n_nodes)
    return (np.broadcast_to(x0, (batch_size, x0.size)).copy(),
            np.broadcast_to(node_time, (batch_size, n_nodes)).copy(),
            np.broadcast_to(physical, (batch_size, n_nodes, physical.size)).copy(),
            np.linspace(0.0, WARMUP_END_YEARS, n_outputs))


# --- parent side -----------------------------------------------------------------------------


def _parent_cache_dir() -> str | None:
    import jax

    return jax.config.jax_compilation_cache_dir or None


@dataclass
class PoolStats:
    """n_workers; start_s: wall time from spawn to every worker warm; warmup_s [n_workers]:
    each worker's compile + warm-up solve."""

    n_workers: int
    start_s: float
    warmup_s: list[float]


class SolverPool:
    """`n_workers` spawned processes, each holding one warm `make_solver(network, settings)`.

    Warm-up (before the constructor returns): every worker compiles and solves one batch of
    shape n_nodes, n_outputs (other shapes work, compiled on first use), starting from
    `initial_abundances` [S] at constant `physical` [5] (pass realistic values, e.g. the first
    tracer's: see `WARMUP_END_YEARS`). cache_dir: persistent compile cache for the workers
    (default: the parent's, else the entry points' default). A context manager: the processes
    are always shut down on exit.
    """

    def __init__(self, network: Network, settings: SolverSettings, n_workers: int, *,
                 initial_abundances, physical, n_nodes: int, n_outputs: int,
                 cache_dir: str | Path | None = None):
        if n_workers < 1:
            raise ValueError(f"n_workers: expected >= 1, found {n_workers}")
        self.network = network
        self.settings = settings
        self.n_workers = int(n_workers)
        self.stats: PoolStats | None = None
        cache = str(cache_dir) if cache_dir is not None else _parent_cache_dir()
        context = multiprocessing.get_context("spawn")
        self._barrier = context.Barrier(self.n_workers)
        self._executor = cf.ProcessPoolExecutor(
            max_workers=self.n_workers, mp_context=context,
            initializer=solver_worker.init_worker,
            initargs=(pickle.dumps((network, settings)), cache, self._barrier))
        try:
            self._start(warmup_inputs(initial_abundances, physical, settings.batch_size,
                                      int(n_nodes), int(n_outputs)))
        except BaseException:
            self.close(abort=True)
            raise

    def _start(self, warmup: tuple[np.ndarray, ...]) -> None:
        start = time.perf_counter()
        # One submit per worker spawns one process each (the executor spawns on demand); the
        # barrier inside `solver_worker.warm_up` keeps any worker from taking two.
        futures = [self._executor.submit(solver_worker.warm_up, *warmup)
                   for _ in range(self.n_workers)]
        done = [self._result(f, "warming up (import + compile + one solve)")
                for f in _first_failure_order(futures)]
        self.stats = PoolStats(self.n_workers, time.perf_counter() - start,
                               [d["warmup_s"] for d in done])

    def _result(self, future: cf.Future, what: str):
        try:
            return future.result()
        except SolverPoolError:
            raise
        except cf.process.BrokenProcessPool as exc:
            raise SolverPoolError(
                f"a solver worker process died while {what} ({self.network.name}, "
                f"{self.n_workers} workers): {str(exc).rstrip('.')}. Killed by the OS "
                "(memory?) or crashed; run with n_workers=1 to see the error in process.") from None
        except Exception as exc:
            raise SolverPoolError(f"a solver worker failed while {what} ({self.network.name}): "
                                  f"{type(exc).__name__}: {exc}") from exc

    def solve(self, initial_abundances, node_time_years, node_physical, output_time_years,
              progress: bool = True) -> SolveResult:
        """Same inputs and result as `solver.solve_tracks` (bitwise): initial_abundances [S] or
        [B, S]; node_time_years [B, N]; node_physical [B, N, 5]; output_time_years [T]."""
        from astrochem_jax.progress import Progress

        if self._executor is None:
            raise SolverPoolError(f"SolverPool ({self.network.name}): solve() on a closed pool")
        x0, node_time, physical, out_time = prepare_inputs(
            self.network, initial_abundances, node_time_years, node_physical, output_time_years)
        plan = batch_plan(node_time.shape[0], self.settings.batch_size)
        bar = Progress(node_time.shape[0], "solve", "tracers") if progress else None
        outputs: list[tuple[np.ndarray, ...] | None] = [None] * len(plan)
        try:
            for k, out in self._run(plan, x0, node_time, physical, out_time):
                start, stop, _ = plan[k]
                outputs[k] = tuple(o[: stop - start] for o in out)
                if bar is not None:
                    bar.update(stop - start)
        except BaseException:
            self.close(abort=True)
            raise
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
        return assemble_result(self.network, outputs, out_time)

    def _run(self, plan, x0, node_time, physical, out_time) -> Iterator[tuple[int, tuple]]:
        """(batch index, outputs) as batches finish, at most `BATCHES_IN_FLIGHT_PER_WORKER`
        per worker submitted ahead."""
        pending: dict[cf.Future, int] = {}
        next_batch = 0
        window = self.n_workers * BATCHES_IN_FLIGHT_PER_WORKER
        while next_batch < len(plan) or pending:
            while next_batch < len(plan) and len(pending) < window:
                take = plan[next_batch][2]
                future = self._executor.submit(solver_worker.solve_batch, x0[take], node_time[take],
                                               physical[take], out_time)
                pending[future] = next_batch
                next_batch += 1
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in done:
                k = pending.pop(future)
                start, stop, _ = plan[k]
                yield k, self._result(future, f"solving tracers {start}..{stop - 1}")

    def close(self, abort: bool = False) -> None:
        """Shut the workers down; `abort` also releases the warm-up barrier and kills workers
        still busy (nothing they compute is wanted any more)."""
        executor, self._executor = getattr(self, "_executor", None), None
        if executor is None:
            return
        if abort:
            self._barrier.abort()
            for process in list((executor._processes or {}).values()):
                if process.is_alive():
                    process.terminate()
        executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SolverPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(abort=exc_type is not None)


def _first_failure_order(futures: list[cf.Future]) -> list[cf.Future]:
    """`futures` once all are done, or as soon as one has failed: a failed one alone, preferring
    a worker's own error over a sibling's broken warm-up barrier."""
    done, _ = cf.wait(futures, return_when=cf.FIRST_EXCEPTION)
    if all(f.exception() is None for f in done) and len(done) == len(futures):
        return futures
    cf.wait(futures, timeout=FAILURE_REPORT_WAIT_S)
    failed = [f for f in futures if f.done() and f.exception() is not None]
    own = [f for f in failed if not isinstance(f.exception(), threading.BrokenBarrierError)]
    return (own or failed)[:1]


def solve_tracks_parallel(network: Network, initial_abundances, node_time_years, node_physical,
                          output_time_years, settings: SolverSettings = DEFAULT_SETTINGS,
                          n_workers: int | None = None, progress: bool = True,
                          solver_fn: Callable | None = None) -> SolveResult:
    """`solver.solve_tracks` on `n_workers` processes (None: every core this process may use).

    Shapes as `solve_tracks`. One worker or one batch: plain in-process `solve_tracks` (no
    subprocess; `solver_fn` is reused there). Never more workers than batches. Inputs are
    validated before anything is spawned.
    """
    x0, node_time, physical, out_time = prepare_inputs(
        network, initial_abundances, node_time_years, node_physical, output_time_years)
    workers = effective_n_workers(n_workers, node_time.shape[0], settings.batch_size)
    if workers == 1:
        return solver_mod.solve_tracks(network, x0, node_time, physical, out_time,
                                       settings=settings, progress=progress, solver_fn=solver_fn)
    if progress:
        print(f"solve: starting {workers} solver worker processes (import + compile)",
              file=sys.stderr, flush=True)
    with SolverPool(network, settings, workers, initial_abundances=x0[0],
                    physical=physical[0, 0], n_nodes=node_time.shape[1],
                    n_outputs=out_time.size) as pool:
        if progress:
            print(f"solve: {workers} workers warm in {pool.stats.start_s:.1f} s",
                  file=sys.stderr, flush=True)
        return pool.solve(x0, node_time, physical, out_time, progress=progress)
