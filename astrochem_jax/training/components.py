"""Component registry: what differs between the things we train, as small frozen dataclasses of
functions. The generic loop (`training.loop`) knows nothing about autoencoders or emulators.

A component provides
- `setup(config, manifest, preprocessed_dir) -> Setup`: checks and static context (stoichiometric
  matrix, frozen autoencoder, model dimensions recorded in `config.json`);
- `build_model(config, info, rngs) -> nnx.Module` from the config and `Setup.info`;
- `prepare(setup, chunk: data.HostChunk, split="train") -> Prepared`: the chunk's arrays on the
  devices (global arrays sharded over `data`, `chunk.put`) and the number of items (rows or
  windows; emulators cut training windows every `window_stride` steps, validation windows every
  step; padding rows give no item);
- `make_batch(setup, arrays, idx [B], mesh) -> batch`: cut a batch on device (inside jit) from
  global item indices `idx` (the same on every device: `data.gather_rows`);
- `predict(model, batch, frozen, setup) -> (pred_scaled [..., S], true_scaled [..., S], aux)`:
  aux {name: [B]} per-item diagnostics that validation averages next to its metrics (bounded
  emulators: `pinned_state_fraction`, the state entries held on a bound while the true state,
  the target's latent or scaled abundances, is inside), {} when there are none;
- `after_training(finished)`: artifacts computed with the best weights (autoencoder latents
  min/max, reduced over every process; written by process 0).
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
from astrochem_jax.models.autoencoder import BATCHNORM_MOMENTUM, Autoencoder
from astrochem_jax.models.emulator import Emulator, pinned_state_fraction, rollout_module
from astrochem_jax.training import data as data_lib
from astrochem_jax.training import mesh as mesh_lib
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
    # frozen carries a leading ensemble-member axis (a latent emulator ensemble trained on an
    # autoencoder ensemble: member k on autoencoder member k).
    frozen_per_member: bool = False


@dataclasses.dataclass(frozen=True)
class Prepared:
    arrays: dict
    n_items: int


@dataclasses.dataclass(frozen=True)
class Finished:
    """What `after_training` hooks receive: the best weights (replicated on `mesh`) and the train
    split as prepared chunks (`train_chunks()` yields `Prepared`, at most two on the devices)."""

    config: Any
    setup: Setup
    mdef: state_lib.ModelDef
    params: Any
    batch_stats: Any
    train_chunks: Callable[[], Iterable[Prepared]]
    directory: Path
    mesh: Any = None
    members: int = 1  # ensembles: params / batch_stats carry a leading member axis


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
    # (setup, chunk: HostChunk, split) -> items of the chunk, without putting it on the devices
    # (streamed splits: the learning-rate schedule needs the epoch's batch count up front).
    count_items: Callable[..., int]
    # Component types `config.init_from` may name besides this one (their weights must fit
    # this component's model; `training.loop.load_warm_start`).
    warm_start_types: tuple[str, ...] = ()


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
        row_mixup=float(config.model.get("row_mixup") or 0.0),
        batchnorm_momentum=float(config.model.get("batchnorm_momentum", BATCHNORM_MOMENTUM)),
        rngs=rngs,
    )


def _ae_prepare(setup: Setup, chunk: data_lib.HostChunk, split: str = "train") -> Prepared:
    # Padding rows (NaN on the host) become zeros; they are never indexed (n_items real rows).
    x = chunk.put(np.nan_to_num(chunk.local))
    return Prepared(arrays={"x": x}, n_items=int(chunk.n_valid))


def _ae_count(setup: Setup, chunk: data_lib.HostChunk, split: str = "train") -> int:
    return int(chunk.n_valid)


def _ae_batch(setup: Setup, arrays: dict, idx: jax.Array, mesh) -> dict:
    return {"x": data_lib.gather_rows(mesh, arrays["x"], idx)}


def _ae_predict(model, batch: dict, frozen, setup: Setup):
    x = model.mix_rows(batch["x"])  # training mode with row mixup: mixed rows are the target
    x_hat, _ = model(x)
    return x_hat, x, {}


def encode_rows(mdef: state_lib.ModelDef, params, batch_stats, rows: jax.Array,
                mesh=None) -> jax.Array:
    """Eval-mode latents of scaled abundances rows [R, S] -> [R, L] (float32).

    rows: a global array sharded over the `data` axis of `mesh` (each device encodes its own
    rows, `ENCODE_BATCH_ROWS` at a time: bounded memory), or, with mesh None, any array."""
    return _jit_encode(mdef, mesh)(params, batch_stats, rows)


_ENCODERS: dict[tuple, tuple[state_lib.ModelDef, Callable]] = {}


def _jit_encode(mdef: state_lib.ModelDef, mesh) -> Callable:
    """One jitted encoder per (model definition, mesh), kept alive with it (ids not reused)."""
    key = (id(mdef), mesh)
    entry = _ENCODERS.get(key)
    if entry is None:
        def encode(params, batch_stats, rows):
            model = state_lib.merge_model(mdef, params, batch_stats, train=False)
            if mesh is None:
                return model.encode(rows)
            return data_lib.map_local_rows(mesh, model.encode, rows, ENCODE_BATCH_ROWS)

        entry = _ENCODERS[key] = (mdef, jax.jit(encode))
    return entry[1]


def _masked_minmax(z: jax.Array, n_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Min and max over the first n_valid rows of z [N, L] (padding rows ignored) -> [L] each."""
    valid = (jnp.arange(z.shape[0]) < n_valid)[:, None]
    return (jnp.min(jnp.where(valid, z, jnp.inf), axis=0),
            jnp.max(jnp.where(valid, z, -jnp.inf), axis=0))


def _ae_after(finished: Finished) -> None:
    """Latent min/max over the TRAIN split with the best weights (eval mode) -> [2, L] (an
    ensemble: [M, 2, L], each member its own), reduced over every chunk and every process;
    process 0 writes it."""
    members = int(finished.members)
    lo, hi = [None] * members, [None] * members
    minmax_fn = jax.jit(_masked_minmax, out_shardings=mesh_lib.replicated(finished.mesh))
    for prepared in finished.train_chunks():
        if prepared.n_items == 0:
            continue
        for m in range(members):
            params, stats = ((finished.params, finished.batch_stats) if members == 1 else
                             state_lib.member_of((finished.params, finished.batch_stats), m))
            z = encode_rows(finished.mdef, params, stats, prepared.arrays["x"], finished.mesh)
            z_lo, z_hi = mesh_lib.fetch(minmax_fn(z, np.int32(prepared.n_items)))
            lo[m] = z_lo if lo[m] is None else np.minimum(lo[m], z_lo)
            hi[m] = z_hi if hi[m] is None else np.maximum(hi[m], z_hi)
    minmax = np.stack([np.stack([a, b]) for a, b in zip(lo, hi, strict=True)]).astype(np.float32)
    if members == 1:
        minmax = minmax[0]
    if mesh_lib.is_main_process():
        with atomic.atomic_path(finished.directory / LATENTS_MINMAX) as tmp, \
                open(tmp, "wb") as f:
            np.save(f, minmax, allow_pickle=False)
    mesh_lib.barrier("latents_minmax")


# --- emulators (latent and direct) ---------------------------------------------------------------


def tracer_lengths(chunk: np.ndarray) -> np.ndarray:
    """Valid steps of each tracer of a sequential chunk [N, T, F]: the leading finite steps
    (tracers are NaN-padded at the end; padding rows have length 0) -> int32 [N]."""
    finite = np.all(np.isfinite(chunk), axis=2)  # [N, T]
    n_steps = chunk.shape[1]
    return np.where(finite.all(axis=1), n_steps, np.argmin(finite, axis=1)).astype(np.int32)


def window_table(chunk: np.ndarray | None, horizon: int, where: str = "", stride: int = 1,
                 t0_repeats: int = 1, lengths: np.ndarray | None = None,
                 end_repeats: int = 0) -> np.ndarray:
    """Windows of `horizon` steps inside a tracer, starting every `stride` steps: int32 [W, 2]
    (tracer, start), built with numpy from the tracers' valid lengths (`lengths` [N], default
    `tracer_lengths(chunk)`).

    A window needs horizon + 1 valid steps (its state and `horizon` targets). Tracers may be
    padded with NaN at the end (valid length = leading finite steps); tracers shorter than the
    window are logged and skipped. With stride > 1 the per-tracer start offset is staggered
    (tracer k starts at k mod stride) so that, over the tracers, every start time is covered, and
    every tracer keeps its window from t0 (the start of every closed-loop rollout, and the
    fastest chemistry: the hardest step). `t0_repeats` > 1 lists every window from t0 that many
    times (an epoch then samples them more often). `end_repeats` > 0 adds that many windows
    ending at the tracer's last valid step: the strided windows reach the last steps of a
    trajectory at most once (step T - 1 is a target of ~1/stride windows, a middle step of
    horizon/stride). Rows are grouped by tracer, in tracer order, starts ascending after the
    repeated t0 windows, the end windows last.
    """
    if int(stride) < 1 or int(t0_repeats) < 1 or int(end_repeats) < 0:
        raise ValueError(f"window_table: stride and t0_repeats must be >= 1 and end_repeats "
                         f">= 0, found {stride}, {t0_repeats} and {end_repeats}")
    stride, t0_repeats, horizon = int(stride), int(t0_repeats), int(horizon)
    lengths = tracer_lengths(chunk) if lengths is None else np.asarray(lengths, np.int64)
    lengths = np.asarray(lengths, np.int64)
    short = np.flatnonzero((lengths > 0) & (lengths < horizon + 1))
    if short.size:
        log_line(
            f"{where or 'sequential data'}: {short.size} of {int(np.sum(lengths > 0))} tracers "
            f"have fewer than horizon + 1 = {horizon + 1} steps (lengths "
            f"{sorted(set(lengths[short].tolist()))}) and give no training window"
        )
    n_starts = lengths - horizon  # valid starts: 0 .. n_starts - 1
    tracer = np.arange(lengths.shape[0], dtype=np.int64)
    offset = tracer % stride
    ok = n_starts >= 1
    n_range = np.where(ok & (n_starts > offset), (n_starts - offset + stride - 1) // stride, 0)
    n_zero = np.where(ok, (t0_repeats - 1) + (offset != 0), 0)  # t0 windows before the range
    counts = n_zero + n_range
    rows = np.repeat(tracer, counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    pos = np.arange(rows.shape[0], dtype=np.int64) - first
    zeros, offsets = np.repeat(n_zero, counts), np.repeat(offset, counts)
    starts = np.where(pos < zeros, 0, offsets + (pos - zeros) * stride)
    table = np.stack([rows, starts], axis=1).astype(np.int32).reshape(-1, 2)
    if int(end_repeats) == 0:
        return table
    ends = np.repeat(tracer[ok], int(end_repeats))
    extra = np.stack([ends, np.repeat(n_starts[ok] - 1, int(end_repeats))], axis=1)
    table = np.concatenate([table, extra.astype(np.int32).reshape(-1, 2)])
    return table[np.argsort(table[:, 0], kind="stable")]


def _emu_common_setup(config, manifest: dict, directory: Path, component: str) -> dict:
    _check_layout(manifest, Path(directory), "sequential", component)
    info = _base_info(config, manifest)
    width = manifest["splits"]["train"]["shape"][-1]
    if width != info["n_physical"] + info["n_species"]:
        raise ComponentError(
            f"{directory}/manifest.json: sequential rows have {width} features, expected "
            f"n_physical + n_species = {info['n_physical']} + {info['n_species']}"
        )
    train_steps = int(manifest["splits"]["train"]["shape"][1])
    # 0: the full trajectory from t0 (one window per tracer with window_stride >= the length):
    # the closed-loop rollout the surrogate is scored on, e.g. to fine-tune a trained emulator.
    horizon = train_steps - 1 if int(config.horizon) == 0 else int(config.horizon)
    if horizon < 1:
        raise ComponentError(f"config.horizon must be 0 (full trajectory) or >= 1, found "
                             f"{config.horizon}")
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
    if config.get("max_pinned_state_fraction") is not None and _state_bounds(config) is None:
        raise ComponentError(
            f"config.max_pinned_state_fraction = {config.max_pinned_state_fraction!r} needs a "
            "bounded state (config.model.state_bounds), found state_bounds None; set "
            "--config.max_pinned_state_fraction=None or give the bounds")
    for field in ("window_stride", "t0_window_repeats"):
        value = int(config.get(field) or 1)
        if value < 1:
            raise ComponentError(f"config.{field} must be >= 1, found {value}")
        info[field] = value
    end_repeats = int(config.get("end_window_repeats") or 0)
    if end_repeats < 0:
        raise ComponentError(f"config.end_window_repeats must be >= 0, found {end_repeats}")
    if end_repeats:  # recorded only when used: configs without the field train as before
        info["end_window_repeats"] = end_repeats
    return info


def latent_min_span(latents_minmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """latents_minmax [..., 2, L] (min, max over the train split) -> (min [..., L], span
    [..., L]) float32, span = max - min where positive, else 1: the emulator's state is
    (z - min) / span."""
    minmax = np.asarray(latents_minmax, np.float32)
    lo, hi = minmax[..., 0, :], minmax[..., 1, :]
    return lo, np.where(hi > lo, hi - lo, np.float32(1.0)).astype(np.float32)


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
    ae_members = int(ae.ensemble_size)
    members = int(config.get("ensemble_size") or 1)
    expected = (2, latent_dim) if ae_members == 1 else (ae_members, 2, latent_dim)
    if ae.latents_minmax.shape != expected:
        raise ComponentError(
            f"{where}: {LATENTS_MINMAX} has shape {ae.latents_minmax.shape}, expected "
            f"{expected}"
        )
    if ae_members > 1 and members != ae_members:
        raise ComponentError(
            f"{where}: an ensemble of {ae_members} autoencoders trains an ensemble of "
            f"{ae_members} emulators (member k on autoencoder member k), but "
            f"config.ensemble_size = {members}; set --config.ensemble_size={ae_members}, or "
            "train the emulators over a single autoencoder")
    info.update(latent_dim=latent_dim, state_dim=latent_dim,
                autoencoder_component=str(config.autoencoder_component),
                # The exact autoencoder (weights + latent scaling) these latents come from:
                # resuming and surrogates refuse any other.
                autoencoder_fingerprint=ae.fingerprint)
    info["autoencoder_members"] = ae_members
    stoich = load_stoichiometric_matrix(info["dataset"], info["species"])
    lo, span = latent_min_span(ae.latents_minmax)
    frozen = {"ae_params": ae.params, "ae_batch_stats": ae.batch_stats,
              "latent_min": jnp.asarray(lo, F32), "latent_span": jnp.asarray(span, F32)}
    return Setup(info=info, stoich=stoich, abundance_clip=_abundance_clip(manifest),
                 frozen=frozen, static=ae.mdef, frozen_per_member=ae_members > 1)


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
        physical_noise_std=float(config.model.get("physical_noise_std") or 0.0),
        # absent in configs saved before the field existed: the damped clip
        restoring_bound_gradient=bool(config.model.get("restoring_bound_gradient", False)),
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


def _split_windows(setup: Setup, chunk: data_lib.HostChunk, split: str
                   ) -> tuple[int, np.ndarray]:
    """(window length, window table [W, 2]) of the chunk's tracers for `split`. Training windows
    every `window_stride` steps (long horizons at the cost of short ones) with the t0 windows
    repeated and, if set, windows ending at the last step; validation keeps every stride-1
    window once (the protocol the benchmark's trainer check repeats)."""
    info, train = setup.info, split == "train"
    horizon = info["horizon"] if train else info.get("val_horizon", info["horizon"])
    lengths = chunk.all_rows(tracer_lengths(chunk.local))  # [n_rows], padding tracers 0
    windows = window_table(None, horizon, where=f"split {split!r}",
                           stride=int(info.get("window_stride", 1)) if train else 1,
                           t0_repeats=int(info.get("t0_window_repeats", 1)) if train else 1,
                           end_repeats=int(info.get("end_window_repeats", 0)) if train else 0,
                           lengths=lengths)
    return int(horizon), windows


def _emu_arrays(setup: Setup, chunk: data_lib.HostChunk, split: str) -> dict:
    """The chunk's tracers as one global array sharded over `data` and its window table (global
    tracer indices of the chunk, from every process's tracer lengths), replicated."""
    horizon, windows = _split_windows(setup, chunk, split)
    return {
        "sequence": chunk.put(np.nan_to_num(chunk.local)),  # [N, T, P + S]
        "windows": mesh_lib.put_replicated(windows, chunk.mesh),
        # Its static length is the window length (training and validation may differ).
        "window_steps": mesh_lib.put_replicated(np.arange(horizon, dtype=np.int32), chunk.mesh),
    }


def _emu_count(setup: Setup, chunk: data_lib.HostChunk, split: str = "train") -> int:
    return int(_split_windows(setup, chunk, split)[1].shape[0])


def _latent_prepare(setup: Setup, chunk: data_lib.HostChunk, split: str = "train") -> Prepared:
    """Encode every step of the chunk once with the frozen autoencoder (eval mode, each device
    its own tracers), min-max scale the latents: state [N, T, L]."""
    arrays = _emu_arrays(setup, chunk, split)
    if not setup.frozen_per_member:  # one autoencoder: every member shares the encoded states
        arrays["state"] = _latent_states(setup, chunk.mesh)(setup.frozen, arrays["sequence"])
    return Prepared(arrays=arrays, n_items=int(arrays["windows"].shape[0]))


_LATENT_STATES: dict[tuple, tuple[Any, Callable]] = {}


def _latent_states(setup: Setup, mesh) -> Callable:
    key = (id(setup.static), mesh, setup.info["n_physical"])
    entry = _LATENT_STATES.get(key)
    if entry is None:
        p = setup.info["n_physical"]
        mdef = setup.static

        def states(frozen, sequence):
            n, t, _ = sequence.shape
            model = state_lib.merge_model(mdef, frozen["ae_params"], frozen["ae_batch_stats"],
                                          train=False)
            rows = sequence[..., p:].reshape(n * t, -1)
            z = data_lib.map_local_rows(mesh, model.encode, rows, ENCODE_BATCH_ROWS)
            return ((z - frozen["latent_min"]) / frozen["latent_span"]).reshape(n, t, -1)

        entry = _LATENT_STATES[key] = (mdef, jax.jit(states))
    return entry[1]


def _direct_prepare(setup: Setup, chunk: data_lib.HostChunk, split: str = "train") -> Prepared:
    arrays = _emu_arrays(setup, chunk, split)
    return Prepared(arrays=arrays, n_items=int(arrays["windows"].shape[0]))


def _window_batch(setup: Setup, arrays: dict, idx: jax.Array, mesh) -> dict:
    """Windows idx [B] -> physical [B, H, P] (drives t -> t+1), state0 [B, D] at the window start,
    target [B, H, S] scaled abundances at steps start + 1 .. start + H."""
    horizon = arrays["window_steps"].shape[0]
    p = setup.info["n_physical"]
    win = jnp.take(arrays["windows"], idx, axis=0)
    tracer, start = win[:, 0], win[:, 1]
    seq = data_lib.gather_windows(mesh, arrays["sequence"], tracer, start, horizon + 1)
    batch = {"physical": seq[:, :-1, :p], "target": seq[:, 1:, p:]}
    if "state" in arrays:  # latent emulator: the encoded state at the window start
        batch["state0"] = data_lib.gather_windows(mesh, arrays["state"], tracer, start, 1)[:, 0]
    elif "latent_dim" in setup.info:  # one autoencoder per member: encoded in `predict`
        batch["x0"] = seq[:, 0, p:]
    else:  # direct emulator: the scaled abundances themselves
        batch["state0"] = seq[:, 0, p:]
    return batch


def _latent_predict(model, batch: dict, frozen, setup: Setup):
    """Roll the latent emulator over the window and decode with the frozen autoencoder (the
    window's first state encoded here when it was not encoded in `prepare`)."""
    ae = state_lib.merge_model(setup.static, frozen["ae_params"], frozen["ae_batch_stats"],
                               train=False)
    state0 = batch.get("state0")
    if state0 is None:
        state0 = (ae.encode(batch["x0"]) - frozen["latent_min"]) / frozen["latent_span"]
    states = rollout_module(model, state0, model.perturb_conditions(batch["physical"]),
                            int(setup.info.get("gradient_window", 0)))  # [B, H, L] scaled
    b, h, d = states.shape
    z = states.reshape(b * h, d) * frozen["latent_span"] + frozen["latent_min"]
    x_hat = ae.decode(z).reshape(b, h, -1)
    aux = {}
    if model.state_bounds is not None:  # pinned where the target's own latent is inside
        true_states = (ae.encode(batch["target"].reshape(b * h, -1)) - frozen["latent_min"]) \
            / frozen["latent_span"]
        aux["pinned_state_fraction"] = pinned_state_fraction(
            states, model.state_bounds, true_states.reshape(b, h, d))
    return x_hat, batch["target"], aux


def _direct_predict(model, batch: dict, frozen, setup: Setup):
    states = rollout_module(model, batch["state0"], model.perturb_conditions(batch["physical"]),
                            int(setup.info.get("gradient_window", 0)))  # scaled abundances
    aux = ({} if model.state_bounds is None else {"pinned_state_fraction": pinned_state_fraction(
        states, model.state_bounds, batch["target"])})
    return states, batch["target"], aux


def _no_after(finished: Finished) -> None:
    return None


COMPONENTS: dict[str, Component] = {
    "autoencoder": Component(
        preprocessing_layout="timeless", item="rows", setup=_ae_setup, build_model=_ae_build,
        prepare=_ae_prepare, make_batch=_ae_batch, predict=_ae_predict, after_training=_ae_after,
        count_items=_ae_count,
    ),
    "emulator": Component(
        preprocessing_layout="sequential", item="windows", setup=_latent_setup,
        build_model=_emu_build, prepare=_latent_prepare, make_batch=_window_batch,
        predict=_latent_predict, after_training=_no_after, count_items=_emu_count,
    ),
    "direct_emulator": Component(
        preprocessing_layout="sequential", item="windows", setup=_direct_setup,
        build_model=_emu_build, prepare=_direct_prepare, make_batch=_window_batch,
        predict=_direct_predict, after_training=_no_after, count_items=_emu_count,
    ),
}


# One file per further component type, registered here (it imports this module's helpers).
from astrochem_jax.training import closed_loop_decoder  # noqa: E402

COMPONENTS[closed_loop_decoder.KIND] = closed_loop_decoder.COMPONENT


def get_component(kind: str) -> Component:
    if kind not in COMPONENTS:
        raise ComponentError(f"config.type = {kind!r} is unknown; expected one of "
                             f"{sorted(COMPONENTS)}")
    return COMPONENTS[kind]
