"""Tiny synthetic preprocessed datasets (shards + manifest per docs/architecture.md) and tiny
component configs for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astrochem_jax import atomic, config_utils, paths, shards
from astrochem_jax.scaling import Scaler

SPECIES = ["H", "H2", "C", "O", "CO", "H2O"]
ELEMENTS = ["H", "C", "O"]
STOICH = np.array(
    [[1, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [2, 0, 1]], dtype=np.float32
)
PHYSICAL = ["Density", "gasTemp"]


def trajectories(n_tracers: int, n_steps: int, seed: int = 0) -> np.ndarray:
    """Smooth scaled trajectories [tracers, steps, P + S] in [0, 1]: physical parameters ramp,
    abundances relax towards tracer-dependent equilibria (log-space exponential relaxation)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n_steps)[None, :, None]
    p0 = rng.uniform(0.1, 0.5, (n_tracers, 1, len(PHYSICAL)))
    physical = p0 + 0.4 * t * rng.uniform(0.5, 1.0, (n_tracers, 1, len(PHYSICAL)))
    start = rng.uniform(0.3, 0.9, (n_tracers, 1, len(SPECIES)))
    end = rng.uniform(0.3, 0.9, (n_tracers, 1, len(SPECIES)))
    rate = rng.uniform(2.0, 6.0, (n_tracers, 1, len(SPECIES)))
    abundances = end + (start - end) * np.exp(-rate * t)
    return np.concatenate([physical, abundances], axis=-1).astype(np.float32)


def learnable_trajectories(n_tracers: int, n_steps: int, seed: int = 0) -> np.ndarray:
    """Scaled trajectories [tracers, steps, P + S] whose dynamics is a fixed function of the
    state and the conditions, as in chemistry: each abundance relaxes by a fraction k(p) per step
    towards an equilibrium x_eq(p) of the current physical parameters p (both smooth functions,
    the same for every tracer), from a common initial state. Learnable from a few tracers."""
    rng = np.random.default_rng(seed)
    weights = np.random.default_rng(1234).normal(size=(len(PHYSICAL), len(SPECIES)))
    t = np.linspace(0.0, 1.0, n_steps)[None, :, None]
    p0 = rng.uniform(0.1, 0.5, (n_tracers, 1, len(PHYSICAL)))
    physical = p0 + 0.4 * t * rng.uniform(0.5, 1.0, (n_tracers, 1, len(PHYSICAL)))
    x_eq = 0.3 + 0.6 / (1.0 + np.exp(-3.0 * (physical - 0.4) @ weights))  # [N, T, S]
    rate = 0.15 + 0.2 * physical.mean(axis=-1, keepdims=True)  # [N, T, 1]
    x = np.empty((n_tracers, n_steps, len(SPECIES)))
    x[:, 0] = 0.9
    for k in range(1, n_steps):
        x[:, k] = x[:, k - 1] + rate[:, k - 1] * (x_eq[:, k - 1] - x[:, k - 1])
    # Row t carries the conditions that drive t -> t+1 (the preprocessing convention).
    return np.concatenate([physical, x], axis=-1).astype(np.float32)


def write_preprocessed(dataset: str = "synth", n_tracers: int = 8, n_steps: int = 12,
                       n_val: int = 2, seed: int = 0, learnable: bool = False,
                       shard_items: dict[str, int] | None = None) -> dict[str, Path]:
    """Write `timeless` and `sequential` preprocessed dirs + the stoichiometric matrix under the
    current outputs dir; returns {method: directory}. `learnable`: `learnable_trajectories`
    instead of the default tracer-specific relaxations. `shard_items`: {method: rows (timeless)
    or tracers (sequential) per shard} (default: one shard per split)."""
    data = (learnable_trajectories if learnable else trajectories)(n_tracers, n_steps, seed)
    tracers = np.arange(n_tracers)
    train_ids, val_ids = tracers[:-n_val], tracers[-n_val:]
    scaler = Scaler((1e-20, 1.0), tuple(PHYSICAL), (0.0, 1.0), (6.0, 3.0))
    p = len(PHYSICAL)
    rng = np.random.default_rng(seed + 1)
    out = {}
    for method in ("timeless", "sequential"):
        directory = paths.preprocessed_dir(dataset, method)
        directory.mkdir(parents=True, exist_ok=True)
        splits = {}
        for split, ids in (("train", train_ids), ("val", val_ids)):
            if method == "sequential":
                array = data[ids]
            else:
                array = data[ids][..., p:].reshape(-1, len(SPECIES))
                array = array[rng.permutation(array.shape[0])]
            per_shard = (shard_items or {}).get(method)
            item_bytes = int(np.prod(array.shape[1:])) * 4
            splits[split] = shards.write_split(
                directory, split, array,
                **({"max_shard_bytes": per_shard * item_bytes} if per_shard else {}))
        manifest = {
            "format_version": shards.FORMAT_VERSION, "method": method, "dataset": dataset,
            "species": SPECIES, "elements": ELEMENTS, "physical_parameters": PHYSICAL,
            "n_species": len(SPECIES), "n_physical": p, "scaling": scaler.to_dict(),
            "splits": splits,
            "split_tracers": {"train": train_ids.tolist(), "val": val_ids.tolist()},
            "cache_key": f"synthetic-{seed}",
        }
        atomic.write_json(directory / shards.MANIFEST_NAME, manifest)
        out[method] = directory
    utils = paths.utils_dir(dataset)
    utils.mkdir(parents=True, exist_ok=True)
    np.save(utils / "stoichiometric_matrix.npy", STOICH)
    return out


def tiny_config(kind: str = "autoencoder", name: str | None = None, dataset: str = "synth"):
    """A component config shrunk to seconds: tiny MLPs, batch 16, 2 epochs."""
    base = {"autoencoder": "autoencoder_grav_large", "emulator": "emulator_grav_sequential",
            "direct_emulator": "direct_emulator_grav"}[kind]
    c = config_utils.load_config(base, "components")
    c.name = name or f"tiny_{kind}"
    c.dataset.name = dataset
    c.epochs = 2
    c.batch_size = 16
    c.eval_batch_size = 16
    c.lr = 3e-3
    c.plateau_patience = 0
    c.stagnant_epoch_patience = 100
    c.converged_loss_ratio = None  # 2-epoch runs: tests of the verdict set it themselves
    if kind != "autoencoder":  # likewise: a 2-epoch emulator pins many states
        c.max_pinned_state_fraction = None
    if kind == "autoencoder":
        c.model.hidden_dims = (8,)
        c.model.latent_dim = 3
    else:
        c.model.hidden_dims = (8, 8)
        c.horizon = 3
        if kind == "emulator":
            c.autoencoder_component = "tiny_autoencoder"
    return c


def enable_compile_cache() -> None:
    """Persistent compile cache (the entry points' default location) unless one is set: the
    training tests compile the same steps several times (resume, parity)."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    cache = Path(__file__).resolve().parent.parent / "outputs" / "jax_cache"
    cache.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
