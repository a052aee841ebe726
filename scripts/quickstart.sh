#!/usr/bin/env bash
# The main job end to end on the embedded default data:
# generate -> preprocess (timeless, sequential) -> train autoencoder -> train emulator ->
# fine-tune the emulator closed loop -> refit the decoder on its closed-loop states -> benchmark.
# Every stage caches its result, so a second run only redoes what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OPENBLAS_NUM_THREADS=1
PY=.venv/bin/python
start=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - start )) s] $* ==="; }

stage "1/8 generate the default dataset (data/raw/grav.h5)"
if [ -f data/raw/grav.h5 ] && [ "${FORCE_GENERATE:-0}" != 1 ]; then
  echo "data/raw/grav.h5 exists; skipping (FORCE_GENERATE=1 to regenerate)"
else
  $PY -m astrochem_jax.generate --config=configs/datasets/grav.py
fi
stage "2/8 preprocess: timeless (autoencoder rows)"
$PY -m astrochem_jax.preprocess --dataset=configs/datasets/grav.py --method=configs/preprocessing/timeless.py
stage "3/8 preprocess: sequential (emulator trajectories)"
$PY -m astrochem_jax.preprocess --dataset=configs/datasets/grav.py --method=configs/preprocessing/sequential.py
stage "4/8 train the autoencoder"
$PY -m astrochem_jax.train --config=configs/components/autoencoder_grav_large.py
stage "5/8 train the latent emulator"
$PY -m astrochem_jax.train --config=configs/components/emulator_grav_sequential.py
stage "6/8 fine-tune the emulator closed loop over whole trajectories"
$PY -m astrochem_jax.train --config=configs/components/emulator_grav_closed_loop.py
stage "7/8 refit the decoder on the emulator's closed-loop states"
$PY -m astrochem_jax.train --config=configs/components/decoder_grav_closed_loop.py
stage "8/8 benchmark the surrogate against the solver"
$PY -m astrochem_jax.benchmark --config=configs/surrogates/ae_emulator_grav.py
stage "done: report in outputs/benchmarks/ae_emulator_grav/"
