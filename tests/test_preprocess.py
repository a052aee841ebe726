"""Preprocessing: round trips through every raw layout and method, the real UCLCHEM file, the CLI,
and the cache (hit / miss / force)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from astrochem_jax import config_utils, paths, shards
from astrochem_jax.preprocess import PREPROCESSORS, is_cached, preprocess
from astrochem_jax.preprocess import synthetic as syn
from astrochem_jax.scaling import Scaler

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIP = (1e-20, 1.0)
# Trajectories' physical order is (Density, gasTemp, Av, Radfield, zeta); configs want
# (Density, Radfield, Av, gasTemp).
PHYS_ORDER = [0, 3, 2, 1]


def dataset_config(raw_path, fmt, name="synth", key=""):
    c = config_utils.load_config("grav", "datasets")
    c.name = name
    c.raw_path = str(raw_path)
    c.format = fmt
    c.key = key
    # AstroChemNet's four conditions (PHYS_ORDER above); the default dataset also feeds zeta.
    c.physical_parameters = ["Density", "Radfield", "Av", "gasTemp"]
    c.columns_to_drop = [*c.columns_to_drop, "zeta"]
    c.max_element_drift = None  # synthetic abundances are random, not chemistry
    return c


def method_config(method, **overrides):
    c = config_utils.load_config(method, "preprocessing")
    for k, v in overrides.items():
        c[k] = v
    return c


WRITERS = {
    "astrochem_jax": lambda p, t: (syn.write_astrochem_jax(p, t), ""),
    "uclchem": lambda p, t: (syn.write_uclchem_fixed(p, t), "df"),
    "carbox": lambda p, t: (syn.write_carbox(p, t), "large"),
    "carbox_triple": lambda p, t: (syn.write_carbox(p, t, key="small", triple_ptr=True), ""),
}


def _write(tmp_path, layout, traj):
    path, key = WRITERS[layout](tmp_path / f"{layout}.h5", traj)
    return dataset_config(path, layout.replace("_triple", ""), key=key)


def _expected_sequential(traj, ids, shift=True):
    index = {int(t): i for i, t in enumerate(traj.tracer_ids)}
    rows = [index[int(t)] for t in ids]
    physical = traj.physical[rows][..., PHYS_ORDER]
    if shift:
        physical = np.concatenate([physical[:, 1:], physical[:, -1:]], axis=1)
    return physical, np.clip(traj.abundances[rows], *CLIP)


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_sequential_round_trip_every_layout(tmp_path, layout):
    traj = syn.make_trajectories(6, 12, seed=1)
    ds = _write(tmp_path, layout, traj)
    # Tiny shards and chunks so several shards and chunks are exercised.
    out = preprocess(ds, method_config("sequential", max_shard_mb=0.0015, chunk_rows=30),
                     verbose=False)
    manifest = shards.read_manifest(out)
    assert manifest["species"] == list(syn.DEMO_SPECIES)
    assert manifest["physical_parameters"] == ["Density", "Radfield", "Av", "gasTemp"]
    assert manifest["n_species"] == 10 and manifest["n_physical"] == 4
    assert [len(manifest["split_tracers"][k]) for k in ("train", "val", "test")] == [4, 1, 1]
    np.testing.assert_allclose(manifest["time_years"], traj.time_years[0])
    scaler = Scaler.from_dict(manifest["scaling"])
    for split in ("train", "val", "test"):
        data = shards.load_split(out, split)
        assert data.dtype == np.float32 and data.shape[1:] == (12, 14)
        assert data.min() >= 0.0 and data.max() <= 1.0 + 1e-6 or split != "train"
        physical, abundances = _expected_sequential(traj, manifest["split_tracers"][split])
        np.testing.assert_allclose(scaler.unscale_physical(data[..., :4].astype(np.float64)),
                                   physical, rtol=2e-5)
        np.testing.assert_allclose(scaler.unscale_abundances(data[..., 4:].astype(np.float64)),
                                   abundances, rtol=2e-5)
    assert len(manifest["splits"]["train"]["shards"]) > 1
    # Row 0 of tracer 0 is the recorded initial state; the other tracers start elsewhere.
    if layout == "astrochem_jax":
        assert len(manifest["tracers_not_starting_from_initial_abundances"]) == 5
    utils = paths.utils_dir("synth")
    assert (utils / "species.txt").read_text().split() == list(syn.DEMO_SPECIES)
    matrix = np.load(utils / "stoichiometric_matrix.npy")
    assert matrix.shape == (10, len(manifest["elements"]))
    np.testing.assert_allclose(np.load(utils / "initial_abundances.npy"), traj.abundances[0, 0])


def test_physical_ranges_come_from_train_split(tmp_path):
    traj = syn.make_trajectories(8, 5, seed=2)
    ds = _write(tmp_path, "astrochem_jax", traj)
    manifest = shards.read_manifest(preprocess(ds, "sequential", verbose=False))
    train = [list(traj.tracer_ids).index(t) for t in manifest["split_tracers"]["train"]]
    lo = np.log10(traj.physical[train][..., PHYS_ORDER].min(axis=(0, 1)))
    hi = np.log10(traj.physical[train][..., PHYS_ORDER].max(axis=(0, 1)))
    np.testing.assert_allclose(manifest["scaling"]["physical_log10_min"], lo)
    np.testing.assert_allclose(manifest["scaling"]["physical_log10_max"], hi)
    assert manifest["physical_ranges_source"] == "train split"
    # Given ranges win.
    ds.physical_ranges = {"Density": [1e2, 1e7], "Radfield": [1e-2, 1e2], "Av": [0.1, 100.0],
                          "gasTemp": [5.0, 50.0]}
    manifest = shards.read_manifest(preprocess(ds, "sequential", verbose=False))
    assert manifest["scaling"]["physical_log10_min"] == pytest.approx([2, -2, -1, np.log10(5)])


@pytest.mark.parametrize("method", ["timeless", "random"])
def test_row_methods_round_trip_and_shuffle(tmp_path, method):
    traj = syn.make_trajectories(8, 25, seed=3)
    ds = _write(tmp_path, "uclchem", traj)
    out = preprocess(ds, method_config(method, shuffle_bucket_mb=0.004, chunk_rows=60),
                     verbose=False)
    manifest = shards.read_manifest(out)
    scaler = Scaler.from_dict(manifest["scaling"])
    train, val = shards.load_split(out, "train"), shards.load_split(out, "val")
    test = shards.load_split(out, "test")
    assert train.shape[1:] == val.shape[1:] == test.shape[1:] == (10,)
    assert train.shape[0] + val.shape[0] + test.shape[0] == 8 * 25
    everything = np.clip(traj.abundances.reshape(-1, 10), *CLIP)
    if method == "timeless":
        assert manifest["split_unit"] == "tracer"
        assert train.shape[0] == 6 * 25 and val.shape[0] == test.shape[0] == 25
        index = {int(t): i for i, t in enumerate(traj.tracer_ids)}
        rows = [index[t] for t in manifest["split_tracers"]["train"]]
        expected = np.clip(traj.abundances[rows].reshape(-1, 10), *CLIP)
    else:
        assert manifest["split_unit"] == "row"
        assert (train.shape[0], val.shape[0], test.shape[0]) == (140, 30, 30)
        expected = everything
    got = scaler.unscale_abundances(np.concatenate([train, val, test]).astype(np.float64))
    if method == "timeless":
        got = scaler.unscale_abundances(train.astype(np.float64))
    # Same multiset of values per species, in a different (shuffled) row order.
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(expected, axis=0), rtol=2e-5)
    assert not np.allclose(got[:, 0], expected[:, 0], rtol=1e-3)


def test_registry_names_and_leakage_documented():
    assert set(PREPROCESSORS) == {"sequential", "timeless", "random"}
    assert "leakage" in PREPROCESSORS["random"].description
    assert PREPROCESSORS["random"].split_by == "row"


def test_prepend_initial_abundances_and_crop(tmp_path):
    traj = syn.make_trajectories(4, 6, seed=4, start_at_zero=False)
    initial = np.full(10, 1e-6)
    path = syn.write_astrochem_jax(tmp_path / "ours.h5", traj, initial=initial)
    ds = dataset_config(path, "astrochem_jax")
    ds.prepend_initial_abundances = True
    out = preprocess(ds, "sequential", verbose=False)
    manifest = shards.read_manifest(out)
    assert manifest["time_years"][0] == 0.0 and len(manifest["time_years"]) == 7
    data = shards.load_split(out, "train")
    assert data.shape[1] == 7
    scaler = Scaler.from_dict(manifest["scaling"])
    np.testing.assert_allclose(scaler.unscale_abundances(data[:, 0, 4:].astype(np.float64)),
                               np.broadcast_to(initial, (data.shape[0], 10)), rtol=2e-5)
    # Row 0 (t = 0) carries the conditions that drive it to the first output (shifted).
    physical, _ = _expected_sequential(traj, manifest["split_tracers"]["train"], shift=False)
    np.testing.assert_allclose(scaler.unscale_physical(data[:, 0, :4].astype(np.float64)),
                               physical[:, 0], rtol=2e-5)


def test_real_uclchem_file_preprocesses(shared_dir):
    raw = shared_dir / "data" / "uclchem_grav_small.h5"
    if not raw.exists():
        pytest.skip(f"{raw} not present")
    ds = config_utils.load_config("uclchem_grav", "datasets")
    ds.raw_path = str(raw)
    out = preprocess(ds, "sequential", verbose=False)
    manifest = shards.read_manifest(out)
    assert manifest["n_species"] == 333
    assert "H3CO+" in manifest["species"] and "H2COH+" not in manifest["species"]
    # 5 conditions (Density, Radfield, Av, gasTemp, zeta) + 333 species
    assert manifest["physical_parameters"][-1] == "zeta"
    assert manifest["splits"]["train"]["shape"] == [1, 61, 338]
    assert manifest["splits"]["val"]["shape"] == [1, 61, 338]
    assert manifest["splits"]["test"]["shape"] == [1, 61, 338]
    assert manifest["tracers_not_starting_from_initial_abundances"] == []
    assert manifest["tracer_length_counts"] == {"61": 3}
    worst = max(manifest["element_drift"].values())
    print(f"uclchem_grav_small worst element drift per element: {manifest['element_drift']}")
    assert worst < 1e-6
    data = shards.load_split(out, "train")
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1


def test_real_uclchem_v3_examples_preprocess_with_the_shipped_config(shared_dir):
    """UCLCHEM v3 names its step column `point`: the shipped config drops it (no override but the
    file), and its stoichiometry conserves elements. Its two tracers have different time grids:
    timeless works, sequential refuses (even cropped to a common length)."""
    raw = shared_dir / "data" / "uclchem_examples.h5"
    if not raw.exists():
        pytest.skip(f"{raw} not present")
    ds = config_utils.load_config("uclchem_grav", "datasets")
    ds.raw_path = str(raw)
    out = preprocess(ds, "timeless", verbose=False)
    manifest = shards.read_manifest(out)
    assert manifest["n_species"] == 333 and "point" not in manifest["species"]
    assert max(manifest["element_drift"].values()) <= 4e-6, manifest["element_drift"]
    assert manifest["time_grid_shared"] is False
    sizes = sorted(manifest["splits"][s]["shape"][0] for s in ("train", "val"))
    assert sizes == [90, 283] and manifest["splits"]["test"]["shape"][0] == 0

    from astrochem_jax.preprocess import PreprocessError

    for method in ("sequential", method_config("sequential", length_policy="crop")):
        with pytest.raises(PreprocessError) as info:
            preprocess(ds, method, verbose=False)
        message = str(info.value)
        for fragment in ("tracers 0 and 1", "different output times", "one time grid",
                         "--method=timeless", str(raw)):
            assert fragment in message, message
        assert not (paths.preprocessed_dir(ds.name, "sequential")).exists()
    # Nothing left over from the refused runs next to the timeless output.
    assert sorted(p.name for p in out.parent.iterdir()) == ["timeless"]


def test_cli_bare_names_and_override(tmp_path):
    traj = syn.make_trajectories(4, 5, seed=5)
    raw = syn.write_uclchem_fixed(tmp_path / "u.h5", traj)
    env = {**os.environ, "ASTROCHEM_JAX_OUTPUTS": str(tmp_path / "outputs"),
           "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "astrochem_jax.preprocess", "--dataset=uclchem_grav",
           "--method", "timeless", f"--dataset.raw_path={raw}", "--dataset.n_species=10",
           "--dataset.max_element_drift=inf", "--dataset.name=cli"]
    first = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "outputs" / "preprocessed" / "cli" / "timeless" / "manifest.json").exists()
    second = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 0 and "cache hit" in second.stdout
    bad = subprocess.run(cmd[:-2] + ["--dataset.n_species=7"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "n_species = 7" in bad.stderr


def test_cache_hit_miss_and_force(tmp_path, capsys):
    traj = syn.make_trajectories(4, 8, seed=6)
    path = syn.write_uclchem_fixed(tmp_path / "u.h5", traj)
    ds = dataset_config(path, "uclchem", key="df")
    method = method_config("sequential")
    out = preprocess(ds, method)
    manifest_path = out / shards.MANIFEST_NAME
    built = manifest_path.stat().st_mtime_ns
    assert is_cached(ds, method)

    start = time.perf_counter()
    preprocess(ds, method)
    assert time.perf_counter() - start < 1.0
    assert "cache hit" in capsys.readouterr().out
    assert manifest_path.stat().st_mtime_ns == built

    # Touched but identical: re-hashed, still a hit.
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    preprocess(ds, method)
    assert "cache hit" in capsys.readouterr().out

    # A config change rebuilds.
    ds.train_split = 0.5
    assert not is_cached(ds, method)
    preprocess(ds, method)
    assert "config" in capsys.readouterr().out
    assert len(shards.read_manifest(out)["split_tracers"]["train"]) == 2

    # Changed raw content rebuilds.
    with h5py.File(path, "r+") as f:
        f["df/block0_values"][0, 10] *= 2
    assert not is_cached(ds, method)
    preprocess(ds, method)
    assert "changed" in capsys.readouterr().out

    preprocess(ds, method, force=True)
    assert "--force" in capsys.readouterr().out
    assert is_cached(ds, method)


@pytest.mark.slow
def test_end_to_end_with_generated_dataset(tmp_path):
    fixtures = pytest.importorskip("fixtures")
    raw = fixtures.make_tiny_raw_dataset(tmp_path / "tiny.h5", n_tracers=4, n_steps=10)
    ds = fixtures.tiny_dataset_config(raw, n_tracers=4, n_steps=10)
    out = preprocess(ds, "sequential", verbose=False)
    manifest = shards.read_manifest(out)
    assert manifest["splits"]["train"]["shape"][:2] == [2, 10]
    assert max(manifest["element_drift"].values()) < 1e-5
    assert manifest["tracers_not_starting_from_initial_abundances"] == []
    assert manifest["time_years"][0] == 0.0 and manifest["time_grid_shared"]


def test_rebuild_is_deterministic(tmp_path):
    traj = syn.make_trajectories(6, 10, seed=7)
    ds = _write(tmp_path, "carbox", traj)
    method = method_config("timeless", shuffle_bucket_mb=0.003)
    first = shards.load_split(preprocess(ds, method, verbose=False), "train").copy()
    second = shards.load_split(preprocess(ds, method, force=True, verbose=False), "train")
    np.testing.assert_array_equal(first, second)


def test_three_way_split_is_disjoint_deterministic_and_shared_by_methods(tmp_path):
    """Train / val / test by tracer: disjoint, covering every tracer, the same on a rebuild and
    for every tracer-split method (a test tracer is never an autoencoder's training row)."""
    traj = syn.make_trajectories(20, 6, seed=7)
    ds = _write(tmp_path, "astrochem_jax", traj)
    manifests = {m: shards.read_manifest(preprocess(ds, m, verbose=False))
                 for m in ("sequential", "timeless")}
    splits = manifests["sequential"]["split_tracers"]
    assert [len(splits[k]) for k in ("train", "val", "test")] == [14, 3, 3]
    sets = [set(splits[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == {int(t) for t in traj.tracer_ids}
    assert manifests["timeless"]["split_tracers"] == splits
    assert manifests["timeless"]["splits"]["test"]["shape"][0] == 3 * 6
    rebuilt = shards.read_manifest(preprocess(ds, "sequential", force=True, verbose=False))
    assert rebuilt["split_tracers"] == splits
    ds.seed = 43  # another dataset seed, another split
    other = shards.read_manifest(preprocess(ds, "sequential", verbose=False))["split_tracers"]
    assert other["test"] != splits["test"]


def test_train_tracer_subsets_keep_validation_and_test_and_nest(tmp_path):
    """`dataset.train_tracers = n` (data-scaling studies): n of the full train split's tracers,
    nested in any larger subset; validation and test tracers and values are the full dataset's;
    the timeless rows are exactly the kept tracers' rows."""
    import copy

    from astrochem_jax.preprocess import PreprocessError

    traj = syn.make_trajectories(20, 6, seed=7)
    full = _write(tmp_path, "astrochem_jax", traj)
    full_dir = preprocess(full, "sequential", verbose=False)
    full_manifest = shards.read_manifest(full_dir)
    full_train = full_manifest["split_tracers"]["train"]
    kept = {}
    for n in (3, 7):
        ds = copy.deepcopy(full)
        ds.name, ds.train_tracers = f"synth-train{n}", n
        seq_dir = preprocess(ds, "sequential", verbose=False)
        manifest = shards.read_manifest(seq_dir)
        ids = manifest["split_tracers"]
        assert len(ids["train"]) == n and set(ids["train"]) <= set(full_train)
        assert ids["val"] == full_manifest["split_tracers"]["val"]
        assert ids["test"] == full_manifest["split_tracers"]["test"]
        assert manifest["train_subset"]["n"] == n and manifest["train_subset"]["of"] == 14
        assert sorted(manifest["train_subset"]["left_out"] + ids["train"]) == sorted(full_train)
        n_p = manifest["n_physical"]
        for split in ("val", "test"):
            np.testing.assert_array_equal(shards.load_split(seq_dir, split)[..., n_p:],
                                          shards.load_split(full_dir, split)[..., n_p:])
        physical, abundances = _expected_sequential(traj, ids["train"])
        seq_train = shards.load_split(seq_dir, "train")
        np.testing.assert_allclose(seq_train[..., n_p:],
                                   Scaler(CLIP, (), (), ()).scale_abundances(abundances),
                                   atol=1e-6)
        rows = shards.load_split(preprocess(ds, "timeless", verbose=False), "train")
        assert rows.shape == (n * 6, seq_train.shape[-1] - n_p)
        np.testing.assert_array_equal(np.unique(rows, axis=0),
                                      np.unique(seq_train[..., n_p:].reshape(-1, rows.shape[1]),
                                                axis=0))
        kept[n] = set(ids["train"])
    assert kept[3] < kept[7]
    every = copy.deepcopy(full)  # all 14: the full dataset's shards, bit for bit
    every.name, every.train_tracers = "synth-train14", 14
    for method in ("sequential", "timeless"):
        every_dir = preprocess(every, method, verbose=False)
        assert shards.read_manifest(every_dir)["train_subset"]["left_out"] == []
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(
                shards.load_split(every_dir, split),
                shards.load_split(preprocess(full, method, verbose=False), split))
    for bad in (0, 15, 2.5, True):
        ds = copy.deepcopy(full)
        ds.name, ds.train_tracers = "synth-bad", bad
        with pytest.raises(PreprocessError, match=r"dataset.train_tracers is .*expected an "
                                                  r"integer from 1 to 14"):
            preprocess(ds, "sequential", verbose=False)
    ds = copy.deepcopy(full)
    ds.name, ds.train_tracers = "synth-rows", 3
    with pytest.raises(PreprocessError, match="splits rows, not tracers"):
        preprocess(ds, "random", verbose=False)


def test_train_subset_dataset_names():
    """`<dataset>-train<n>` is the named dataset with train_tracers = n, by name everywhere."""
    from configs import datasets

    plain = datasets.by_name("grav")
    assert "train_tracers" not in plain
    subset = datasets.by_name("grav-train5")
    assert subset.name == "grav-train5" and subset.train_tracers == 5
    assert subset.raw_path == plain.raw_path
    assert config_utils.load_config("grav-train5", "datasets").train_tracers == 5
    assert datasets.split_subset_name("uclchem_grav_train-train16") == ("uclchem_grav_train", 16)
    with pytest.raises(ValueError, match="not found"):
        datasets.by_name("nonexistent-train5")
