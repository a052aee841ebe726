"""Losses and validation metrics: zero iff equal, exact term definitions, conservation masking,
finite float32 gradients with x64 on, metrics against direct numpy computation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astrochem_jax.losses import (
    conservation_term,
    elementwise_loss,
    log_relative_error,
    partition_term,
    total_loss,
    unscale_in_dtype,
    validation_metrics,
)
from astrochem_jax.scaling import pow10, scale_abundances, unscale_abundances

CLIP = (1e-20, 1.0)
WEIGHTS = {"power_weight": 20.0, "worst_weight": 2.0, "conservation_weight": 1.0}
# Species H, H2, C, CO, <empty>; elements H, C, O, Si (Si absent -> all-zero column).
SMAT = np.array(
    [[1, 0, 0, 0], [2, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=np.float64
)


def _scaled(key=0, shape=(6, 5)):
    return jax.random.uniform(jax.random.key(key), shape, jnp.float32, 0.05, 0.95)


@jax.jit
def _jit_loss(pred, true, smat):
    return total_loss(pred, true, stoichiometric_matrix=smat, abundance_clip=CLIP, **WEIGHTS)


_jit_conservation = jax.jit(lambda o, t, smat: conservation_term(o, t, smat, CLIP))


def _loss(pred, true, stoichiometric_matrix=SMAT):
    """total_loss under jit (one compile per shape instead of op-by-op dispatch), with the
    stoichiometric matrix as a traced argument."""
    return _jit_loss(pred, true, jnp.asarray(stoichiometric_matrix, jnp.float32))


def test_zero_for_identical_inputs_and_float32():
    assert jax.config.read("jax_enable_x64")
    t = _scaled()
    total, terms = _loss(t, t)
    assert float(total) == 0.0
    for v in terms.values():
        assert v.dtype == jnp.float32 and float(v) == 0.0


def test_positive_and_terms_match_definition():
    t = _scaled()
    o = _scaled(1)
    total, terms = _loss(o, t)
    assert float(total) > 0
    l = 10.0 ** (20.0 * np.abs(np.asarray(o, np.float64) - np.asarray(t, np.float64))) - 1.0
    np.testing.assert_allclose(terms["mean"], l.mean(), rtol=1e-4)
    np.testing.assert_allclose(terms["worst"], l.max(axis=-1).mean(), rtol=1e-4)
    x_t = unscale_abundances(np.asarray(t, np.float64), CLIP)
    x_o = unscale_abundances(np.asarray(o, np.float64), CLIP)
    present = SMAT.any(axis=0)
    dlog = np.abs(np.log10(x_o @ SMAT[:, present]) - np.log10(x_t @ SMAT[:, present]))
    np.testing.assert_allclose(terms["conservation"], dlog.mean(), rtol=1e-4)
    expected = terms["mean"] + 2.0 * terms["worst"] + 1.0 * terms["conservation"]
    np.testing.assert_allclose(total, expected, rtol=1e-6)


def test_leading_axes_are_samples():
    t = _scaled(0, (3, 4, 5))
    o = _scaled(1, (3, 4, 5))
    a, ta = _loss(o, t)
    b, tb = _loss(o.reshape(12, 5), t.reshape(12, 5))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    for k in ta:
        np.testing.assert_allclose(ta[k], tb[k], rtol=1e-6)


def test_elementwise_loss_small_differences_accurate():
    d = jnp.asarray([0.0, 1e-7, 1e-3], jnp.float32)
    l = elementwise_loss(d, jnp.zeros_like(d), 20.0)
    np.testing.assert_allclose(l, 10.0 ** (20.0 * np.asarray([0.0, 1e-7, 1e-3])) - 1, rtol=1e-5)


def test_conservation_zero_when_elements_match():
    # Move abundance between species with the same composition per element column: H <-> H2
    # (keeping 2 * x_H2 + x_H fixed) and leave C, CO untouched -> element totals unchanged.
    x = np.array([[1e-2, 4e-1, 1e-4, 1e-4, 1e-20]])
    y = x.copy()
    y[0, 0] += 2e-2
    y[0, 1] -= 1e-2
    t = jnp.asarray(scale_abundances(x, CLIP), jnp.float32)
    o = jnp.asarray(scale_abundances(y, CLIP), jnp.float32)
    cons = _jit_conservation(o, t, SMAT)
    assert abs(float(cons)) < 1e-5  # float32 round trip of the scaling only
    assert float(_jit_conservation(o, o, SMAT)) == 0.0


def test_masked_columns_no_nan_in_value_or_gradient():
    t = _scaled()
    o = _scaled(1)
    only_empty = np.zeros((5, 2))  # every element column empty
    cons = _jit_conservation(o, t, only_empty)
    assert float(cons) == 0.0
    for smat in (SMAT, only_empty):
        g = jax.jit(jax.grad(lambda p, s=smat: _loss(p, t, stoichiometric_matrix=s)[0]))(o)
        assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))


def test_gradients_finite_under_jit_even_at_bounds():
    t = _scaled()
    o = t.at[:, 0].set(0.0).at[:, 1].set(1.0)  # clip floor and ceiling
    grad = jax.jit(jax.grad(lambda p: _loss(p, t)[0]))(o)
    assert grad.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.max(jnp.abs(grad))) > 0


def test_conservation_weight_zero_needs_no_matrix():
    t, o = _scaled(), _scaled(1)
    total, terms = total_loss(
        o,
        t,
        stoichiometric_matrix=None,
        abundance_clip=CLIP,
        power_weight=20.0,
        worst_weight=2.0,
        conservation_weight=0.0,
    )
    assert float(terms["conservation"]) == 0.0
    np.testing.assert_allclose(total, terms["mean"] + 2.0 * terms["worst"], rtol=1e-6)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        _loss(_scaled(0, (4, 5)), _scaled(0, (4, 4)))
    with pytest.raises(ValueError, match="stoichiometric_matrix"):
        _loss(_scaled(), _scaled(1), stoichiometric_matrix=SMAT[:4])


def test_unscale_in_dtype_stays_float32():
    s = _scaled()
    x = unscale_in_dtype(s, CLIP)
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(x, unscale_abundances(np.asarray(s, np.float64), CLIP), rtol=1e-5)


def test_validation_metrics_match_numpy():
    t = _scaled(0, (2, 3, 5))
    o = _scaled(1, (2, 3, 5))
    m = validation_metrics(o, t, CLIP)
    x_t = unscale_abundances(np.asarray(t, np.float64), CLIP).reshape(-1, 5)
    x_o = unscale_abundances(np.asarray(o, np.float64), CLIP).reshape(-1, 5)
    rel = (np.abs(x_t - x_o) / x_t).mean(axis=0)
    dex = np.abs(np.log10(x_o) - np.log10(x_t)).mean(axis=0)
    assert m["n_samples"] == 6
    assert m["relative_error_per_species"].shape == (5,)
    assert m["mean_relative_error"].dtype == jnp.float32
    np.testing.assert_allclose(m["relative_error_per_species"], rel, rtol=1e-3)
    np.testing.assert_allclose(m["abs_dlog10_per_species"], dex, rtol=1e-4)
    np.testing.assert_allclose(m["mean_relative_error"], rel.mean(), rtol=1e-3)
    np.testing.assert_allclose(m["mean_abs_dlog10"], dex.mean(), rtol=1e-4)
    perfect = validation_metrics(t, t, CLIP)
    assert float(perfect["mean_relative_error"]) == 0.0
    assert float(perfect["mean_abs_dlog10"]) == 0.0


def test_validation_metrics_one_percent_error():
    # x_hat = 1.01 x everywhere -> relative error 1 %, |dlog10| = log10(1.01).
    x = np.logspace(-15, -2, 5)[None, :].repeat(4, axis=0)
    t = jnp.asarray(scale_abundances(x, CLIP), jnp.float32)
    o = jnp.asarray(scale_abundances(1.01 * x, CLIP), jnp.float32)
    m = validation_metrics(o, t, CLIP)
    np.testing.assert_allclose(m["mean_relative_error"], 0.01, rtol=2e-3)
    np.testing.assert_allclose(m["mean_abs_dlog10"], math.log10(1.01), rtol=2e-3)


def _conservation_reference(o, t):
    """float64 numpy |log10(x_hat S) - log10(x S)| averaged over samples and present elements."""
    x_t = unscale_abundances(np.asarray(t, np.float64), CLIP)
    x_o = unscale_abundances(np.asarray(o, np.float64), CLIP)
    present = SMAT.any(axis=0)
    return np.abs(np.log10(x_o @ SMAT[:, present]) - np.log10(x_t @ SMAT[:, present])).mean()


@pytest.mark.parametrize("offset", [1e-5, 1e-3, 0.05, -0.3])
def test_conservation_accurate_near_and_far(offset):
    # Small offsets take the log1p branch, large ones the direct-log branch; both match float64.
    t = _scaled()
    o = jnp.clip(t + offset, 0.0, 1.0)
    expected = _conservation_reference(o, t)
    np.testing.assert_allclose(_jit_conservation(o, t, SMAT), expected, rtol=2e-4)


def test_pow10_equals_power_in_both_namespaces_and_keeps_dtype():
    y = np.linspace(-20.0, 0.0, 2001)
    np.testing.assert_allclose(pow10(y), np.power(10.0, y), rtol=1e-13)
    y32 = jnp.asarray(y, jnp.float32)
    got = jax.jit(pow10)(y32)
    assert got.dtype == jnp.float32
    # float32: the rounding of y * ln 10 (|.| <= 46) bounds the error, as the rounding of a
    # scaled abundance s (20 s ln 10) already does.
    exact = np.power(10.0, np.asarray(y32, np.float64))
    np.testing.assert_allclose(np.asarray(got, np.float64), exact, rtol=4e-6)
    s = np.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(unscale_abundances(s, CLIP), 10.0 ** (-20.0 + 20.0 * s), rtol=1e-13)
    np.testing.assert_allclose(scale_abundances(unscale_abundances(s, CLIP), CLIP), s, atol=1e-14)


def test_relative_term_is_log_of_astrochemnet_relative_error():
    """log(1 + |x_hat - x| / x) against numpy in float64, weighted into the total, asymmetric
    (an over-prediction by d dex costs d ln 10, an under-prediction < ln 2), finite gradients at
    the bounds and at o == t, and absent (not computed) with weight 0."""
    t = _scaled(0, (4, 5))
    o = _scaled(1, (4, 5))
    x_t = unscale_abundances(np.asarray(t, np.float64), CLIP)
    x_o = unscale_abundances(np.asarray(o, np.float64), CLIP)
    expected = np.log1p(np.abs(x_o - x_t) / x_t)
    np.testing.assert_allclose(log_relative_error(o, t, CLIP), expected, rtol=2e-4, atol=1e-5)
    weights = dict(WEIGHTS, relative_weight=0.5)
    total, terms = total_loss(o, t, stoichiometric_matrix=SMAT, abundance_clip=CLIP, **weights)
    np.testing.assert_allclose(terms["relative"], expected.mean(), rtol=2e-4)
    without, plain = total_loss(o, t, stoichiometric_matrix=SMAT, abundance_clip=CLIP, **WEIGHTS)
    assert "relative" not in plain
    np.testing.assert_allclose(total, without + 0.5 * terms["relative"], rtol=1e-5)

    three_dex = 3.0 / 20.0  # in scaled units (clip spans 20 dex)
    base = jnp.full((1, 1), 0.5, jnp.float32)
    over = float(log_relative_error(base + three_dex, base, CLIP)[0, 0])
    under = float(log_relative_error(base - three_dex, base, CLIP)[0, 0])
    np.testing.assert_allclose(over, 3.0 * math.log(10.0), rtol=1e-5)
    np.testing.assert_allclose(under, math.log(2.0 - 1e-3), rtol=1e-4)
    for o_, t_ in ((jnp.zeros((2, 5)), jnp.ones((2, 5))), (jnp.ones((2, 5)), jnp.zeros((2, 5))),
                   (t, t)):
        grad = jax.grad(lambda x, t_=t_: total_loss(
            x, t_, stoichiometric_matrix=SMAT, abundance_clip=CLIP, **weights)[0])(o_)
        assert np.all(np.isfinite(np.asarray(grad)))


def test_partition_term_weighs_each_species_by_its_share_of_the_element():
    """sum_s S[s, e] |x_hat_s - x_s| / (x S)_e per present element, mean over samples and
    elements: against numpy in float64; errors of opposite sign in two carriers of an element do
    not cancel (the conservation term is 0 there); the same dex error costs in proportion to the
    share of the element the species holds; weighted into the total; finite gradients."""
    t = _scaled(0, (4, 5))
    o = _scaled(1, (4, 5))
    x_t = unscale_abundances(np.asarray(t, np.float64), CLIP)
    x_o = unscale_abundances(np.asarray(o, np.float64), CLIP)
    present = SMAT.any(axis=0)
    expected = ((np.abs(x_o - x_t) @ SMAT)[:, present] / (x_t @ SMAT)[:, present]).mean()
    np.testing.assert_allclose(partition_term(o, t, SMAT, CLIP), expected, rtol=2e-4)
    assert float(partition_term(t, t, SMAT, CLIP)) == 0.0

    # Carbon: C 3e-5 and CO 1.5e-4; 1e-5 moved from CO to C keeps every element total but C.
    x = np.array([[1e-2, 4e-1, 3e-5, 1.5e-4, 1e-20]])
    y = x.copy()
    y[0, 2] += 1e-5
    y[0, 3] -= 1e-5
    tt = jnp.asarray(scale_abundances(x, CLIP), jnp.float32)
    oo = jnp.asarray(scale_abundances(y, CLIP), jnp.float32)
    # C's total (C + CO) is unchanged; O's (CO) falls by 1e-5 / 1.5e-4.
    moved = 2e-5 / 1.8e-4  # of the carbon
    np.testing.assert_allclose(partition_term(oo, tt, SMAT, CLIP),
                               (0.0 + moved + 1e-5 / 1.5e-4) / 3, rtol=1e-3)
    # 0.1 dex on the major carrier (CO: 83% of the carbon and all the oxygen) costs 11x what
    # 0.1 dex costs on the minor one (C: 17% of the carbon).
    up = 0.1 / 20.0
    on_co = float(partition_term(tt.at[0, 3].add(up), tt, SMAT, CLIP))
    on_c = float(partition_term(tt.at[0, 2].add(up), tt, SMAT, CLIP))
    np.testing.assert_allclose(on_co / on_c, (1.5e-4 / 1.8e-4 + 1.0) / (3e-5 / 1.8e-4),
                               rtol=1e-3)

    weights = dict(WEIGHTS, partition_weight=0.3)
    total, terms = total_loss(o, t, stoichiometric_matrix=SMAT, abundance_clip=CLIP, **weights)
    without, plain = total_loss(o, t, stoichiometric_matrix=SMAT, abundance_clip=CLIP, **WEIGHTS)
    assert "partition" not in plain
    np.testing.assert_allclose(total, without + 0.3 * terms["partition"], rtol=1e-5)
    with pytest.raises(ValueError, match="partition_weight"):
        total_loss(o, t, stoichiometric_matrix=None, abundance_clip=CLIP, power_weight=20.0,
                   worst_weight=0.0, conservation_weight=0, partition_weight=0.3)
    for o_, t_ in ((jnp.zeros((2, 5)), jnp.ones((2, 5))), (jnp.ones((2, 5)), jnp.zeros((2, 5))),
                   (t, t)):
        grad = jax.grad(lambda x, t_=t_: total_loss(
            x, t_, stoichiometric_matrix=SMAT, abundance_clip=CLIP, **weights)[0])(o_)
        assert np.all(np.isfinite(np.asarray(grad)))
