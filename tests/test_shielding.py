"""CO self-shielding (van Dishoeck & Black 1988) and dust attenuation with grain scattering:
table values at the knots, an independent two-pass spline with Fortran storage order (UCLCHEM's
layout), hand-computed attenuation, smoothness of what the Jacobian differentiates."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astrochem_jax.chemistry import shielding


def knot_column(log10_n: float) -> float:
    """Column whose log10(N + 1) is exactly the knot."""
    return 10.0**log10_n - 1.0


def test_theta_at_the_knots_is_table5():
    theta = shielding.CO_SHIELDING_TABLES["vdb88"]
    table5 = shielding._VDB88_TABLE5  # [N(H2), N(CO)]
    for j, log_h2 in enumerate(shielding.LOG10_N_H2_GRID):
        for i, log_co in enumerate(shielding.LOG10_N_CO_GRID):
            value = float(theta(knot_column(log_co), knot_column(log_h2)))
            assert value == pytest.approx(10.0 ** table5[j, i], rel=1e-12)
    # No column: no shielding; beyond the table: clamped to its last value.
    assert float(theta(0.0, 0.0)) == 1.0
    assert float(theta(1e25, 1e26)) == pytest.approx(10.0 ** table5[-1, -1], rel=1e-12)


def test_theta_decreases_with_both_columns():
    theta = shielding.CO_SHIELDING_TABLES["vdb88"]
    n_co = jnp.logspace(12, 19, 200)
    for n_h2 in (1e18, 3e19, 1e21, 1e23):
        values = np.asarray(jax.vmap(lambda n, h=n_h2: theta(n, h))(n_co))
        assert np.all(np.diff(values) < 0) and np.all(values <= 1.0)
    n_h2 = jnp.logspace(18, 23, 200)
    values = np.asarray(jax.vmap(lambda h: theta(1e15, h))(n_h2))
    assert np.all(np.diff(values) < 0)


def _numerical_recipes_theta(stored: np.ndarray, m: int, log_co: float, log_h2: float) -> float:
    """splie2/splin2 of Numerical Recipes on a table read from `stored` (Fortran storage order)
    as ya(m, 6): UCLCHEM v3 passes its 8 x 6 array with m = DIMCO = 7. Written independently of
    shielding.py (loops, the tridiagonal recurrence, rows first, then the column)."""

    def spline(x, y):
        n = len(x)
        y2, u = np.zeros(n), np.zeros(n)
        for i in range(1, n - 1):
            sig = (x[i] - x[i - 1]) / (x[i + 1] - x[i - 1])
            p = sig * y2[i - 1] + 2.0
            y2[i] = (sig - 1.0) / p
            u[i] = (6.0 * ((y[i + 1] - y[i]) / (x[i + 1] - x[i]) - (y[i] - y[i - 1])
                           / (x[i] - x[i - 1])) / (x[i + 1] - x[i - 1]) - sig * u[i - 1]) / p
        for k in range(n - 2, -1, -1):
            y2[k] = y2[k] * y2[k + 1] + u[k]
        return y2

    def splint(xa, ya, y2a, x):
        lo = min(max(int(np.searchsorted(xa, x)) - 1, 0), len(xa) - 2)
        h = xa[lo + 1] - xa[lo]
        a, b = (xa[lo + 1] - x) / h, (x - xa[lo]) / h
        return (a * ya[lo] + b * ya[lo + 1]
                + ((a**3 - a) * y2a[lo] + (b**3 - b) * y2a[lo + 1]) * h * h / 6.0)

    x_co, x_h2 = np.arange(12.0, 12.0 + m), np.arange(18.0, 24.0)
    rows = [np.array([stored[k * m + j] for k in range(6)]) for j in range(m)]
    log_co, log_h2 = min(max(log_co, x_co[0]), x_co[-1]), min(max(log_h2, 18.0), 23.0)
    at_h2 = np.array([splint(x_h2, row, spline(x_h2, row), log_h2) for row in rows])
    return 10.0 ** splint(x_co, at_h2, spline(x_co, at_h2), log_co)


@pytest.mark.parametrize("layout, m", [("vdb88", 8), ("uclchem_v3", 7)])
def test_theta_matches_a_two_pass_spline_in_fortran_storage_order(layout, m):
    # UCLCHEM's DATA statement: 8 values of N(CO) per N(H2), i.e. Table 5's rows in this order.
    stored = np.asarray(shielding._VDB88_TABLE5).reshape(-1)
    theta = shielding.CO_SHIELDING_TABLES[layout]
    rng = np.random.default_rng(4)
    for log_co, log_h2 in rng.uniform([11.0, 17.0], [20.0, 24.0], size=(60, 2)):
        ours = float(theta(knot_column(log_co), knot_column(log_h2)))
        assert ours == pytest.approx(_numerical_recipes_theta(stored, m, log_co, log_h2),
                                     rel=1e-11)


def test_uclchem_v3_layout_is_scrambled():
    """The reason it is not the default: Theta > 1 (anti-shielding) around N(CO) = 1e14."""
    theta = shielding.CO_SHIELDING_TABLES["uclchem_v3"]
    assert float(theta(1e14, 4e19)) > 1.5
    assert float(shielding.CO_SHIELDING_TABLES["vdb88"](1e14, 4e19)) < 1.0


def test_dust_attenuation_hand_values():
    assert float(shielding.tau_ratio(1000.0)) == pytest.approx(4.65, rel=1e-12)  # a knot
    assert float(shielding.tau_ratio(5500.0)) == pytest.approx(1.0, rel=1e-12)
    # Optically thin at 1000 A: c_0 exp(-k_0 tau).
    tau = 0.1 / 1.086 * 4.65
    assert float(shielding.dust_attenuation(1000.0, 0.1)) == pytest.approx(
        math.exp(-0.7514 * tau), rel=1e-12)
    # Thick: the five-term sum.
    tau = 2.0 / 1.086 * 4.65
    terms = zip((2.006, -1.438, 0.7364, -0.5076, -0.0592), (0.849, 1.013, 1.282, 2.005, 5.832),
                strict=True)
    expected = sum(c * math.exp(-k * tau) for c, k in terms)
    assert float(shielding.dust_attenuation(1000.0, 2.0)) == pytest.approx(expected, rel=1e-12)
    # The two branches nearly meet at tau = 1, and attenuation falls with Av.
    edge = 1.086 / 4.65
    below, above = (float(shielding.dust_attenuation(1000.0, edge * f)) for f in (1 - 1e-9,
                                                                                  1 + 1e-9))
    assert above == pytest.approx(below, rel=2e-3)
    s = np.asarray(jax.vmap(lambda av: shielding.dust_attenuation(1000.0, av))(
        jnp.linspace(0.0, 20.0, 100)))
    assert s[0] == 1.0 and np.all(np.diff(s) < 0)


def test_band_wavelength_formula_and_limits():
    lu, lw = 15.0, 20.0
    expected = (5675 - 200.6 * lw) - (571.6 - 24.09 * lw) * lu + (18.22 - 0.7664 * lw) * lu**2
    assert float(shielding.co_band_wavelength_A(knot_column(lu), knot_column(lw))) == (
        pytest.approx(expected, rel=1e-12))
    assert float(shielding.co_band_wavelength_A(0.0, 0.0)) == 1076.1
    assert float(shielding.co_band_wavelength_A(1e12, 1e25)) == 913.6


def test_co_factor_is_smooth_for_the_jacobian():
    """The solver differentiates the rate with respect to N(CO) and N(H2): finite derivatives
    that agree with finite differences inside the table."""
    def log_factor(log_co, log_h2):
        return jnp.log(shielding.co_photodissociation_factor(10.0**log_co, 10.0**log_h2, 1.2))

    grad = jax.jit(jax.grad(log_factor, argnums=(0, 1)))
    rng = np.random.default_rng(2)
    for log_co, log_h2 in rng.uniform([12.2, 18.2], [18.8, 22.8], size=(20, 2)):
        d_co, d_h2 = (float(g) for g in grad(log_co, log_h2))
        h = 1e-6
        fd_co = (log_factor(log_co + h, log_h2) - log_factor(log_co - h, log_h2)) / (2 * h)
        fd_h2 = (log_factor(log_co, log_h2 + h) - log_factor(log_co, log_h2 - h)) / (2 * h)
        assert d_co == pytest.approx(float(fd_co), rel=1e-5, abs=1e-7)
        assert d_h2 == pytest.approx(float(fd_h2), rel=1e-5, abs=1e-7)


def test_co_band_spline_window_is_the_full_spline():
    wavelengths = jnp.linspace(*shielding.LAMBDA_BAR_RANGE_A, 57)
    np.testing.assert_allclose(np.asarray(jax.vmap(shielding._tau_ratio_co_bands)(wavelengths)),
                               np.asarray(jax.vmap(shielding.tau_ratio)(wavelengths)), rtol=1e-14)
