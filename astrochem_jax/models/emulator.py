"""Residual MLP emulator: next state = state + MLP([physical, state]) (Flax NNX), and rollouts.

The same module serves the latent emulator (state = autoencoder latent, D = latent_dim) and the
direct emulator (state = scaled abundances, D = n_species). Hidden layers: Linear -> exact GELU ->
Dropout. The output layer starts small (kernel std ~ `OUTPUT_INIT_SCALE / sqrt(fan_in)`, zero bias)
so an untrained emulator is close to the identity map and early rollouts stay on the data manifold.

Optional `state_bounds = (low, high)`: the next state is clipped to that range after every step,
in training and in inference alike (so the surrogate steps exactly the trained dynamics). Both
state spaces are [0, 1] on the training data (min-max scaled latents over the train split, scaled
abundances); without a bound, an emulator trained on short windows drifts out of the range in long
closed-loop rollouts where nothing pulls it back, and diverges (measured on the default dataset:
latents ~1e10 after 300 steps). Optional `state_noise_std`: Gaussian noise (stream `noise`) on
the state fed into each step in training mode only, so training sees perturbed states like those
the model's own errors produce in closed loop. Optional `physical_noise_std`: in training mode,
`perturb_conditions` shifts each window's scaled physical conditions by one Gaussian offset per
window and parameter, the same at every step (a neighbouring track of the same family): per-tracer
constants (radiation field, zeta, temperature in UCLCHEM free-fall grids) then stop being exact
labels of the training tracers, and the step must depend smoothly on them.

Everything is float32 regardless of `jax_enable_x64`. Dropout draws from the `dropout` stream of
the `nnx.Rngs` (falling back to `default`); a new model starts in training mode (`model.eval()` for
deterministic rollouts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from astrochem_jax.models.layers import (
    DTYPE,
    GaussianNoise,
    bound_state,
    bound_state_restoring,
    gelu_exact,
)

# Relative scale of the output layer's initial weights: small, not zero, so that every layer gets a
# gradient from the first step while the initial update stays ~1e-2 of a default-initialised layer.
OUTPUT_INIT_SCALE = 1e-2


class Emulator(nnx.Module):
    """physical [B, P], state [B, D] -> next state [B, D] = state + MLP(concat(physical, state))."""

    def __init__(
        self,
        n_physical: int,
        state_dim: int,
        hidden_dims: Sequence[int] = (256, 256, 128),
        dropout_rate: float = 0.0,
        *,
        state_bounds: tuple[float, float] | None = None,
        bound_gradient_slope: float = 1.0,
        state_noise_std: float = 0.0,
        physical_noise_std: float = 0.0,
        restoring_bound_gradient: bool = False,
        rngs: nnx.Rngs,
    ):
        if n_physical < 0 or state_dim < 1 or any(int(h) < 1 for h in hidden_dims):
            raise ValueError(
                "Emulator: need n_physical >= 0, state_dim >= 1, positive hidden_dims; got "
                f"n_physical={n_physical}, state_dim={state_dim}, hidden_dims={list(hidden_dims)}"
            )
        if state_bounds is not None and (
            len(state_bounds) != 2 or not float(state_bounds[0]) < float(state_bounds[1])
        ):
            raise ValueError(
                f"Emulator: state_bounds must be (low, high) with low < high or None, got "
                f"{state_bounds!r}"
            )
        for name, std in (("state_noise_std", state_noise_std),
                          ("physical_noise_std", physical_noise_std)):
            if not float(std) >= 0.0:
                raise ValueError(f"Emulator: {name} must be >= 0, got {std!r}")
        self.state_bounds = (
            None if state_bounds is None else (float(state_bounds[0]), float(state_bounds[1]))
        )
        if not 0.0 <= float(bound_gradient_slope) <= 1.0:
            raise ValueError(f"Emulator: bound_gradient_slope must be in [0, 1], got "
                             f"{bound_gradient_slope!r}")
        self.bound_gradient_slope = float(bound_gradient_slope)
        # True: `bound_state_restoring` (inward gradients in full, outward ones x slope);
        # False: `bound_state` (every gradient outside the bounds x slope).
        self.restoring_bound_gradient = bool(restoring_bound_gradient)
        self.n_physical = int(n_physical)
        self.state_dim = int(state_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        widths = (self.n_physical + self.state_dim, *self.hidden_dims)
        self.hidden_layers = nnx.List(
            [
                nnx.Linear(d_in, d_out, dtype=DTYPE, param_dtype=DTYPE, rngs=rngs)
                for d_in, d_out in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.output_layer = nnx.Linear(
            widths[-1],
            self.state_dim,
            dtype=DTYPE,
            param_dtype=DTYPE,
            kernel_init=nnx.initializers.variance_scaling(
                OUTPUT_INIT_SCALE**2, "fan_in", "truncated_normal"
            ),
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        # Only built when used (and after the layers), so emulators without noise keep their
        # random streams and initial weights unchanged.
        self.state_noise = (
            GaussianNoise(float(state_noise_std), rngs=rngs) if state_noise_std > 0 else None
        )
        self.physical_noise = (
            GaussianNoise(float(physical_noise_std), rngs=rngs) if physical_noise_std > 0
            else None
        )

    def perturb_conditions(self, physical_seq: jax.Array) -> jax.Array:
        """physical_seq [B, T, P] -> [B, T, P]: in training mode with `physical_noise_std` > 0,
        plus one N(0, std^2) offset per (window, parameter), constant over the T steps; else
        unchanged. Called on a whole window before its rollout."""
        if self.physical_noise is None:
            return physical_seq
        physical_seq = jnp.asarray(physical_seq, DTYPE)
        offset = self.physical_noise(jnp.zeros((physical_seq.shape[0], 1,
                                                physical_seq.shape[-1]), DTYPE))
        return physical_seq + offset

    def __call__(self, physical: jax.Array, state: jax.Array) -> jax.Array:
        """physical [B, P] scaled conditions driving this step, state [B, D] -> [B, D]."""
        physical = jnp.asarray(physical, DTYPE)
        state = jnp.asarray(state, DTYPE)
        if physical.shape[-1] != self.n_physical or state.shape[-1] != self.state_dim:
            raise ValueError(
                f"Emulator: expected physical [..., {self.n_physical}] and state "
                f"[..., {self.state_dim}], got {physical.shape} and {state.shape}"
            )
        if self.state_noise is not None:
            state = self.state_noise(state)
        h = jnp.concatenate([physical, state], axis=-1)
        for layer in self.hidden_layers:
            h = self.dropout(gelu_exact(layer(h)))
        next_state = state + self.output_layer(h)
        if self.state_bounds is not None:
            clip = bound_state_restoring if self.restoring_bound_gradient else bound_state
            next_state = clip(next_state, *self.state_bounds, self.bound_gradient_slope)
        return next_state


def pinned_state_fraction(states: jax.Array, bounds: tuple[float, float],
                          true_states: jax.Array | None = None) -> jax.Array:
    """Fraction of a rollout's state entries that the clip holds on a bound: states [B, T, D]
    (after the clip, as `rollout` returns them) -> [B] in [0, 1].

    A bounded emulator whose step pushes states outside the training range sees them clipped
    exactly to `low` / `high`, and a state pinned there stays put while the truth moves on: the
    signature of an emulator trapped at its bounds (docs/architecture.md, "Restoring gradient at
    the bound"). With `true_states` [B, T, D], only entries whose true state is strictly inside
    the bounds count: where the truth is outside (a latent of a tracer beyond the training
    range, a scaled abundance at the floor) the clip is right to hold the state. The
    denominator is every entry either way.
    """
    low, high = (jnp.asarray(b, states.dtype) for b in bounds)
    on_bound = (states <= low) | (states >= high)
    if true_states is not None:
        true_states = jnp.asarray(true_states, states.dtype)
        on_bound = on_bound & (true_states > low) & (true_states < high)
    return jnp.mean(on_bound.astype(jnp.float32), axis=tuple(range(1, states.ndim)))


def rollout(
    step: Callable[[jax.Array, jax.Array], jax.Array],
    state0: jax.Array,
    physical_seq: jax.Array,
) -> jax.Array:
    """Autoregressive rollout with `jax.lax.scan` over time.

    step: pure function (physical [B, P], state [B, D]) -> next state [B, D].
    state0 [B, D]: state before the first step (the scan carry starts from it, so it keeps its
    sharding; it is cast to the step's output dtype).
    physical_seq [B, T, P]: the conditions driving each of the T steps.
    Returns states [B, T, D]: the state after each step (states[:, t] = step^(t+1)(state0)).

    `step` must not mutate NNX state (e.g. an `Emulator` in eval mode, or a function of
    `nnx.merge(graphdef, state)` in eval mode); for training-mode dropout use `rollout_module`.
    """

    def body(state, physical):
        next_state = step(physical, state)
        return next_state, next_state

    # The carry keeps state0's sharding but takes the step's output dtype (e.g. float64 data into a
    # float32 model), which scan requires to be fixed.
    out = jax.eval_shape(step, physical_seq[:, 0], state0)
    state0 = jnp.asarray(state0).astype(out.dtype)
    _, states = jax.lax.scan(body, state0, jnp.swapaxes(physical_seq, 0, 1))
    return jnp.swapaxes(states, 0, 1)


def rollout_module(model: nnx.Module, state0: jax.Array, physical_seq: jax.Array,
                   gradient_window: int = 0) -> jax.Array:
    """`rollout` of an NNX module that may update its own state while stepping (dropout RNG
    counters in training mode). The module's state is threaded through the scan carry and written
    back into `model` afterwards, so this works eagerly and inside `jax.jit` (on a model obtained
    with `nnx.merge` there). Shapes as in `rollout`.

    gradient_window k > 0: the carried state is cut from the gradient (`stop_gradient`) before
    steps k, 2k, ... (truncated backpropagation through time). The forward values are unchanged:
    every step still starts from the model's own previous output, so the loss sees closed-loop
    states, but no gradient is a product of more than k step Jacobians, which bounds its growth.
    0 = full backpropagation through the window.
    """
    graphdef, model_state = nnx.split(model)
    out = jax.eval_shape(
        lambda ms, p, s: nnx.merge(graphdef, ms, copy=True)(p, s),
        model_state,
        physical_seq[:, 0],
        state0,
    )
    state0 = jnp.asarray(state0).astype(out.dtype)

    k = int(gradient_window)

    def body(carry, xs):
        carried_model_state, state = carry
        physical, t = xs
        if k > 0:
            state = jnp.where((t > 0) & (t % k == 0), jax.lax.stop_gradient(state), state)
        module = nnx.merge(graphdef, carried_model_state)
        next_state = module(physical, state)
        return (nnx.state(module), next_state), next_state

    steps = jnp.arange(physical_seq.shape[1], dtype=jnp.int32)
    (final_model_state, _), states = jax.lax.scan(
        body, (model_state, state0), (jnp.swapaxes(physical_seq, 0, 1), steps)
    )
    nnx.update(model, final_model_state)
    return jnp.swapaxes(states, 0, 1)
