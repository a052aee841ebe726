"""Tied-weight autoencoder for scaled abundances (AstroChemNet's architecture, in Flax NNX).

Encoder: for each hidden width h: Linear -> BatchNorm -> exact GELU -> Dropout; then Linear to the
latent and a sigmoid, so latents live in (0, 1) and the Gaussian latent noise (std 0.1 by default,
training mode only) has a fixed meaning relative to their range.

Decoder: the mirror image. Its matrices ARE the encoder kernels, transposed at call time (the same
`nnx.Param` objects are read, nothing is copied or stored twice); it owns only its biases and its
BatchNorms. Hidden layers: z @ W_k^T + b -> BatchNorm -> exact GELU -> Dropout; the last one maps to
the species and ends in a sigmoid, because scaled abundances are in [0, 1].

Modes follow NNX: `model.train()` (BatchNorm uses batch statistics and updates its running
averages, dropout and latent noise on) and `model.eval()` (running averages, deterministic). A new
model starts in training mode, like `nnx.Dropout` / `nnx.BatchNorm`.

Everything is float32 (params, computation, noise) regardless of `jax_enable_x64`.
Random streams: `dropout` for dropout masks, `noise` for the latent noise (an `nnx.Rngs` without
those names falls back to its `default` stream). The streams' keys and counters are NNX state, so
`nnx.split(model)` carries them through `jax.jit` functionally.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from astrochem_jax.models.layers import DTYPE, GaussianNoise, RowMixup, bound_state, gelu_exact

# Running-average decay of BatchNorm statistics: flax's 0.9 is PyTorch's default momentum 0.1, which
# AstroChemNet trains with.
BATCHNORM_MOMENTUM = 0.9
# Hidden-layer normalisation: "batch" (AstroChemNet's BatchNorm) or "none".
NORMALIZATIONS = ("batch", "none")


def _clip_unit(h: jax.Array) -> jax.Array:
    """clip to [0, 1] (scaled abundances) with a damped gradient outside (`bound_state`)."""
    return bound_state(h, 0.0, 1.0, 0.01)


# Activations of the latent layer and of the output layer. "sigmoid" (AstroChemNet) bounds them
# to (0, 1) and never reaches either end; "clip" reaches 0 and 1 exactly (the scaled abundance
# of a species at the clip floor is exactly 0); "linear" leaves a latent unbounded (the latent
# emulator min-max scales latents over the train split anyway).
ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "clip": _clip_unit, "linear": lambda h: h}


def _batch_norm(n_features: int, momentum: float, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(n_features, momentum=momentum, dtype=DTYPE, param_dtype=DTYPE, rngs=rngs)


class Autoencoder(nnx.Module):
    """Tied-weight autoencoder: x [B, S] scaled abundances -> (x_hat [B, S], z [B, L])."""

    def __init__(
        self,
        n_species: int,
        hidden_dims: Sequence[int] = (160, 80),
        latent_dim: int = 14,
        dropout_rate: float = 0.0,
        latent_noise_std: float = 0.1,
        *,
        normalization: str = "batch",
        tied_weights: bool = True,
        latent_activation: str = "sigmoid",
        output_activation: str = "sigmoid",
        row_mixup: float = 0.0,
        batchnorm_momentum: float = BATCHNORM_MOMENTUM,
        rngs: nnx.Rngs,
    ):
        if n_species < 1 or latent_dim < 1 or any(int(h) < 1 for h in hidden_dims):
            raise ValueError(
                "Autoencoder: n_species, latent_dim and hidden_dims must be positive; got "
                f"n_species={n_species}, hidden_dims={list(hidden_dims)}, latent_dim={latent_dim}"
            )
        for name, value in (("latent_activation", latent_activation),
                            ("output_activation", output_activation)):
            if value not in ACTIVATIONS:
                raise ValueError(f"Autoencoder: {name} must be one of {sorted(ACTIVATIONS)}, got "
                                 f"{value!r}")
        self.latent_activation = str(latent_activation)
        self.output_activation = str(output_activation)
        self.n_species = int(n_species)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.latent_dim = int(latent_dim)
        widths = (self.n_species, *self.hidden_dims, self.latent_dim)  # encoder layer widths

        self.encoder_layers = nnx.List(
            [
                nnx.Linear(d_in, d_out, dtype=DTYPE, param_dtype=DTYPE, rngs=rngs)
                for d_in, d_out in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"Autoencoder: normalization must be one of {NORMALIZATIONS}, got "
                             f"{normalization!r}")
        self.normalization = normalization
        if not 0.0 <= batchnorm_momentum < 1.0:
            raise ValueError("Autoencoder: batchnorm_momentum (decay of the running statistics) "
                             f"must be in [0, 1), got {batchnorm_momentum}")
        use_norm = normalization == "batch"
        momentum = float(batchnorm_momentum)
        self.encoder_norms = nnx.List(
            [_batch_norm(h, momentum, rngs) for h in self.hidden_dims] if use_norm else [])
        # Decoder layer k maps widths[-1-k] -> widths[-2-k] with encoder kernel (n-1-k) transposed
        # (tied) or with its own kernel (untied: `decoder_kernels`, built after everything else
        # so that tied models keep their random streams and initial weights).
        self.tied_weights = bool(tied_weights)
        self.decoder_biases = nnx.List(
            [nnx.Param(jnp.zeros((d,), DTYPE)) for d in reversed(widths[:-1])]
        )
        self.decoder_norms = nnx.List(
            [_batch_norm(h, momentum, rngs) for h in reversed(self.hidden_dims)]
            if use_norm else [])
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.latent_noise = GaussianNoise(latent_noise_std, rngs=rngs)
        if not self.tied_weights:
            init = nnx.initializers.lecun_normal()
            self.decoder_kernels = nnx.List([
                nnx.Param(init(rngs.params(), (d_in, d_out), DTYPE))
                for d_in, d_out in zip(widths[::-1][:-1], widths[::-1][1:], strict=True)])
        # Training-time mixup of input rows (`mix_rows`), built last and only when on, so that
        # models without it keep their random streams and initial weights.
        # (RowMixup rejects a value outside [0, 1], a negative one included.)
        self.row_mixup = RowMixup(row_mixup, rngs=rngs) if row_mixup != 0 else None

    def encode(self, x: jax.Array) -> jax.Array:
        """x [B, S] scaled abundances in [0, 1] -> z [B, L] in (0, 1)."""
        h = jnp.asarray(x, DTYPE)
        for k, layer in enumerate(self.encoder_layers[:-1]):
            h = layer(h)
            if self.encoder_norms:
                h = self.encoder_norms[k](h)
            h = self.dropout(gelu_exact(h))
        return ACTIVATIONS[self.latent_activation](self.encoder_layers[-1](h))

    def decoder_kernel(self, k: int) -> jax.Array:
        """Kernel [in, out] of decoder layer k: encoder kernel n-1-k transposed when tied."""
        if self.tied_weights:
            return self.encoder_layers[len(self.encoder_layers) - 1 - k].kernel[...].T
        return self.decoder_kernels[k][...]

    def decode(self, z: jax.Array) -> jax.Array:
        """z [B, L] -> x_hat [B, S] in (0, 1)."""
        h = jnp.asarray(z, DTYPE)
        n = len(self.encoder_layers)
        for k in range(n):
            h = h @ self.decoder_kernel(k) + self.decoder_biases[k][...]
            if k < n - 1:
                if self.decoder_norms:
                    h = self.decoder_norms[k](h)
                h = self.dropout(gelu_exact(h))
        return ACTIVATIONS[self.output_activation](h)

    def mix_rows(self, x: jax.Array) -> jax.Array:
        """x [B, S] -> [B, S]: rows mixed pairwise in training mode (`RowMixup`, the training
        input AND target), x itself in evaluation mode or without mixup."""
        return x if self.row_mixup is None else self.row_mixup(x)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [B, S] -> (x_hat [B, S], z [B, L]); z is the clean latent (before the noise)."""
        z = self.encode(x)
        return self.decode(self.latent_noise(z)), z
