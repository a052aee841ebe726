"""notebooks/quickstart.ipynb runs top to bottom (on the tiny trained components) when the
optional `notebook` extra (nbclient, nbformat, ipykernel) is installed; skipped otherwise. Also:
the benchmark's console keeps to its own lines while orbax's go to its log file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from surrogate_helpers import tiny_trained_outputs, write_surrogate_config_file

    outputs = tiny_trained_outputs()
    config = write_surrogate_config_file(tmp_path / "tiny_surrogate.py")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    # What a user changes: where the pipeline ran and which surrogate (the tiny test one).
    parameters.source = (f"WORKDIR = {str(outputs)!r}\nSURROGATE = {str(config)!r}\n"
                         "SPECIES = 'CO'\nDENSITY_STEP = 0.05\n")
    # The kernel shares the tests' compile cache (the solver compiles in ~20 s otherwise) and
    # must not find the outputs through the environment: `workdir=` is what is tested.
    monkeypatch.delenv("ASTROCHEM_JAX_OUTPUTS", raising=False)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / "outputs" / "jax_cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "tiny_surrogate: " in text and str(outputs) in text
    assert "mean |dlog10| over steps and species" in text
    assert "d log10 x_CO / d log10 n_H at the last step" in text
    assert "mean |surrogate - solver| sensitivity" in text
    images = [o for c in notebook.cells for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 2


@pytest.mark.slow
def test_benchmark_console_keeps_to_its_own_lines(tmp_path):
    from surrogate_helpers import tiny_trained_outputs, write_surrogate_config_file

    outputs = tiny_trained_outputs()
    config = write_surrogate_config_file(tmp_path / "quiet.py", name="quiet_bench")
    env = {**os.environ, "ASTROCHEM_JAX_OUTPUTS": str(outputs), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "astrochem_jax.benchmark", f"--config={config}"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    console = (proc.stdout + proc.stderr).splitlines()
    absl_lines = [line for line in console if line[:1] in "IW" and line[1:5].isdigit()]
    assert absl_lines == [], absl_lines[:5]
    assert any(line.startswith("[benchmark] accuracy:") for line in console), console
    log = (outputs / "runs" / "quiet_bench" / "benchmark.log").read_text()
    assert "orbax" in log.lower() and "[benchmark] accuracy:" in log
