"""Preprocessing throughput and peak memory on a synthetic UCLCHEM-layout file.

    .venv/bin/python scripts/bench_preprocess.py [--tracers 3500 --steps 300 --species 333]

Writes a pandas fixed-format HDF5 file (with h5py, no pandas) of tracers x steps rows (default
1.05M rows, 333 species, ~2.9 GB) in a temporary directory, then preprocesses it with
`sequential` and `timeless`, each in its own subprocess so each peak RSS (VmHWM / ru_maxrss) is
its own. Prints one JSON object: rows, file size, and per method seconds, rows/s, peak RSS.
Targets: >= 2e5 rows/s and peak RSS <= 2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    """VmHWM from /proc (Linux), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(raw: str, method: str, n_species: int) -> None:
    from astrochem_jax import runtime

    runtime.configure_threads()
    sys.path.insert(0, str(REPO_ROOT))
    from astrochem_jax import config_utils
    from astrochem_jax.preprocess import preprocess

    dataset = config_utils.load_config("uclchem_grav", "datasets")
    dataset.raw_path = raw
    dataset.n_species = n_species
    dataset.name = "bench"
    dataset.max_element_drift = None  # synthetic abundances are random, not chemistry
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    preprocess(dataset, method, force=True, verbose=False)
    seconds = time.perf_counter() - start
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = end.ru_utime - cpu.ru_utime + end.ru_stime - cpu.ru_stime
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_s, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracers", type=int, default=3500)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--species", type=int, default=333)
    parser.add_argument("--methods", default="sequential,timeless")
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    parser.add_argument("--child", nargs=3, metavar=("RAW", "METHOD", "N_SPECIES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return

    sys.path.insert(0, str(REPO_ROOT))
    from astrochem_jax.preprocess import synthetic

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        raw = Path(tmp) / "bench_uclchem.h5"
        start = time.perf_counter()
        synthetic.write_uclchem_fixed_streamed(
            raw, args.tracers, args.steps, synthetic.synthetic_species(args.species))
        write_s = time.perf_counter() - start
        # Flush the generated file's dirty pages first: otherwise the kernel's writeback of the
        # freshly written 3 GB input throttles the stage's own writes and is billed to it.
        start = time.perf_counter()
        os.sync()
        sync_s = time.perf_counter() - start
        rows = args.tracers * args.steps
        result = {"rows": rows, "tracers": args.tracers, "steps": args.steps,
                  "species": args.species, "file_gb": raw.stat().st_size / 1e9,
                  "write_seconds": write_s, "sync_seconds": sync_s,
                  "methods": {}}
        env = {**os.environ, "ASTROCHEM_JAX_OUTPUTS": str(Path(tmp) / "outputs")}
        for method in args.methods.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(raw), method, str(args.species)],
                env=env, capture_output=True, text=True, check=True)
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            measured["rows_per_s"] = rows / measured["seconds"]
            # CPU time is less sensitive to other processes on a shared machine than wall time
            # (it includes the sha256 thread, which overlaps the read on a second core).
            measured["rows_per_cpu_s"] = rows / measured["cpu_seconds"]
            result["methods"][method] = measured
            os.sync()  # the same for the next method: start from a clean page cache state
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
