"""Preprocessing methods: pure functions from validated trajectories to shard arrays.

A method sees one chunk of whole tracers at a time (`TracerBatch`) and returns float32 arrays;
the pipeline streams chunks through it and writes shards. Registry `PREPROCESSORS` at the bottom.

- `sequential`: [tracers, steps, P + S], scaled physical parameters first, then scaled abundances;
  time order kept, for emulators. With `shift_physical`, row t carries the conditions of row
  t + 1 (those that drive t -> t + 1, AstroChemNet's convention); the last row keeps its own.
  Train/val split by tracer.
- `timeless`: rows [samples, S] of scaled abundances, shuffled, for autoencoders. Split by tracer.
- `random`: the same rows, but train/val assigned row by row regardless of tracer. Rows of one
  trajectory land on both sides, so validation scores are optimistic: a documented *leakage
  ablation*, not a way to measure generalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from astrochem_jax.scaling import Scaler


@dataclass(frozen=True)
class TracerBatch:
    """Validated trajectories of equal length (one chunk of tracers).

    tracer_ids int64 [B]; time_years [B, T]; physical [B, T, P] in physical units (not yet
    shifted); abundances [B, T, S] fractions of H nuclei (tiny negatives already set to 0;
    float32 or float64: the methods scale abundances in float32).
    """

    tracer_ids: np.ndarray
    time_years: np.ndarray
    physical: np.ndarray
    abundances: np.ndarray


def shift_physical(physical: np.ndarray) -> np.ndarray:
    """[B, T, P] -> [B, T, P] with row t holding row t + 1's conditions; the last row repeats."""
    if physical.shape[1] < 2:
        return physical
    return np.concatenate([physical[:, 1:], physical[:, -1:]], axis=1)


def scaled_abundances(abundances: np.ndarray, scaler: Scaler) -> np.ndarray:
    """[..., S] abundances -> [..., S] float32 in [0, 1] (log10 + min-max over the clip range).

    Computed in float32: the clip range (1e-20..1) is well inside float32, and the log10 error
    (~1e-7 relative of <= 20 dex, then divided by the 20 dex span) is at the float32 rounding of
    the stored result, while float32 halves the memory traffic of this, the hottest, step.
    """
    return scaler.scale_abundances(np.asarray(abundances, dtype=np.float32))


def sequential(batch: TracerBatch, scaler: Scaler, shift: bool) -> np.ndarray:
    """-> float32 [B, T, P + S]: scaled (optionally shifted) physical params, scaled abundances."""
    physical = shift_physical(batch.physical) if shift else batch.physical
    n_phys = physical.shape[-1]
    out = np.empty(batch.abundances.shape[:2] + (n_phys + batch.abundances.shape[2],),
                   dtype=np.float32)
    out[..., :n_phys] = scaler.scale_physical(np.asarray(physical, dtype=np.float64))
    out[..., n_phys:] = scaled_abundances(batch.abundances, scaler)
    return out


def rows(batch: TracerBatch, scaler: Scaler, shift: bool) -> np.ndarray:
    """-> float32 [B * T, S] scaled abundances (unshuffled; the writer shuffles)."""
    del shift  # rows carry no physical parameters
    flat = batch.abundances.reshape(-1, batch.abundances.shape[-1])
    return scaled_abundances(flat, scaler)


@dataclass(frozen=True)
class Method:
    """How a method lays out its shards.

    transform: (batch, scaler, shift_physical) -> float32 [N, ...] for one chunk.
    item: "tracer" (axis 0 of a shard is a tracer) or "row".
    split_by: "tracer" (whole tracers go to train or val) or "row" (each row independently).
    shuffle: shuffle axis 0 across the whole split (rows methods).
    """

    transform: Callable[[TracerBatch, Scaler, bool], np.ndarray]
    item: str
    split_by: str
    shuffle: bool
    description: str


PREPROCESSORS: dict[str, Method] = {
    "sequential": Method(sequential, "tracer", "tracer", False,
                         "[tracers, steps, P + S] time-ordered trajectories for emulators"),
    "timeless": Method(rows, "row", "tracer", True,
                       "[rows, S] shuffled abundance rows for autoencoders, split by tracer"),
    "random": Method(rows, "row", "row", True,
                     "[rows, S] shuffled rows split at random regardless of tracer "
                     "(leakage ablation: validation rows share trajectories with training)"),
}
