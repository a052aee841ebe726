"""Component `closed_loop_decoder`: the autoencoder's decoder refit to read the states a trained
latent emulator actually produces closed loop, the emulator and the encoder frozen.

The autoencoder's decoder is trained on encode(x), the latents of TRUE abundances. In a
closed-loop rollout the emulator's states drift away from those latents (its own errors, fed
back for ~300 steps), into a neighbourhood the decoder never saw. This component rolls the
frozen emulator out from encode(x0) over every whole trajectory of the split, once, and trains
the decoder on the rows (state of step t, true scaled abundances of step t): the decoder learns
to read the emulator's states, including their systematic drift, while the encoder, the emulator
and so the states themselves stay exactly those of the surrogate.

Training items are rows (tracer, step), every valid step of every tracer including t0 (where
the state is encode(x0) itself); validation scores every row of the validation tracers, i.e. the
closed-loop error of the surrogate with this decoder over whole trajectories. The model is the
autoencoder (`init_from` it: its weights are candidate epoch 0) with only the decoder's
parameters trained (`config.trainable_params`); `latents_minmax.npy` is the autoencoder's,
copied, so the component is a drop-in `components.decoder` of the surrogate.

Arrays: sequence [N, T, P + S] (scaled physical + scaled abundances, NaN-padded tracers zeroed),
state [N, T, L] (the emulator's min-max scaled latents, state[:, 0] = encode(x0)), rows int32
[R, 2] (tracer, step).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from astrochem_jax import atomic
from astrochem_jax.models.emulator import rollout_module
from astrochem_jax.training import components as comp
from astrochem_jax.training import data as data_lib
from astrochem_jax.training import mesh as mesh_lib
from astrochem_jax.training import state as state_lib

KIND = "closed_loop_decoder"


def step_table(lengths: np.ndarray) -> np.ndarray:
    """Every valid (tracer, step) of tracers with `lengths` [N] valid steps -> int32 [R, 2],
    grouped by tracer in tracer order, steps ascending (padding tracers, length 0, give none)."""
    lengths = np.asarray(lengths, np.int64)
    tracer = np.repeat(np.arange(lengths.shape[0], dtype=np.int64), lengths)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    step = np.arange(tracer.shape[0], dtype=np.int64) - first
    return np.stack([tracer, step], axis=1).astype(np.int32).reshape(-1, 2)


def _load_checked(name: str, kind: str, where: str):
    from astrochem_jax.training.checkpoints import load_component

    loaded = load_component(str(name))
    if loaded.type != kind:
        raise comp.ComponentError(f"{where} ({loaded.directory}): type is {loaded.type!r}, "
                                  f"expected {kind!r}")
    if loaded.ensemble_size != 1:
        raise comp.ComponentError(
            f"{where} ({loaded.directory}): an ensemble of {loaded.ensemble_size}; the "
            f"closed-loop decoder refits the decoder of one emulator (train it per member)")
    return loaded


def _setup(config, manifest: dict, directory: Path) -> comp.Setup:
    comp._check_layout(manifest, Path(directory), "sequential", KIND)
    info = comp._base_info(config, manifest)
    if int(config.get("ensemble_size") or 1) != 1:
        raise comp.ComponentError(
            f"config.ensemble_size = {config.ensemble_size}: a closed-loop decoder is trained "
            "for one emulator; set --config.ensemble_size=1")
    width = manifest["splits"]["train"]["shape"][-1]
    if width != info["n_physical"] + info["n_species"]:
        raise comp.ComponentError(
            f"{directory}/manifest.json: sequential rows have {width} features, expected "
            f"n_physical + n_species = {info['n_physical']} + {info['n_species']}")
    emulator = _load_checked(config.emulator_component, "emulator",
                             f"config.emulator_component = {config.emulator_component!r}")
    ae_name = emulator.info.get("autoencoder_component")
    ae = _load_checked(ae_name, "autoencoder",
                       f"autoencoder {ae_name!r} of emulator {emulator.name!r}")
    if ae.fingerprint != emulator.info.get("autoencoder_fingerprint"):
        raise comp.ComponentError(
            f"autoencoder {ae_name!r} ({ae.directory}) is not the one emulator "
            f"{emulator.name!r} was trained on (fingerprint {ae.fingerprint[:16]}, the emulator "
            f"records {str(emulator.info.get('autoencoder_fingerprint'))[:16]}): retrain the "
            "emulator first")
    for what, ours, theirs in (("dataset", info["dataset"], emulator.info["dataset"]),
                               ("species", info["species"], list(emulator.info["species"])),
                               ("physical_parameters", info["physical_parameters"],
                                list(emulator.info.get("physical_parameters", [])))):
        if ours != theirs:
            raise comp.ComponentError(
                f"{directory}/manifest.json: {what} differ from emulator {emulator.name!r}'s "
                f"({emulator.directory}/config.json); refit on the data it was trained on")
    if ae.latents_minmax is None:
        raise comp.ComponentError(f"{ae.directory}/{comp.LATENTS_MINMAX} missing; rerun "
                                  "the autoencoder's training command")
    minmax = np.asarray(ae.latents_minmax, np.float32)
    lo, span = comp.latent_min_span(minmax)
    info.update(latent_dim=int(ae.info["latent_dim"]), state_dim=int(ae.info["latent_dim"]),
                emulator_component=emulator.name, emulator_fingerprint=emulator.fingerprint,
                autoencoder_component=ae.name, autoencoder_fingerprint=ae.fingerprint,
                # The model is the autoencoder itself (its weights are the warm start).
                autoencoder_model=ae.config.model.to_dict())
    frozen = {"ae_params": ae.params, "ae_batch_stats": ae.batch_stats,
              "emu_params": emulator.params, "emu_batch_stats": emulator.batch_stats,
              "latent_min": jnp.asarray(lo), "latent_span": jnp.asarray(span)}
    static = {"ae": ae.mdef, "emulator": emulator.mdef, "latents_minmax": minmax}
    stoich = comp.load_stoichiometric_matrix(info["dataset"], info["species"])
    return comp.Setup(info=info, stoich=stoich, abundance_clip=comp._abundance_clip(manifest),
                      frozen=frozen, static=static)


def _build(config, info: dict, rngs: nnx.Rngs) -> nnx.Module:
    """The autoencoder of `info["autoencoder_model"]` (its config.model, whatever the
    overrides it was trained with), with this run's dropout."""
    return comp._ae_build(ConfigDict({"model": dict(info["autoencoder_model"]),
                                      "dropout": float(config.dropout)}), info, rngs)


_STATES: dict[tuple, tuple[Any, Callable]] = {}


def _states_fn(setup: comp.Setup, mesh):
    """Jitted (frozen, sequence [N, T, P + S]) -> the emulator's closed-loop states [N, T, L]
    from encode(x0), eval mode (the surrogate's rollout)."""
    key = (id(setup.static["emulator"]), id(setup.static["ae"]), mesh)
    entry = _STATES.get(key)
    if entry is None:
        p = setup.info["n_physical"]
        ae_def, emu_def = setup.static["ae"], setup.static["emulator"]

        def states(frozen, sequence):
            ae = state_lib.merge_model(ae_def, frozen["ae_params"], frozen["ae_batch_stats"],
                                       train=False)
            emulator = state_lib.merge_model(emu_def, frozen["emu_params"],
                                             frozen["emu_batch_stats"], train=False)
            state0 = (ae.encode(sequence[:, 0, p:]) - frozen["latent_min"]) \
                / frozen["latent_span"]
            rolled = rollout_module(emulator, state0, sequence[:, :-1, :p])  # [N, T - 1, L]
            return jnp.concatenate([state0[:, None], rolled], axis=1)

        entry = _STATES[key] = ((ae_def, emu_def), jax.jit(states))
    return entry[1]


def _prepare(setup: comp.Setup, chunk: data_lib.HostChunk, split: str = "train"
             ) -> comp.Prepared:
    rows = step_table(chunk.all_rows(comp.tracer_lengths(chunk.local)))
    sequence = chunk.put(np.nan_to_num(chunk.local))
    state = _states_fn(setup, chunk.mesh)(setup.frozen, sequence)
    return comp.Prepared(arrays={"sequence": sequence, "state": state,
                                 "rows": mesh_lib.put_replicated(rows, chunk.mesh)},
                         n_items=int(rows.shape[0]))


def _count(setup: comp.Setup, chunk: data_lib.HostChunk, split: str = "train") -> int:
    return int(np.sum(chunk.all_rows(comp.tracer_lengths(chunk.local))))


def _batch(setup: comp.Setup, arrays: dict, idx: jax.Array, mesh) -> dict:
    """Rows idx [B] -> state [B, L] (the emulator's, scaled), target [B, S] scaled abundances."""
    p = setup.info["n_physical"]
    row = jnp.take(arrays["rows"], idx, axis=0)
    tracer, step = row[:, 0], row[:, 1]
    state = data_lib.gather_windows(mesh, arrays["state"], tracer, step, 1)[:, 0]
    target = data_lib.gather_windows(mesh, arrays["sequence"], tracer, step, 1)[:, 0, p:]
    return {"state": state, "target": target}


def _predict(model, batch: dict, frozen, setup: comp.Setup):
    """Decode the emulator's states. The decoder's BatchNorms keep normalising with the
    autoencoder's statistics in training mode too (a fixed affine map whose scale and shift
    train): statistics of batches of drifted states would change what every later layer sees,
    and the recalibration after each epoch then leaves them as they are."""
    for norm in model.decoder_norms:
        norm.use_running_average = True
    z = batch["state"] * frozen["latent_span"] + frozen["latent_min"]
    return model.decode(z), batch["target"], {}


def _after(finished: comp.Finished) -> None:
    """The autoencoder's latents_minmax.npy, copied: the states this decoder reads are scaled
    with it (the surrogate checks encoder and decoder scale latents alike)."""
    if mesh_lib.is_main_process():
        with atomic.atomic_path(finished.directory / comp.LATENTS_MINMAX) as tmp, \
                open(tmp, "wb") as f:
            np.save(f, finished.setup.static["latents_minmax"], allow_pickle=False)
    mesh_lib.barrier("latents_minmax")


COMPONENT = comp.Component(
    preprocessing_layout="sequential", item="rows", setup=_setup, build_model=_build,
    prepare=_prepare, make_batch=_batch, predict=_predict, after_training=_after,
    count_items=_count, warm_start_types=("autoencoder",),
)
