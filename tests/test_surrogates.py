"""Surrogate rollout: equals a step-by-step Python loop, sharded == unsharded, analytic FLOPs,
clear errors for missing / incompatible components, and (slow) a surrogate loaded from disk
reproduces the trainer's validation numbers."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from astrochem_jax import paths
from astrochem_jax.models import Autoencoder, Emulator
from astrochem_jax.scaling import Scaler
from astrochem_jax.surrogates import (
    SurrogateError,
    ae_emulator_inference_parts,
    ae_emulator_parts,
    build,
    direct_emulator_inference_parts,
    direct_emulator_parts,
    latent_min_span,
    load,
)
from astrochem_jax.surrogates.flops import count_dot_flops, dense_flops
from astrochem_jax.surrogates.rollout import (
    _rollout,
    make_rollout,
    replicate,
    rollout_physical,
    scale_abundances_f32,
    shard_batch,
    unscale_abundances_f32,
)

S, P, L, T, B = 6, 4, 3, 7, 8
SCALER = Scaler(
    abundance_clip=(1e-20, 1.0),
    physical_parameters=("Density", "Radfield", "Av", "gasTemp"),
    physical_log10_min=(2.0, -1.0, -0.5, 1.0),
    physical_log10_max=(6.0, 1.0, 1.5, 2.0),
)


def tiny_ae_emulator():
    ae = Autoencoder(S, hidden_dims=(8,), latent_dim=L, dropout_rate=0.1, rngs=nnx.Rngs(0))
    emulator = Emulator(P, L, hidden_dims=(16,), dropout_rate=0.1, rngs=nnx.Rngs(1))
    # Make the emulator's update visible (its output layer starts ~1e-2 of a default layer).
    emulator.output_layer.kernel[...] = emulator.output_layer.kernel[...] * 50.0
    minmax = np.array([[0.1, 0.2, 0.3], [0.8, 0.7, 0.3]], np.float32)  # last latent constant
    return ae, emulator, minmax


def tiny_inputs(batch: int = B, steps: int = T, seed: int = 0):
    rng = np.random.default_rng(seed)
    x0 = 10.0 ** rng.uniform(-15, -3, size=(batch, S))
    lo, hi = np.array(SCALER.physical_log10_min), np.array(SCALER.physical_log10_max)
    physical = 10.0 ** rng.uniform(lo, hi, size=(batch, steps, P))
    return x0.astype(np.float32), physical.astype(np.float32)


def python_loop(parts, params, x0, physical):
    """The same computation one step at a time, eagerly, without scan or vmap."""
    z = parts.encode(params, scale_abundances_f32(SCALER, x0))
    outputs = [parts.decode(params, z)]
    p_scaled = SCALER.scale_physical(jnp.asarray(physical))
    for t in range(physical.shape[1]):
        z = parts.step(params, p_scaled[:, t], z)
        outputs.append(parts.decode(params, z))
    return np.asarray(unscale_abundances_f32(SCALER, jnp.stack(outputs, axis=1)))


@pytest.mark.parametrize("kind", ["ae_emulator", "direct_emulator"])
def test_rollout_equals_python_loop(kind):
    ae, emulator, minmax = tiny_ae_emulator()
    if kind == "ae_emulator":
        parts, params = ae_emulator_parts(ae, emulator, ae, minmax, minmax)
    else:
        parts, params = direct_emulator_parts(Emulator(P, S, hidden_dims=(16,),
                                                       rngs=nnx.Rngs(2)))
    x0, physical = tiny_inputs()
    out = make_rollout(parts, SCALER)(params, x0, physical)
    assert out.shape == (B, T + 1, S)
    assert out.dtype == jnp.float32
    expected = python_loop(parts, params, x0, physical)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=2e-5, atol=0)
    # The emulator really moves the state: later steps differ from the reconstruction at t0.
    assert np.max(np.abs(np.log10(out[:, -1]) - np.log10(out[:, 0]))) > 1e-3


def _randomize_batchnorms(ae, seed: int = 3):
    """Non-trivial running statistics and affine terms, so BatchNorm folding is really tested."""
    rng = np.random.default_rng(seed)
    for norm in [*ae.encoder_norms, *ae.decoder_norms]:
        n = norm.mean[...].shape[0]
        norm.mean[...] = jnp.asarray(rng.normal(0.0, 0.5, n), jnp.float32)
        norm.var[...] = jnp.asarray(rng.uniform(0.2, 3.0, n), jnp.float32)
        norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32)
        norm.bias[...] = jnp.asarray(rng.normal(0.0, 0.3, n), jnp.float32)


@pytest.mark.parametrize("kind", ["ae_emulator", "direct_emulator"])
def test_inference_form_equals_the_modules(kind):
    """BatchNorm, tied transposes and latent unscaling folded into dense layers compute what the
    NNX modules compute (float32 rounding apart), for every part and the whole rollout."""
    ae, emulator, minmax = tiny_ae_emulator()
    _randomize_batchnorms(ae)
    emulator = Emulator(P, L if kind == "ae_emulator" else S, hidden_dims=(16, 12),
                        state_bounds=(0.0, 1.0), rngs=nnx.Rngs(4))
    emulator.output_layer.kernel[...] = emulator.output_layer.kernel[...] * 50.0
    if kind == "ae_emulator":
        other = np.array([[0.0, 0.1, 0.2], [0.9, 0.6, 0.2]], np.float32)  # decoder's own minmax
        ref_parts, ref_params = ae_emulator_parts(ae, emulator, ae, minmax, other)
        parts, params = ae_emulator_inference_parts(ae, emulator, ae, minmax, other)
    else:
        ref_parts, ref_params = direct_emulator_parts(emulator)
        parts, params = direct_emulator_inference_parts(emulator)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    x0, physical = tiny_inputs(steps=20)
    s0 = scale_abundances_f32(SCALER, x0)
    p0 = SCALER.scale_physical(jnp.asarray(physical[:, 0]))
    z_ref, z = ref_parts.encode(ref_params, s0), parts.encode(params, s0)
    np.testing.assert_allclose(np.asarray(z), np.asarray(z_ref), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(parts.step(params, p0, z)),
                               np.asarray(ref_parts.step(ref_params, p0, z)), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(parts.decode(params, z)),
                               np.asarray(ref_parts.decode(ref_params, z)), rtol=1e-5, atol=1e-6)
    out = np.asarray(make_rollout(parts, SCALER)(params, x0, physical))
    ref = np.asarray(make_rollout(ref_parts, SCALER)(ref_params, x0, physical))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=0)


@pytest.mark.parametrize("chunk_steps", [1, 3, 7, 20])
def test_chunked_decoding_equals_decoding_every_step(chunk_steps):
    """Decoding the states in chunks of steps (with a shorter last chunk) gives the per-step
    rollout, in order."""
    ae, emulator, minmax = tiny_ae_emulator()
    parts, params = ae_emulator_parts(ae, emulator, ae, minmax, minmax)
    x0, physical = tiny_inputs(steps=20)
    s0 = scale_abundances_f32(SCALER, x0)
    p_scaled = SCALER.scale_physical(jnp.asarray(physical))

    def run(c):
        return np.asarray(jax.jit(lambda p, s, q: _rollout(parts, p, s, q, lambda x: x, c))(
            params, s0, p_scaled))

    expected = run(1)
    assert expected.shape == (B, 21, S)
    np.testing.assert_allclose(run(chunk_steps), expected, rtol=1e-6, atol=1e-7)
    loop = python_loop(parts, params, x0, physical)
    np.testing.assert_allclose(np.asarray(unscale_abundances_f32(SCALER, run(chunk_steps))),
                               loop, rtol=2e-5, atol=0)


def test_bounded_emulator_keeps_the_surrogate_state_in_range():
    """An emulator with state_bounds clips its own state: a rollout that diverges without the
    bound stays in [0, 1] and finite with it (no surrogate-side clipping needed)."""
    ae, _, minmax = tiny_ae_emulator()
    x0, physical = tiny_inputs(steps=40)

    def emulator(bounds):
        e = Emulator(P, L, hidden_dims=(16,), state_bounds=bounds, rngs=nnx.Rngs(1))
        e.output_layer.kernel[...] = e.output_layer.kernel[...] * 5000.0  # diverges
        e.output_layer.bias[...] = e.output_layer.bias[...] + 0.3
        return e

    for bounds, in_range in (((0.0, 1.0), True), (None, False)):
        parts, params = ae_emulator_parts(ae, emulator(bounds), ae, minmax, minmax)
        z = parts.encode(params, scale_abundances_f32(SCALER, x0))
        inside = True
        for t in range(physical.shape[1]):
            z = parts.step(params, SCALER.scale_physical(jnp.asarray(physical[:, t])), z)
            inside &= bool(float(z.min()) >= 0.0 and float(z.max()) <= 1.0)
        assert inside == in_range
    out = np.asarray(make_rollout(parts, SCALER)(params, x0, physical))
    bounded_parts, bounded_params = ae_emulator_parts(ae, emulator((0.0, 1.0)), ae, minmax,
                                                      minmax)
    bounded = np.asarray(make_rollout(bounded_parts, SCALER)(bounded_params, x0, physical))
    assert np.all(np.isfinite(bounded))
    np.testing.assert_array_equal(bounded[:, 0], out[:, 0])  # t0 is the reconstruction either way


def test_latent_scaling_matches_trainer_convention():
    """(z - min) / span with span = max - min, or 1 for a constant latent (as the trainer)."""
    lo, span = latent_min_span(np.array([[0.1, 0.2, 0.3], [0.8, 0.7, 0.3]], np.float32))
    np.testing.assert_allclose(np.asarray(lo), [0.1, 0.2, 0.3])
    np.testing.assert_allclose(np.asarray(span), [0.7, 0.5, 1.0], rtol=1e-6)


def test_sharded_rollout_equals_unsharded():
    assert jax.device_count() == 8, "conftest provides 8 CPU devices"
    ae, emulator, minmax = tiny_ae_emulator()
    parts, params = ae_emulator_parts(ae, emulator, ae, minmax, minmax)
    rollout = make_rollout(parts, SCALER)
    x0, physical = tiny_inputs(batch=16)
    single = np.asarray(rollout(params, x0, physical))
    sharded_params = replicate(params)
    x0_s, phys_s = shard_batch(x0), shard_batch(physical)
    assert len(x0_s.sharding.device_set) == 8
    out = rollout(sharded_params, x0_s, phys_s)
    assert out.sharding.shard_shape(out.shape)[0] == 2  # still split over the 8 devices
    np.testing.assert_allclose(np.asarray(out), single, rtol=1e-6, atol=0)
    # A batch that does not divide the device count is replicated, and still works.
    odd = rollout(sharded_params, shard_batch(x0[:3]), shard_batch(physical[:3]))
    np.testing.assert_allclose(np.asarray(odd), single[:3], rtol=1e-6, atol=0)


def test_flops_match_layer_shapes():
    ae, emulator, minmax = tiny_ae_emulator()
    parts, params = ae_emulator_parts(ae, emulator, ae, minmax, minmax)
    x0, physical = tiny_inputs(batch=1)
    counted = count_dot_flops(lambda p, a, b: rollout_physical(parts, SCALER, p, a, b),
                              params, x0, physical)
    encode = dense_flops([S, 8, L])
    step = dense_flops([P + L, 16, L])
    decode = dense_flops([L, 8, S])
    assert counted == encode + T * step + (T + 1) * decode


# ------------------------------------------------------------------------------------------------
# Errors


def _config(kind="ae_emulator", encoder="ae_tiny", emulator="emu_tiny", decoder="ae_tiny"):
    c = ConfigDict()
    c.name = "tiny_surrogate"
    c.type = kind
    c.components = ConfigDict({"encoder": encoder, "emulator": emulator, "decoder": decoder})
    return c


def test_missing_component_names_the_training_command():
    with pytest.raises(SurrogateError) as err:
        build(_config())
    message = str(err.value)
    assert "ae_tiny" in message and "config.json" in message
    assert "python -m astrochem_jax.train --config=configs/components/ae_tiny.py" in message


def test_unknown_type_and_empty_component():
    with pytest.raises(SurrogateError, match="expected one of"):
        build(_config(kind="nope"))
    with pytest.raises(SurrogateError, match="components.emulator is empty"):
        build(_config(kind="direct_emulator", emulator=""))


def test_broken_component_directory_says_how_to_retrain():
    directory = paths.weights_dir("ae_tiny")
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"type": "autoencoder"}))
    with pytest.raises(SurrogateError) as err:
        build(_config())
    assert "could not be loaded" in str(err.value)
    assert "python -m astrochem_jax.train" in str(err.value)


def test_load_by_name_resolves_the_shipped_config():
    # The shipped config resolves; its components are not trained in this private outputs dir.
    with pytest.raises(SurrogateError, match="autoencoder_grav_large"):
        load("ae_emulator_grav")


# ------------------------------------------------------------------------------------------------
# Loaded from disk (tiny components trained once per session; see surrogate_helpers.py)


@pytest.fixture()
def trained(monkeypatch):
    from surrogate_helpers import tiny_trained_outputs

    outputs = tiny_trained_outputs()
    monkeypatch.setenv("ASTROCHEM_JAX_OUTPUTS", str(outputs))
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ae_emulator", "direct_emulator"])
def test_loaded_surrogate_reproduces_trainer_validation(trained, kind):
    from surrogate_helpers import HORIZON, N_STEPS, surrogate_config

    from astrochem_jax.benchmark import trainer_check

    surrogate = build(surrogate_config(kind))
    assert surrogate.type == kind
    assert surrogate.dataset == "tiny"
    dataset = surrogate.component_configs["emulator"]["dataset"]
    assert surrogate.physical_parameters == tuple(dataset["physical_parameters"])
    assert surrogate.physical_parameters[:4] == ("Density", "Radfield", "Av", "gasTemp")
    check = trainer_check(surrogate)
    assert check["available"], check
    # The trainer's validation windows: `val_horizon` steps (0 = full trajectory) or `horizon`.
    val_horizon = surrogate.component_configs["emulator"].get("val_horizon")
    expected = HORIZON if val_horizon is None else (val_horizon or N_STEPS - 1)
    assert check["surrogate"]["horizon"] == expected == surrogate.info["val_horizon"]
    assert check["surrogate"]["n_windows"] == N_STEPS - expected  # one validation tracer
    for key in ("mean_relative_error", "mean_abs_dlog10"):
        assert check["relative_difference"][key] < 1e-4, check


@pytest.mark.slow
def test_incompatible_components_are_refused(trained):
    from surrogate_helpers import AE, DIRECT, EMULATOR, surrogate_config

    wrong_type = surrogate_config()
    wrong_type.components.encoder = wrong_type.components.decoder = DIRECT
    with pytest.raises(SurrogateError, match="needs type autoencoder"):
        build(wrong_type)
    # An emulator trained on AE's latents cannot run with another autoencoder.
    other = paths.weights_dir("ae_other")
    shutil.copytree(paths.weights_dir(AE), other)
    config = surrogate_config()
    config.components.encoder = config.components.decoder = "ae_other"
    with pytest.raises(SurrogateError, match=f"trained on the latents of autoencoder '{AE}'"):
        build(config)
    assert EMULATOR in config.components.emulator


def test_inference_form_of_an_untied_autoencoder_without_batchnorm():
    """Untied decoder kernels, no normalisation, a linear latent and a clipped output fold like
    the default architecture."""
    from astrochem_jax.models import Autoencoder
    from astrochem_jax.surrogates import inference

    ae = Autoencoder(S, hidden_dims=(12, 8), latent_dim=L, latent_noise_std=0.0,
                     normalization="none", tied_weights=False, latent_activation="linear",
                     output_activation="clip", rngs=nnx.Rngs(5))
    tied = Autoencoder(S, hidden_dims=(12, 8), latent_dim=L, latent_noise_std=0.0,
                       normalization="none", rngs=nnx.Rngs(5))
    ae.eval()
    assert not ae.encoder_norms and len(ae.decoder_kernels) == 3
    s = jax.random.uniform(jax.random.key(0), (5, S))
    z = ae.encode(s)
    np.testing.assert_allclose(
        np.asarray(inference.encode(inference.encoder_layers(ae), s, "linear")),
        np.asarray(z), rtol=1e-5, atol=1e-6)
    decoded = np.asarray(ae.decode(z * 40.0))  # far out: some outputs clip at 0 or 1 exactly
    assert decoded.min() == 0.0 or decoded.max() == 1.0
    np.testing.assert_allclose(
        np.asarray(inference.decode(inference.decoder_layers(ae), z * 40.0, "clip")), decoded,
        rtol=1e-5, atol=1e-6)
    # Untied: the decoder does not read the encoder kernels (unlike the tied model).
    assert not np.allclose(np.asarray(ae.decoder_kernel(0)),
                           np.asarray(ae.encoder_layers[-1].kernel[...]).T)
    np.testing.assert_array_equal(np.asarray(tied.decoder_kernel(0)),
                                  np.asarray(tied.encoder_layers[-1].kernel[...]).T)


# ------------------------------------------------------------------------------------------------
# The Surrogate object: a pytree (params leaves, metadata static), its call sharded


def tiny_surrogate(scale: float = 1.0):
    """A Surrogate from the tiny modules (inference form), emulator output layer x `scale`."""
    from astrochem_jax.surrogates import Surrogate, SurrogateMeta
    from astrochem_jax.surrogates.rollout import make_reconstruct

    ae, emulator, minmax = tiny_ae_emulator()
    emulator.output_layer.kernel[...] = emulator.output_layer.kernel[...] * scale
    parts, params = ae_emulator_inference_parts(ae, emulator, ae, minmax, minmax)
    meta = SurrogateMeta(
        name=f"tiny_x{scale}", type="ae_emulator", species=tuple(f"X{k}" for k in range(S)),
        physical_parameters=SCALER.physical_parameters, dataset="tiny",
        preprocessing_method="sequential", components={}, scaler=SCALER, parts=parts,
        rollout=make_rollout(parts, SCALER), reconstruct=make_reconstruct(parts, SCALER),
        info={}, component_configs={}, seen_tracers={})
    return Surrogate(params=replicate(params), meta=meta)


def test_surrogate_is_a_pytree_for_jit_grad_and_vmap():
    from astrochem_jax import surrogates

    a, b = tiny_surrogate(1.0), tiny_surrogate(0.5)
    x0, physical = tiny_inputs(batch=B)
    ya, yb = np.asarray(a(x0, physical)), np.asarray(b(x0, physical))
    assert not np.allclose(ya, yb)
    # Leaves are the parameters only; the metadata is static.
    assert len(jax.tree.leaves(a)) == len(jax.tree.leaves(a.params)) > 0
    # jit over the surrogate itself.
    jitted = jax.jit(lambda s, x, p: s(x, p))(a, jnp.asarray(x0), jnp.asarray(physical))
    np.testing.assert_allclose(np.asarray(jitted), ya, rtol=1e-5, atol=1e-30)
    # vmap over two surrogates' parameters.
    both = jax.vmap(lambda s: s(x0, physical))(surrogates.stack([a, b]))
    assert both.shape == (2, *ya.shape)
    np.testing.assert_allclose(np.asarray(both[0]), ya, rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(np.asarray(both[1]), yb, rtol=1e-5, atol=1e-30)
    # grad with respect to the parameters: a Surrogate of gradients, finite and non-zero.
    target = jnp.log10(jnp.asarray(ya) + 1e-30)

    def loss(s):
        return jnp.mean((jnp.log10(s(x0, physical) + 1e-30) - target) ** 2)

    grads = jax.grad(loss)(b)
    assert type(grads) is type(b) and grads.meta is b.meta
    norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads.params)]
    assert all(np.isfinite(norms)) and sum(norms) > 0
    with pytest.raises(SurrogateError, match="architecture"):
        surrogates.stack([a, tiny_surrogate_direct()])


def tiny_surrogate_direct():
    from astrochem_jax.surrogates import Surrogate, SurrogateMeta

    emulator = Emulator(P, S, hidden_dims=(8,), rngs=nnx.Rngs(3))
    parts, params = direct_emulator_inference_parts(emulator)
    meta = SurrogateMeta(
        name="direct", type="direct_emulator", species=tuple(f"X{k}" for k in range(S)),
        physical_parameters=SCALER.physical_parameters, dataset="tiny",
        preprocessing_method="sequential", components={}, scaler=SCALER, parts=parts,
        rollout=make_rollout(parts, SCALER), reconstruct=None, info={}, component_configs={},
        seen_tracers={})
    return Surrogate(params=replicate(params), meta=meta)


@pytest.mark.parametrize("batch", [16, 5])
def test_surrogate_call_splits_the_batch_over_local_devices(batch):
    """The call shards the batch over the 8 local devices (an uneven batch is padded and cut)
    and equals the same rollout on one device."""
    s = tiny_surrogate()
    x0, physical = tiny_inputs(batch=batch)
    out = s(x0, physical)
    assert out.shape == (batch, T + 1, S)
    if batch % 8 == 0:
        assert len(out.sharding.device_set) == 8
        assert out.sharding.shard_shape(out.shape)[0] == batch // 8
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    single = s.rollout(jax.device_put(jax.device_get(s.params), one),
                       jax.device_put(x0, one), jax.device_put(physical, one))
    assert len(single.sharding.device_set) == 1
    np.testing.assert_allclose(np.asarray(out), np.asarray(single), rtol=1e-5, atol=1e-30)
