#!/usr/bin/env bash
# Set up the environment, lint, and run the whole test suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OPENBLAS_NUM_THREADS=1
.venv/bin/ruff check astrochem_jax configs scripts tests notebooks
.venv/bin/python -m pytest -q "$@"
