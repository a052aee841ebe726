"""Surrogates: trained components composed into one jitted rollout in physical units.

    surrogate = astrochem_jax.surrogates.load("ae_emulator_grav")   # configs/surrogates/<name>.py
    surrogate = astrochem_jax.surrogates.load("ae_emulator_grav", workdir="~/astrochem_jax")
    abundances = surrogate(abundances_0, physical)   # [B, S], [B, T, P] -> [B, T + 1, S]
    surrogate.species, surrogate.physical_parameters, surrogate.dataset, surrogate.components

Registry `SURROGATES` (by config `type`): a builder `(config) -> Surrogate`.
- "ae_emulator": encoder = autoencoder.encode then min-max scaling of the latent with the
  autoencoder's `latents_minmax` (exactly as the emulator's trainer does), the latent emulator
  steps, decoder = latent unscaling then autoencoder.decode.
- "direct_emulator": the direct emulator steps on scaled abundances (encode/decode = identity).

Builders run the components in their inference form (`surrogates.inference`: plain dense layers,
BatchNorm and the latent scaling folded into the matrices); `ae_emulator_parts` /
`direct_emulator_parts` run the NNX modules themselves and serve as the reference the folded form
is tested against.

The surrogate runs the trained components exactly: an emulator trained with
`model.state_bounds` clips its own state after every step (`models.Emulator`), so the rollout
and the trainer share the same dynamics; there is no surrogate-side clipping.

Components are found by name alone under `<outputs>/weights/<component>/` (via
`astrochem_jax.training.checkpoints.load_component`); missing or incompatible ones raise
`SurrogateError` naming the command that trains them. `load` works from any working directory:
the outputs root is `workdir=` (a directory holding `outputs/`, or an outputs directory), else
`ASTROCHEM_JAX_OUTPUTS`, else the project's `outputs/`. A latent emulator records the fingerprint
of the exact autoencoder it was trained on (`data_info.autoencoder_fingerprint`); the surrogate
refuses any other (e.g. the same name retrained since).

A `Surrogate` is a pytree (`flax.struct`): its parameters are the leaves, everything else is
static metadata, so `jax.jit`, `jax.grad` and `jax.vmap` take it as an argument:

    jax.grad(lambda s: loss(s(x0, physical)))(surrogate).params   # d loss / d parameters
    jax.vmap(lambda s: s(x0, physical))(surrogates.stack([a, b]))   # [2, B, T + 1, S]

Ensembles: components trained as one ensemble (`--config.ensemble_size=N`) carry a member axis;
separately trained runs of one recipe (seeds, cluster jobs) combine the same way when the
surrogate config lists their names comma-separated (`member_components`), e.g.
`--config.components.emulator=a/emulator,b/emulator` with as many encoders and decoders. Either
way `surrogate(x0, physical)` is the members' mean in log space and
`surrogate.predict(x0, physical, return_spread=True)` adds their spread (dex).

Called on concrete arrays, it splits the batch over this process's devices (padded to a multiple
of their count, the padding cut from the result); inside a transformation it just computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from ml_collections import ConfigDict

from astrochem_jax import config_utils, paths
from astrochem_jax.scaling import Scaler
from astrochem_jax.surrogates import inference
from astrochem_jax.surrogates.rollout import (
    DTYPE,
    SurrogateParts,
    ensemble_physical,
    make_ensemble_reconstruct,
    make_ensemble_rollout,
    make_reconstruct,
    make_rollout,
    replicate,
    rollout_physical,
    shard_batch_padded,
)


class SurrogateError(ValueError):
    """A surrogate whose components are missing or do not fit together."""


@dataclass(frozen=True, eq=False)
class SurrogateMeta:
    """A surrogate's static half: metadata and its jitted functions. Compared and hashed by
    identity (one object per built surrogate), so it can be jit-static though it holds dicts."""

    name: str
    type: str
    species: tuple[str, ...]
    physical_parameters: tuple[str, ...]
    dataset: str
    preprocessing_method: str
    components: dict[str, str]
    scaler: Scaler
    parts: SurrogateParts
    rollout: Callable
    reconstruct: Callable
    info: dict  # the emulator's data facts (config.json["data_info"])
    component_configs: dict
    # Tracer ids each component (by role) trained on or chose its checkpoint with (None: not
    # recorded, a component trained before the train / val / test split existed).
    seen_tracers: dict
    matmul_precision: str = "default"
    # The outputs root the components were loaded from (`load(..., workdir=)`); None = the
    # process default (`paths.outputs_dir()`).
    outputs_dir: Path | None = None
    # Deep ensembles: params carry a leading member axis; `rollout` returns the members' mean in
    # log space and `predict_fn(params, x0, physical) -> (mean, spread_dex, members)`.
    ensemble_size: int = 1
    predict_fn: Callable | None = None
    members: tuple[int, ...] = (0,)  # the component members used (excluded ones left out)
    # Ensembles: `predict(..., return_spread=True)` returns spread x spread_scale (1 = the raw
    # std over members; the benchmark fits a calibrated factor on validation tracers).
    spread_scale: float = 1.0


def _meta(name: str, doc: str):
    return property(lambda self: getattr(self.meta, name), doc=doc)


@struct.dataclass
class Surrogate:
    """A callable surrogate with its metadata; a pytree whose leaves are `params`.

    `surrogate(abundances_0 [B, S], physical [B, T, P]) -> abundances [B, T + 1, S]` calls the
    jitted `rollout(params, abundances_0, physical)` with its own `params`. Physical parameters in
    `physical_parameters` order and units (cm^-3, Habing, mag, K, ...), abundances relative to H
    nuclei in `species` order. Concrete inputs are split over this process's devices (params
    replicated there); traced inputs (inside jit / vmap / grad) are left to the transformation.
    """

    params: Any
    meta: SurrogateMeta = struct.field(pytree_node=False)

    name = _meta("name", "surrogate config name")
    type = _meta("type", "SURROGATES key")
    species = _meta("species", "species, in output order")
    physical_parameters = _meta("physical_parameters", "physical inputs, in input order")
    dataset = _meta("dataset", "dataset name")
    preprocessing_method = _meta("preprocessing_method", "the emulator's preprocessing")
    components = _meta("components", "{role: component name}")
    scaler = _meta("scaler", "the dataset's Scaler")
    parts = _meta("parts", "SurrogateParts (pure functions of params)")
    rollout = _meta("rollout", "jitted rollout(params, abundances_0, physical)")
    reconstruct = _meta("reconstruct", "jitted reconstruct(params, abundances)")
    info = _meta("info", "the emulator's data facts (config.json data_info)")
    component_configs = _meta("component_configs", "{role: component config dict}")
    seen_tracers = _meta("seen_tracers", "{role: tracer ids seen in training, or None}")
    matmul_precision = _meta("matmul_precision", "jax.default_matmul_precision of the rollout")
    outputs_dir = _meta("outputs_dir", "outputs root the components came from (None: default)")
    ensemble_size = _meta("ensemble_size", "members combined (1: a single model)")

    def __call__(self, abundances_0, physical):
        """abundances [B, T + 1, S]: the model's rollout, or an ensemble's mean in log space."""
        leaves = jax.tree.leaves((self.params, abundances_0, physical))
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            with jax.default_matmul_precision(self.matmul_precision):
                if self.ensemble_size > 1:
                    return ensemble_physical(self.parts, self.scaler, self.params, abundances_0,
                                             physical)[0]
                return rollout_physical(self.parts, self.scaler, self.params, abundances_0,
                                        physical)
        return self._sharded(self.rollout, abundances_0, physical)

    def predict(self, abundances_0, physical, *, return_spread: bool = False,
                return_members: bool = False):
        """The ensemble's mean [B, T + 1, S], with on request its spread [B, T + 1, S] (std over
        members of log10 abundance, dex) and the members [M, B, T + 1, S]: a tuple (mean,
        spread?, members?). A single model has no spread to give (SurrogateError)."""
        if not (return_spread or return_members):
            return self(abundances_0, physical)
        if self.ensemble_size == 1 or self.meta.predict_fn is None:
            raise SurrogateError(f"surrogate {self.name!r} is a single model, not an ensemble: "
                                 "it has no spread or members (train its components with "
                                 "--config.ensemble_size=N, or list several separately "
                                 "trained runs comma-separated in its components)")
        mean, spread, members = self._sharded(self.meta.predict_fn, abundances_0, physical)
        if self.meta.spread_scale != 1.0:
            spread = spread * self.meta.spread_scale
        return (mean, *((spread,) if return_spread else ()),
                *((members,) if return_members else ()))

    def calibrated(self, spread_scale: float) -> Surrogate:
        """This surrogate with its spread multiplied by `spread_scale` (e.g. the benchmark's
        report["uncertainty"]["calibration"]["spread_scale"], fitted on validation tracers)."""
        scale = float(spread_scale)
        if not np.isfinite(scale) or scale <= 0:
            raise SurrogateError(f"surrogate {self.name!r}: spread_scale must be a positive "
                                 f"finite number, got {spread_scale!r}")
        return self.replace(meta=replace(self.meta, spread_scale=scale))

    def _sharded(self, fn, abundances_0, physical):
        """fn(params, x0, physical) on the batch split over this process's devices (padded to
        their count, the padding cut from every output's batch axis)."""
        n = int(np.shape(abundances_0)[0])
        x0 = shard_batch_padded(abundances_0)
        phys = shard_batch_padded(physical)
        with jax.default_matmul_precision(self.matmul_precision):
            out = fn(self.params, x0, phys)
        if isinstance(out, tuple):  # (mean, spread, members): members' batch axis is axis 1
            mean, spread, members = out
            return (mean[:n], spread[:n], members[:, :n]) if mean.shape[0] != n else out
        return out if out.shape[0] == n else out[:n]

    @property
    def n_species(self) -> int:
        return len(self.species)

    @property
    def n_physical(self) -> int:
        return len(self.physical_parameters)


def stack(surrogates: Sequence[Surrogate]) -> Surrogate:
    """Surrogates of the same architecture -> one surrogate whose every parameter has a leading
    axis [K, ...] (the first one's metadata): `jax.vmap(lambda s: s(x0, p))(stack([a, b]))`."""
    first = surrogates[0]
    for other in surrogates[1:]:
        if (other.type, other.species, other.physical_parameters) != (
                first.type, first.species, first.physical_parameters) or (
                jax.tree.structure(other.params) != jax.tree.structure(first.params)):
            raise SurrogateError(f"stack: surrogate {other.name!r} does not have the "
                                 f"architecture of {first.name!r}")
        shapes = [(a.shape, b.shape) for a, b in zip(jax.tree.leaves(first.params),
                                                     jax.tree.leaves(other.params), strict=True)]
        if any(a != b for a, b in shapes):
            raise SurrogateError(f"stack: parameter shapes of {other.name!r} differ from those "
                                 f"of {first.name!r}")
    params = jax.tree.map(lambda *xs: jnp.stack([jax.device_get(x) for x in xs]),
                          *[s.params for s in surrogates])
    return first.replace(params=params)


# ------------------------------------------------------------------------------------------------
# Component loading and checks


def _get(config: Any, key: str, default: Any = None) -> Any:
    """A field of a config that may be a ConfigDict or a plain dict (JSON snapshot)."""
    if isinstance(config, dict):
        return config.get(key, default)
    return config[key] if key in config else default


def train_command(component: str) -> str:
    """The command that produces `outputs/weights/<component>/`."""
    from astrochem_jax.training.checkpoints import training_command

    return training_command(component)


def load_checked_component(component: str, expected_types: tuple[str, ...], role: str):
    """`training.checkpoints.load_component(component)` with errors that say which command
    produces it; checks the component's type."""
    from astrochem_jax.training.checkpoints import load_component

    if not component:
        raise SurrogateError(f"surrogate config: components.{role} is empty; name a component "
                             f"of type {' or '.join(expected_types)}")
    directory = paths.weights_dir(component)
    if not (directory / "config.json").exists():
        raise SurrogateError(
            f"component {component!r} ({role}) not found: {directory}/config.json does not exist. "
            f"Train it first: `{train_command(component)}`"
        )
    try:
        loaded = load_component(component)
    except Exception as err:  # a broken directory: say how to recreate it, keep the cause
        raise SurrogateError(
            f"component {component!r} ({role}) in {directory} could not be loaded "
            f"({type(err).__name__}: {err}). Retrain it: `{train_command(component)}`"
        ) from err
    if loaded.type not in expected_types:
        raise SurrogateError(
            f"{directory}/config.json: field type is {loaded.type!r}, but the surrogate uses "
            f"{component!r} as its {role}, which needs type {' or '.join(expected_types)}"
        )
    return loaded


def _check_same(what: str, a_name: str, a_value, b_name: str, b_value, hint: str) -> None:
    if a_value != b_value:
        shown_a, shown_b = (
            (f"{len(a_value)} entries", f"{len(b_value)} entries")
            if isinstance(a_value, list) and len(str(a_value)) > 200 else (a_value, b_value))
        raise SurrogateError(
            f"incompatible components: {what} of {a_name!r} is {shown_a!r} but of {b_name!r} is "
            f"{shown_b!r}. {hint}"
        )


# ------------------------------------------------------------------------------------------------
# Latent scaling: exactly the emulator trainer's (`training.components._latent_setup` / predict)


def latent_min_span(latents_minmax) -> tuple[jax.Array, jax.Array]:
    """latents_minmax [2, L] (row 0 min, row 1 max over the train split) -> (min [L], span [L]),
    span = max - min where positive, else 1 (a constant latent is left unscaled)."""
    minmax = np.asarray(latents_minmax, np.float32)
    lo, hi = minmax[0], minmax[1]
    span = np.where(hi > lo, hi - lo, np.float32(1.0)).astype(np.float32)
    return jnp.asarray(lo, DTYPE), jnp.asarray(span, DTYPE)


def scale_latents(z: jax.Array, lo: jax.Array, span: jax.Array) -> jax.Array:
    """Autoencoder latents z [B, L] -> the emulator's state (z - min) / span."""
    return (z - lo) / span


def unscale_latents(state: jax.Array, lo: jax.Array, span: jax.Array) -> jax.Array:
    """The emulator's state [B, L] -> autoencoder latents state * span + min."""
    return state * span + lo


# ------------------------------------------------------------------------------------------------
# Parts: models -> pure functions of one params pytree


def _eval_split(model: nnx.Module):
    """(graphdef, state) of a model switched to evaluation mode (deterministic dropout and
    noise, BatchNorm running statistics)."""
    model.eval()
    return nnx.split(model)


def ae_emulator_parts(encoder: nnx.Module, emulator: nnx.Module, decoder: nnx.Module,
                      encoder_latents_minmax, decoder_latents_minmax
                      ) -> tuple[SurrogateParts, dict]:
    """Autoencoder + latent emulator as (parts, params). encoder/decoder: `Autoencoder`s (usually
    the same one); latents_minmax [2, L] each. The emulator's state is the min-max scaled latent."""
    enc_graph, enc_state = _eval_split(encoder)
    dec_graph, dec_state = _eval_split(decoder)
    emu_graph, emu_state = _eval_split(emulator)
    enc_lo, enc_span = latent_min_span(encoder_latents_minmax)
    dec_lo, dec_span = latent_min_span(decoder_latents_minmax)
    params = {
        "encoder": enc_state,
        "decoder": dec_state,
        "emulator": emu_state,
        "encoder_latents": {"min": enc_lo, "span": enc_span},
        "decoder_latents": {"min": dec_lo, "span": dec_span},
    }

    def encode(p, s):
        z = nnx.merge(enc_graph, p["encoder"]).encode(s)
        return scale_latents(z, p["encoder_latents"]["min"], p["encoder_latents"]["span"])

    def step(p, physical, state):
        return nnx.merge(emu_graph, p["emulator"])(physical, state)

    def decode(p, state):
        z = unscale_latents(state, p["decoder_latents"]["min"], p["decoder_latents"]["span"])
        return nnx.merge(dec_graph, p["decoder"]).decode(z)

    return SurrogateParts(encode, step, decode), params


def direct_emulator_parts(emulator: nnx.Module) -> tuple[SurrogateParts, dict]:
    """A direct emulator on scaled abundances as (parts, params); encode/decode are identities."""
    graph, state = _eval_split(emulator)

    def encode(p, s):
        return jnp.asarray(s, DTYPE)

    def step(p, physical, x):
        return nnx.merge(graph, p["emulator"])(physical, x)

    def decode(p, x):
        return x

    return SurrogateParts(encode, step, decode), {"emulator": state}


def ae_emulator_inference_parts(encoder: nnx.Module, emulator: nnx.Module, decoder: nnx.Module,
                                encoder_latents_minmax, decoder_latents_minmax
                                ) -> tuple[SurrogateParts, dict]:
    """The same surrogate as `ae_emulator_parts`, on plain dense layers with BatchNorm, the tied
    transposes and the decoder's latent unscaling folded in (`surrogates.inference`): what the
    builders run. Equal to `ae_emulator_parts` up to float32 rounding."""
    for model in (encoder, emulator, decoder):
        model.eval()
    enc_lo, enc_span = latent_min_span(encoder_latents_minmax)
    dec_lo, dec_span = latent_min_span(decoder_latents_minmax)
    bounds = emulator.state_bounds
    params = {
        "encoder": inference.encoder_layers(encoder),
        "encoder_latents": {"min": enc_lo, "span": enc_span},
        "emulator": inference.emulator_layers(emulator),
        "decoder": inference.decoder_layers(decoder, dec_lo, dec_span),
    }

    latent_activation, output_activation = encoder.latent_activation, decoder.output_activation

    def encode(p, s):
        z = inference.encode(p["encoder"], s, latent_activation)
        return scale_latents(z, p["encoder_latents"]["min"], p["encoder_latents"]["span"])

    def step(p, physical, state):
        return inference.emulator_step(p["emulator"], physical, state, bounds)

    def decode(p, state):
        return inference.decode(p["decoder"], state, output_activation)

    return SurrogateParts(encode, step, decode), params


def direct_emulator_inference_parts(emulator: nnx.Module) -> tuple[SurrogateParts, dict]:
    """`direct_emulator_parts` on plain dense layers (`surrogates.inference`)."""
    emulator.eval()
    bounds = emulator.state_bounds

    def encode(p, s):
        return jnp.asarray(s, DTYPE)

    def step(p, physical, x):
        return inference.emulator_step(p["emulator"], physical, x, bounds)

    def decode(p, x):
        return x

    return (SurrogateParts(encode, step, decode),
            {"emulator": inference.emulator_layers(emulator)})


# ------------------------------------------------------------------------------------------------
# Builders


def _common(config: ConfigDict, emulator, parts: SurrogateParts, params: Any,
            components: dict[str, str], loaded: dict,
            members: tuple[int, ...] | None = None) -> Surrogate:
    """members: the ensemble members whose params are stacked in `params` (None: one model)."""
    info = emulator.info
    scaler = Scaler.from_dict(info["scaling"])
    if _get(config, "state_clip") is not None:
        raise SurrogateError(
            f"surrogate config {config.name!r}: field state_clip is no longer supported; the "
            "emulator bounds its own state (component config field model.state_bounds), retrain "
            f"it: `{train_command(str(_get(config.components, 'emulator')))}`")
    # Replicated over this process's devices: __call__ splits the batch over them.
    params = replicate(jax.tree.map(jnp.asarray, params))
    from astrochem_jax import runtime

    precision = runtime.matmul_precision(_get(config, "matmul_precision"))
    ensemble_fns = make_ensemble_rollout(parts, scaler) if members else None
    return Surrogate(params=params, meta=SurrogateMeta(
        name=str(config.name),
        type=str(config.type),
        species=tuple(info["species"]),
        physical_parameters=tuple(info.get("physical_parameters") or scaler.physical_parameters),
        dataset=str(info["dataset"]),
        preprocessing_method=str(info.get("preprocessing_method")
                                 or emulator.config.get("preprocessing_method")),
        components=components,
        scaler=scaler,
        parts=parts,
        rollout=ensemble_fns[0] if members else make_rollout(parts, scaler),
        reconstruct=(make_ensemble_reconstruct(parts, scaler) if members
                     else make_reconstruct(parts, scaler)),
        info=info,
        component_configs={role: config_utils.to_dict(c.config) for role, c in loaded.items()},
        seen_tracers={role: (None if c.info.get("seen_tracers") is None
                             else [int(t) for t in c.info["seen_tracers"]])
                      for role, c in loaded.items()},
        matmul_precision=precision,
        ensemble_size=len(members) if members else 1,
        predict_fn=ensemble_fns[1] if members else None,
        members=tuple(members) if members else (0,),
    ))


def build_ae_emulator(config: ConfigDict) -> Surrogate:
    """Autoencoder (encoder + decoder) around a latent emulator."""
    names = {role: str(_get(config.components, role) or "")
             for role in ("encoder", "emulator", "decoder")}
    encoder = load_checked_component(names["encoder"], ("autoencoder",), "encoder")
    decoder = (encoder if names["decoder"] == names["encoder"] else
               load_checked_component(names["decoder"], ("autoencoder", "closed_loop_decoder"),
                                      "decoder"))
    emulator = load_checked_component(names["emulator"], ("emulator",), "emulator")
    if decoder.type == "closed_loop_decoder":
        check_closed_loop_decoder(decoder, encoder, emulator)

    trained_on = emulator.info.get("autoencoder_component",
                                   _get(emulator.config, "autoencoder_component"))
    if trained_on is not None and trained_on != names["encoder"]:
        raise SurrogateError(
            f"incompatible components: emulator {names['emulator']!r} was trained on the latents "
            f"of autoencoder {trained_on!r}, but the surrogate's encoder is {names['encoder']!r}. "
            f"Set components.encoder = components.decoder = {trained_on!r}, or retrain the "
            f"emulator on {names['encoder']!r}: `{train_command(names['emulator'])} "
            f"--config.autoencoder_component={names['encoder']}`"
        )
    retrain = f"Retrain the emulator on this autoencoder: `{train_command(names['emulator'])}`"
    recorded = emulator.info.get("autoencoder_fingerprint")
    if not recorded:
        raise SurrogateError(
            f"emulator {names['emulator']!r} ({emulator.directory}/config.json) does not record "
            "which exact autoencoder it was trained on (data_info.autoencoder_fingerprint; it "
            "was trained before fingerprints existed), so a retrained autoencoder could not be "
            f"told apart. Retrain it: `{train_command(names['emulator'])}`")
    for role, ae in (("encoder", encoder), ("decoder", decoder)):
        if names[role] == trained_on and ae.fingerprint != recorded:
            raise SurrogateError(
                f"incompatible components: emulator {names['emulator']!r} was trained on "
                f"autoencoder {trained_on!r} with fingerprint {recorded[:16]}, but "
                f"{names[role]!r} ({ae.directory}) now has fingerprint {ae.fingerprint[:16]}: it "
                "was retrained after the emulator, whose latent space it no longer matches. "
                f"Delete {emulator.directory} and retrain the emulator: "
                f"`{train_command(names['emulator'])}` (or restore the autoencoder)")
    for role, ae in (("encoder", encoder), ("decoder", decoder)):
        _check_same("the latent size", names[role], int(ae.info["latent_dim"]),
                    names["emulator"], int(emulator.info["state_dim"]), retrain)
        _check_same("the species list", names[role], list(ae.info["species"]),
                    names["emulator"], list(emulator.info["species"]), retrain)
        _check_same("the dataset", names[role], ae.info["dataset"],
                    names["emulator"], emulator.info["dataset"], retrain)
        _check_same("the abundance clip", names[role],
                    list(ae.info["scaling"]["abundance_clip"]), names["emulator"],
                    list(emulator.info["scaling"]["abundance_clip"]), retrain)
        expected = ((2, int(ae.info["latent_dim"])) if ae.ensemble_size == 1 else
                    (ae.ensemble_size, 2, int(ae.info["latent_dim"])))
        if ae.latents_minmax is None or tuple(ae.latents_minmax.shape) != expected:
            found = None if ae.latents_minmax is None else ae.latents_minmax.shape
            raise SurrogateError(
                f"{ae.directory}/latents_minmax.npy: expected shape {expected}, found {found}; "
                f"retrain the autoencoder: `{train_command(names[role])}`")

    loaded = {"encoder": encoder, "decoder": decoder, "emulator": emulator}
    members = ensemble_members(names, loaded)
    if members is None:
        parts, params = ae_emulator_inference_parts(
            encoder.model(train=False), emulator.model(train=False), decoder.model(train=False),
            encoder.latents_minmax, decoder.latents_minmax)
        return _common(config, emulator, parts, params, names, loaded)
    # An ensemble: emulators over one autoencoder, or pairs (member k of each component).
    built = []
    for k in members:
        enc, dec = (c.member(k if c.ensemble_size > 1 else 0) for c in (encoder, decoder))
        built.append(ae_emulator_inference_parts(
            enc.model(train=False), emulator.member(k).model(train=False),
            dec.model(train=False), enc.latents_minmax, dec.latents_minmax))
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[p for _, p in built])
    return _common(config, emulator, built[0][0], params, names, loaded, members)


def check_closed_loop_decoder(decoder, encoder, emulator) -> None:
    """A closed-loop decoder reads the states of ONE emulator started from ONE encoder: the
    exact ones it was refit on (`training.closed_loop_decoder`), else SurrogateError."""
    refit = f"Refit it on these: `{train_command(decoder.name)}`"
    for role, component, kind in (("emulator", emulator, "emulator"),
                                  ("encoder", encoder, "autoencoder")):
        recorded = decoder.info.get(f"{kind}_fingerprint")
        if recorded != component.fingerprint:
            raise SurrogateError(
                f"incompatible components: decoder {decoder.name!r} ({decoder.directory}) was "
                f"refit on the closed-loop states of {kind} "
                f"{decoder.info.get(kind + '_component')!r} "
                f"(fingerprint {str(recorded)[:16]}), but the surrogate's {role} is "
                f"{component.name!r} (fingerprint {component.fingerprint[:16]}). {refit}")


def ensemble_members(names: dict[str, str], loaded: dict) -> tuple[int, ...] | None:
    """The ensemble members a surrogate combines (None: every component is a single model).

    Every ensemble component must have the same size (autoencoders of size 1 are shared by
    every emulator member); members any component excluded in training are left out."""
    sizes = {role: c.ensemble_size for role, c in loaded.items()}
    n = max(sizes.values())
    if n == 1:
        return None
    wrong = {role: k for role, k in sizes.items() if k not in (1, n)}
    if wrong or sizes.get("emulator", n) != n:
        raise SurrogateError(
            f"incompatible components: ensemble sizes {sizes} ({names}); an ensemble surrogate "
            "combines emulator members k with autoencoder member k (autoencoder ensembles of "
            "the emulator's size) or with one shared autoencoder")
    excluded = {int(e["member"]) for c in loaded.values() if c.ensemble_size > 1
                for e in (c.summary or {}).get("excluded_members", [])}
    members = tuple(k for k in range(n) if k not in excluded)
    if not members:
        raise SurrogateError(f"every ensemble member of {names} was excluded in training")
    return members


def build_direct_emulator(config: ConfigDict) -> Surrogate:
    """A direct emulator on scaled abundances (no autoencoder)."""
    name = str(_get(config.components, "emulator") or "")
    emulator = load_checked_component(name, ("direct_emulator",), "emulator")
    _check_same("the state size", name, int(emulator.info["state_dim"]), "its species list",
                len(emulator.info["species"]), f"Retrain it: `{train_command(name)}`")
    loaded = {"emulator": emulator}
    members = ensemble_members({"emulator": name}, loaded)
    if members is None:
        parts, params = direct_emulator_inference_parts(emulator.model(train=False))
        return _common(config, emulator, parts, params, {"emulator": name}, loaded)
    built = [direct_emulator_inference_parts(emulator.member(k).model(train=False))
             for k in members]
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[p for _, p in built])
    return _common(config, emulator, built[0][0], params, {"emulator": name}, loaded, members)


SURROGATES: dict[str, Callable[[ConfigDict], Surrogate]] = {
    "ae_emulator": build_ae_emulator,
    "direct_emulator": build_direct_emulator,
}


def build(config: ConfigDict) -> Surrogate:
    """The surrogate a config describes (`config.type` picks the builder); comma-separated
    component names make an ensemble of separately trained members (`member_components`)."""
    kind = str(_get(config, "type"))
    if kind not in SURROGATES:
        raise SurrogateError(
            f"surrogate config {_get(config, 'name')!r}: field type is {kind!r}, expected one of "
            f"{sorted(SURROGATES)}")
    members = member_components(config)
    if members is None:
        return SURROGATES[kind](config)
    singles = []
    for k, names in enumerate(members):
        member_config = ConfigDict(config_utils.to_dict(config))
        member_config.name = f"{config.name}[{k}]"
        member_config.components.update(names)
        single = SURROGATES[kind](member_config)
        if single.ensemble_size != 1:
            raise SurrogateError(
                f"surrogate config {config.name!r}: member {k} ({names}) is itself an ensemble "
                f"of {single.ensemble_size}; list single-model components, one per member")
        singles.append(single)
    return combine_members(config, singles, members)


def member_components(config: ConfigDict) -> list[dict[str, str]] | None:
    """Per member {role: component name} when a `components` field lists several comma-separated
    names (member k takes the k-th of each; a role with one name is shared by every member),
    None for a single model.

        components.emulator = "robustness/grav/s1/emulator_closed_loop,robustness/grav/s2/..."

    Every role that lists several names must list the same number."""
    lists = {role: [n.strip() for n in str(value or "").split(",")]
             for role, value in dict(config.components).items()}
    counts = {role: len(names) for role, names in lists.items() if len(names) > 1}
    if not counts:
        return None
    if len(set(counts.values())) != 1:
        raise SurrogateError(
            f"surrogate config {config.name!r}: components list {counts} comma-separated "
            "names; every role that lists several must list one per member, the same number")
    empty = {role: names for role, names in lists.items() if len(names) > 1 and not all(names)}
    if empty:
        raise SurrogateError(f"surrogate config {config.name!r}: components {empty} hold an "
                             "empty member name (a stray comma?)")
    n = next(iter(counts.values()))
    return [{role: names[k] if len(names) > 1 else names[0] for role, names in lists.items()}
            for k in range(n)]


def combine_members(config: ConfigDict, singles: Sequence[Surrogate],
                    members: Sequence[dict[str, str]]) -> Surrogate:
    """Separately trained single surrogates (e.g. the shipped recipe run with seeds 0-4) -> one
    ensemble surrogate: the members' mean in log space, `predict(..., return_spread=True)` their
    spread, exactly as an ensemble trained in one run. The members must share the dataset, its
    scaling and every component's `config.model` (the pure functions of member 0 run every
    member's parameters); the tracers the ensemble has seen are the union of its members'."""
    first = singles[0]
    for k, single in enumerate(singles[1:], start=1):
        for what, ours, theirs in (
                ("the dataset", first.dataset, single.dataset),
                ("the scaling", first.info.get("scaling"), single.info.get("scaling")),
                ("the preprocessing", first.preprocessing_method, single.preprocessing_method),
                *((f"the {role}'s config.model", _get(first.component_configs[role], "model"),
                   _get(single.component_configs.get(role, {}), "model"))
                  for role in first.component_configs)):
            if ours != theirs:
                raise SurrogateError(
                    f"surrogate config {config.name!r}: member {k} ({members[k]}) differs from "
                    f"member 0 ({members[0]}) in {what}; an ensemble combines members of one "
                    "recipe trained on one dataset (e.g. --config.seed=k)")
    stacked = stack(singles)  # parameter structure and shapes checked there
    seen = {}
    for role in first.seen_tracers:
        per_member = [s.seen_tracers.get(role) for s in singles]
        seen[role] = (None if any(t is None for t in per_member) else
                      sorted({int(t) for tracers in per_member for t in tracers}))
    rollout, predict_fn = make_ensemble_rollout(first.parts, first.scaler)
    return Surrogate(params=replicate(stacked.params), meta=replace(
        first.meta, name=str(config.name),
        components={role: ",".join(dict.fromkeys(m[role] for m in members))
                    for role in members[0]},
        seen_tracers=seen, rollout=rollout,
        reconstruct=make_ensemble_reconstruct(first.parts, first.scaler),
        ensemble_size=len(singles), predict_fn=predict_fn,
        members=tuple(range(len(singles)))))


def load(name_or_config: str | ConfigDict, workdir: str | Path | None = None) -> Surrogate:
    """A surrogate by config name (`configs/surrogates/<name>[:dataset]`), path, or ConfigDict,
    from any working directory.

    workdir: where its components were trained: a directory holding `outputs/` (where the
    pipeline ran) or an outputs directory itself. None: `ASTROCHEM_JAX_OUTPUTS`, else the
    project's `outputs/`. Errors name the outputs root searched and how it was chosen."""
    try:
        root, source = paths.find_outputs(workdir)
    except FileNotFoundError as err:
        raise SurrogateError(str(err)) from err
    config = (name_or_config if isinstance(name_or_config, ConfigDict)
              else config_utils.load_config(str(name_or_config), "surrogates"))
    with paths.using_outputs(root):
        try:
            surrogate = build(config)
        except SurrogateError as err:
            raise SurrogateError(f"{err} [outputs root searched: {root}, from {source}]") from err
    return surrogate.replace(meta=replace(surrogate.meta, outputs_dir=root))


__all__ = ["SURROGATES", "Surrogate", "SurrogateError", "SurrogateMeta", "SurrogateParts",
           "ae_emulator_inference_parts", "ae_emulator_parts", "build", "combine_members",
           "direct_emulator_inference_parts", "direct_emulator_parts", "load",
           "member_components", "stack"]
