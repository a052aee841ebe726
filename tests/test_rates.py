"""Rate laws against hand-computed values; temperature-range policies; fast path vs registry."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from astrochem_jax.chemistry import rates
from astrochem_jax.chemistry.network import Network, Reaction


def conditions(n=1e4, T=20.0, av=2.0, g0=1.0, zeta=1.0, n_h2=0.0, n_c=0.0, n_co=0.0, td=None):
    f = jnp.float64
    return rates.Conditions(
        density_cm3=f(n), gas_temperature_K=f(T), av_mag=f(av), radfield_habing=f(g0),
        zeta=f(zeta), dust_temperature_K=f(T if td is None else td), column_h2_cm2=f(n_h2),
        column_c_cm2=f(n_c), column_co_cm2=f(n_co))


def law(name, alpha, beta, gamma, T=20.0, **kw):
    c = conditions(T=T, **kw)
    value = rates.RATE_LAWS[name](jnp.asarray([alpha]), jnp.asarray([beta]),
                                  jnp.asarray([gamma]), jnp.asarray([T]), c)
    return float(value[0])


def test_registry_covers_the_network_vocabulary():
    from astrochem_jax.chemistry.network import RATE_TYPES

    assert set(rates.RATE_LAWS) == set(RATE_TYPES)


def test_two_body_arrhenius_kooij():
    expected = 1.2e-10 * (50 / 300) ** 0.5 * math.exp(-100 / 50)
    assert law("two_body", 1.2e-10, 0.5, 100.0, T=50.0) == pytest.approx(expected, rel=1e-12)
    # gamma < 0 (rate rising towards low T) and beta < 0
    expected = 2.36e-12 * (10 / 300) ** -0.29 * math.exp(17.6 / 10)
    assert law("two_body", 2.36e-12, -0.29, -17.6, T=10.0) == pytest.approx(expected, rel=1e-12)


def test_ion_polar_forms():
    T = 15.0
    expected1 = 1.0 * 1.6e-9 * (0.62 + 0.4767 * 1.2 * math.sqrt(300 / T))
    assert law("ion_polar_1", 1.0, 1.6e-9, 1.2, T=T) == pytest.approx(expected1, rel=1e-12)
    expected2 = 0.5 * 3e-8 * (1 + 0.0967 * 2.0 * math.sqrt(300 / T) + 4.0 * 300 / (10.526 * T))
    assert law("ion_polar_2", 0.5, 3e-8, 2.0, T=T) == pytest.approx(expected2, rel=1e-12)


def test_cosmic_ray_laws_scale_with_zeta():
    assert law("cosmic_ray", 1.2e-17, 0.0, 0.0, zeta=2.5) == pytest.approx(3.0e-17, rel=1e-12)
    # CR-induced photons: alpha gamma / (1 - 0.5) zeta (T/300)^beta
    expected = 1.3e-17 * 105.0 / 0.5 * 2.0 * (30 / 300) ** 1.17
    assert law("cr_photon", 1.3e-17, 1.17, 105.0, T=30.0, zeta=2.0) == pytest.approx(
        expected, rel=1e-12)


def test_photo_uses_draine_field_conversion():
    expected = 2.4e-10 * math.exp(-3.88 * 2.0) * 3.4 / 1.7
    assert law("photo", 2.4e-10, 0.0, 3.88, av=2.0, g0=3.4) == pytest.approx(expected, rel=1e-12)


def test_co_photodissociation_van_dishoeck_black():
    """alpha (G0/1.7) Theta(N_CO, N_H2) S(lambda_bar, Av); gamma unused; the row's alpha is
    replaced by the van Dishoeck & Black unattenuated rate in the table."""
    from astrochem_jax.chemistry import shielding

    n_co, n_h2, av, g0 = 1e15 - 1.0, 1e20 - 1.0, 1.5, 3.4  # log10(N + 1) on the table's knots
    theta = 10.0**-6.273e-1  # Table 5: N(CO) = 1e15, N(H2) = 1e20
    lu, lw = 15.0, 20.0
    wavelength = (5675 - 200.6 * lw) - (571.6 - 24.09 * lw) * lu + (18.22 - 0.7664 * lw) * lu**2
    expected = 2e-10 * g0 / 1.7 * theta * float(shielding.dust_attenuation(wavelength, av))
    value = law("co_photodissociation", 2e-10, 0.0, 3.88, av=av, g0=g0, n_co=n_co, n_h2=n_h2)
    assert value == pytest.approx(expected, rel=1e-12, abs=0)
    net = Network("co", ("C", "O", "CO"), (
        Reaction(("CO",), ("C", "O"), "co_photodissociation", 2.4e-10, 0.0, 3.88),))
    table = rates.build_rate_table(net)
    assert table.alpha[0] == shielding.CO_PHOTO_ALPHA_S and table.gamma[0] == 0.0
    # Unshielded (no columns): Theta = 1 and S at lambda_bar = 1076.1 A (N = 0 clips to band 33).
    k = float(rates.rate_coefficients(table, 1e3, 20.0, 0.0, 1.7, 1.0)[0])
    assert k == pytest.approx(2e-10, rel=1e-12, abs=0)


def test_h2_self_shielding_draine_bertoldi():
    assert float(rates.h2_self_shielding(0.0)) == pytest.approx(1.0, abs=1e-3)
    n = 1e18  # x = 2000, b5 = 1
    x = n / 5e14
    root = math.sqrt(1 + x)
    expected = 0.965 / (1 + x) ** 2 + 0.035 / root * math.exp(-8.5e-4 * root)
    assert float(rates.h2_self_shielding(n)) == pytest.approx(expected, rel=1e-12)
    columns = jnp.logspace(12, 23, 50)
    f = np.asarray(rates.h2_self_shielding(columns))
    assert np.all(np.diff(f) < 0) and f[-1] < 1e-4
    shielded = law("h2_photodissociation", 5.68e-11, 0.0, 3.74, av=1.0, n_h2=n)
    assert shielded == pytest.approx(5.68e-11 * math.exp(-3.74) / 1.7 * expected, rel=1e-12)


def test_c_photoionisation_kamp_bertoldi_shielding():
    T, av, n_c, n_h2 = 20.0, 1.5, 1e16, 1e21
    tau = 3.76 * av + 1.1e-17 * n_c + 0.9 * T**0.27 * (n_h2 / 1.59e21) ** 0.45
    expected = 3.5e-10 * math.exp(-tau)
    value = law("c_photoionisation", 3.5e-10, 0.0, 3.76, T=T, av=av, n_c=n_c, n_h2=n_h2)
    assert value == pytest.approx(expected, rel=1e-12)


def test_h2_formation_cazaux_tielens():
    # At 10 K the efficiency is ~1, so k = 0.5 v_th (sigma_sil + sigma_gra) S.
    T = 10.0
    v_th = 1.45e5 * math.sqrt(T / 100)
    sticking = 1 / (1 + 0.04 * math.sqrt(2 * T) + 0.002 * T + 8e-6 * T**2)
    expected = 0.5 * v_th * (8.473e-22 + 7.908e-22) * sticking
    assert law("h2_formation", 1.0, 0.0, 0.0, T=T) == pytest.approx(expected, rel=1e-3)
    # Efficiency falls for warm dust (H desorbs before reacting).
    warm = float(rates.h2_formation_rate_cm3_s(jnp.float64(100.0), jnp.float64(100.0)))
    assert warm < 0.2 * expected * math.sqrt(10)
    assert law("h2_formation", 2.0, 0.0, 0.0, T=T) == pytest.approx(2 * expected, rel=1e-3)


def ranged_network() -> Network:
    R = Reaction
    return Network("ranged", ("A", "A+", "B", "AB", "e-"), (
        R(("A+", "e-"), ("A",), "two_body", 3.5e-12, -0.75, 0.0, 10.0, 300.0),
        R(("A+", "e-"), ("A",), "two_body", 2.0e-12, -0.6, 10.0, 300.0, 41000.0),
        R(("A", "B"), ("A+", "B", "e-"), "two_body", 1e-9, 0.0, 500.0, 80.0, 510.0),  # hot fit
        R(("A", "B"), ("AB",), "two_body", 1e-17, 0.0, 0.0, 10.0, 41000.0),  # 2 overlapping
        R(("A", "B"), ("AB",), "two_body", 2e-17, 0.0, 0.0, 10.0, 41000.0),  # channels: summed
        R(("A",), ("A+", "e-"), "cosmic_ray", 1e-17, 0.0, 0.0),
        R(("AB",), ("A", "B"), "photo", 1e-10, 0.0, 2.0),
    ))


def k_at(policy, T):
    table = rates.build_rate_table(ranged_network(), temperature_policy=policy)
    return np.asarray(rates.rate_coefficients(table, 1e4, T, 1.0, 1.0, 1.0))


def test_temperature_ranges_cutoff_is_default_and_uclchem_like():
    assert rates.build_rate_table(ranged_network()).temperature_policy == "cutoff"
    k = k_at("cutoff", 10.0)
    assert k[0] == pytest.approx(3.5e-12 * (10 / 300) ** -0.75)
    assert k[1] == 0.0
    assert k[2] == 0.0  # fitted at 80-510 K: off at 10 K (Cl+ + H2 in UCLCHEM)
    assert k[3] == pytest.approx(1e-17) and k[4] == pytest.approx(2e-17)
    # The shared end point 300 K belongs to the upper range; below the 10 K floor rows stay on.
    k = k_at("cutoff", 300.0)
    assert k[0] == 0.0 and k[1] == pytest.approx(2.0e-12 * math.exp(-10 / 300))
    assert k_at("cutoff", 5.0)[0] == pytest.approx(3.5e-12 * (5 / 300) ** -0.75)
    assert k_at("cutoff", 100.0)[2] == pytest.approx(1e-9 * math.exp(-5.0))


def test_temperature_ranges_clamp_and_extrapolate():
    k = k_at("clamp", 10.0)
    assert k[2] == pytest.approx(1e-9 * (80 / 300) ** 0.0 * math.exp(-500 / 80))
    assert k_at("extrapolate", 10.0)[2] == pytest.approx(1e-9 * math.exp(-50.0))
    k = k_at("clamp", 5e4)
    assert k[1] == pytest.approx(2.0e-12 * (41000 / 300) ** -0.6 * math.exp(-10 / 41000))
    assert k[0] == 0.0
    k = k_at("extrapolate", 5.0)
    assert k[0] == pytest.approx(3.5e-12 * (5 / 300) ** -0.75) and k[1] == 0.0


@pytest.mark.parametrize("policy", rates.TEMPERATURE_POLICIES)
def test_fast_path_matches_registry(policy):
    from test_solver import tiny_network

    for network in (tiny_network(), ranged_network()):
        table = rates.build_rate_table(network, temperature_policy=policy)
        rng = np.random.default_rng(3)
        for _ in range(5):
            c = conditions(n=10 ** rng.uniform(1, 8), T=10 ** rng.uniform(0.5, 4.5),
                           av=rng.uniform(0, 30), g0=10 ** rng.uniform(-2, 3),
                           zeta=10 ** rng.uniform(-1, 2), n_h2=10 ** rng.uniform(10, 22),
                           n_c=10 ** rng.uniform(10, 18), n_co=10 ** rng.uniform(10, 18))
            fast = np.asarray(rates.effective_coefficients(table, c))
            slow = np.asarray(rates.coefficients_from_conditions(table, c)) * float(
                c.density_cm3) ** table.density_power
            np.testing.assert_allclose(fast, slow, rtol=1e-11, atol=0.0)


def test_zero_radiation_and_zeta_give_zero_not_nan():
    table = rates.build_rate_table(ranged_network())
    k = np.asarray(rates.rate_coefficients(table, 1e4, 20.0, 1.0, 0.0, 0.0))
    assert np.all(np.isfinite(k))
    assert k[5] == 0.0 and k[6] == 0.0 and k[3] > 0


def test_uclchem_placeholder_h2_row_gets_physical_rate():
    net = Network("p", ("H", "H2"), (
        Reaction(("H2",), ("H", "H"), "h2_photodissociation", 1.0, 1.0, 0.0),))
    table = rates.build_rate_table(net)
    assert table.alpha[0] == rates.H2_PHOTO_ALPHA_S and table.gamma[0] == rates.H2_PHOTO_GAMMA
    k = float(rates.rate_coefficients(table, 1e3, 20.0, 0.0, 1.7, 1.0)[0])
    assert k == pytest.approx(rates.H2_PHOTO_ALPHA_S, rel=1e-3)  # unshielded, Draine field


def test_shielding_uses_abundances():
    net = Network("s", ("H", "H2"), (
        Reaction(("H2",), ("H", "H"), "h2_photodissociation", 5.68e-11, 0.0, 3.74),))
    for mode, column_h in (("cloud", 0.5 * 1e3 * 0.2 * rates.PARSEC_CM),  # 0.5 n_H L
                           ("av", rates.NH_PER_AV_CM2 * 1.0)):  # 1.6e21 Av
        table = rates.build_rate_table(net, shielding_column=mode, cloud_size_pc=0.2)
        free = float(rates.rate_coefficients(table, 1e3, 20.0, 1.0, 1.0, 1.0)[0])
        shielded = float(rates.rate_coefficients(table, 1e3, 20.0, 1.0, 1.0, 1.0,
                                                 abundances=jnp.asarray([0.0, 0.5]))[0])
        # `free` has no column: f(0) = 0.99997 (Draine & Bertoldi's fit), not 1.
        expected = free * float(rates.h2_self_shielding(0.5 * column_h) / rates.h2_self_shielding(
            0.0))
        assert shielded == pytest.approx(expected, rel=1e-12, abs=0), mode
        assert shielded < 1e-3 * free


def test_bad_rate_type_and_range_are_named():
    net = Network("b", ("A", "B"), (Reaction(("A",), ("B",), "freeze", 1, 0, 0,
                                             source="x.csv:12"),))
    with pytest.raises(ValueError, match=r"x\.csv:12.*'freeze'"):
        rates.build_rate_table(net)
    net = Network("b", ("A", "B"), (Reaction(("A",), ("B",), "photo", 1, 0, 0, 300.0, 10.0,
                                             source="x.csv:13"),))
    with pytest.raises(ValueError, match=r"x\.csv:13.*t_min_K=300"):
        rates.build_rate_table(net)
    with pytest.raises(ValueError, match="temperature_policy"):
        rates.build_rate_table(ranged_network(), temperature_policy="nearest")
    with pytest.raises(ValueError, match="shielding_column.*'slab'"):
        rates.build_rate_table(ranged_network(), shielding_column="slab")
    with pytest.raises(ValueError, match="co_self_shielding.*'lee96'"):
        rates.build_rate_table(ranged_network(), co_self_shielding="lee96")
    with pytest.raises(ValueError, match="cloud_size_pc"):
        rates.build_rate_table(ranged_network(), cloud_size_pc=0.0)


def test_range_limits_are_robust_to_round_off():
    """A temperature a few ulps from a limit (e.g. 10**log10(15) = 14.999999999999996) selects
    the same rows as the limit itself, under every policy (issue 11)."""
    from test_solver import INTEGER_LIMITS_K, limits_network

    for policy in rates.TEMPERATURE_POLICIES:
        table = rates.build_rate_table(limits_network(), temperature_policy=policy)
        for limit in INTEGER_LIMITS_K:
            exact = np.asarray(rates.active_rows(table, limit))
            for t in (10.0 ** math.log10(limit), limit * (1 - 4e-16), limit * (1 + 4e-16),
                      math.exp(math.log(limit))):
                np.testing.assert_array_equal(np.asarray(rates.active_rows(table, t)), exact,
                                              err_msg=f"{policy}: T={t!r} vs {limit}")
