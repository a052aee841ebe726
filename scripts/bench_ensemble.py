"""Cost of a deep ensemble: wall time per epoch of the shipped recipe with N members (one vmapped
step) against one member, on this machine.

    .venv/bin/python scripts/bench_ensemble.py                       # emulator, N = 1 and 5
    .venv/bin/python scripts/bench_ensemble.py --component autoencoder --members 1,5 --epochs 4

Trains each size for `--epochs` epochs under `outputs/weights/bench_ensemble/<component>_N<n>`
(the emulator over the quickstart's autoencoder `autoencoder_grav_large`: train it first), in
its own process, sizes alternating `--repeats` times, and reads the epoch times from
metrics.json (epoch 1, which compiles, is left out). Prints one JSON object: seconds per epoch
per size (best repeat), the ratio to N = 1, and samples (rows / windows) per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"emulator": "configs/components/emulator_grav_sequential.py",
           "autoencoder": "configs/components/autoencoder_grav_large.py"}


def run(component: str, members: int, epochs: int, outputs: Path) -> dict:
    name = f"bench_ensemble/{component}_N{members}"
    shutil.rmtree(outputs / "weights" / name, ignore_errors=True)
    cmd = [sys.executable, "-m", "astrochem_jax.train", f"--config={CONFIGS[component]}",
           f"--config.name={name}", f"--config.ensemble_size={members}",
           f"--config.epochs={epochs}", "--config.converged_loss_ratio=None"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    history = json.loads((outputs / "weights" / name / "metrics.json").read_text())
    timed = history[1:] or history
    seconds = sum(r["seconds"] for r in timed) / len(timed)
    return {"seconds_per_epoch": seconds,
            "samples_per_s": sum(r["samples_per_s"] for r in timed) / len(timed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--component", choices=sorted(CONFIGS), default="emulator")
    parser.add_argument("--members", default="1,5")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from astrochem_jax import paths, runtime

    outputs = paths.outputs_dir()
    sizes = [int(n) for n in args.members.split(",")]
    best: dict[int, dict] = {}
    for _ in range(args.repeats):
        for n in sizes:  # alternate, keep the best: the machine may be shared
            result = run(args.component, n, args.epochs, outputs)
            if n not in best or result["seconds_per_epoch"] < best[n]["seconds_per_epoch"]:
                best[n] = result
    base = best[min(sizes)]["seconds_per_epoch"]
    report = {
        "component": args.component,
        "epochs_timed": args.epochs - 1,
        "machine": {"cpu_cores": os.cpu_count(), "packages": runtime.package_versions()},
        "sizes": {str(n): {**best[n], "ratio_to_smallest": best[n]["seconds_per_epoch"] / base}
                  for n in sizes},
        "note": "samples_per_s counts the items of one member's epoch (every member sees as "
                "many): the ensemble trains members x that",
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
