"""The solver against closed-form kinetics (independent answers, not the solver against itself):
first-order decay, a reversible pair A <-> B, a formation/destruction balance and second-order
recombination, on tiny networks built with the project's own `Network`/`Reaction` types and the
default solver settings. No ../shared needed."""

import math

import numpy as np
import pytest

from astrochem_jax.chemistry import rates, solver
from astrochem_jax.chemistry.network import Network, Reaction

R = Reaction
# Output grid: t = 0, then log-spaced to 1 Myr (several e-folds of every rate below).
OUTPUT_YEARS = np.concatenate([[0.0], np.logspace(2, 6, 17)])
T_SECONDS = OUTPUT_YEARS * solver.SECONDS_PER_YEAR
# (solver rtol, tolerance of the comparison): the default settings (global error measured up to
# 4.4e-5 relative) and tight ones (the error shrinks with rtol: measured up to 3.5e-8).
ACCURACY = {"default": (1e-6, 1e-4), "tight": (1e-10, 1e-7)}


@pytest.fixture(params=list(ACCURACY))
def accuracy(request):
    """(SolverSettings, comparison rtol)."""
    solver_rtol, compare_rtol = ACCURACY[request.param]
    return solver.SolverSettings(batch_size=1, rtol=solver_rtol), compare_rtol


def solve(network, x0, physical, settings):
    """Constant conditions `physical` [5] over OUTPUT_YEARS; returns abundances [T, S]."""
    nodes = np.tile(np.asarray(physical, dtype=float), (1, 2, 1))
    result = solver.solve_tracks(network, x0, np.array([[0.0, OUTPUT_YEARS[-1]]]), nodes,
                                 OUTPUT_YEARS, settings, progress=False)
    np.testing.assert_array_equal(result.result_code, 0)
    return result.abundances[0]


def test_first_order_decay_under_cosmic_rays(accuracy):
    """H2 + CRP -> H2+ + e- alone: x(t) = x0 exp(-alpha zeta t), exactly."""
    settings, rtol = accuracy
    alpha, zeta = 4e-14, 2.5
    network = Network("decay", ("H2", "H2+", "e-"), (
        R(("H2",), ("H2+", "e-"), "cosmic_ray", alpha, 0.0, 0.0),))
    x = solve(network, [0.5, 0.0, 0.0], [1e4, 15.0, 5.0, 1.0, zeta], settings)
    expected = 0.5 * np.exp(-alpha * zeta * T_SECONDS)
    np.testing.assert_allclose(x[:, 0], expected, rtol=rtol)
    np.testing.assert_allclose(x[:, 1], 0.5 - expected, rtol=rtol, atol=1e-300)
    np.testing.assert_allclose(x[:, 2], x[:, 1], rtol=1e-12)  # charge balance


def test_reversible_pair_relaxes_to_equilibrium(accuracy):
    """HCN -> HNC at k_f = k2 n x_He (two-body with an inert catalyst: exercises the density
    power) and HNC -> HCN at k_b (photo, through Av and G0): exact relaxation
    x_HCN(t) = x_eq + (x0 - x_eq) exp(-(k_f + k_b) t), x_eq = k_b / (k_f + k_b) x_total."""
    settings, rtol = accuracy
    n, x_he, temperature, av, g0 = 2e3, 0.1, 30.0, 1.0, 3.0
    k2, beta, gamma = 3e-14, 0.5, 20.0
    alpha_ph, gamma_ph = 2e-12, 1.5
    network = Network("pair", ("He", "HCN", "HNC"), (
        R(("HCN", "He"), ("HNC", "He"), "two_body", k2, beta, gamma),
        R(("HNC",), ("HCN",), "photo", alpha_ph, 0.0, gamma_ph),
    ))
    x = solve(network, [x_he, 1e-6, 0.0], [n, temperature, av, g0, 1.0], settings)
    k_f = k2 * (temperature / 300.0) ** beta * math.exp(-gamma / temperature) * n * x_he
    k_b = alpha_ph * math.exp(-gamma_ph * av) * g0 / 1.7
    x_eq = 1e-6 * k_b / (k_f + k_b)
    expected = x_eq + (1e-6 - x_eq) * np.exp(-(k_f + k_b) * T_SECONDS)
    assert (k_f + k_b) * T_SECONDS[-1] > 30 and 0.3 < k_f / k_b < 3  # a real equilibrium
    np.testing.assert_allclose(x[:, 1], expected, rtol=rtol)
    np.testing.assert_allclose(x[:, 2], 1e-6 - expected, rtol=rtol, atol=1e-300)
    np.testing.assert_allclose(x[:, 0], x_he, rtol=1e-12)


def test_formation_destruction_balance(accuracy):
    """H2 formed on grains (rate k_gr n_H x_H, two H per H2) and destroyed by cosmic rays
    (H2 -> H + H at alpha zeta): dx_H2/dt = k_gr n (X_H - 2 x_H2) - alpha zeta x_H2, linear, so
    x_H2(t) = x_ss + (x0 - x_ss) exp(-lambda t) with lambda = 2 k_gr n + alpha zeta and the
    steady state x_ss = k_gr n X_H / lambda."""
    settings, rtol = accuracy
    n, temperature, alpha, zeta = 1e4, 20.0, 1e-12, 1.0
    network = Network("balance", ("H", "H2"), (
        R(("H", "H"), ("H2",), "h2_formation", 1.0, 0.0, 0.0),
        R(("H2",), ("H", "H"), "cosmic_ray", alpha, 0.0, 0.0),
    ))
    x = solve(network, [1.0, 0.0], [n, temperature, 1.0, 1.0, zeta], settings)
    k_gr = float(rates.h2_formation_rate_cm3_s(temperature, temperature))
    lam = 2.0 * k_gr * n + alpha * zeta
    x_ss = k_gr * n * 1.0 / lam
    assert lam * T_SECONDS[-1] > 30 and 0.05 < x_ss < 0.45  # a real balance, reached
    expected = x_ss * (1.0 - np.exp(-lam * T_SECONDS))
    np.testing.assert_allclose(x[:, 1], expected, rtol=rtol, atol=1e-300)
    np.testing.assert_allclose(x[-1, 1], x_ss, rtol=rtol)
    np.testing.assert_allclose(x[:, 0] + 2.0 * x[:, 1], 1.0, rtol=1e-12)


def test_second_order_recombination(accuracy):
    """H+ + e- -> H with x_e = x_H+: dx/dt = -k n x^2, x(t) = x0 / (1 + k n x0 t)."""
    settings, rtol = accuracy
    n, k = 1e3, 3.5e-12 * (10.0 / 300.0) ** -0.75
    network = Network("recombination", ("H", "H+", "e-"), (
        R(("H+", "e-"), ("H",), "two_body", 3.5e-12, -0.75, 0.0),))
    x0 = 1e-3
    x = solve(network, [0.0, x0, x0], [n, 10.0, 1.0, 1.0, 1.0], settings)
    expected = x0 / (1.0 + k * n * x0 * T_SECONDS)
    assert expected[-1] < 0.05 * x0
    np.testing.assert_allclose(x[:, 1], expected, rtol=rtol)
    np.testing.assert_allclose(x[:, 2], expected, rtol=rtol)
