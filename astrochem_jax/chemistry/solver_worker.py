"""Worker-process side of `chemistry.parallel.SolverPool` (one solver per spawned process).

This module imports nothing heavy at top level: a spawned worker unpickles the functions it runs
(importing this module) before its initializer runs, and `runtime.configure_threads()` must
come before numpy / jax are imported (one BLAS thread: a multi-threaded OpenBLAS made the
solver's LU 20-200x slower). For the same reason the network and settings arrive pickled, as
bytes, and are unpickled only after the thread setup.
"""

from __future__ import annotations

import os
import pickle
import time
import traceback

from astrochem_jax import runtime

# Workers wait this long at the warm-up barrier for their siblings (a cold compile of a large
# network on a loaded machine takes minutes, not hours); the parent aborts it sooner on failure.
WARMUP_BARRIER_TIMEOUT_S = 1800.0
_STATE: dict = {}


class SolverPoolError(RuntimeError):
    """A solver worker process failed (raised, or died); the message says which and while doing
    what."""


def strip_device_count(flags: str) -> str:
    """XLA_FLAGS without `--xla_force_host_platform_device_count=...` (a worker has ONE device)."""
    return " ".join(f for f in flags.split()
                    if not f.startswith("--xla_force_host_platform_device_count"))


def init_worker(payload: bytes, cache_dir: str | None, barrier) -> None:
    """Process initializer: one BLAS thread, ONE CPU device (inherited device counts ignored),
    x64 and the parent's persistent compile cache; then unpickle (network, settings).

    Errors are kept and raised by the first task, so the parent sees the traceback (an
    initializer that raises only breaks the pool with a generic message)."""
    _STATE.update(barrier=barrier, error=None)
    try:
        runtime.configure_threads()
        os.environ["XLA_FLAGS"] = strip_device_count(os.environ.get("XLA_FLAGS", ""))
        import jax

        jax.config.update("jax_num_cpu_devices", 1)
        runtime.configure_jax(cache_dir=cache_dir)
        _STATE["network"], _STATE["settings"] = pickle.loads(payload)
    except Exception:  # noqa: BLE001 - reported by the first task
        _STATE["error"] = traceback.format_exc()


def _raise_if_init_failed() -> None:
    if _STATE.get("error"):
        raise SolverPoolError(f"solver worker pid {os.getpid()}: initialisation (thread "
                              f"setup, jax config, unpickling the network) failed:\n"
                              f"{_STATE['error']}")


def warm_up(x0, node_time_years, node_physical, output_time_years) -> dict:
    """Build and compile the solver, solve this one batch (x0 [b, S], node_time_years [b, N],
    node_physical [b, N, 5], output_time_years [T]: the pool's batch shape, a cheap problem),
    then wait for every sibling at the barrier (so each worker runs exactly one warm-up).

    Returns {pid, warmup_s}: this worker's trace + compile + warm-up solve time."""
    barrier = _STATE["barrier"]
    start = time.perf_counter()
    try:
        _raise_if_init_failed()
        import numpy as np

        from astrochem_jax.chemistry import solver

        fn = solver.make_solver(_STATE["network"], _STATE["settings"])
        [np.asarray(o) for o in fn(x0, node_time_years, node_physical, output_time_years)]
        _STATE["fn"] = fn
    except SolverPoolError:
        barrier.abort()
        raise
    except Exception:
        barrier.abort()
        raise SolverPoolError(
            f"solver worker pid {os.getpid()}: warm-up (compile + one solve of batch "
            f"{x0.shape[0]} x nodes {node_time_years.shape[1]} x outputs "
            f"{output_time_years.size}) failed:\n{traceback.format_exc()}") from None
    warmup_s = time.perf_counter() - start
    barrier.wait(WARMUP_BARRIER_TIMEOUT_S)
    return {"pid": os.getpid(), "warmup_s": warmup_s}


def solve_batch(x0, node_time_years, node_physical, output_time_years) -> tuple:
    """One padded batch: x0 [b, S], node_time_years [b, N], node_physical [b, N, 5],
    output_time_years [T] -> the solver's 5 outputs as numpy arrays ([b, T, S], 4 x [b])."""
    _raise_if_init_failed()
    import numpy as np

    from astrochem_jax.chemistry import solver

    try:
        fn = _STATE.get("fn")
        if fn is None:
            fn = _STATE["fn"] = solver.make_solver(_STATE["network"], _STATE["settings"])
        return tuple(np.asarray(o) for o in fn(x0, node_time_years, node_physical,
                                                output_time_years))
    except Exception:
        raise SolverPoolError(f"solver worker pid {os.getpid()}: solving a batch of "
                              f"{x0.shape[0]} tracers failed:\n{traceback.format_exc()}") from None
