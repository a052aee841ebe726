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
    """float64 on or off process-wide, and the persistent compilation cache, so repeated runs
    skip the 10-25 s solver compile. Only solver programs (generate, the solver's worker
    processes, bench_solver) turn x64 on; the solver itself runs under `jax.enable_x64(True)`
    wherever it is called (`chemistry.solver.float64`), so training and the benchmark keep
    JAX's float32 defaults."""
    import jax

    from astrochem_jax import paths

    jax.config.update("jax_enable_x64", x64)
    cache = Path(cache_dir) if cache_dir is not None else paths.outputs_dir() / "jax_cache"
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def configure_cpu_devices(n_devices: int | None = None) -> int | None:
    """Split the host into `n_devices` JAX CPU devices (default: one per usable core; the
    environment variable ASTROCHEM_JAX_CPU_DEVICES overrides), so a batch sharded over the mesh
    runs on every core. Must run before JAX's first backend use; has no effect on GPU/TPU
    backends. Returns the count requested, or None when the user's XLA_FLAGS set one (it wins).

    Why: XLA:CPU runs each small matrix product of a `lax.scan` body on one thread, so a rollout
    on one CPU device uses one core however large the batch (measured on 2 cores: 25-38% of the
    2-core matmul peak on one device, vs 43-50% sharded over two).
    """
    import jax

    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    env = os.environ.get("ASTROCHEM_JAX_CPU_DEVICES")
    count = int(env) if env else (n_devices if n_devices is not None else usable_cores())
    if count < 1:
        raise ValueError(f"ASTROCHEM_JAX_CPU_DEVICES / n_devices: expected >= 1, found {count}")
    jax.config.update("jax_num_cpu_devices", count)
    return count


def setup_entry_point(*, x64: bool = False, cpu_device_per_core: bool = False) -> None:
    """Call first thing in every `python -m astrochem_jax.<program>` main module. `x64`: True
    only for programs whose main work is the float64 solver (generate, bench_solver).

    `cpu_device_per_core`: one JAX CPU device per core (`configure_cpu_devices`), for programs
    whose jitted work is data-parallel over the mesh (the benchmark's rollouts)."""
    configure_threads()
    configure_jax(x64=x64)
    if cpu_device_per_core:
        configure_cpu_devices()


# Values of `config.matmul_precision` (jax.default_matmul_precision): "default" is the backend's
# choice (TF32 passes for float32 on recent NVIDIA GPUs, bfloat16 passes on TPU), "highest" full
# float32 everywhere, "high" / "bfloat16" / "tensorfloat32" / "float32" explicit.
MATMUL_PRECISIONS = ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")


def matmul_precision(value) -> str:
    """A config's matmul_precision (None = "default"), checked."""
    name = "default" if value is None else str(value)
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"config.matmul_precision = {value!r}; expected one of "
                         f"{list(MATMUL_PRECISIONS)}")
    return name


VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "h5py",
                      "ml-collections", "diffrax", "equinox")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide the numbers (recorded in every
    summary.json and report.json), plus Python's."""
    import platform
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
