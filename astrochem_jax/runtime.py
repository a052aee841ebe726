"""Process-level JAX settings shared by every entry point.

`configure_threads()` must run before numpy or jax are imported: JAX's CPU LU factorisation calls
OpenBLAS, and a multi-threaded OpenBLAS made a 163x163 LU 20-200x slower on 2 cores (measured).
That is why this module imports neither at top level.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_threads() -> None:
    """Pin BLAS libraries to one thread and make equinox errors cache-friendly, unless the user
    chose otherwise. Must run before numpy / jax / equinox are imported."""
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    # equinox's runtime-error hooks are host callbacks, and a jitted function holding host
    # callbacks is never written to the persistent compilation cache (the solver then recompiles
    # in every process, 7-10 s). Inputs are validated before solving and failed integrations are
    # reported per tracer through diffrax's result codes (throw=False), so NaN mode loses nothing.
    os.environ.setdefault("EQX_ON_ERROR", "nan")


def configure_jax(*, x64: bool = True, cache_dir: str | Path | None = None) -> None:
    """Enable float64 (the solver needs it; ML code casts to float32 itself) and the persistent
    compilation cache, so repeated runs skip the 10-25 s solver compile."""
    import jax

    from astrochem_jax import paths

    jax.config.update("jax_enable_x64", x64)
    cache = Path(cache_dir) if cache_dir is not None else paths.outputs_dir() / "jax_cache"
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def setup_entry_point(*, x64: bool = True) -> None:
    """Call first thing in every `python -m astrochem_jax.<program>` main module."""
    configure_threads()
    configure_jax(x64=x64)
