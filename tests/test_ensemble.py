"""Deep ensembles: N members trained in one vmapped step, saved as one checkpoint, combined by
the surrogate into a mean and a spread; members that diverge are excluded and reported."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import training_fixtures as tf
from ml_collections import ConfigDict

from astrochem_jax import paths, shards, surrogates
from astrochem_jax.surrogates import uncertainty as uq
from astrochem_jax.training import components, load_component, loop, train_component
from astrochem_jax.training import data as data_lib
from astrochem_jax.training import mesh as mesh_lib
from astrochem_jax.training import state as state_lib

tf.enable_compile_cache()


def _tree_close(a, b, tol: float) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _val_inputs(surrogate, dirs: dict) -> tuple[np.ndarray, np.ndarray]:
    """The validation tracers in physical units: x0 [N, S], physical [N, T - 1, P]."""
    val = np.asarray(shards.load_split(dirs["sequential"], "val"), np.float64)
    p = len(tf.PHYSICAL)
    x0 = np.asarray(surrogate.scaler.unscale_abundances(val[:, 0, p:]), np.float32)
    phys = np.asarray(surrogate.scaler.unscale_physical(val[:, :-1, :p]), np.float32)
    return x0, phys


@pytest.mark.parametrize("kind", ["autoencoder", "direct_emulator"])
def test_vmapped_ensemble_step_equals_separate_steps(kind):
    """A training step of a 3-member ensemble in one vmapped call == the same step of each
    member alone (its own init, batch, dropout keys), member by member within 1e-6; four
    steps within 1e-4 (float32 rounding of batched vs single matrix products, fed through
    Adam's normalisation)."""
    dirs = tf.write_preprocessed(n_tracers=10, n_steps=12, n_val=2)
    method = "timeless" if kind == "autoencoder" else "sequential"
    c = tf.tiny_config(kind)
    c.dropout = 0.1  # every member draws its own dropout masks
    if kind == "autoencoder":
        # The biases in front of BatchNorm get a ~0 gradient whose SIGN is float32 rounding, and
        # Adam turns it into a full lr-sized step: no two summation orders agree on them.
        c.model.normalization = "none"
    component = components.get_component(kind)
    setup = component.setup(c, shards.read_manifest(dirs[method]), dirs[method])
    mesh = mesh_lib.make_mesh()
    tx = state_lib.make_optimizer(c)

    def build(m):
        return component.build_model(c, setup.info, state_lib.model_rngs(0, m))

    mdef, ensemble = state_lib.build_members(build, tx, 0, 3)
    _, plain = state_lib.build_members(build, tx, 0, 1)
    _tree_close(state_lib.member_of(ensemble, 0), plain, 0.0)  # member 0 IS the plain component
    prepared = component.prepare(
        setup, data_lib.host_chunk(np.asarray(shards.load_split(dirs[method], "train")), mesh),
        "train")
    idx = loop.member_batches(0, 0, 0, prepared.n_items, 8, 3)[:4]  # [4 steps, 3 members, B]
    np.testing.assert_array_equal(idx[:, 0], loop.member_batches(0, 0, 0, prepared.n_items, 8,
                                                                 1)[:4])
    steps3 = loop.make_steps(component, setup, mdef, tx, c, mesh,
                             jax.eval_shape(lambda: ensemble), members=3)
    for n, tol in ((1, 1e-6), (4, 1e-4)):
        factors = np.ones(n, np.float32)
        after3, diag3 = steps3.train(mesh_lib.put_replicated(ensemble, mesh), prepared.arrays,
                                     idx[:n], None, factors)
        assert np.shape(diag3["loss"]) == (n, 3)
        for m in range(3):
            one = state_lib.member_of(ensemble, m)
            steps1 = loop.make_steps(component, setup, mdef, tx, c, mesh,
                                     jax.eval_shape(lambda one=one: one))
            after1, diag1 = steps1.train(mesh_lib.put_replicated(one, mesh), prepared.arrays,
                                         idx[:n, m], None, factors)
            np.testing.assert_allclose(np.asarray(diag3["loss"])[:, m],
                                       np.asarray(diag1["loss"]), rtol=tol)
            _tree_close(state_lib.member_of(after3, m).params, after1.params, tol)
    losses = np.asarray(diag3["loss"])
    assert not np.allclose(losses[:, 0], losses[:, 1])  # the members really differ


def test_member_exclusion_bookkeeping():
    """A member whose loss goes non-finite is excluded for good and recorded; the ensemble's
    metrics are the mean over the others; no member left reads as diverged."""
    state = loop.initial_loop_state(tf.tiny_config("autoencoder"))
    records = [{"member": m} for m in range(3)]
    diag = {"loss": np.array([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]]),
            "grad_norm": np.ones((2, 3)), "update_norm": np.ones((2, 3)),
            "loss_mean": np.ones((2, 3))}
    mean = loop.ensemble_train_diagnostics(diag, state, 4, records)
    np.testing.assert_allclose(mean["loss"], [2.0, 2.0])
    assert state["excluded_members"] == [{"member": 1, "epoch": 5,
                                          "reason": "training loss is not finite"}]
    assert [r["excluded"] for r in records] == [False, True, False]
    val = {"loss": np.array([0.5, np.nan, np.inf]), "mean_abs_dlog10": np.array([0.1, 9, 9])}
    combined = loop.ensemble_val_metrics(val, state, 5, records)
    assert combined["loss"] == 0.5 and combined["mean_abs_dlog10"] == pytest.approx(0.1)
    assert [e["member"] for e in state["excluded_members"]] == [1, 2]
    gone = {"loss": np.array([np.nan, 1.0, 1.0]), "mean_abs_dlog10": np.ones(3)}
    assert np.isnan(loop.ensemble_val_metrics(gone, state, 6, None)["loss"])  # none left


def test_uncertainty_metrics_on_known_errors():
    """Spread proportional to the error: perfect rank correlation; coverage and reliability
    follow from the ratio."""
    rng = np.random.default_rng(0)
    truth = 10.0 ** rng.uniform(-10, -2, size=(4, 6, 5))
    error_dex = rng.uniform(0.01, 1.0, size=truth.shape)
    mean = truth * 10.0 ** error_dex
    spread = error_dex / 1.5  # every error is 1.5 spreads: inside 2 sigma, outside 1 sigma
    members = np.stack([mean * 10.0 ** spread, mean / 10.0 ** spread])
    report = uq.uncertainty_report(truth, mean, spread, members)
    assert report["spearman"]["entries"] == pytest.approx(1.0)
    assert report["coverage"]["1_sigma"] == 0.0 and report["coverage"]["2_sigma"] == 1.0
    assert report["ensemble_mean"]["mean_abs_dlog10"] == pytest.approx(error_dex.mean())
    observed = {r["nominal"]: r["observed"] for r in report["reliability"]}
    assert observed[0.5] == 0.0 and observed[0.9] == 1.0  # z(0.5) = 0.67 < 1.5 < z(0.9) = 1.64
    with pytest.raises(ValueError, match="shapes differ"):
        uq.uncertainty_report(truth, mean[:1], spread, members)


def test_spread_recalibration_fitted_on_one_set_holds_on_another():
    """Errors ~ |N(0, 3 s)| with a raw spread s: the fitted factor is ~3, and it restores
    Gaussian coverage on an independent draw (the test tracers)."""
    rng = np.random.default_rng(1)
    spread_fit, spread = rng.uniform(0.01, 0.5, 20000), rng.uniform(0.01, 0.5, 20000)
    error_fit = np.abs(rng.normal(0.0, 3.0 * spread_fit))
    error = np.abs(rng.normal(0.0, 3.0 * spread))
    report = uq.calibration_report(error_fit, spread_fit, error, spread)
    assert report["spread_scale"] == pytest.approx(3.0, rel=0.05)
    assert report["fit_coverage"]["2_sigma"] == pytest.approx(0.9545, abs=2e-3)
    assert report["coverage"]["2_sigma"] == pytest.approx(0.9545, abs=0.01)
    assert report["coverage"]["1_sigma"] == pytest.approx(0.6827, abs=0.02)
    assert uq.coverage(error, spread, 2.0) < 0.55  # the raw spread under-covers
    # Every error exactly 1.5 spreads: the factor puts them on the 2-sigma edge.
    assert uq.spread_scale(1.5 * spread, spread) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="one shape"):
        uq.spread_scale(error[:5], spread)


def test_ensemble_training_saving_loading_and_surrogate(monkeypatch):
    """Pairs (3 autoencoders, 3 emulators on them, member k on autoencoder member k) and a direct
    ensemble train in one run each; one checkpoint holds every member and loads back; a member
    excluded in training is left out of the surrogate; the surrogate's call is the members' mean
    in log space and `predict` gives their spread."""
    dirs = tf.write_preprocessed(n_tracers=12, n_steps=16, n_val=3, learnable=True)
    ae = tf.tiny_config("autoencoder", name="ens_ae")
    ae.ensemble_size, ae.epochs = 3, 2
    summary = train_component(ae, preprocessed_dir=dirs["timeless"])
    assert summary["ensemble_size"] == 3 and len(summary["members"]) == 3
    loaded = load_component("ens_ae")
    assert loaded.ensemble_size == 3 and loaded.latents_minmax.shape == (3, 2, 3)
    # Round trip: each reloaded member reproduces the validation error recorded for it at the
    # best epoch (summary.json), and the members differ.
    val_rows = jnp.asarray(shards.load_split(dirs["timeless"], "val"))
    for k, member in enumerate(loaded.members()):
        x_hat = np.asarray(member.model()(val_rows)[0], np.float64)
        dex = float(np.mean(np.abs(x_hat - np.asarray(val_rows)))) * 20.0
        assert dex == pytest.approx(summary["members"][k]["val"]["mean_abs_dlog10"], rel=1e-4)
    outs = [np.asarray(member.model()(val_rows)[0]) for member in loaded.members()]
    assert len(outs) == 3 and not np.allclose(outs[0], outs[1])
    with pytest.raises(ValueError, match="ensemble of 3"):
        loaded.model()

    # Emulator pairs on the autoencoder ensemble; member 2 excluded (validation poisoned).
    real = loop._evaluate

    def poisoned(steps, state, *args):
        out = dict(real(steps, state, *args))
        if np.ndim(out["loss"]) == 1 and out["loss"].shape[0] == 3:
            out["loss"] = np.asarray(out["loss"]).copy()
            out["loss"][2] = np.nan
        return out

    monkeypatch.setattr(loop, "_evaluate", poisoned)
    emu = tf.tiny_config("emulator", name="ens_emu")
    emu.ensemble_size, emu.epochs, emu.autoencoder_component = 3, 2, "ens_ae"
    summary = train_component(emu, preprocessed_dir=dirs["sequential"])
    monkeypatch.setattr(loop, "_evaluate", real)
    assert [e["member"] for e in summary["excluded_members"]] == [2]
    history = json.loads((paths.weights_dir("ens_emu") / "metrics.json").read_text())
    assert [m["excluded"] for m in history[-1]["members"]] == [False, False, True]
    mismatch = tf.tiny_config("emulator", name="ens_bad")
    mismatch.autoencoder_component = "ens_ae"
    with pytest.raises(components.ComponentError, match="ensemble of 3 autoencoders"):
        train_component(mismatch, preprocessed_dir=dirs["sequential"])

    config = ConfigDict({"name": "ens", "type": "ae_emulator", "components": {
        "encoder": "ens_ae", "emulator": "ens_emu", "decoder": "ens_ae"}})
    surrogate = surrogates.build(config)
    assert surrogate.ensemble_size == 2 and surrogate.meta.members == (0, 1)
    x0, phys = _val_inputs(surrogate, dirs)
    mean, spread, members = surrogate.predict(x0, phys, return_spread=True,
                                              return_members=True)
    assert members.shape == (2, *mean.shape) and spread.shape == mean.shape
    logs = np.log10(np.asarray(members, np.float64))
    np.testing.assert_allclose(np.log10(np.asarray(mean)), logs.mean(axis=0), atol=2e-4)
    np.testing.assert_allclose(np.asarray(spread), logs.std(axis=0), atol=2e-3)
    np.testing.assert_allclose(np.asarray(surrogate(x0, phys)), np.asarray(mean), rtol=1e-6)
    wider = surrogate.calibrated(2.5)
    np.testing.assert_allclose(np.asarray(wider.predict(x0, phys, return_spread=True)[1]),
                               2.5 * np.asarray(spread), rtol=1e-6)
    with pytest.raises(surrogates.SurrogateError, match="positive finite"):
        surrogate.calibrated(0.0)
    # The benchmark's section: raw spread even from a calibrated surrogate, factor fit on val.
    from astrochem_jax import benchmark

    val_data = benchmark.load_split_tracers(surrogate, None, "val")
    section, (error, raw) = benchmark.uncertainty_section(wider, val_data)
    np.testing.assert_allclose(raw, np.asarray(spread, np.float64)[:, 1:], rtol=1e-5,
                               atol=1e-7)
    assert section["calibration"]["spread_scale"] == pytest.approx(
        uq.spread_scale(error, raw))
    assert section["calibration"]["n_fit_tracers"] == val_data.tracer_ids.size
    # Each member equals the single-model surrogate of that pair.
    for k in (0, 1):
        single = surrogates.ae_emulator_inference_parts(
            loaded.member(k).model(), load_component("ens_emu").member(k).model(),
            loaded.member(k).model(), loaded.latents_minmax[k], loaded.latents_minmax[k])
        from astrochem_jax.surrogates.rollout import make_rollout

        ref = make_rollout(single[0], surrogate.scaler)(single[1], x0, phys)
        np.testing.assert_allclose(np.asarray(members[k]), np.asarray(ref), rtol=2e-4)

    direct = tf.tiny_config("direct_emulator", name="ens_direct")
    direct.ensemble_size, direct.epochs = 2, 2
    train_component(direct, preprocessed_dir=dirs["sequential"])
    single_config = ConfigDict({"name": "d", "type": "direct_emulator", "components": {
        "encoder": "", "emulator": "ens_direct", "decoder": ""}})
    d = surrogates.build(single_config)
    assert d.ensemble_size == 2 and d.predict(x0, phys, return_spread=True)[1].shape == \
        mean.shape
    one = tf.tiny_config("direct_emulator", name="plain_direct")
    one.epochs = 1
    train_component(one, preprocessed_dir=dirs["sequential"])
    plain = surrogates.build(ConfigDict({"name": "p", "type": "direct_emulator", "components": {
        "encoder": "", "emulator": "plain_direct", "decoder": ""}}))
    with pytest.raises(surrogates.SurrogateError, match="single model"):
        plain.predict(x0, phys, return_spread=True)


def _pair(name: str, seed: int, dirs: dict, hidden: tuple[int, ...] = (8,)) -> dict:
    """A tiny autoencoder + emulator trained as one run of seed `seed`; its component names."""
    ae = tf.tiny_config("autoencoder", name=f"{name}_ae")
    ae.seed, ae.model.hidden_dims, ae.epochs = seed, hidden, 1
    train_component(ae, preprocessed_dir=dirs["timeless"])
    emu = tf.tiny_config("emulator", name=f"{name}_emu")
    emu.seed, emu.epochs, emu.autoencoder_component = seed, 1, f"{name}_ae"
    train_component(emu, preprocessed_dir=dirs["sequential"])
    return {"encoder": f"{name}_ae", "emulator": f"{name}_emu", "decoder": f"{name}_ae"}


def _listed(*runs: dict) -> ConfigDict:
    return ConfigDict({"name": "runs", "type": "ae_emulator", "components": {
        role: ",".join(run[role] for run in runs) for role in runs[0]}})


def test_separately_trained_runs_combine_into_an_ensemble():
    """Two runs of one recipe (seeds 0 and 1, trained apart), listed comma-separated in the
    surrogate config, are an ensemble: each member is exactly its run's own surrogate, the call
    is their mean in log space and `predict` gives their spread; the tracers it has seen are the
    union of its members' (the benchmark refuses one only member 1 saw). Lists of different
    lengths, an empty name and a member of another architecture are refused."""
    from astrochem_jax import benchmark

    dirs = tf.write_preprocessed(n_tracers=12, n_steps=16, n_val=3, learnable=True)
    runs = [_pair(f"run{k}", k, dirs) for k in (0, 1)]
    # Member 1's emulator records one more seen tracer (as if trained on another split).
    path = paths.weights_dir("run1_emu") / "config.json"
    saved = json.loads(path.read_text())
    saved["data_info"]["seen_tracers"] = [*saved["data_info"]["seen_tracers"], 99]
    path.write_text(json.dumps(saved))

    singles = [surrogates.build(ConfigDict({"name": f"run{k}", "type": "ae_emulator",
                                            "components": run}))
               for k, run in enumerate(runs)]
    ensemble = surrogates.build(_listed(*runs))
    assert ensemble.ensemble_size == 2 and ensemble.meta.members == (0, 1)
    assert ensemble.components["emulator"] == "run0_emu,run1_emu"
    x0, phys = _val_inputs(ensemble, dirs)
    mean, spread, members = ensemble.predict(x0, phys, return_spread=True, return_members=True)
    for k, single in enumerate(singles):
        np.testing.assert_allclose(np.asarray(members[k]), np.asarray(single(x0, phys)),
                                   rtol=1e-5, atol=1e-30)
    assert not np.allclose(np.asarray(members[0]), np.asarray(members[1]))
    logs = np.log10(np.asarray(members, np.float64))
    np.testing.assert_allclose(np.log10(np.asarray(mean)), logs.mean(axis=0), atol=2e-4)
    np.testing.assert_allclose(np.asarray(spread), logs.std(axis=0), atol=2e-3)
    np.testing.assert_allclose(np.asarray(ensemble(x0, phys)), np.asarray(mean), rtol=1e-6)
    assert 99 in ensemble.seen_tracers["emulator"] and 99 not in singles[0].seen_tracers[
        "emulator"]
    with pytest.raises(benchmark.BenchmarkError,
                       match=r"tracers \[99\] were seen by component 'run0_emu,run1_emu'"):
        benchmark.check_unseen(ensemble, np.asarray([99, 100]), "scored")

    uneven = _listed(*runs)
    uneven.components.decoder = "run0_ae,run1_ae,run0_ae"
    with pytest.raises(surrogates.SurrogateError, match="the same number"):
        surrogates.build(uneven)
    stray = _listed(*runs)
    stray.components.emulator = "run0_emu,"
    with pytest.raises(surrogates.SurrogateError, match="empty member name"):
        surrogates.build(stray)
    wider = _pair("wide", 0, dirs, hidden=(16,))
    with pytest.raises(surrogates.SurrogateError,
                       match=r"member 1 .* differs from member 0 .* encoder's config.model"):
        surrogates.build(_listed(runs[0], wider))
