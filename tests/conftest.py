"""Test setup: 8 CPU devices (so sharding is exercised on every run), float64 on, a private
outputs directory, and the `shared_dir` fixture for the optional ../shared reference material."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("EQX_ON_ERROR", "nan")  # see astrochem_jax.runtime.configure_threads

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_enable_x64", True)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` next to the checkout; tests that need it skip cleanly when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip("../shared reference material is not present")
    return SHARED_DIR


@pytest.fixture(autouse=True)
def _private_outputs(tmp_path, monkeypatch):
    """Every test writes derived artifacts under its own temporary outputs/ and data/."""
    monkeypatch.setenv("ASTROCHEM_JAX_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("ASTROCHEM_JAX_DATA", str(tmp_path / "data"))
    yield
