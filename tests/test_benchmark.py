"""Benchmark: report aggregation on known errors, throughput arithmetic, solver availability, and
(slow) a full benchmark of a tiny trained surrogate whose report holds every required metric."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ml_collections import ConfigDict

from astrochem_jax.surrogates import evaluation as ev
from astrochem_jax.surrogates.plots import match_species

SPECIES = ["H2", "CO", "E-", "HCO+"]
ELEMENTS = ["H", "C", "O"]
# [S, E] atom counts of SPECIES (E- carries no atoms).
STOICH = np.array([[2, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1]], np.float64)


def _truth(n=3, t=5, seed=0):
    rng = np.random.default_rng(seed)
    return 10.0 ** rng.uniform(-10, -1, size=(n, t, len(SPECIES)))


def test_perfect_prediction_scores_zero():
    x = _truth()
    report = ev.accuracy_report(x, x.copy(), SPECIES, [7, 8, 9], STOICH, ELEMENTS)
    assert report["relative_error"]["mean"] == 0.0
    assert report["abs_dlog10"]["p99"] == 0.0
    assert all(v["max"] == 0.0 for v in report["element_conservation"].values())
    assert [e["tracer"] for e in report["per_tracer"]] == [7, 8, 9]


def test_known_errors_are_reported_exactly():
    x = _truth()
    pred = x * 1.1
    pred[..., 1] = x[..., 1] * 2.0  # CO is the worst species: relative error 1
    report = ev.accuracy_report(x, pred, SPECIES, [0, 1, 2], STOICH, ELEMENTS)
    rel = report["relative_error"]
    assert rel["worst_species"] == "CO"
    assert math.isclose(rel["worst_value"], 1.0, rel_tol=1e-12)
    assert math.isclose(rel["per_species"]["H2"], 0.1, rel_tol=1e-9)
    assert math.isclose(rel["mean"], (3 * 0.1 + 1.0) / 4, rel_tol=1e-9)
    assert [w["species"] for w in rel["worst"]][0] == "CO"
    assert math.isclose(report["abs_dlog10"]["max"], math.log10(2.0), rel_tol=1e-9)
    assert math.isclose(report["abs_dlog10"]["median"], math.log10(1.1), rel_tol=1e-9)
    # H is carried by H2 and HCO+, both 10% high: the H total is 10% high.
    assert math.isclose(report["element_conservation"]["H"]["mean"], 0.1, rel_tol=1e-9)
    tracer = report["per_tracer"][0]
    assert tracer["species_of_max_abs_dlog10"] == "CO"
    assert math.isclose(tracer["max_abs_dlog10"], math.log10(2.0), rel_tol=1e-9)


def test_error_vs_step_grows_where_the_prediction_drifts():
    x = _truth(t=6)
    drift = 1.0 + 0.1 * np.arange(6)[None, :, None]
    curve = ev.error_vs_step(x, x * drift)
    np.testing.assert_allclose(curve["mean_relative_error"], 0.1 * np.arange(6), atol=1e-12)
    assert len(curve["p99_abs_dlog10"]) == 6


def test_dlog10_by_abundance_groups_entries_by_the_true_abundance():
    # Truth in known bands; the prediction off by a known factor per band.
    x = np.array([0.0, 1e-25, 1e-18, 1e-14, 1e-14, 1e-10, 1e-6, 1e-3, 0.5])
    pred = x * np.array([1, 1, 100, 10, 10, 2, 1, 1, 1.0])
    pred[0] = 1e-19  # an absent species predicted at 1e-19: 1 dex over the 1e-20 floor
    bands = ev.dlog10_by_abundance(x, pred)
    assert [b["band"] for b in bands] == ["<= 1e-20", "1e-20 .. 1e-16", "1e-16 .. 1e-12",
                                          "1e-12 .. 1e-8", "1e-8 .. 1e-4", ">= 1e-4"]
    fractions = [b["fraction_of_entries"] for b in bands]
    np.testing.assert_allclose(fractions, np.array([2, 1, 2, 1, 1, 2]) / 9, atol=1e-12)
    means = [b["mean"] for b in bands]
    np.testing.assert_allclose(means, [0.5, 2.0, 1.0, math.log10(2.0), 0.0, 0.0], atol=1e-12)
    total = 1.0 + 2.0 + 2.0 + math.log10(2.0)
    np.testing.assert_allclose([b["share_of_summed_error"] for b in bands],
                               [1 / total, 2 / total, 2 / total, math.log10(2) / total, 0, 0],
                               atol=1e-12)
    # The bands' means, weighted by their fractions, give the overall mean.
    overall = ev.dlog10_summary(x, pred)["mean"]
    assert math.isclose(sum(f * m for f, m in zip(fractions, means, strict=True)), overall,
                        rel_tol=1e-12)
    # Above 1e-12: the entries 1e-10, 1e-6, 1e-3, 0.5 (errors log10(2), 0, 0, 0).
    assert math.isclose(ev.mean_over_bands_above(bands, -12.0), math.log10(2.0) / 4,
                        rel_tol=1e-12)
    assert ev.mean_over_bands_above(bands, 5.0) is None
    # Entries exactly on an edge fall in the band below it (the first band holds the floor).
    assert ev.dlog10_by_abundance(np.array([1e-20]), np.array([1e-20]))[0][
        "fraction_of_entries"] == 1.0
    # Empty bands have no statistics; an exact prediction has no shares.
    exact = ev.dlog10_by_abundance(np.array([1e-3]), np.array([1e-3]))
    assert exact[0]["mean"] is None and exact[-1]["mean"] == 0.0
    assert all(b["share_of_summed_error"] == 0.0 for b in exact)
    with pytest.raises(ValueError, match="increasing"):
        ev.dlog10_by_abundance(x, pred, edges_log10=(-8.0, -12.0))
    with pytest.raises(ValueError, match="entries"):
        ev.dlog10_by_abundance(x, pred[:-1])


def test_nearest_tracer_distance_is_the_brute_force_minimum():
    """[N, T] distance to the nearest reference tracer at the same step: equal to a brute-force
    minimum for any block size, zero for a scored tracer that is also a reference."""
    rng = np.random.default_rng(3)
    scored = rng.uniform(-20, 0, size=(4, 6, 5))
    reference = rng.uniform(-20, 0, size=(7, 6, 5))
    reference[2, 3] = scored[1, 3]  # tracer 1 meets reference 2 at step 3
    brute = np.abs(scored[:, None] - reference[None]).mean(axis=3).min(axis=1)
    for block in (1, 30, 2**24):  # one tracer per block, a few, all at once
        got = ev.nearest_tracer_distance(scored, reference, block_elements=block)
        np.testing.assert_allclose(got, brute, rtol=1e-6, atol=1e-5)
    assert got.shape == (4, 6) and got[1, 3] == 0.0
    np.testing.assert_allclose(ev.nearest_tracer_distance(reference, reference), 0.0)
    with pytest.raises(ValueError, match="equal T, S"):
        ev.nearest_tracer_distance(scored, reference[:, :5])
    with pytest.raises(ValueError, match="no reference tracer"):
        ev.nearest_tracer_distance(scored, reference[:0])


def _drop(t: int, step: int, high: float = -5.0, low: float = -9.0) -> np.ndarray:
    """log10 trajectory [t]: `high` up to `step`, `low` from step + 1 on (a one-step drop)."""
    y = np.full(t, high)
    y[step + 1:] = low
    return y


def test_transition_timing_measures_known_lags():
    """A 4-dex one-step drop predicted 3 steps late, a rise predicted 2 steps early, a rise
    never predicted (missed), a smooth species (no event), a jump among 1e-19 traces (ignored):
    the lags come out exactly, in steps and in years, and the relative error of the late drop
    lies within the window around it."""
    t, years = 40, np.arange(40) * 5000.0
    y = np.zeros((2, t, 4))
    y_hat = np.zeros_like(y)
    y[:, :, 0] = _drop(t, 19)
    y_hat[:, :, 0] = _drop(t, 22)  # late by 3 on both tracers
    y[:, :, 1] = -6.0 + 0.01 * np.arange(t)  # smooth: not an event
    y_hat[:, :, 1] = y[:, :, 1] + 0.1
    y[:, :, 2] = _drop(t, 24, high=-19.0, low=-12.0)  # rise at 24 -> 25
    y_hat[0, :, 2] = -19.0  # tracer 0 never rises: missed
    y_hat[1, :, 2] = _drop(t, 22, high=-19.0, low=-12.0)  # tracer 1: 2 steps early
    y[:, :, 3] = _drop(t, 10, high=-19.0, low=-17.5)  # below min_abundance: ignored
    y_hat[:, :, 3] = -19.0
    r = ev.transition_timing(10.0 ** y, 10.0 ** y_hat, ["C", "CO", "X", "Y"], years)
    assert (r["n_events"], r["n_missed"]) == (4, 1)
    assert r["lag_steps"]["median"] == 3.0 and r["lag_steps"]["max_abs"] == 3.0
    assert math.isclose(r["lag_steps"]["late_fraction"], 2 / 3)
    assert r["lag_years"]["median"] == 15000.0
    per = {e["species"]: e for e in r["per_species"]}
    assert set(per) == {"C", "X"}
    assert per["C"]["median_lag_steps"] == 3.0 and per["C"]["n_missed"] == 0
    assert per["X"]["median_lag_steps"] == -2.0 and per["X"]["n_missed"] == 1
    # Near: steps k - 10 .. k + 11 of the events' species (C: k = 19, X: k = 24); CO's and Y's
    # errors (no event) and X's missed rise after step 35 are not.
    rel = np.abs(10.0 ** y_hat - 10.0 ** y) / 10.0 ** y
    near = rel[:, 9:31, 0].sum() + rel[:, 14:36, 2].sum()
    assert math.isclose(r["relative_error_share_near_transitions"], near / rel.sum(),
                        rel_tol=1e-9)
    # A perfect prediction: every lag 0, nothing missed; interpolated crossings are exact.
    same = ev.transition_timing(10.0 ** y, 10.0 ** y, ["C", "CO", "X", "Y"])
    assert same["lag_steps"]["max_abs"] == 0.0 and same["n_missed"] == 0
    assert same["relative_error_share_near_transitions"] is None  # no error at all
    assert "lag_years" not in same


def test_transition_timing_classes_transitions_by_the_conditions_around_them():
    """With physical conditions, a transition where the density rises (tracer 0) is one the
    conditions drive; the same transition at constant conditions (tracer 1) is the chemistry's
    own; each class gets its own lag summary; a malformed physical array is refused."""
    t = 30
    y = np.stack([_drop(t, 9), _drop(t, 9)])[:, :, None]  # [2, T, 1]
    y_hat = np.stack([_drop(t, 10), _drop(t, 14)])[:, :, None]  # late by 1 and by 5
    physical = np.ones((2, t, 2))
    physical[0, :, 0] = np.geomspace(1e3, 1e6, t)  # tracer 0: density rising throughout
    physical[1, 12:, 1] = 2.0  # tracer 1: a change 3 steps after its transition (outside)
    r = ev.transition_timing(10.0 ** y, 10.0 ** y_hat, ["C"], physical=physical)
    split = r["by_conditions"]
    assert split["changing"]["n_events"] == split["constant"]["n_events"] == 1
    assert split["changing"]["lag_steps"]["median"] == 1.0
    assert split["constant"]["lag_steps"]["median"] == 5.0
    with pytest.raises(ValueError, match="physical has shape"):
        ev.transition_timing(10.0 ** y, 10.0 ** y_hat, ["C"], physical=physical[:, :5])


def test_transition_timing_interpolates_and_survives_non_finite_predictions():
    """A prediction that spreads the drop over 4 steps crosses the midpoint level at an
    interpolated fraction; NaN / inf predictions never count as a crossing."""
    t = 30
    y = _drop(t, 9)[None, :, None]  # crosses -7 at 9.5
    y_hat = y.copy()
    y_hat[0, 10:14, 0] = [-6.0, -7.0, -8.0, -9.0]  # from -5 at 9: -7 reached at 11.0
    y_hat[0, 14:, 0] = -9.0
    r = ev.transition_timing(10.0 ** y, 10.0 ** y_hat, ["C"])
    assert math.isclose(r["lag_steps"]["median"], 1.5, rel_tol=1e-12)
    bad = np.full_like(y_hat, np.nan)
    r = ev.transition_timing(10.0 ** y, 10.0 ** bad, ["C"])
    assert r["n_missed"] == 1 and r["lag_steps"] is None
    with pytest.raises(ValueError, match="must both be"):
        ev.transition_timing(10.0 ** y, 10.0 ** y[:, :5], ["C"])
    with pytest.raises(ValueError, match="species names"):
        ev.transition_timing(10.0 ** y, 10.0 ** y, ["C", "O"])
    with pytest.raises(ValueError, match="time_years"):
        ev.transition_timing(10.0 ** y, 10.0 ** y, ["C"], np.arange(5.0))


def test_throughput_arithmetic():
    entry = ev.throughput_entry(256, [2.0, 1.0, 3.0], flops_per_trajectory=10**9,
                                peak_gflops=512.0)
    assert entry["median_s"] == 2.0 and entry["repeats"] == 3
    assert entry["trajectories_per_s"] == 128.0
    assert entry["achieved_gflops"] == 128.0
    assert entry["fraction_of_peak"] == 0.25


def test_species_matching_is_case_insensitive():
    species = ["H2", "CO", "HCO+", "E-", "H2O"]
    assert match_species(["co", "h2o", "e-", "N2H+", "CO"], species) == [1, 4, 3]


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="shapes differ"):
        ev.accuracy_report(_truth(), _truth()[:, :2], SPECIES, [0, 1, 2])
    with pytest.raises(ValueError, match="stoichiometric matrix"):
        ev.element_conservation_summary(_truth(), _truth(), STOICH[:2], ELEMENTS)


def test_solver_workers_default_to_every_core_on_cpu():
    """The solver gets the cores the sharded rollout gets: one worker per usable core on CPU;
    an explicit count wins; a count below 1 is refused."""
    from astrochem_jax import benchmark, runtime

    assert benchmark.solver_workers(None) == runtime.usable_cores()
    assert benchmark.solver_workers(3) == 3
    with pytest.raises(benchmark.BenchmarkError, match="benchmark.solver.workers"):
        benchmark.solver_workers(0)


def test_solver_unavailable_for_foreign_formats():
    from astrochem_jax import benchmark

    class FakeSurrogate:
        component_configs = {"emulator": {"dataset": {"format": "uclchem",
                                                      "raw_path": "x.h5"}}}

    bench = ConfigDict({"solver": {"enabled": True}})
    out = benchmark.solve_same_tracks(FakeSurrogate(), None, bench, log=lambda m: None)
    assert out["available"] is False
    assert out["reason"].startswith("solver: not available for this dataset")
    assert "uclchem" in out["reason"]
    bench.solver.enabled = False
    assert "disabled" in benchmark.solve_same_tracks(FakeSurrogate(), None, bench,
                                                     log=lambda m: None)["reason"]


# ------------------------------------------------------------------------------------------------
# End to end on tiny trained components

REQUIRED = [
    "accuracy.relative_error.mean", "accuracy.relative_error.std",
    "accuracy.relative_error.worst_species", "accuracy.relative_error.worst",
    "accuracy.abs_dlog10.mean", "accuracy.abs_dlog10.median", "accuracy.abs_dlog10.p99",
    "accuracy.error_vs_step.mean_relative_error", "accuracy.per_tracer",
    "accuracy.element_conservation", "accuracy.transition_timing.n_events",
    "accuracy.transition_timing.relative_error_share_near_transitions",
    "reconstruction_floor.relative_error.mean",
    "reconstruction_floor.abs_dlog10.mean", "trainer_check", "accuracy.abs_dlog10_by_abundance",
    "reconstruction_floor.abs_dlog10_by_abundance",
    "speed.device.device_kind", "speed.flops.per_trajectory", "speed.matmul_peak.gflops",
    "speed.same_tracks.trajectories_per_s", "speed.same_tracks.compile_s", "speed.throughput",
    "speed.best.achieved_gflops", "speed.best.fraction_of_peak",
    "speed.peak_target.best_fraction_at_large_batch",
    "speed.peak_target.best_fraction_vs_best_peak",
    "solver.available", "speedup", "plots",
]


def _lookup(report: dict, dotted: str):
    node = report
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"report lacks {dotted!r}"
        node = node[key]
    return node


@pytest.mark.slow
def test_benchmark_report_has_every_metric(monkeypatch):
    from surrogate_helpers import surrogate_config, tiny_trained_outputs

    from astrochem_jax import paths
    from astrochem_jax.benchmark import run_benchmark

    monkeypatch.setenv("ASTROCHEM_JAX_OUTPUTS", str(tiny_trained_outputs()))
    config = surrogate_config(name="tiny_bench")
    config.benchmark.solver.enabled = False  # the tiny dataset's stiff solve costs ~30 s here
    report = run_benchmark(config, log=lambda m: None)
    for key in REQUIRED:
        _lookup(report, key)
    on_disk = json.loads((paths.benchmarks_dir("tiny_bench") / "report.json").read_text())
    assert on_disk["accuracy"]["relative_error"]["mean"] == report["accuracy"]["relative_error"][
        "mean"]
    for name in ("error_vs_step", "worst_species", "example_trajectories", "throughput"):
        path = paths.benchmarks_dir("tiny_bench") / f"{name}.png"
        assert path.stat().st_size > 1000, path
    assert [e["batch_size"] for e in report["speed"]["throughput"]] == [1, 8]
    assert all(e["trajectories_per_s"] > 0 for e in report["speed"]["throughput"])
    assert report["speed"]["flops"]["per_trajectory"] > 0
    assert report["solver"]["reason"].startswith("solver: not available")
    assert report["speedup"] is None
    assert report["trainer_check"]["relative_difference"]["mean_abs_dlog10"] < 1e-4
    # Scored on the test split only, recorded as such.
    manifest = json.loads((paths.preprocessed_dir("tiny", "sequential") / "manifest.json")
                          .read_text())
    assert report["scored_split"] == "test"
    assert report["scored_tracers"] == manifest["split_tracers"]["test"]
    assert report["accuracy"]["n_tracers"] == len(manifest["split_tracers"]["test"])
    assert report["package_versions"]["jax"]
    # Distance to training: every train tracer is a reference; per scored tracer its mean
    # distance, recomputed here from the shards.
    novelty = report["distance_to_training"]
    train = np.load(paths.preprocessed_dir("tiny", "sequential") / "train-00000-of-00001.npy")
    test = np.load(paths.preprocessed_dir("tiny", "sequential") / "test-00000-of-00001.npy")
    assert novelty["n_reference_tracers"] == novelty["n_train_tracers"] == train.shape[0]
    n_p, span = manifest["n_physical"], 20.0  # scaled log10 abundances over 1e-20..1
    brute = (np.abs(test[:, None, :, n_p:] - train[None, :, :, n_p:]).mean(axis=3)
             .min(axis=1).mean(axis=1) * span)
    assert [e["tracer"] for e in novelty["per_tracer"]] == report["scored_tracers"]
    np.testing.assert_allclose([e["distance_abs_dlog10"] for e in novelty["per_tracer"]], brute,
                               rtol=1e-4, atol=1e-4)
    # Accuracy by band of true abundance: fractions sum to 1, the weighted means to the mean.
    for section in (report["accuracy"], report["reconstruction_floor"]):
        bands = section["abs_dlog10_by_abundance"]
        assert math.isclose(sum(b["fraction_of_entries"] for b in bands), 1.0, rel_tol=1e-12)
        assert math.isclose(sum(b["fraction_of_entries"] * b["mean"] for b in bands
                                if b["mean"] is not None), section["abs_dlog10"]["mean"],
                            rel_tol=1e-9)
    # Equal steps and species per tracer: the tracers' closed-loop means average to the report's.
    assert math.isclose(np.mean([e["closed_loop_abs_dlog10"] for e in novelty["per_tracer"]]),
                        report["accuracy"]["abs_dlog10"]["mean"], rel_tol=1e-9)


def test_benchmark_refuses_tracers_a_component_saw(monkeypatch, tmp_path):
    """A component whose recorded train/val tracers include a test tracer (e.g. trained on an
    older split), or that records none, is refused before any work."""
    import shutil

    from surrogate_helpers import EMULATOR, surrogate_config, tiny_trained_outputs

    from astrochem_jax import paths
    from astrochem_jax.benchmark import BenchmarkError, run_benchmark

    outputs = tmp_path / "outputs"
    shutil.copytree(tiny_trained_outputs(), outputs)
    monkeypatch.setenv("ASTROCHEM_JAX_OUTPUTS", str(outputs))
    manifest = json.loads((paths.preprocessed_dir("tiny", "sequential") / "manifest.json")
                          .read_text())
    test_ids = manifest["split_tracers"]["test"]
    path = paths.weights_dir(EMULATOR) / "config.json"
    saved = json.loads(path.read_text())
    assert not set(saved["data_info"]["seen_tracers"]) & set(test_ids)
    saved["data_info"]["seen_tracers"] = [*saved["data_info"]["seen_tracers"], test_ids[0]]
    path.write_text(json.dumps(saved))
    config = surrogate_config(name="leaky")
    config.benchmark.measure_speed = False
    with pytest.raises(BenchmarkError, match=rf"tracers \[{test_ids[0]}\] were seen by "
                                             rf"component '{EMULATOR}'"):
        run_benchmark(config, log=lambda m: None)
    del saved["data_info"]["seen_tracers"]
    path.write_text(json.dumps(saved))
    with pytest.raises(BenchmarkError, match="does not record which tracers"):
        run_benchmark(config, log=lambda m: None)
    assert not (paths.benchmarks_dir("leaky") / "report.json").exists()


# ------------------------------------------------------------------------------------------------
# scripts/compare_runs.py


def _compare_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "compare_runs.py"
    spec = importlib.util.spec_from_file_location("compare_runs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(name: str, best: float, epochs: int = 3) -> None:
    from astrochem_jax import paths

    directory = paths.weights_dir(name)
    directory.mkdir(parents=True)
    history = [{"epoch": e + 1, "train_loss": best * (3 - e), "val_loss": best * (3 - e) + 0.1}
               for e in range(epochs)]
    (directory / "metrics.json").write_text(json.dumps(history))
    (directory / "summary.json").write_text(json.dumps({
        "best_val_loss": best, "best_epoch": epochs, "final_epoch": epochs,
        "component_type": "autoencoder", "parameter_count": 10,
        "best_val_metrics": {"mean_relative_error": best / 10, "mean_abs_dlog10": best / 100},
    }))


def test_compare_runs_sorts_by_best_val_loss_and_plots():
    from astrochem_jax import paths

    compare_runs = _compare_module()
    _fake_run("ae_b", 2.0)
    _fake_run("sweep/lr=1e-3", 0.5)
    _fake_run("sweep/lr=1e-4", 3.0)
    table, plot = compare_runs.compare(["ae_b", "sweep"])
    lines = table.splitlines()[2:]
    assert [line.split()[1] for line in lines] == ["sweep/lr=1e-3", "ae_b", "sweep/lr=1e-4"]
    assert plot == paths.outputs_dir() / "comparison.png" and plot.stat().st_size > 1000
    with pytest.raises(compare_runs.RunNotFoundError, match="python -m astrochem_jax.train"):
        compare_runs.compare(["missing_run"])
    assert compare_runs.main(["missing_run"]) == 1


def test_robustness_script_measures_validation_spikes_against_the_running_best():
    """scripts/bench_robustness.py reports each autoencoder's largest validation loss relative
    to the best before it (the acceptance's 'no spike above 3x the running best')."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_robustness.py"
    spec = importlib.util.spec_from_file_location("bench_robustness", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    ratio = script.val_spike_ratio
    assert ratio([1.0, 0.5, 0.4, 0.3]) == pytest.approx(0.8)  # never worse than a best: < 1
    assert ratio([1.0, 0.2, 0.7, 0.1, 0.15]) == pytest.approx(3.5)  # 0.7 after a best of 0.2
    assert ratio([1.0, None, float("nan"), 0.5, 2.0]) == pytest.approx(4.0)  # skips missing
    assert ratio([0.3]) is None and ratio([]) is None


def test_robustness_script_reads_each_components_facts(tmp_path):
    """history_facts: status, chosen epoch and validation pinned states from summary.json,
    skipped steps and the spike ratio from metrics.json; nothing for a missing component."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_robustness.py"
    spec = importlib.util.spec_from_file_location("bench_robustness", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    directory = tmp_path / "weights" / "robustness" / "d" / "s0" / "emulator"
    directory.mkdir(parents=True)
    (directory / "summary.json").write_text(json.dumps({
        "status": "converged", "best_epoch": 7, "rollbacks": 0,
        "best_val_metrics": {"pinned_state_fraction": 0.0021, "loss": 0.1}}))
    (directory / "metrics.json").write_text(json.dumps([
        {"val_loss": 1.0, "train": {"non_finite_steps": 1}},
        {"val_loss": 0.5, "train": {"non_finite_steps": 0}},
        {"val_loss": 0.6, "train": {"non_finite_steps": 2}}]))
    facts = script.history_facts("robustness/d/s0/emulator", tmp_path)
    assert facts["status"] == "converged" and facts["best_epoch"] == 7
    assert facts["pinned_state_fraction"] == pytest.approx(0.0021)
    assert facts["non_finite_steps"] == 3 and facts["val_spike_ratio"] == pytest.approx(1.2)
    assert script.history_facts("robustness/d/s0/missing", tmp_path) == {}


def test_robustness_script_scores_the_seeds_as_one_ensemble(tmp_path, monkeypatch):
    """run_seed_ensemble benchmarks the seeds' shipped surrogates as ONE ensemble (member k =
    seed k's autoencoder, fine-tuned emulator and closed-loop decoder, comma-separated) on the
    test split and reads its accuracy and calibration back; --ensemble-only refuses seeds whose
    components were never trained, naming the command that trains them."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_robustness.py"
    spec = importlib.util.spec_from_file_location("bench_robustness", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    calls = []

    def fake_run(cmd, log_path):
        calls.append(cmd)
        name = next(a.split("=", 1)[1] for a in cmd if a.startswith("--config.name="))
        out = tmp_path / "benchmarks" / name
        out.mkdir(parents=True)
        (out / "report.json").write_text(json.dumps({
            "scored_split": "test",
            "accuracy": {"abs_dlog10": {"mean": 0.03, "median": 0.01, "p99": 0.3},
                         "relative_error": {"mean": 0.2, "worst_species": "C"},
                         "non_finite_predictions": {"count": 0},
                         "abs_dlog10_by_abundance": [
                             {"lower_log10": None, "fraction_of_entries": 0.5, "mean": 1.0},
                             {"lower_log10": -12.0, "fraction_of_entries": 0.25, "mean": 0.2},
                             {"lower_log10": -8.0, "fraction_of_entries": 0.25, "mean": 0.1}]},
            "uncertainty": {"member_summary": {"mean_abs_dlog10": {"best": 0.04}},
                            "spearman": {"tracers": 0.7}, "coverage": {"2_sigma": 0.8},
                            "calibration": {"spread_scale": 2.2,
                                            "coverage": {"2_sigma": 0.95}}}}))
        return 0, 1.5, ""

    monkeypatch.setattr(script, "run", fake_run)
    entry = script.run_seed_ensemble("d", [1, 3], tmp_path, tmp_path / "logs")
    (cmd,) = calls
    assert ("--config.components.emulator=robustness/d/s1/emulator_closed_loop,"
            "robustness/d/s3/emulator_closed_loop") in cmd
    assert ("--config.components.decoder=robustness/d/s1/decoder_closed_loop,"
            "robustness/d/s3/decoder_closed_loop") in cmd
    assert "--config.benchmark.measure_speed=False" in cmd
    assert entry["status"] == "ok" and entry["seeds"] == [1, 3]
    assert entry["mean_abs_dlog10"] == 0.03 and entry["spread_scale"] == 2.2
    assert entry["calibrated_coverage"]["2_sigma"] == 0.95
    # The mean over the entries whose truth is above 1e-12, from the report's bands.
    assert entry["mean_abs_dlog10_above_1e-12"] == pytest.approx(0.15)
    report = {"datasets": {"d": {"runs": [], "seed_ensemble": entry}}}
    table = script.markdown_table(report)
    assert "| d | ensemble of seeds 1,3 | 0.030 / 0.010 / 0.30 | 0.2 (C) |" in table
    assert "| 0.150 | / 2 |" in table
    with pytest.raises(SystemExit, match=r"robustness/d/s0/autoencoder.*--seeds 0,1"):
        script.ensemble_only(["d"], [0, 1], tmp_path)
