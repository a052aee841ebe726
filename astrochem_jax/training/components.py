"""Component registry: what differs between the things we train, as small frozen dataclasses of
functions. The generic loop (`training.loop`) knows nothing about autoencoders or emulators.

A component provides
- `setup(config, manifest, preprocessed_dir) -> Setup`: checks and static context (stoichiometric
  matrix, frozen autoencoder, model dimensions recorded in `config.json`);
- `build_model(config, info, rngs) -> nnx.Module` from the config and `Setup.info`;
- `prepare(setup, chunk [N, ...] host float32, put, split="train") -> Prepared`: the
  device-resident arrays (`put` places a host array on the devices) and the number of items (rows
  or windows; emulators cut training windows every `window_stride` steps, validation windows
  every step);
- `make_batch(setup, arrays, idx [B]) -> batch`: slice a batch on device (inside jit);
- `predict(model, batch, frozen, setup) -> (pred_scaled [..., S], true_scaled [..., S])`;
- `after_training(finished)`: artifacts computed with the best weights (autoencoder latents
  min/max).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from astrochem_jax import atomic, paths
from astrochem_jax.models.autoencoder import Autoencoder
from astrochem_jax.models.emulator import Emulator, rollout_module
from astrochem_jax.training import state as state_lib

F32 = jnp.float32
LATENTS_MINMAX = "latents_minmax.npy"
ENCODE_BATCH_ROWS = 65536


class ComponentError(ValueError):
    """A component cannot be trained or loaded with the given config / data."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """info: JSON-safe facts saved in config.json["data"] (dims, species, ...);
    stoich [S, E] float32; frozen: pytree of arrays the loss needs (replicated on device);
    static: Python objects (e.g. the frozen autoencoder's graph definitions)."""

    info: dict
    stoich: np.ndarray
    abundance_clip: tuple[float, float]
    frozen: Any = None
    static: Any = None


@dataclasses.dataclass(frozen=True)
class Prepared:
    arrays: dict
    n_items: int


@dataclasses.dataclass(frozen=True)
class Finished:
    """What `after_training` hooks receive: the best weights and the train split as host chunks."""

    config: Any
    setup: Setup
    mdef: state_lib.ModelDef
    params: Any
    batch_stats: Any
    train_chunks: Callable[[], Iterable[np.ndarray]]
    directory: Path


@dataclasses.dataclass(frozen=True)
class Component:
    preprocessing_layout: str  # "timeless" ([rows, S]) or "sequential" ([tracers, steps, P + S])
    item: str  # what one training sample is, for log lines
    setup: Callable[..., Setup]
    build_model: Callable[..., nnx.Module]
    prepare: Callable[..., Prepared]
    make_batch: Callable[..., Any]
    predict: Callable[..., tuple[jax.Array, jax.Array]]
    after_training: Callable[[Finished], None]


def log_line(message: str) -> None:
    """Training progress goes to stderr directly (orbax floods absl's INFO log), and to the
    program's log file (`astrochem_jax.cli.setup_logging`) when there is one."""
    print(message, file=sys.stderr, flush=True)
    logging.getLogger("astrochem_jax").info(message)


# --- shared helpers -----------------------------------------------------------------------------


def load_stoichiometric_matrix(dataset: str, species: list[str]) -> np.ndarray:
    path = paths.utils_dir(dataset) / "stoichiometric_matrix.npy"
    if not path.exists():
        raise ComponentError(
            f"{path} not found: it is written by preprocessing; run `python -m "
            f"astrochem_jax.preprocess --dataset=configs/datasets/{dataset}.py ...` first"
        )
    matrix = np.load(path, allow_pickle=False).astype(np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(species):
        raise ComponentError(
            f"{path}: expected shape [n_species={len(species)}, n_elements], found {matrix.shape}"
        )
    return matrix


def _base_info(config, manifest: dict) -> dict:
    return {
        "dataset": manifest.get("dataset", config.dataset.name),
        "preprocessing_method": manifest.get("method"),
        "cache_key": manifest.get("cache_key"),
        "species": list(manifest["species"]),
        "elements": list(manifest.get("elements", [])),
        "physical_parameters": list(manifest.get("physical_parameters", [])),
        "n_species": int(manifest.get("n_species", len(manifest["species"]))),
        "n_physical": int(manifest.get("n_physical", len(manifest.get("physical_parameters", [])))),
        "scaling": manifest["scaling"],
        # Tracers whose data trained this component or chose its checkpoint: the benchmark
        # refuses to score any of them.
        "seen_tracers": sorted({int(t) for split in ("train", "val")
                                for t in manifest.get("split_tracers", {}).get(split, [])}),
    }


def _check_layout(manifest: dict, directory: Path, layout: str, component: str) -> None:
    ndim = 2 if layout == "timeless" else 3
    for split in ("train", "val"):
        entry = manifest["splits"].get(split)
        if entry is None:
            raise ComponentError(
                f"{directory}/manifest.json: split {split!r} missing (found "
                f"{sorted(manifest['splits'])}); component {component!r} needs train and val"
            )
        if len(entry["shape"]) != ndim:
            raise ComponentError(
                f"{directory}/manifest.json: split {split!r} has shape {entry['shape']}, but "
                f"component {component!r} needs {layout!r} data ({ndim}-D); set "
                f"config.preprocessing_method to a {layout} method"
            )


def _abundance_clip(manifest: dict) -> tuple[float, float]:
    lo, hi = manifest["scaling"]["abundance_clip"]
    return float(lo), float(hi)


# --- autoencoder ---------------------------------------------------------------------------------


def _ae_setup(config, manifest: dict, directory: Path) -> Setup:
    _check_layout(manifest, Path(directory), "timeless", "autoencoder")
    info = _base_info(config, manifest)
    n = manifest["splits"]["train"]["shape"][-1]
    if n != info["n_species"]:
        raise ComponentError(
            f"{directory}/manifest.json: train rows have {n} columns, expected n_species="
            f"{info['n_species']}"
        )
    info["latent_dim"] = int(config.model.latent_dim)
    stoich = load_stoichiometric_matrix(info["dataset"], info["species"])
    return Setup(info=info, stoich=stoich, abundance_clip=_abundance_clip(manifest))


def _ae_build(config, info: dict, rngs: nnx.Rngs) -> nnx.Module:
    return Autoencoder(
        info["n_species"],
        hidden_dims=tuple(config.model.hidden_dims),
        latent_dim=int(config.model.latent_dim),
        dropout_rate=float(config.dropout),
        latent_noise_std=float(config.model.latent_noise_std),
        normalization=str(config.model.get("normalization") or "batch"),
        tied_weights=bool(config.model.get("tied_weights", True)),
        latent_activation=str(config.model.get("latent_activation") or "sigmoid"),
        output_activation=str(config.model.get("output_activation") or "sigmoid"),
        rngs=rngs,
    )


def _ae_prepare(setup: Setup, chunk: np.ndarray, put, split: str = "train") -> Prepared:
    x = put(np.asarray(chunk, np.float32))  # global rows (several hosts: all processes' parts)
    return Prepared(arrays={"x": x}, n_items=int(x.shape[0]))


def _ae_batch(setup: Setup, arrays: dict, idx: jax.Array) -> dict:
    return {"x": jnp.take(arrays["x"], idx, axis=0)}


def _ae_predict(model, batch: dict, frozen, setup: Setup):
    x_hat, _ = model(batch["x"])
    return x_hat, batch["x"]


def encode_rows(mdef: state_lib.ModelDef, params, batch_stats, rows: jax.Array) -> jax.Array:
    """Eval-mode latents of scaled abundances rows [R, S] -> [R, L] (float32), in slices of
    `ENCODE_BATCH_ROWS` rows to bound memory."""
    encode = _jit_encode(mdef)
    parts = [encode(params, batch_stats, rows[i : i + ENCODE_BATCH_ROWS])
             for i in range(0, rows.shape[0], ENCODE_BATCH_ROWS)]
    return jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


_ENCODERS: dict[int, tuple[state_lib.ModelDef, Callable]] = {}


def _jit_encode(mdef: state_lib.ModelDef) -> Callable:
    """One jitted encoder per model definition (kept alive with it, so ids are not reused)."""
    entry = _ENCODERS.get(id(mdef))
    if entry is None:
        def encode(params, batch_stats, rows):
            model = state_lib.merge_model(mdef, params, batch_stats, train=False)
            return model.encode(rows)

        entry = _ENCODERS[id(mdef)] = (mdef, jax.jit(encode))
    return entry[1]


def _ae_after(finished: Finished) -> None:
    """Latent min/max over the TRAIN split with the best weights (eval mode) -> [2, L]."""
    lo = hi = None
    for chunk in finished.train_chunks():
        z = np.asarray(encode_rows(finished.mdef, finished.params, finished.batch_stats,
                                   jnp.asarray(np.asarray(chunk, np.float32))))
        lo = z.min(axis=0) if lo is None else np.minimum(lo, z.min(axis=0))
        hi = z.max(axis=0) if hi is None else np.maximum(hi, z.max(axis=0))
    minmax = np.stack([lo, hi]).astype(np.float32)
    with atomic.atomic_path(finished.directory / LATENTS_MINMAX) as tmp, open(tmp, "wb") as f:
        np.save(f, minmax, allow_pickle=False)


# --- emulators (latent and direct) ---------------------------------------------------------------


def window_table(chunk: np.ndarray, horizon: int, where: str = "", stride: int = 1,
                 t0_repeats: int = 1) -> np.ndarray:
    """Windows of `horizon` steps inside a tracer, starting every `stride` steps: int32 [W, 2]
    (tracer, start).

    A window needs horizon + 1 valid steps (its state and `horizon` targets). Tracers may be
    padded with NaN at the end (valid length = leading finite steps); tracers shorter than the
    window are logged and skipped. With stride > 1 the per-tracer start offset is staggered
    (tracer k starts at k mod stride) so that, over the tracers, every start time is covered, and
    every tracer keeps its window from t0 (the start of every closed-loop rollout, and the
    fastest chemistry: the hardest step). `t0_repeats` > 1 lists every window from t0 that many
    times (an epoch then samples them more often).
    """
    if int(stride) < 1 or int(t0_repeats) < 1:
        raise ValueError(f"window_table: stride and t0_repeats must be >= 1, found {stride} and "
                         f"{t0_repeats}")
    stride, t0_repeats = int(stride), int(t0_repeats)
    n_tracers, n_steps = chunk.shape[:2]
    finite = np.all(np.isfinite(chunk), axis=2)  # [N, T]
    lengths = np.where(finite.all(axis=1), n_steps, np.argmin(finite, axis=1))
    short = np.flatnonzero(lengths < horizon + 1)
    if short.size:
        log_line(
            f"{where or 'sequential data'}: {short.size} of {n_tracers} tracers have fewer than "
            f"horizon + 1 = {horizon + 1} steps (lengths {sorted(set(lengths[short].tolist()))}) "
            "and give no training window"
        )
    rows = [(k, s) for k in range(n_tracers)
            for s in [0] * (t0_repeats - 1)
            + sorted({0, *range(k % stride, int(lengths[k]) - horizon, stride)})
            if s < lengths[k] - horizon]
    return np.asarray(rows, dtype=np.int32).reshape(-1, 2)


def _emu_common_setup(config, manifest: dict, directory: Path, component: str) -> dict:
    _check_layout(manifest, Path(directory), "sequential", component)
    info = _base_info(config, manifest)
    width = manifest["splits"]["train"]["shape"][-1]
    if width != info["n_physical"] + info["n_species"]:
        raise ComponentError(
            f"{directory}/manifest.json: sequential rows have {width} features, expected "
            f"n_physical + n_species = {info['n_physical']} + {info['n_species']}"
        )
    horizon = int(config.horizon)
    if horizon < 1:
        raise ComponentError(f"config.horizon must be >= 1, found {horizon}")
    train_steps = int(manifest["splits"]["train"]["shape"][1])
    if train_steps < horizon + 1:
        # Otherwise every tracer is skipped and the run fails later with "lower the batch size".
        raise ComponentError(
            f"{directory}: the tracers have {train_steps} steps, but config.horizon = {horizon} "
            f"needs windows of horizon + 1 = {horizon + 1} steps; set --config.horizon to at "
            f"most {train_steps - 1} (or use longer tracers)")
    info["horizon"] = horizon
    # Validation windows: `val_horizon` steps (None: the training horizon; 0: the full
    # trajectory from t0, i.e. the closed-loop rollout the surrogate is used for).
    val_horizon = config.get("val_horizon")
    val_steps = int(manifest["splits"]["val"]["shape"][1])
    if val_horizon is None:
        val_horizon = horizon
    elif int(val_horizon) == 0:
        val_horizon = val_steps - 1
    if not 1 <= int(val_horizon) <= val_steps - 1:
        raise ComponentError(
            f"config.val_horizon must be None, 0 (full trajectory) or 1..{val_steps - 1} (the "
            f"validation split has {val_steps} steps), found {config.get('val_horizon')}")
    info["val_horizon"] = int(val_horizon)
    info["gradient_window"] = int(config.get("gradient_window") or 0)
    if info["gradient_window"] < 0:
        raise ComponentError(f"config.gradient_window must be >= 0 (0 = full backpropagation "
                             f"through the window), found {info['gradient_window']}")
    for field in ("window_stride", "t0_window_repeats"):
        value = int(config.get(field) or 1)
        if value < 1:
            raise ComponentError(f"config.{field} must be >= 1, found {value}")
        info[field] = value
    return info


def _latent_setup(config, manifest: dict, directory: Path) -> Setup:
    from astrochem_jax.training.checkpoints import load_component

    info = _emu_common_setup(config, manifest, directory, "emulator")
    ae = load_component(config.autoencoder_component)
    where = f"autoencoder component {config.autoencoder_component!r} ({ae.directory})"
    if ae.type != "autoencoder":
        raise ComponentError(f"{where}: type is {ae.type!r}, expected 'autoencoder'")
    if ae.info["dataset"] != info["dataset"]:
        raise ComponentError(
            f"{where}: trained on dataset {ae.info['dataset']!r}, but this emulator uses "
            f"{info['dataset']!r}"
        )
    if list(ae.info["species"]) != info["species"]:
        theirs, ours = ae.info["species"], info["species"]
        first = next((i for i, (a, b) in enumerate(zip(theirs, ours, strict=False)) if a != b),
                     min(len(theirs), len(ours)))
        raise ComponentError(
            f"{where}: species list differs from {directory}/manifest.json: {len(theirs)} vs "
            f"{len(ours)} species, first difference at index {first}; retrain the autoencoder "
            "on this preprocessed data"
        )
    latent_dim = int(ae.info["latent_dim"])
    wanted = config.model.get("latent_dim")
    if wanted is not None and int(wanted) != latent_dim:
        raise ComponentError(
            f"{where}: latent size is {latent_dim}, but config.model.latent_dim = {wanted}"
        )
    if ae.latents_minmax is None:
        raise ComponentError(f"{where}: {LATENTS_MINMAX} missing; rerun its training command")
    if ae.latents_minmax.shape != (2, latent_dim):
        raise ComponentError(
            f"{where}: {LATENTS_MINMAX} has shape {ae.latents_minmax.shape}, expected "
            f"(2, {latent_dim})"
        )
    info.update(latent_dim=latent_dim, state_dim=latent_dim,
                autoencoder_component=str(config.autoencoder_component),
                # The exact autoencoder (weights + latent scaling) these latents come from:
                # resuming and surrogates refuse any other.
                autoencoder_fingerprint=ae.fingerprint)
    stoich = load_stoichiometric_matrix(info["dataset"], info["species"])
    lo, hi = ae.latents_minmax.astype(np.float32)
    span = np.where(hi > lo, hi - lo, np.float32(1.0)).astype(np.float32)
    frozen = {"ae_params": ae.params, "ae_batch_stats": ae.batch_stats,
              "latent_min": jnp.asarray(lo, F32), "latent_span": jnp.asarray(span, F32)}
    return Setup(info=info, stoich=stoich, abundance_clip=_abundance_clip(manifest),
                 frozen=frozen, static=ae.mdef)


def _direct_setup(config, manifest: dict, directory: Path) -> Setup:
    info = _emu_common_setup(config, manifest, directory, "direct_emulator")
    info["state_dim"] = info["n_species"]
    stoich = load_stoichiometric_matrix(info["dataset"], info["species"])
    return Setup(info=info, stoich=stoich, abundance_clip=_abundance_clip(manifest))


def _emu_build(config, info: dict, rngs: nnx.Rngs) -> nnx.Module:
    return Emulator(
        info["n_physical"],
        info["state_dim"],
        hidden_dims=tuple(config.model.hidden_dims),
        dropout_rate=float(config.dropout),
        state_bounds=_state_bounds(config),
        # absent in configs saved before the field existed: the straight-through gradient
        bound_gradient_slope=float(config.model.get("bound_gradient_slope", 1.0)),
        state_noise_std=float(config.model.get("state_noise_std") or 0.0),
        rngs=rngs,
    )


def _state_bounds(config) -> tuple[float, float] | None:
    """config.model.state_bounds (absent in configs saved before the field existed: None)."""
    bounds = config.model.get("state_bounds")
    if bounds is None:
        return None
    if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
        raise ComponentError(
            f"config.model.state_bounds must be (low, high) with low < high or None, found "
            f"{bounds!r}")
    return float(bounds[0]), float(bounds[1])


def _emu_arrays(setup: Setup, chunk: np.ndarray, put, split: str) -> dict:
    if jax.process_count() > 1:
        # Window tables index process-local tracers; joining them across hosts needs offsets.
        raise NotImplementedError(
            "multi-host training of emulators (sequential data) is not implemented; train them "
            "on one host (any number of local devices) or set config.distributed = False"
        )
    p = setup.info["n_physical"]
    chunk = np.asarray(chunk, np.float32)
    # Training windows every `window_stride` steps (long horizons at the cost of short ones) with
    # the t0 windows repeated; validation keeps every stride-1 window once (the protocol the
    # benchmark's trainer check repeats).
    train = split == "train"
    horizon = setup.info["horizon"] if train else setup.info.get("val_horizon",
                                                                 setup.info["horizon"])
    windows = window_table(chunk, horizon, where=f"split {split!r}",
                           stride=int(setup.info.get("window_stride", 1)) if train else 1,
                           t0_repeats=int(setup.info.get("t0_window_repeats", 1)) if train else 1)
    return {
        "physical": put(np.nan_to_num(chunk[..., :p])),
        "abundances": put(np.nan_to_num(chunk[..., p:])),
        "windows": put(windows),
        # Its static length is the window length (training and validation may differ).
        "window_steps": put(np.arange(horizon, dtype=np.int32)),
    }


def _latent_prepare(setup: Setup, chunk: np.ndarray, put, split: str = "train") -> Prepared:
    """Encode every step once with the frozen autoencoder (eval mode), min-max scale latents."""
    arrays = _emu_arrays(setup, chunk, put, split)
    abund = arrays["abundances"]
    n, t, s = abund.shape
    z = encode_rows(setup.static, setup.frozen["ae_params"], setup.frozen["ae_batch_stats"],
                    abund.reshape(n * t, s))
    arrays["state"] = ((z - setup.frozen["latent_min"]) / setup.frozen["latent_span"]).reshape(
        n, t, -1)
    return Prepared(arrays=arrays, n_items=int(arrays["windows"].shape[0]))


def _direct_prepare(setup: Setup, chunk: np.ndarray, put, split: str = "train") -> Prepared:
    arrays = _emu_arrays(setup, chunk, put, split)
    arrays["state"] = arrays["abundances"]
    return Prepared(arrays=arrays, n_items=int(arrays["windows"].shape[0]))


def _window_batch(setup: Setup, arrays: dict, idx: jax.Array) -> dict:
    """Windows idx [B] -> physical [B, H, P] (drives t -> t+1), state0 [B, D] at the window start,
    target [B, H, S] scaled abundances at steps start + 1 .. start + H."""
    horizon = arrays["window_steps"].shape[0]
    win = jnp.take(arrays["windows"], idx, axis=0)
    tracer, start = win[:, 0], win[:, 1]

    def cut(a, length, offset):
        def one(k, s0):
            return jax.lax.dynamic_slice_in_dim(a[k], s0 + offset, length, axis=0)

        return jax.vmap(one)(tracer, start)

    return {
        "physical": cut(arrays["physical"], horizon, 0),
        "state0": cut(arrays["state"], 1, 0)[:, 0],
        "target": cut(arrays["abundances"], horizon, 1),
    }


def _latent_predict(model, batch: dict, frozen, setup: Setup):
    """Roll the latent emulator over the window and decode with the frozen autoencoder."""
    states = rollout_module(model, batch["state0"], batch["physical"],
                            int(setup.info.get("gradient_window", 0)))  # [B, H, L] scaled
    b, h, d = states.shape
    z = states.reshape(b * h, d) * frozen["latent_span"] + frozen["latent_min"]
    ae = state_lib.merge_model(setup.static, frozen["ae_params"], frozen["ae_batch_stats"],
                               train=False)
    x_hat = ae.decode(z).reshape(b, h, -1)
    return x_hat, batch["target"]


def _direct_predict(model, batch: dict, frozen, setup: Setup):
    return rollout_module(model, batch["state0"], batch["physical"],
                          int(setup.info.get("gradient_window", 0))), batch["target"]


def _no_after(finished: Finished) -> None:
    return None


COMPONENTS: dict[str, Component] = {
    "autoencoder": Component(
        preprocessing_layout="timeless", item="rows", setup=_ae_setup, build_model=_ae_build,
        prepare=_ae_prepare, make_batch=_ae_batch, predict=_ae_predict, after_training=_ae_after,
    ),
    "emulator": Component(
        preprocessing_layout="sequential", item="windows", setup=_latent_setup,
        build_model=_emu_build, prepare=_latent_prepare, make_batch=_window_batch,
        predict=_latent_predict, after_training=_no_after,
    ),
    "direct_emulator": Component(
        preprocessing_layout="sequential", item="windows", setup=_direct_setup,
        build_model=_emu_build, prepare=_direct_prepare, make_batch=_window_batch,
        predict=_direct_predict, after_training=_no_after,
    ),
}


def get_component(kind: str) -> Component:
    if kind not in COMPONENTS:
        raise ComponentError(f"config.type = {kind!r} is unknown; expected one of "
                             f"{sorted(COMPONENTS)}")
    return COMPONENTS[kind]
