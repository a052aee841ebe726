#!/usr/bin/env bash
# Create (or reuse) .venv and install astrochem_jax with its dev extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# requirements.lock pins the tested version of every package (a constraints file: it decides
# versions, pyproject.toml decides what is installed).
# Optional extras: ASTROCHEM_JAX_EXTRAS=dev,notebook also installs what runs the notebook.
extras=${ASTROCHEM_JAX_EXTRAS:-dev}
stamp=.venv/.installed-$( (cat pyproject.toml requirements.lock; echo "$extras") | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c requirements.lock -e ".[$extras]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
