"""Raw HDF5 writer/reader: round trip, documented layout, atomic writes."""

import json

import h5py
import numpy as np
import pytest

from astrochem_jax import rawio
from astrochem_jax.chemistry.tracks import PHYSICAL_COLUMNS

SPECIES = ["H", "H2", "HE", "CO", "HCO+", "E-"]


def _example(n_tracers=3, n_times=5, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        species=SPECIES,
        tracer_ids=np.array([5, 1, 3])[:n_tracers],
        time_years=np.linspace(0.0, 1e5, n_times),
        physical=rng.uniform(1.0, 100.0, (n_tracers, n_times, len(PHYSICAL_COLUMNS))),
        abundances=rng.uniform(0.0, 1.0, (n_tracers, n_times, len(SPECIES))),
        initial_abundances=rng.uniform(0.0, 1.0, len(SPECIES)),
        attrs={"network_name": "toy", "network_rates": "1:NN:H:H:H2::::1:1e-10:0:0:10:41000\n",
               "solver": {"rtol": 1e-6}, "config": {"name": "toy", "n_steps": n_times}},
        solver_report={"tracer_id": np.array([1, 3, 5, 9]), "result_code": np.array([0, 0, 0, 2]),
                       "n_steps": np.array([10, 11, 12, 4096])},
    )


def test_round_trip_and_layout(tmp_path):
    ex = _example()
    path = rawio.write_raw_dataset(tmp_path / "raw.h5", **ex)
    got = rawio.read_raw_dataset(path)
    order = np.argsort(ex["tracer_ids"])
    np.testing.assert_array_equal(got["tracer_ids"], [1, 3, 5])
    np.testing.assert_array_equal(got["abundances"], ex["abundances"][order])
    np.testing.assert_array_equal(got["physical"], ex["physical"][order])
    np.testing.assert_array_equal(got["node_physical"], ex["physical"][order])
    np.testing.assert_array_equal(got["time_years"], np.broadcast_to(ex["time_years"], (3, 5)))
    np.testing.assert_array_equal(got["initial_abundances"], ex["initial_abundances"])
    assert got["species"] == SPECIES
    assert got["network_rates"] == ex["attrs"]["network_rates"]
    assert got["config"] == ex["attrs"]["config"]
    assert got["failed_tracers"] == [9]
    assert got["elements"] == ["H", "HE", "C", "O"]
    np.testing.assert_array_equal(got["solver"]["n_steps"], [10, 11, 12, 4096])

    with h5py.File(path) as f:
        columns = [c.decode() for c in f["columns"][()]]
        assert columns == ["Index", "Model", "Time", *PHYSICAL_COLUMNS, *SPECIES]
        data = f["data"][()]
        assert data.dtype == np.float64 and data.shape == (15, len(columns))
        np.testing.assert_array_equal(data[:, 0], np.arange(15))
        np.testing.assert_array_equal(data[:, 1], np.repeat([1, 3, 5], 5))
        keys = np.lexsort((data[:, 2], data[:, 1]))
        np.testing.assert_array_equal(keys, np.arange(15))  # sorted by Model then Time
        np.testing.assert_array_equal(f["tracer_ptr"][()], [0, 5, 10, 15])
        assert f["tracer_id"].dtype == np.int64 and f["solver/result_code"].dtype == np.int64
        assert f.attrs["format"] == "astrochem_jax" and f.attrs["format_version"] == 1
        for key in ("species", "elements", "network_name", "network_rates", "solver", "config",
                    "code_version", "failed_tracers"):
            assert key in f.attrs, key
        assert json.loads(f.attrs["species"]) == SPECIES


def test_failure_mid_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "raw.h5"

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rawio, "_write_solver_group", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        rawio.write_raw_dataset(target, **_example())
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_file(tmp_path):
    target = rawio.write_raw_dataset(tmp_path / "raw.h5", **_example())
    before = target.read_bytes()
    bad = _example()
    bad["abundances"][0, 2, 1] = np.nan
    with pytest.raises(rawio.RawFormatError, match="abundances contains 1 non-finite"):
        rawio.write_raw_dataset(target, **bad)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.h5"]


def test_bad_shapes_are_named(tmp_path):
    bad = _example()
    bad["physical"] = bad["physical"][..., :4]
    with pytest.raises(rawio.RawFormatError, match=r"physical must be \(3, 5, 5\)"):
        rawio.write_raw_dataset(tmp_path / "raw.h5", **bad)
    bad = _example()
    bad["tracer_ids"] = np.array([1, 1, 2])
    with pytest.raises(rawio.RawFormatError, match="unique"):
        rawio.write_raw_dataset(tmp_path / "raw.h5", **bad)


def test_reader_rejects_other_formats(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "uclchem"
    with pytest.raises(rawio.RawFormatError, match="'format' expected 'astrochem_jax'"):
        rawio.read_raw_dataset(path)
