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
    for name, values in params.items():
        np.testing.assert_allclose(data["attrs"]["track_parameters"][name], values, rtol=1e-15)
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


def test_failed_tracers_reported_not_written(tiny, tmp_path):
    """max_steps between the tracers' step counts: the expensive tracers fail, are reported and
    are not written; a run where every tracer fails is an error and writes nothing. (Both runs
    share one compiled solver: same shapes, same settings.)"""
    _, data = tiny
    steps = data["solver"]["n_steps"]
    assert steps.min() < steps.max()
    config = tiny_dataset_config(tmp_path / "partial.h5", N_TRACERS, N_STEPS, 0)
    config.generator.solver.max_steps = int(steps.min())
    stream = io.StringIO()
    got = rawio.read_raw_dataset(generate.generate_dataset(config, stream=stream))
    failed = data["tracer_ids"][steps > steps.min()]
    assert got["failed_tracers"] == failed.tolist()
    assert set(got["tracer_ids"].tolist()).isdisjoint(failed.tolist())
    np.testing.assert_array_equal(got["solver"]["tracer_id"], np.arange(N_TRACERS))
    assert np.all(got["solver"]["result_code"][failed] != 0)
    for t in failed:
        assert f"tracer {t} FAILED" in stream.getvalue()
    kept = np.flatnonzero(steps == steps.min())
    np.testing.assert_array_equal(got["abundances"], data["abundances"][kept])

    # Only expensive tracks (given as CSV, ids 100..): all fail.
    take = np.resize(np.flatnonzero(steps > steps.min()), N_TRACERS)
    ids = 100 + np.arange(N_TRACERS)
    config.generator.tracks_csv = str(_write_tracks_csv(
        tmp_path / "hard.csv", data["time_years"][take], data["physical"][take], ids))
    config.raw_path = str(tmp_path / "fail.h5")
    stream = io.StringIO()
    with pytest.raises(generate.GenerateError, match=f"all {N_TRACERS} tracers failed"):
        generate.generate_dataset(config, stream=stream)
    assert not (tmp_path / "fail.h5").exists()
    for t in ids:
        assert f"tracer {t} FAILED" in stream.getvalue()


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


def _write_tracks_csv(path, node_time_years, node_physical, tracer_ids):
    lines = ["tracer,time,density,gasTemp,Av,Radfield,zeta"]
    for tracer, times, phys in zip(tracer_ids, node_time_years, node_physical, strict=True):
        lines += [f"{tracer},{float(t)!r},{','.join(repr(float(v)) for v in p)}"
                  for t, p in zip(times, phys, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_tracks(tiny, tmp_path):
    """User tracks: own node times (log-spaced here), ids kept, columns interpolated."""
    _, data = tiny
    config = tiny_dataset_config(tmp_path / "csv.h5", N_TRACERS, N_STEPS, 0)
    t_end = config.generator.time_end_years
    node_time = np.concatenate([[0.0], np.geomspace(1e3, t_end, N_STEPS - 1)])
    node_time = np.broadcast_to(node_time, (N_TRACERS, N_STEPS))
    params = tracks.sample_track_parameters(N_TRACERS, dict(config.generator.track_ranges), 5)
    node_phys = tracks.collapse_tracks(params, node_time[0])
    ids = np.array([11, 3, 7, 42])
    config.generator.tracks_csv = str(
        _write_tracks_csv(tmp_path / "tracks.csv", node_time, node_phys, ids))
    got = rawio.read_raw_dataset(generate.generate_dataset(config, stream=io.StringIO()))
    order = np.argsort(ids)
    np.testing.assert_array_equal(got["tracer_ids"], np.sort(ids))
    expected = tracks.interpolate_log_tracks(node_time, node_phys, data["time_years"][0])
    np.testing.assert_allclose(got["physical"], expected[order], rtol=1e-12)
    element_rel, charge_rel = generate.conservation_errors(
        got["abundances"], got["initial_abundances"], got["species"])
    assert element_rel.max() <= 1e-8 and charge_rel.max() <= 1e-8

    short = tmp_path / "short.csv"
    _write_tracks_csv(short, node_time * 0.5, node_phys, ids)
    config.generator.tracks_csv = str(short)
    with pytest.raises(generate.GenerateError, match="tracer 3 covers"):
        generate.generate_dataset(config, stream=io.StringIO())
