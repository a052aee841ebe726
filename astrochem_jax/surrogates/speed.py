"""Timing helpers for the benchmark: compile vs run time, repeated warm timings, matmul peak.

All timings call `jax.block_until_ready` on the result; the first call (compile + first run) is
reported separately and excluded from the repeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp


def time_compile(jitted: Callable, *args) -> float:
    """Seconds to lower and compile `jitted` (a `jax.jit` function) for `args`."""
    start = time.perf_counter()
    jitted.lower(*args).compile()
    return time.perf_counter() - start


def time_calls(fn: Callable, *args, repeats: int = 5, warmup: int = 1,
               min_total_s: float = 0.0) -> list[float]:
    """Wall seconds of `repeats` calls of `fn(*args)` after `warmup` untimed calls.

    With `min_total_s`, keeps repeating (beyond `repeats`) until that much time has been timed, so
    very fast calls are not dominated by timer noise.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_total_s:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
        if len(times) >= 1000:
            break
    return times


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, dtype=jnp.float32,
                       min_total_s: float = 1.0) -> dict:
    """The machine's float32 matmul throughput: a warm, timed [n, n] @ [n, n] `jnp.dot`
    (default precision, as the rollout uses), repeated for at least `min_total_s`.

    `gflops` uses the median time, like the rollout's throughput, so that both see the same
    share of a busy machine; the best time is reported too (`best_gflops`)."""
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), dtype=dtype)
    b = jax.random.normal(key_b, (n, n), dtype=dtype)
    dot = jax.jit(jnp.dot)
    times = sorted(time_calls(dot, a, b, repeats=repeats, warmup=2, min_total_s=min_total_s))
    flops = 2.0 * n**3
    median = times[len(times) // 2]
    return {
        "n": int(n),
        "dtype": jnp.dtype(dtype).name,
        # None = JAX's default (on recent NVIDIA GPUs float32 dots may use TF32, for the rollout
        # as well as here, so the fraction of peak compares like with like).
        "matmul_precision": jax.config.jax_default_matmul_precision,
        "gflops": flops / median / 1e9,
        "best_gflops": flops / times[0] / 1e9,
        "median_s": median,
        "repeats": len(times),
    }


def device_summary() -> dict:
    """What ran the benchmark: backend, device kind and count."""
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "n_devices": len(devices),
        "jax_version": jax.__version__,
    }
