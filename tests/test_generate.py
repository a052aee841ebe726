"""The generate program end to end on tiny configs: layout, conservation, determinism, failures."""

import io
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from fixtures import REPO_ROOT, make_tiny_raw_dataset, tiny_dataset_config

from astrochem_jax import generate, rawio
from astrochem_jax.chemistry import tracks
from astrochem_jax.chemistry.formula import stoichiometry

N_TRACERS, N_STEPS = 4, 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = make_tiny_raw_dataset(tmp_path_factory.mktemp("raw") / "tiny.h5",
                                 n_tracers=N_TRACERS, n_steps=N_STEPS, seed=0)
    return path, rawio.read_raw_dataset(path)


def test_output_time_grid():
    lin = generate.output_time_grid(5, 1e6, "linear", 1.0)
    np.testing.assert_allclose(lin, [0, 2.5e5, 5e5, 7.5e5, 1e6])
    log = generate.output_time_grid(4, 1e4, "log", 1e2)
    np.testing.assert_allclose(log, [0, 1e2, 1e3, 1e4])
    with pytest.raises(generate.GenerateError, match="time_spacing"):
        generate.output_time_grid(4, 1e4, "cubic", 1e2)
    with pytest.raises(generate.GenerateError, match="log_first_time_years"):
        generate.output_time_grid(4, 1e4, "log", 1e5)


def test_conservation_errors_detect_drift():
    species = ["H", "H2", "CO", "C+", "E-"]
    x0 = np.array([0.5, 0.25, 1e-4, 1e-6, 1e-6])
    traj = np.stack([x0, x0 + np.array([-0.1, 0.05, 0, 0, 0])])[None]  # H -> H2 conserves H
    element_rel, charge_rel = generate.conservation_errors(traj, x0, species)
    assert element_rel[0] < 1e-15 and charge_rel[0] < 1e-15
    bad = traj.copy()
    bad[0, 1, 3] *= 1.1  # C+ up 10% without electrons: C and charge both drift
    element_rel, charge_rel = generate.conservation_errors(bad, x0, species)
    assert element_rel[0] > 1e-8 and charge_rel[0] > 1e-3


def test_tiny_dataset_layout(tiny):
    path, data = tiny
    assert path.is_file()
    species = data["species"]
    with h5py.File(path) as f:
        columns = [c.decode() for c in f["columns"][()]]
        assert columns[:8] == ["Index", "Model", "Time", *tracks.PHYSICAL_COLUMNS]
        assert f["data"].shape == (N_TRACERS * N_STEPS, 8 + len(species))
        np.testing.assert_array_equal(f["tracer_ptr"][()], np.arange(N_TRACERS + 1) * N_STEPS)
        np.testing.assert_array_equal(f["solver/tracer_id"][()], np.arange(N_TRACERS))
        np.testing.assert_array_equal(f["solver/result_code"][()], 0)
        assert len(f.attrs["network_rates"]) > 100
    assert data["failed_tracers"] == []
    assert data["config"]["n_steps"] == N_STEPS
    config = tiny_dataset_config(path, N_TRACERS, N_STEPS, 0)
    grid = generate.output_time_grid(N_STEPS, config.generator.time_end_years, "linear", 1.0)
    np.testing.assert_allclose(data["time_years"], np.broadcast_to(grid, (N_TRACERS, N_STEPS)))
    # The stored physical columns are the collapse tracks drawn from the seed.
    params = tracks.sample_track_parameters(N_TRACERS, dict(config.generator.track_ranges), 0)
    np.testing.assert_allclose(data["physical"], tracks.collapse_tracks(params, grid), rtol=1e-14)
    # Row 0 of every tracer holds the initial abundances.
    x = data["abundances"]
    x0 = np.broadcast_to(data["initial_abundances"], x[:, 0].shape)
    np.testing.assert_allclose(x[:, 0, :], x0, rtol=1e-12, atol=1e-30)
    assert np.all(np.isfinite(x))
    assert np.all(x > -1e-18)  # tiny negative round-off at most
    # Chemistry happened: CO forms and HCO+ changes along every track.
    for name in ("CO", "HCO+"):
        k = species.index(name)
        assert np.all(np.abs(x[:, -1, k] - x[:, 0, k]) > 1e-3 * max(x[:, :, k].max(), 1e-12))


def test_tiny_dataset_conserves_elements_and_charge(tiny):
    _, data = tiny
    elements, matrix, charges = stoichiometry(data["species"])
    matrix = np.asarray(matrix, dtype=np.float64)
    charges = np.asarray(charges, dtype=np.float64)
    x = data["abundances"]  # [B, T, S]
    totals = x @ matrix  # [B, T, E]
    rel = np.abs(totals - totals[:, :1]) / totals[:, :1]
    assert rel.max() <= 1e-8, dict(zip(elements, rel.max(axis=(0, 1)), strict=True))
    charge = x @ charges  # [B, T]
    charge_scale = (x @ np.abs(charges)).max(axis=1, keepdims=True)
    assert (np.abs(charge - charge[:, :1]) / charge_scale).max() <= 1e-8


def test_same_seed_is_deterministic(tiny, tmp_path):
    path, _ = tiny
    config = tiny_dataset_config(tmp_path / "again.h5", N_TRACERS, N_STEPS, 0)
    again = generate.generate_dataset(config, stream=io.StringIO())
    with h5py.File(path) as a, h5py.File(again) as b:
        np.testing.assert_array_equal(a["data"][()], b["data"][()])
        np.testing.assert_array_equal(a["solver/n_steps"][()], b["solver/n_steps"][()])


def test_all_failed_is_an_error_and_writes_nothing(tmp_path):
    config = tiny_dataset_config(tmp_path / "fail.h5", 2, 5, 0)
    config.generator.solver.max_steps = 2
    stream = io.StringIO()
    with pytest.raises(generate.GenerateError, match="all 2 tracers failed"):
        generate.generate_dataset(config, stream=stream)
    assert not (tmp_path / "fail.h5").exists()
    report = stream.getvalue()
    assert "tracer 0 FAILED" in report and "tracer 1 FAILED" in report


@pytest.mark.slow
def test_failed_tracers_reported_not_written(tiny, tmp_path):
    """Rerun with max_steps between the tracers' step counts: the expensive tracers fail."""
    _, data = tiny
    steps = data["solver"]["n_steps"]
    if steps.min() == steps.max():
        pytest.skip("all tracers took the same number of steps")
    config = tiny_dataset_config(tmp_path / "partial.h5", N_TRACERS, N_STEPS, 0)
    config.generator.solver.max_steps = int(steps.min())
    stream = io.StringIO()
    path = generate.generate_dataset(config, stream=stream)
    got = rawio.read_raw_dataset(path)
    failed = data["tracer_ids"][steps > steps.min()]
    assert got["failed_tracers"] == failed.tolist()
    assert set(got["tracer_ids"].tolist()).isdisjoint(failed.tolist())
    np.testing.assert_array_equal(got["solver"]["tracer_id"], np.arange(N_TRACERS))
    assert np.all(got["solver"]["result_code"][failed] != 0)
    for t in failed:
        assert f"tracer {t} FAILED" in stream.getvalue()
    kept = np.flatnonzero(steps == steps.min())
    np.testing.assert_array_equal(got["abundances"], data["abundances"][kept])


@pytest.mark.slow
def test_command_line(tmp_path):
    out = tmp_path / "cli.h5"
    env = dict(os.environ, ASTROCHEM_JAX_OUTPUTS=str(REPO_ROOT / "outputs"))
    proc = subprocess.run(
        [sys.executable, "-m", "astrochem_jax.generate",
         f"--config={REPO_ROOT / 'configs' / 'datasets' / 'grav.py'}",
         "--config.n_tracers=2", "--config.n_steps=5", f"--config.raw_path={out}",
         "--config.generator.time_end_years=1e5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 tracers ok, 0 failed" in proc.stderr
    assert rawio.read_raw_dataset(out)["abundances"].shape[:2] == (2, 5)
