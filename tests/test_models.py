"""Flax NNX models: shapes, float32 under x64, tied weights, train/eval modes, functional RNG state
through jit, near-identity emulator, rollout == Python loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from astrochem_jax.models import (
    MODELS,
    Autoencoder,
    Emulator,
    count_parameters,
    rollout,
    rollout_module,
)
from astrochem_jax.models.autoencoder import gelu_exact
from astrochem_jax.models.emulator import bound_state, pinned_state_fraction
from astrochem_jax.models.layers import bound_state_restoring

S, HIDDEN, LATENT, B = 12, (10, 6), 4, 16
P = 3


def _x(key=0, shape=(B, S)):
    return jax.random.uniform(jax.random.key(key), shape, jnp.float32)


def _ae(dropout_rate=0.0, latent_noise_std=0.1, seed=0):
    return Autoencoder(S, HIDDEN, LATENT, dropout_rate, latent_noise_std, rngs=nnx.Rngs(seed))


def test_gelu_exact_matches_float64_erf_gelu_and_jax_nn_gelu():
    x64 = np.concatenate([np.linspace(-12.0, 12.0, 4001), [-1e-3, 0.0, 1e-3, 40.0, -40.0]])
    reference = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x64])
    x32 = jnp.asarray(x64, jnp.float32)
    got = np.asarray(jax.jit(gelu_exact)(x32), np.float64)
    assert gelu_exact(x32).dtype == jnp.float32
    # float32 resolution of the value (relative) plus an absolute floor of a few ulp(1): in the
    # x < -3 tail, 1 + erf cancels (as in PyTorch's formula).
    np.testing.assert_allclose(got, reference, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(got, jax.nn.gelu(x32, approximate=False), rtol=2e-6, atol=1e-6)
    assert np.max(np.abs(got - reference)) < 1e-6
    # The derivative is the exact one: Phi(x) + x phi(x).
    grad = np.asarray(jax.vmap(jax.grad(gelu_exact))(x32), np.float64)
    phi = np.exp(-0.5 * x64**2) / math.sqrt(2.0 * math.pi)
    cdf = np.array([0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x64])
    np.testing.assert_allclose(grad, cdf + x64 * phi, rtol=1e-5, atol=1e-6)


def test_registry():
    assert MODELS == {"autoencoder": Autoencoder, "emulator": Emulator}


def test_autoencoder_shapes_range_and_float32():
    assert jax.config.read("jax_enable_x64")
    model = _ae()
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat)):
        assert leaf.dtype == jnp.float32
    # float64 input is computed in float32 too.
    x = _x().astype(jnp.float64)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        x_hat, z = model(x)
        assert x_hat.shape == (B, S) and z.shape == (B, LATENT)
        assert x_hat.dtype == jnp.float32 and z.dtype == jnp.float32
        assert bool(jnp.all((x_hat > 0) & (x_hat < 1)))
        assert model.encode(x).shape == (B, LATENT)
        assert model.decode(z).shape == (B, S)


def test_tied_weights_are_shared():
    model = _ae()
    model.eval()
    z = _x(1, (B, LATENT))
    before = model.decode(z)
    # The decoder reads the encoder kernels: changing one changes the decoder output ...
    kernel = model.encoder_layers[0].kernel
    kernel[...] = kernel[...] + 0.5
    after = model.decode(z)
    assert float(jnp.max(jnp.abs(after - before))) > 1e-3
    # ... and there is no decoder kernel: counts are the untied count minus the decoder kernels.
    widths = (S, *HIDDEN, LATENT)
    pairs = list(zip(widths[:-1], widths[1:], strict=True))
    kernels = sum(a * b for a, b in pairs)
    enc_biases = sum(b for _, b in pairs)
    dec_biases = sum(a for a, _ in pairs)
    bn_params = 2 * 2 * sum(HIDDEN)  # scale + bias, encoder and decoder BatchNorms
    untied = 2 * kernels + enc_biases + dec_biases + bn_params
    assert count_parameters(model) == untied - kernels

    # Rebuild decode by hand from the encoder kernels (eval mode) and compare with the module.
    def batch_norm(h, norm):
        h = (h - norm.mean[...]) / jnp.sqrt(norm.var[...] + norm.epsilon)
        return h * norm.scale[...] + norm.bias[...]

    n = len(model.encoder_layers)
    h = z
    for k in range(n):
        h = h @ model.encoder_layers[n - 1 - k].kernel[...].T + model.decoder_biases[k][...]
        if k < n - 1:
            h = jax.nn.gelu(batch_norm(h, model.decoder_norms[k]), approximate=False)
    np.testing.assert_allclose(jax.nn.sigmoid(h), model.decode(z), rtol=1e-5, atol=1e-6)


def test_train_and_eval_modes():
    model = _ae(dropout_rate=0.2)
    x = _x()
    model.eval()
    e1, z1 = model(x)
    e2, z2 = model(x)
    np.testing.assert_array_equal(e1, e2)  # eval is deterministic
    np.testing.assert_array_equal(z1, z2)
    stats_before = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
    model.train()
    t1, _ = model(x)
    t2, _ = model(x)
    assert float(jnp.max(jnp.abs(t1 - t2))) > 1e-4  # fresh dropout / noise each call
    assert float(jnp.max(jnp.abs(t1 - e1))) > 1e-4
    stats_after = nnx.state(model, nnx.BatchStat)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), stats_before, stats_after)
    assert max(jax.tree.leaves(moved)) > 0  # running averages updated in training only
    # Noise only (no dropout): training mode perturbs the latent before decoding; the returned z
    # is the clean latent, so it matches the deterministic encoding under the same batch stats.
    noisy = _ae(dropout_rate=0.0, latent_noise_std=0.1)
    noisy.train()
    x_hat, z = noisy(x)
    assert float(jnp.max(jnp.abs(x_hat - noisy.decode(z)))) > 1e-4


def test_functional_rng_through_jit():
    model = _ae(dropout_rate=0.2)
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)

    @jax.jit
    def forward(params, stats, rest, x):
        m = nnx.merge(graphdef, params, stats, rest)
        m.train()
        x_hat, _ = m(x)
        _, _, new_stats, new_rest = nnx.split(m, nnx.Param, nnx.BatchStat, ...)
        return x_hat, new_stats, new_rest

    x = _x()
    a, stats1, rest1 = forward(params, stats, rest, x)
    a_again, _, _ = forward(params, stats, rest, x)
    b, _, _ = forward(params, stats1, rest1, x)
    np.testing.assert_array_equal(a, a_again)  # same rng state -> same draw (pure function)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4  # advanced rng state -> new draw
    counts = [int(c) for c in jax.tree.leaves(rest1) if c.dtype == jnp.uint32]
    assert counts and max(counts) > 0


def test_gradients_finite_float32_in_jit_grad():
    """The trainer's pattern: jit(grad(loss)) over params, with BatchNorm statistics and RNG state
    carried functionally. Inside a differentiated function merge with `copy=True`, otherwise the
    non-differentiated Variables belong to the outer trace and BatchNorm cannot update them."""
    model = _ae(dropout_rate=0.1)
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    x = _x()

    def loss(params, stats, rest):
        m = nnx.merge(graphdef, params, stats, rest, copy=True)
        m.train()
        x_hat, _ = m(x)
        _, _, new_stats, new_rest = nnx.split(m, nnx.Param, nnx.BatchStat, ...)
        return jnp.mean((x_hat - x) ** 2), (new_stats, new_rest)

    step = jax.jit(jax.grad(loss, has_aux=True))
    grads, (new_stats, new_rest) = step(params, stats, rest)
    for g in jax.tree.leaves(grads):
        assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
    # The tied kernels receive gradient from both the encoder and the decoder path.
    assert float(jnp.max(jnp.abs(grads["encoder_layers"][0]["kernel"][...]))) > 0
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), stats, new_stats)
    assert max(jax.tree.leaves(moved)) > 0
    grads2, _ = step(params, new_stats, new_rest)
    assert not np.allclose(
        grads["encoder_layers"][0]["kernel"][...], grads2["encoder_layers"][0]["kernel"][...]
    )


def test_emulator_near_identity_and_float32():
    model = Emulator(P, LATENT, hidden_dims=(32, 32, 16), rngs=nnx.Rngs(0))
    model.eval()
    phys = _x(2, (B, P))
    state = _x(3, (B, LATENT)).astype(jnp.float64)
    out = model(phys, state)
    assert out.shape == (B, LATENT) and out.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out - state))) < 0.05
    assert float(jnp.max(jnp.abs(out - state))) > 0  # not exactly zero: all layers get gradients
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        assert leaf.dtype == jnp.float32
    n_in = P + LATENT
    expected = (n_in * 32 + 32) + (32 * 32 + 32) + (32 * 16 + 16) + (16 * LATENT + LATENT)
    assert count_parameters(model) == expected
    with pytest.raises(ValueError, match="expected physical"):
        model(phys, _x(3, (B, LATENT + 1)))


def test_direct_emulator_state_is_species():
    model = Emulator(P, S, hidden_dims=(8,), rngs=nnx.Rngs(0))
    assert model(_x(2, (B, P)), _x()).shape == (B, S)


def test_rollout_matches_python_loop():
    model = Emulator(P, LATENT, hidden_dims=(16, 16), rngs=nnx.Rngs(0))
    model.eval()
    T = 5
    phys = _x(4, (B, T, P))
    state0 = _x(5, (B, LATENT))
    states = jax.jit(lambda s0, ps: rollout(model, s0, ps))(state0, phys)
    assert states.shape == (B, T, LATENT) and states.dtype == jnp.float32
    # float64 inputs (x64 on) still give a float32 carry and the same result.
    states64 = rollout(model, state0.astype(jnp.float64), phys.astype(jnp.float64))
    assert states64.dtype == jnp.float32
    np.testing.assert_allclose(states64, states, rtol=1e-5, atol=1e-6)
    s = state0
    for t in range(T):
        s = model(phys[:, t], s)
        np.testing.assert_allclose(states[:, t], s, rtol=1e-5, atol=1e-6)


def test_rollout_module_with_dropout_in_jit():
    model = Emulator(P, LATENT, hidden_dims=(16, 16), dropout_rate=0.3, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    T = 4
    phys = _x(4, (B, T, P))
    state0 = _x(5, (B, LATENT))

    @jax.jit
    def run(params, rest):
        m = nnx.merge(graphdef, params, rest)
        m.train()
        states = rollout_module(m, state0, phys)
        return states, nnx.split(m, nnx.Param, ...)[2]

    states1, rest1 = run(params, rest)
    states2, _ = run(params, rest1)
    assert states1.shape == (B, T, LATENT)
    assert float(jnp.max(jnp.abs(states1 - states2))) > 0  # rng state advanced
    # Differentiable with the RNG state carried functionally (the emulator training step).

    def loss(params, rest):
        m = nnx.merge(graphdef, params, rest, copy=True)
        m.train()
        states = rollout_module(m, state0, phys)
        return jnp.mean(states**2), nnx.split(m, nnx.Param, ...)[2]

    grads, rest2 = jax.jit(jax.grad(loss, has_aux=True))(params, rest)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.max(jnp.abs(grads["hidden_layers"][0]["kernel"][...]))) > 0
    counts = [int(c) for c in jax.tree.leaves(rest2) if c.dtype == jnp.uint32]
    assert max(counts) >= T * 2  # one dropout draw per hidden layer per step
    # Eager, eval mode: identical to the plain rollout.
    model.eval()
    np.testing.assert_allclose(
        rollout_module(model, state0, phys), rollout(model, state0, phys), rtol=1e-6
    )


def test_emulator_state_bounds_clip_every_step_in_train_and_eval():
    """state_bounds clips the next state in both modes (training sees the inference dynamics);
    inside the bounds the bounded emulator equals the unbounded one."""
    kw = dict(hidden_dims=(16,), rngs=nnx.Rngs(0))
    free = Emulator(P, LATENT, **kw)
    bounded = Emulator(P, LATENT, state_bounds=(0.0, 1.0), hidden_dims=(16,), rngs=nnx.Rngs(0))
    phys = _x(2, (B, P))
    state = jnp.clip(_x(3, (B, LATENT)), 0.2, 0.8)
    free.eval()
    bounded.eval()
    np.testing.assert_array_equal(bounded(phys, state), free(phys, state))
    bounded.output_layer.bias[...] = jnp.full((LATENT,), 5.0, jnp.float32)  # pushes out
    for train in (True, False):
        bounded.train() if train else bounded.eval()
        out = bounded(phys, state)
        assert float(out.min()) >= 0.0 and float(out.max()) == 1.0
    # Gradients stay finite (zero for saturated outputs) under jit.
    graphdef, params, rest = nnx.split(bounded, nnx.Param, ...)

    def loss(params):
        return jnp.mean(nnx.merge(graphdef, params, rest, copy=True)(phys, state) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    # Straight-through: a saturated output still passes the identity's gradient.
    assert float(jnp.max(jnp.abs(grads["output_layer"]["bias"][...]))) > 0
    x = jnp.asarray([-0.5, 0.3, 1.7], jnp.float32)
    np.testing.assert_array_equal(bound_state(x, 0.0, 1.0), jnp.clip(x, 0.0, 1.0))
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(bound_state(v, 0.0, 1.0)))(x), 1.0)
    with pytest.raises(ValueError, match="state_bounds"):
        Emulator(P, LATENT, state_bounds=(1.0, 0.0), rngs=nnx.Rngs(0))


def test_pinned_state_fraction_counts_entries_held_on_a_bound():
    """Per trajectory: entries exactly on low / high over all entries; with the true states,
    only those whose truth is strictly inside count (a state at the floor where the truth is
    at the floor too is not pinned). A rollout of a step that pushes out pins what it pushes."""
    states = jnp.asarray([[[0.0, 0.5], [1.0, 0.2]],
                          [[0.3, 0.4], [0.6, 0.7]]], jnp.float32)  # [B=2, T=2, D=2]
    np.testing.assert_array_equal(pinned_state_fraction(states, (0.0, 1.0)), [0.5, 0.0])
    truth = jnp.asarray([[[0.0, 0.5], [0.9, 0.2]],
                         [[0.3, 0.4], [0.6, 0.7]]], jnp.float32)
    np.testing.assert_array_equal(pinned_state_fraction(states, (0.0, 1.0), truth), [0.25, 0.0])
    model = Emulator(P, LATENT, state_bounds=(0.0, 1.0), hidden_dims=(16,), rngs=nnx.Rngs(0))
    model.eval()
    model.output_layer.bias[...] = jnp.asarray([5.0] + [0.0] * (LATENT - 1), jnp.float32)
    states = rollout(model, jnp.full((B, LATENT), 0.5, jnp.float32), _x(2, (B, 5, P)))
    np.testing.assert_allclose(pinned_state_fraction(states, model.state_bounds),
                               np.full(B, 1.0 / LATENT), atol=1e-6)


def test_restoring_bound_gradient_passes_inward_and_damps_outward():
    """bound_state_restoring: the clip forward; outside the bounds the gradient passes in full
    where it pulls the state back in and x slope where it pushes it further out; inside, 1."""
    x = jnp.asarray([-0.5, -0.5, 0.3, 1.7, 1.7], jnp.float32)
    cotangent = jnp.asarray([1.0, -1.0, 1.0, 1.0, -1.0], jnp.float32)
    np.testing.assert_array_equal(bound_state_restoring(x, 0.0, 1.0), jnp.clip(x, 0.0, 1.0))
    grad = jax.grad(lambda v: jnp.sum(cotangent * bound_state_restoring(v, 0.0, 1.0, 0.01)))(x)
    # below: a positive cotangent moves x down (out), a negative one up (in); above, mirrored
    np.testing.assert_allclose(grad, [0.01, -1.0, 1.0, 1.0, -0.01], rtol=1e-6)
    # In the emulator: a state pushed out by its step is pulled back in at full strength.
    kwargs = dict(hidden_dims=(8,), state_bounds=(0.0, 1.0), bound_gradient_slope=0.01)
    damped = Emulator(P, LATENT, **kwargs, rngs=nnx.Rngs(0))
    restoring = Emulator(P, LATENT, **kwargs, restoring_bound_gradient=True, rngs=nnx.Rngs(0))
    phys, state = _x(2, (B, P)), jnp.ones((B, LATENT), jnp.float32)
    target = jnp.full((B, LATENT), 0.5, jnp.float32)

    def bias_grad(model):
        model.output_layer.bias[...] = jnp.full((LATENT,), 0.1, jnp.float32)  # pushes out
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            out = nnx.merge(graphdef, params, rest, copy=True)(phys, state)
            return jnp.mean((out - target) ** 2)

        return jax.grad(loss)(params)["output_layer"]["bias"][...]

    g_damped, g_restoring = bias_grad(damped), bias_grad(restoring)
    assert np.all(np.asarray(g_restoring) > 0)  # descent lowers the bias: back inside
    np.testing.assert_allclose(g_damped, 0.01 * g_restoring, rtol=1e-5)


def test_emulator_state_noise_only_in_training_mode():
    model = Emulator(P, LATENT, hidden_dims=(16,), state_noise_std=0.05, rngs=nnx.Rngs(0))
    reference = Emulator(P, LATENT, hidden_dims=(16,), rngs=nnx.Rngs(0))
    phys, state = _x(2, (B, P)), _x(3, (B, LATENT))
    model.train()
    a, b = model(phys, state), model(phys, state)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3  # fresh noise every call
    model.eval()
    reference.eval()
    np.testing.assert_array_equal(model(phys, state), reference(phys, state))
    with pytest.raises(ValueError, match="state_noise_std"):
        Emulator(P, LATENT, state_noise_std=-1.0, rngs=nnx.Rngs(0))


def test_emulator_physical_noise_shifts_each_window_by_one_offset_in_training_only():
    """perturb_conditions: one offset per (window, parameter), the same at every step; identity in
    eval mode and when off; a model with it keeps the weights of one without; bad std raises."""
    noisy = Emulator(P, LATENT, hidden_dims=(16,), physical_noise_std=0.1, rngs=nnx.Rngs(0))
    plain = Emulator(P, LATENT, hidden_dims=(16,), rngs=nnx.Rngs(0))
    for a, b in zip(jax.tree.leaves(nnx.state(noisy, nnx.Param)),
                    jax.tree.leaves(nnx.state(plain, nnx.Param)), strict=True):
        np.testing.assert_array_equal(a, b)
    seq = _x(4, (64, 7, P))
    noisy.train()
    shift = noisy.perturb_conditions(seq) - seq  # [64, 7, P]
    np.testing.assert_allclose(shift, jnp.broadcast_to(shift[:, :1], shift.shape), atol=1e-6)
    assert 0.07 < float(jnp.std(shift[:, 0])) < 0.13  # ~ N(0, 0.1^2) over 64 x P offsets
    assert float(jnp.max(jnp.abs(noisy.perturb_conditions(seq) - seq - shift))) > 1e-3  # fresh
    np.testing.assert_array_equal(plain.perturb_conditions(seq), seq)
    noisy.eval()
    np.testing.assert_array_equal(noisy.perturb_conditions(seq), seq)
    with pytest.raises(ValueError, match="physical_noise_std"):
        Emulator(P, LATENT, physical_noise_std=-0.1, rngs=nnx.Rngs(0))


def test_count_parameters_ignores_batch_stats():
    model = _ae()
    n_all = sum(
        math.prod(leaf.shape)
        for leaf in jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat))
    )
    assert count_parameters(model) == n_all - 2 * 2 * sum(HIDDEN)


def test_bad_dimensions_raise():
    with pytest.raises(ValueError, match="latent_dim"):
        Autoencoder(S, HIDDEN, 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="state_dim"):
        Emulator(P, 0, rngs=nnx.Rngs(0))


def test_train_mode_is_independent_of_batch_sharding():
    """BatchNorm statistics are global-batch statistics under jit and dropout / noise draws do not
    depend on how the batch is laid out, so 1 device and 8 devices agree (data parallel parity)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.array(jax.devices())
    if devices.size < 2:
        pytest.skip("needs several (CPU) devices")
    mesh = Mesh(devices, ("data",))
    model = _ae(dropout_rate=0.2)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        m = nnx.merge(graphdef, state, copy=True)
        m.train()
        x_hat, z = m(x)
        return x_hat, z, nnx.state(m, nnx.BatchStat)

    x = _x(7, (8 * devices.size, S))
    single = forward(state, x)
    replicated = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    sharded = forward(replicated, jax.device_put(x, NamedSharding(mesh, PartitionSpec("data"))))
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_row_mixup_is_off_by_default_and_keeps_the_initial_weights():
    """Without mixup no module is built and the random streams are untouched: a model built with
    row_mixup=0 has the same weights as before the option existed; with mixup the weights are
    still the same (the module is built last and owns no parameter)."""
    plain = Autoencoder(S, HIDDEN, LATENT, 0.0, 0.0, tied_weights=False, rngs=nnx.Rngs(3))
    mixed = Autoencoder(S, HIDDEN, LATENT, 0.0, 0.0, tied_weights=False, row_mixup=0.5,
                        rngs=nnx.Rngs(3))
    assert plain.row_mixup is None and mixed.row_mixup is not None
    for a, b in zip(jax.tree.leaves(nnx.state(plain, nnx.Param)),
                    jax.tree.leaves(nnx.state(mixed, nnx.Param)), strict=True):
        np.testing.assert_array_equal(a, b)
    x = _x(1)
    plain.train()
    np.testing.assert_array_equal(plain.mix_rows(x), x)
    with pytest.raises(ValueError, match="prob must be in"):
        Autoencoder(S, HIDDEN, LATENT, row_mixup=1.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="prob must be in"):
        Autoencoder(S, HIDDEN, LATENT, row_mixup=-0.5, rngs=nnx.Rngs(0))


def test_row_mixup_makes_convex_pairs_in_training_and_is_identity_in_eval():
    model = Autoencoder(S, HIDDEN, LATENT, 0.0, 0.0, row_mixup=1.0, rngs=nnx.Rngs(0))
    n = 64
    # rows with one distinct marker column each: a mixed row reveals its partner and weight
    x = jnp.zeros((n, n), jnp.float32).at[jnp.arange(n), jnp.arange(n)].set(1.0)
    model.row_mixup.train()
    out = np.asarray(model.mix_rows(x))
    assert np.all(out >= 0) and np.all(out <= 1)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-6)  # convex: weights sum to one
    own = out[np.arange(n), np.arange(n)]
    assert np.mean(own < 1 - 1e-6) > 0.8  # prob 1: (almost) every row mixed (lam ~ U(0, 1))
    assert np.all((out > 1e-7).sum(1) <= 2)  # with one partner at most
    again = np.asarray(model.mix_rows(x))
    assert np.max(np.abs(again - out)) > 1e-3  # a fresh draw each call
    model.eval()
    np.testing.assert_array_equal(model.mix_rows(x), x)
    half = Autoencoder(S, HIDDEN, LATENT, row_mixup=0.3, rngs=nnx.Rngs(1))
    half.train()
    big = jnp.eye(2000, dtype=jnp.float32)
    changed = np.mean(np.asarray(half.mix_rows(big))[np.arange(2000), np.arange(2000)] < 1)
    assert 0.25 < changed < 0.35
