"""Inference form of trained components: plain float32 dense layers with everything that is
affine at inference folded into the matrices.

The trainer's modules (`models.Autoencoder`, `models.Emulator`) are written for training:
BatchNorm layers, tied decoder kernels read transposed at call time, latent min-max scaling
around the emulator. In evaluation mode all of that is affine, so it folds into the neighbouring
dense layer once, outside the jitted rollout:

- BatchNorm (running statistics): `(x W + b - mean) * g + beta` with `g = scale / sqrt(var + eps)`
  is the layer `x (W * g) + ((b - mean) * g + beta)`.
- The decoder's tied kernels are materialised transposed (contiguous, no per-step transpose).
- The decoder's latent unscaling `z = state * span + min` folds into its first layer:
  `z W + b = state (span[:, None] * W) + (min W + b)`.

What is left per layer is one matrix product, a bias and the activation, so the rollout's time
goes to the matrix products it is measured against. The folded functions compute the same values
as the modules up to float32 rounding (tests: equal within 1e-5 relative).

A dense layer is a dict `{"kernel": [in, out], "bias": [out]}`; an MLP is a list of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from astrochem_jax.models.autoencoder import ACTIVATIONS
from astrochem_jax.models.layers import DTYPE, bound_state, gelu_exact

Dense = dict[str, jax.Array]


def _array(value) -> np.ndarray:
    """An nnx Variable or array as a float64 numpy array (folding is done in float64, then cast)."""
    return np.asarray(value[...] if isinstance(value, nnx.Variable) else value, np.float64)


def _dense(kernel: np.ndarray, bias: np.ndarray) -> Dense:
    return {"kernel": jnp.asarray(kernel, DTYPE), "bias": jnp.asarray(bias, DTYPE)}


def fold_batchnorm(kernel: np.ndarray, bias: np.ndarray, norm) -> tuple[np.ndarray, np.ndarray]:
    """A dense layer kernel [in, out], bias [out] followed by an `nnx.BatchNorm` over `out`
    (running statistics) -> the equivalent (kernel [in, out], bias [out])."""
    gain = 1.0 / np.sqrt(_array(norm.var) + float(norm.epsilon))
    if norm.use_scale:
        gain = gain * _array(norm.scale)
    shift = _array(norm.bias) if norm.use_bias else 0.0
    return kernel * gain[None, :], (bias - _array(norm.mean)) * gain + shift


def encoder_layers(autoencoder) -> list[Dense]:
    """`Autoencoder.encode` as dense layers: hidden layers (BatchNorm folded, then exact GELU),
    then the latent layer (then its latent activation)."""
    layers = []
    for k, layer in enumerate(autoencoder.encoder_layers):
        kernel, bias = _array(layer.kernel), _array(layer.bias)
        if k < len(autoencoder.encoder_norms):
            kernel, bias = fold_batchnorm(kernel, bias, autoencoder.encoder_norms[k])
        layers.append(_dense(kernel, bias))
    return layers


def decoder_layers(autoencoder, latent_min=None, latent_span=None) -> list[Dense]:
    """`Autoencoder.decode` as dense layers on the emulator's state: the latent unscaling
    `state * span + min` (when given, [L] each) folded into the first layer, the tied kernels
    transposed, BatchNorm folded; hidden layers then exact GELU, the last then the output
    activation."""
    n = len(autoencoder.encoder_layers)
    layers = []
    for k in range(n):
        kernel = np.array(autoencoder.decoder_kernel(k), np.float64)  # [in, out], contiguous
        bias = _array(autoencoder.decoder_biases[k])
        if k == 0 and latent_min is not None:
            lo, span = _array(latent_min), _array(latent_span)
            bias = bias + lo @ kernel
            kernel = kernel * span[:, None]
        if k < len(autoencoder.decoder_norms):
            kernel, bias = fold_batchnorm(kernel, bias, autoencoder.decoder_norms[k])
        layers.append(_dense(kernel, bias))
    return layers


def emulator_layers(emulator) -> dict:
    """`Emulator.__call__` as dense layers: {"hidden": [...], "output": Dense}; its state bounds
    are static (see `emulator_step`)."""
    hidden = [_dense(_array(layer.kernel), _array(layer.bias)) for layer in emulator.hidden_layers]
    out = emulator.output_layer
    return {"hidden": hidden, "output": _dense(_array(out.kernel), _array(out.bias))}


def mlp(layers: list[Dense], x: jax.Array) -> jax.Array:
    """x [..., in] -> [..., out]: exact GELU after every layer but the last (no final
    activation)."""
    h = jnp.asarray(x, DTYPE)
    for layer in layers[:-1]:
        h = gelu_exact(h @ layer["kernel"] + layer["bias"])
    return h @ layers[-1]["kernel"] + layers[-1]["bias"]


def encode(layers: list[Dense], s: jax.Array, activation: str = "sigmoid") -> jax.Array:
    """Scaled abundances s [..., S] -> autoencoder latents z [..., L] (the autoencoder's
    `latent_activation`, a key of `models.autoencoder.ACTIVATIONS`)."""
    return ACTIVATIONS[activation](mlp(layers, s))


def decode(layers: list[Dense], state: jax.Array, activation: str = "sigmoid") -> jax.Array:
    """Emulator state [..., L] -> scaled abundances [..., S] in [0, 1] (the autoencoder's
    `output_activation`)."""
    return ACTIVATIONS[activation](mlp(layers, state))


def emulator_step(layers: dict, physical: jax.Array, state: jax.Array,
                  state_bounds: tuple[float, float] | None) -> jax.Array:
    """physical [..., P] scaled, state [..., D] -> next state [..., D] =
    clip(state + MLP([physical, state]), *state_bounds) (no clip when bounds are None), the
    trained `models.Emulator`'s own bound."""
    state = jnp.asarray(state, DTYPE)
    h = jnp.concatenate([jnp.asarray(physical, DTYPE), state], axis=-1)
    next_state = state + mlp([*layers["hidden"], layers["output"]], h)
    if state_bounds is not None:
        next_state = bound_state(next_state, *state_bounds)
    return next_state
