"""Flax NNX models (no training logic): registry `MODELS` and `count_parameters`.

Functional use (flax 0.12): `graphdef, params, stats, rest = nnx.split(m, nnx.Param, nnx.BatchStat,
...)`; inside a jitted / differentiated function rebuild with
`nnx.merge(graphdef, params, stats, rest, copy=True)` and read the updated BatchNorm statistics and
RNG counters back with `nnx.split` again. `copy=True` matters under `jax.grad`: without it the
Variables of the non-differentiated states belong to the outer trace and training-mode BatchNorm
raises `TraceContextError` when it updates its running averages.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from astrochem_jax.models.autoencoder import Autoencoder
from astrochem_jax.models.emulator import Emulator, rollout, rollout_module

MODELS = {"autoencoder": Autoencoder, "emulator": Emulator}


def count_parameters(model: nnx.Module) -> int:
    """Number of trainable scalars (`nnx.Param` leaves; BatchNorm statistics and RNG state are not
    parameters). Tied weights count once."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ["MODELS", "Autoencoder", "Emulator", "count_parameters", "rollout", "rollout_module"]
