"""Bad raw inputs and configs: each error names the problem (file, column, tracer, expected and
found) and nothing is left under outputs/."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from astrochem_jax import config_utils, paths, shards
from astrochem_jax.preprocess import PreprocessError, preprocess
from astrochem_jax.preprocess import synthetic as syn

# Column positions in our layout: Index, Model, Time, Density, gasTemp, Av, Radfield, zeta, ...
TIME, DENSITY, RADFIELD, FIRST_SPECIES = 2, 3, 6, 8


def config(raw_path, fmt="astrochem_jax", key=""):
    c = config_utils.load_config("grav", "datasets")
    c.name = "bad"
    c.raw_path = str(raw_path)
    c.format = fmt
    c.key = key
    c.max_element_drift = None  # synthetic abundances are random, not chemistry
    return c


def ours(tmp_path, n_tracers=4, n_steps=6, seed=0):
    traj = syn.make_trajectories(n_tracers, n_steps, seed=seed)
    return syn.write_astrochem_jax(tmp_path / "raw.h5", traj), traj


def edit(path, name, fn):
    with h5py.File(path, "r+") as f:
        values = f[name][()]
        fn(values)
        f[name][...] = values


def assert_fails(ds, method, *fragments):
    with pytest.raises(PreprocessError) as info:
        preprocess(ds, method, verbose=False)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    # Nothing written: no dataset folder, no temporary folders, no utils.
    assert not (paths.outputs_dir() / "preprocessed" / ds.name).exists()
    assert not paths.utils_dir(ds.name).exists()
    return message


def test_unknown_format(tmp_path):
    path, _ = ours(tmp_path)
    assert_fails(config(path, fmt="netcdf"), "sequential", "dataset.format", "netcdf", "uclchem")


def test_missing_file(tmp_path):
    assert_fails(config(tmp_path / "nope.h5"), "sequential", "nope.h5", "does not exist")


def test_not_hdf5(tmp_path):
    path = tmp_path / "text.h5"
    path.write_text("Time,Density\n")
    assert_fails(config(path), "sequential", "text.h5", "not a readable HDF5")


def test_missing_key_uclchem(tmp_path):
    traj = syn.make_trajectories(4, 5)
    path = syn.write_uclchem_fixed(tmp_path / "u.h5", traj, key="df")
    assert_fails(config(path, "uclchem", key="frame"), "sequential", "'frame'", "not found",
                 "['df']")


def test_missing_carbox_group(tmp_path):
    traj = syn.make_trajectories(4, 5)
    path = syn.write_carbox(tmp_path / "c.h5", traj, key="small")
    assert_fails(config(path, "carbox", key="large"), "sequential", "'large'", "['small']")


def test_pandas_table_format_explains_conversion(tmp_path):
    path = tmp_path / "table.h5"
    with h5py.File(path, "w") as f:
        f.create_group("df").create_dataset("table", data=np.zeros(3))
    assert_fails(config(path, "uclchem", key="df"), "timeless", "table", "format=\"fixed\"",
                 "pd.read_hdf")


def test_empty_file(tmp_path):
    traj = syn.make_trajectories(2, 3)
    path = syn.write_uclchem_fixed(tmp_path / "u.h5", traj)
    with h5py.File(path, "r+") as f:
        g = f["df"]
        for name in ("axis1", "block0_values", "block1_values"):
            shape = (0, *g[name].shape[1:])
            dtype = g[name].dtype
            del g[name]
            g.create_dataset(name, shape=shape, dtype=dtype).attrs["transposed"] = 1
    assert_fails(config(path, "uclchem", key="df"), "sequential", "empty")


def test_missing_required_column(tmp_path):
    path, _ = ours(tmp_path)
    with h5py.File(path, "r+") as f:
        columns = [c.decode() for c in f["columns"][()]]
        columns[5] = "Av_total"
        del f["columns"]
        f.create_dataset("columns", data=np.array(columns, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
    assert_fails(config(path), "sequential", "required columns ['Av']", "missing")


def test_species_count_differs_from_config(tmp_path):
    path, _ = ours(tmp_path)
    ds = config(path)
    ds.n_species = 333
    assert_fails(ds, "sequential", "found 10 species", "n_species = 333")


def test_stale_generated_file_is_refused(tmp_path):
    """A generated file records the dataset config it came from: one generated with another
    n_tracers / n_steps / seed (e.g. left from before the default grew) is refused, naming the
    field and both values, and preprocesses once the config describes it."""
    import json

    path, _ = ours(tmp_path, n_tracers=4, n_steps=6, seed=0)
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = json.dumps({"name": "grav", "n_tracers": 4, "n_steps": 6, "seed": 0})
    ds = config(path)
    assert (ds.n_tracers, ds.n_steps) != (4, 6)
    assert_fails(ds, "sequential", str(path), "generated with n_tracers = 4",
                 f"expects n_tracers = {ds.n_tracers}", "FORCE_GENERATE=1",
                 "--config.dataset.n_tracers=4")
    ds.n_tracers = 4
    assert_fails(ds, "sequential", "generated with n_steps = 6")
    ds.n_steps, ds.seed = 6, 1
    assert_fails(ds, "sequential", "generated with seed = 0", "expects seed = 1")
    ds.seed = 0
    assert shards.read_manifest(preprocess(ds, "sequential", verbose=False))["splits"]
    with h5py.File(path, "r+") as f:
        f.attrs["config"] = "{not json"
    unreadable = config(path)
    unreadable.name = "bad_json"
    assert_fails(unreadable, "timeless", "attribute 'config' is not JSON")


def test_column_that_is_not_a_species(tmp_path):
    traj = syn.make_trajectories(4, 5, species=(*syn.DEMO_SPECIES, "point"))
    path = syn.write_astrochem_jax(tmp_path / "raw.h5", traj)
    assert_fails(config(path), "sequential", "'point'", "columns_to_drop")


def test_nan_abundance_names_column_and_tracer(tmp_path):
    path, traj = ours(tmp_path)
    edit(path, "data", lambda d: d.__setitem__((8, FIRST_SPECIES + 5), np.nan))  # tracer 1, CO
    assert_fails(config(path), "timeless", "column CO", f"tracer {traj.tracer_ids[1]}", "nan",
                 "finite")


def test_inf_physical_parameter(tmp_path):
    path, traj = ours(tmp_path)
    edit(path, "data", lambda d: d.__setitem__((3, DENSITY), np.inf))
    assert_fails(config(path), "sequential", "column Density", f"tracer {traj.tracer_ids[0]}",
                 "inf", "finite value > 0")


def test_non_positive_physical_parameter_without_floor(tmp_path):
    path, _ = ours(tmp_path)
    edit(path, "data", lambda d: d.__setitem__((2, RADFIELD), 0.0))
    ds = config(path)
    ds.physical_floor = {}
    assert_fails(ds, "sequential", "column Radfield", "0.0", "physical_floor")


def test_negative_abundance_beyond_tolerance(tmp_path):
    path, _ = ours(tmp_path)
    edit(path, "data", lambda d: d.__setitem__((20, FIRST_SPECIES + 2), -1e-5))
    assert_fails(config(path), "timeless", "column HE", "-1e-05", "negative_tolerance")


def test_tiny_negative_abundances_are_zeroed(tmp_path):
    path, _ = ours(tmp_path)
    edit(path, "data", lambda d: d.__setitem__((20, FIRST_SPECIES + 2), -1e-16))
    out = preprocess(config(path), "timeless", verbose=False)
    assert shards.read_manifest(out)["abundances_zeroed"] == 1


def test_non_increasing_time(tmp_path):
    path, traj = ours(tmp_path)
    edit(path, "data", lambda d: d.__setitem__((14, TIME), d[13, TIME]))  # tracer 2, row 2
    assert_fails(config(path), "timeless", f"tracer {traj.tracer_ids[2]}", "not increasing",
                 "row 2")


def test_tracers_of_different_lengths(tmp_path):
    path, traj = ours(tmp_path, n_tracers=4, n_steps=6)
    edit(path, "tracer_ptr", lambda p: p.__setitem__(-1, 22))  # last tracer: 4 rows
    message = assert_fails(config(path), "sequential", "different lengths", "length_policy",
                           "{4: 1, 6: 3}")
    assert str(traj.tracer_ids[3]) in message
    # The explicit policies work.
    ds = config(path)
    crop = config_utils.load_config("sequential", "preprocessing")
    crop.length_policy = "crop"
    assert shards.read_manifest(preprocess(ds, crop, verbose=False))["steps"] == 4
    crop.length_policy = "drop"
    manifest = shards.read_manifest(preprocess(ds, crop, verbose=False))
    assert manifest["steps"] == 6 and manifest["dropped_tracers"] == [int(traj.tracer_ids[3])]


def test_interleaved_uclchem_tracers(tmp_path):
    traj = syn.make_trajectories(3, 4)
    path = syn.write_uclchem_fixed(tmp_path / "u.h5", traj)

    def interleave(values):
        values[[0, 4]] = values[[4, 0]]  # first row of tracers 0 and 1 swapped

    edit(path, "df/block1_values", interleave)
    assert_fails(config(path, "uclchem", key="df"), "sequential", "interleaved",
                 f"tracer {traj.tracer_ids[1]}", "sort_values")


def test_bad_method_and_split(tmp_path):
    path, _ = ours(tmp_path, n_tracers=2)
    method = config_utils.load_config("sequential", "preprocessing")
    method.method = "shuffled"
    assert_fails(config(path), method, "'shuffled'", "random", "timeless")
    ds = config(path)
    ds.train_split, ds.test_split = 0.2, 0.9
    assert_fails(ds, "sequential", "train_split = 0.2", "test_split = 0.9", "summing below 1")
    ds = config(path)
    ds.train_split = 1.0
    assert_fails(ds, "sequential", "train_split = 1", "fractions in (0, 1)")


def test_abundance_above_one_is_an_error_not_a_clip(tmp_path):
    path, traj = ours(tmp_path)
    edit(path, "data", lambda d: d.__setitem__((9, FIRST_SPECIES + 5), 5.0))  # tracer 1, CO
    assert_fails(config(path), "sequential", "column CO", f"tracer {traj.tracer_ids[1]}", "5.0",
                 "expected <= 1", "above_one_tolerance")
    # Rounding just above 1 is clipped, as before.
    edit(path, "data", lambda d: d.__setitem__((9, FIRST_SPECIES + 5), 1.0 + 1e-9))
    preprocess(config(path), "timeless", verbose=False)


def test_element_drift_above_threshold_is_refused(tmp_path):
    path, traj = ours(tmp_path)
    ds = config(path)
    ds.max_element_drift = 1e-4  # the shipped default (the helper switches it off)
    message = assert_fails(ds, "timeless", "drifts by", "max_element_drift = 0.0001",
                           "--dataset.max_element_drift=inf", f"tracer {traj.tracer_ids[0]}")
    assert "element" in message
    # The recorded drift is what the threshold is checked against.
    ds.max_element_drift = float("inf")
    manifest = shards.read_manifest(preprocess(ds, "timeless", verbose=False))
    assert max(manifest["element_drift"].values()) > 1e-4


def _add_text_column(path, name="comment", key="df"):
    """Append a pandas object (text) column the way PyTables stores one: a block of one
    variable-length row of pickled bytes."""
    import pickle

    with h5py.File(path, "r+") as f:
        g = f[key]
        axis0 = [c.decode() for c in g["axis0"][()]] + [name]
        del g["axis0"]
        g.create_dataset("axis0", data=np.array([c.encode() for c in axis0]))
        g.create_dataset("block2_items", data=np.array([name.encode()]))
        blob = np.frombuffer(pickle.dumps(np.array([["x"] * g["axis1"].shape[0]], dtype=object)),
                             dtype=np.uint8)
        values = g.create_dataset("block2_values", shape=(1,), dtype=h5py.vlen_dtype(np.uint8))
        values[0] = blob
        values.attrs["transposed"] = np.uint8(1)
        g.attrs["nblocks"] = np.int64(3)


def test_text_column_is_named_and_can_be_dropped(tmp_path):
    traj = syn.make_trajectories(4, 5)
    path = syn.write_uclchem_fixed(tmp_path / "u.h5", traj)
    _add_text_column(path)
    assert_fails(config(path, "uclchem", key="df"), "timeless", "['comment']", "hold text",
                 "--dataset.columns_to_drop=", "comment")
    ds = config(path, "uclchem", key="df")
    ds.columns_to_drop = [*ds.columns_to_drop, "comment"]
    manifest = shards.read_manifest(preprocess(ds, "timeless", verbose=False))
    assert manifest["n_species"] == len(syn.DEMO_SPECIES)


def test_pandas_file_read_as_our_format_says_which_config(tmp_path):
    traj = syn.make_trajectories(4, 5)
    path = syn.write_uclchem_fixed(tmp_path / "u.h5", traj)
    assert_fails(config(path), "timeless", "pandas frame under key 'df'", "uclchem_grav",
                 "--dataset.format=uclchem")
