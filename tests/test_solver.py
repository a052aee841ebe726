"""Stiff solver: analytic Jacobian, conservation, tolerance convergence, failure reporting,
batching, input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astrochem_jax.chemistry import solver
from astrochem_jax.chemistry.formula import stoichiometry
from astrochem_jax.chemistry.network import Network, Reaction


def tiny_network() -> Network:
    """17 species, 21 reactions touching every rate law and two touching temperature ranges."""
    R = Reaction
    reactions = (
        R(("H", "H"), ("H2",), "h2_formation", 1.0, 0.0, 0.0),
        R(("H2",), ("H2+", "e-"), "cosmic_ray", 1.2e-17, 0.0, 0.0),
        R(("H2+", "H2"), ("H3+", "H"), "two_body", 2.08e-9, 0.0, 0.0),
        R(("H3+", "e-"), ("H2", "H"), "two_body", 2.34e-8, -0.52, 0.0),
        R(("H3+", "e-"), ("H", "H", "H"), "two_body", 4.36e-8, -0.52, 0.0),
        R(("He",), ("He+", "e-"), "cosmic_ray", 6.5e-18, 0.0, 0.0),
        R(("He+", "H2"), ("He", "H+", "H"), "two_body", 3.7e-14, 0.0, 35.0),
        R(("H+", "e-"), ("H",), "two_body", 3.5e-12, -0.75, 0.0, 10.0, 300.0),
        R(("H+", "e-"), ("H",), "two_body", 2.0e-12, -0.6, 0.0, 300.0, 41000.0),
        R(("H2",), ("H", "H"), "h2_photodissociation", 5.68e-11, 0.0, 3.74),
        R(("C",), ("C+", "e-"), "c_photoionisation", 3.5e-10, 0.0, 3.76),
        R(("C+", "e-"), ("C",), "two_body", 2.36e-12, -0.29, -17.6),
        R(("C", "H3+"), ("CH+", "H2"), "two_body", 2e-9, 0.0, 0.0),
        R(("CH+", "e-"), ("C", "H"), "two_body", 1.5e-7, -0.42, 0.0),
        R(("CO",), ("C", "O"), "co_photodissociation", 2.4e-10, 0.0, 3.88),
        R(("CH+", "O"), ("CO+", "H"), "two_body", 3.5e-10, 0.0, 0.0),
        R(("CO+", "H2"), ("HCO+", "H"), "two_body", 7.5e-10, 0.0, 0.0),
        R(("HCO+", "e-"), ("CO", "H"), "two_body", 2.4e-7, -0.69, 0.0),
        R(("O",), ("O+", "e-"), "cr_photon", 1.3e-17, 0.0, 1.4),
        R(("O+", "H2"), ("OH+", "H"), "ion_polar_1", 1.0, 1.6e-9, 1.2),
        R(("OH+", "e-"), ("O", "H"), "ion_polar_2", 1.0, 3.0e-8, 0.5),
    )
    species = ("H", "H+", "H2", "H2+", "H3+", "e-", "He", "He+", "C", "C+", "CH+", "O", "O+",
               "OH+", "CO", "CO+", "HCO+")
    return Network("tiny", species, reactions)


def tiny_initial(network: Network) -> np.ndarray:
    x = np.zeros(network.n_species)
    for name, value in {"H": 0.5, "H2": 0.25, "He": 0.1, "C+": 1.77e-4, "e-": 1.77e-4,
                        "O": 3.34e-4}.items():
        x[network.index(name)] = value
    return x


def collapse_like_track(n_tracers: int = 2, t_end_years: float = 1e6):
    """Two-node tracks (density x20, Av x3 over t_end) differing per tracer."""
    node_time = np.tile([0.0, 0.4 * t_end_years, t_end_years], (n_tracers, 1))
    scale = np.linspace(1.0, 3.0, n_tracers)[:, None]
    physical = np.empty((n_tracers, 3, 5))
    physical[..., 0] = 3e3 * scale * np.array([1.0, 2.0, 20.0])
    physical[..., 1] = 10.0 * scale
    physical[..., 2] = 2.0 * np.array([1.0, 1.5, 3.0])
    physical[..., 3] = 1.0
    physical[..., 4] = scale
    return node_time, physical


def element_and_charge_drift(network: Network, abundances: np.ndarray) -> float:
    """Worst relative drift of element totals and |charge| / electrons along [..., T, S]."""
    _, matrix, charges = stoichiometry(list(network.species))
    totals = abundances @ np.asarray(matrix, dtype=float)  # [..., T, E]
    element_rel = np.abs(totals - totals[..., :1, :]) / totals[..., :1, :]
    charge = abundances @ np.asarray(charges, dtype=float)
    electrons = abundances[..., network.index("e-")]
    charge_rel = np.abs(charge - charge[..., :1]) / np.max(electrons)
    return float(max(element_rel.max(), charge_rel.max()))


@pytest.fixture(scope="module")
def tiny():
    return tiny_network()


@pytest.fixture(scope="module")
def tiny_solution(tiny):
    node_time, physical = collapse_like_track(2)
    out = np.concatenate([[0.0], np.logspace(0, 6, 30)])
    result = solver.solve_tracks(tiny, tiny_initial(tiny), node_time, physical, out,
                                 solver.SolverSettings(batch_size=2), progress=False)
    return node_time, physical, out, result


def test_custom_jvp_jacobian_matches_autodiff(tiny):
    model = solver.build_model(tiny)
    rhs = model.make_rhs()
    analytic_fn = jax.jit(jax.jacfwd(rhs))
    reference_fn = jax.jit(jax.jacfwd(model.rhs_plain))
    direct_fn = jax.jit(model.jacobian)
    batched_jvp_fn = jax.jit(jax.vmap(
        lambda v, x, p: jax.jvp(rhs, (x, p), (v, jnp.zeros_like(p)))[1], in_axes=(0, None, None)))
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = jnp.asarray(10.0 ** rng.uniform(-14, -0.5, tiny.n_species))
        physical = jnp.asarray([10 ** rng.uniform(2, 7), rng.uniform(8, 300),
                                rng.uniform(0.1, 20), 10 ** rng.uniform(-1, 2),
                                rng.uniform(0.5, 5)])
        analytic = analytic_fn(x, physical)
        reference = reference_fn(x, physical)
        scale = jnp.max(jnp.abs(reference))
        assert scale > 0
        np.testing.assert_allclose(analytic, reference, rtol=1e-10, atol=1e-12 * float(scale))
        np.testing.assert_allclose(direct_fn(x, physical), reference, rtol=1e-10,
                                   atol=1e-12 * float(scale))
        # Batched tangents other than the identity (custom_vmap's general branch).
        vs = jnp.asarray(rng.normal(size=(4, tiny.n_species)))
        jvps = batched_jvp_fn(vs, x, physical)
        np.testing.assert_allclose(jvps, vs @ reference.T, rtol=1e-9,
                                   atol=1e-12 * float(scale))
        # The shielded rates make J depend on x_H2, x_C, x_CO beyond the mass-action terms.
        assert float(jnp.abs(reference[:, tiny.index("H2")]).max()) > 0


def test_rhs_conserves_elements_and_charge_by_construction(tiny):
    model = solver.build_model(tiny)
    _, matrix, charges = stoichiometry(list(tiny.species))
    weights = np.column_stack([np.asarray(matrix, float), np.asarray(charges, float)])
    rng = np.random.default_rng(1)
    x = jnp.asarray(10.0 ** rng.uniform(-12, -1, tiny.n_species))
    dxdt = np.asarray(model.rhs_plain(x, jnp.asarray([1e4, 20.0, 3.0, 1.0, 1.0])))
    scale = np.abs(dxdt) @ np.abs(weights)
    assert np.all(np.abs(dxdt @ weights) <= 1e-14 * scale + 1e-300)


def test_solution_conserves_and_succeeds(tiny, tiny_solution):
    _, _, out, result = tiny_solution
    assert result.abundances.shape == (2, out.size, tiny.n_species)
    assert result.abundances.dtype == np.float64
    np.testing.assert_array_equal(result.result_code, 0)
    assert np.all(result.n_steps > 0)
    np.testing.assert_allclose(result.abundances[:, 0], np.tile(tiny_initial(tiny), (2, 1)))
    assert element_and_charge_drift(tiny, result.abundances) <= 1e-8
    # Chemistry happened: H3+ and HCO+ formed from nothing.
    assert np.all(result.abundances[:, -1, tiny.index("HCO+")] > 1e-14)


def test_tolerance_convergence_tiny(tiny, tiny_solution):
    node_time, physical, out, coarse = tiny_solution
    fine = solver.solve_tracks(tiny, tiny_initial(tiny), node_time, physical, out,
                               solver.SolverSettings(rtol=1e-9, batch_size=2), progress=False)
    np.testing.assert_array_equal(fine.result_code, 0)
    assert np.all(fine.n_steps > coarse.n_steps)
    mask = fine.abundances > 1e-12
    dex = np.abs(np.log10(np.maximum(coarse.abundances[mask], 1e-30))
                 - np.log10(fine.abundances[mask]))
    assert dex.max() <= 0.01


def test_forced_failure_is_reported_not_raised(tiny):
    node_time, physical = collapse_like_track(3)
    out = np.array([0.0, 1e3, 1e6])
    result = solver.solve_tracks(tiny, tiny_initial(tiny), node_time, physical, out,
                                 solver.SolverSettings(max_steps=4, batch_size=2),
                                 progress=False)
    assert result.result_code.shape == (3,)
    assert np.all(result.result_code != 0)
    assert not np.any(result.success)


def test_batches_are_padded_and_match_single_batch(tiny, tiny_solution):
    node_time, physical, out, reference = tiny_solution
    fn = solver.make_solver(tiny, solver.SolverSettings(batch_size=1))
    result = solver.solve_tracks(tiny, np.tile(tiny_initial(tiny), (2, 1)), node_time, physical,
                                 out, solver.SolverSettings(batch_size=1), progress=False,
                                 solver_fn=fn)
    np.testing.assert_allclose(result.abundances, reference.abundances, rtol=1e-9, atol=1e-30)
    np.testing.assert_array_equal(result.n_steps, reference.n_steps)


def test_solver_keeps_float64_in_a_float32_process(tiny, tiny_solution):
    """train and benchmark run with x64 off; the solver turns float64 on around itself and gives
    the same result as in a float64 process."""
    node_time, physical, out, reference = tiny_solution
    with jax.enable_x64(False):
        assert jnp.zeros(1).dtype == jnp.float32
        result = solver.solve_tracks(tiny, np.tile(tiny_initial(tiny), (2, 1)), node_time,
                                     physical, out, solver.SolverSettings(batch_size=2),
                                     progress=False)
        assert jnp.zeros(1).dtype == jnp.float32  # scoped: x64 is off again afterwards
    assert result.abundances.dtype == np.float64
    np.testing.assert_allclose(result.abundances, reference.abundances, rtol=1e-9, atol=1e-30)


def test_interpolation_is_linear_in_log():
    node_time = jnp.asarray([0.0, 10.0, 30.0])
    nodes = jnp.asarray([[1e2, 10, 1, 1, 1], [1e4, 10, 1, 1, 1], [1e5, 20, 1, 1, 1]],
                        dtype=jnp.float64)
    p = solver.interpolate_physical(jnp.asarray(5.0), node_time, nodes)
    np.testing.assert_allclose(p[0], 1e3, rtol=1e-12)
    p = solver.interpolate_physical(jnp.asarray(20.0), node_time, nodes)
    np.testing.assert_allclose(p[:2], [10**4.5, 10 * 2**0.5], rtol=1e-12)
    p = solver.interpolate_physical(jnp.asarray(99.0), node_time, nodes)
    np.testing.assert_allclose(p[0], 1e5, rtol=1e-12)
    # Continuous (to round-off) where the formula switches from one end node to the other.
    below, above = (solver.interpolate_physical(jnp.asarray(20.0 + d), node_time, nodes)
                    for d in (-1e-9, 1e-9))
    np.testing.assert_allclose(below, above, rtol=1e-9)


# Integer limits that `10**log10` does not return unchanged (issue 11), and some that it does.
INTEGER_LIMITS_K = (5.0, 10.0, 12.0, 13.0, 15.0, 20.0, 22.0, 23.0, 24.0, 25.0, 30.0, 38.0, 50.0,
                    56.0, 57.0, 80.0, 83.0, 90.0, 100.0, 150.0, 200.0, 300.0)


def test_constant_track_gives_node_values_bit_for_bit():
    node_time = jnp.asarray([0.0, 3e12, 3e12, 3e13])  # a repeated node time (a jump) too
    times = (0.0, 1e12, 3e12, 2e13, 3e13, 5e13)
    interpolate = jax.jit(solver.interpolate_physical)
    for temperature in INTEGER_LIMITS_K:
        node = np.array([1e5, temperature, 2.0964375, 1.7, 1.3])
        nodes = jnp.asarray(np.tile(node, (4, 1)))
        for t in times:
            np.testing.assert_array_equal(interpolate(jnp.asarray(t), node_time, nodes), node)


def test_varying_track_gives_node_values_bit_for_bit():
    node_time = jnp.asarray([0.0, 1e11, 4e11, 9e11])
    nodes = np.array([[3e3, 15.0, 1.0, 0.1, 0.5], [1e4, 15.0, 2.5, 0.1, 0.5],
                      [2e5, 20.0, 7.3, 0.1, 3.2], [1e7, 13.0, 23.0, 10.0, 3.2]])
    interpolate = jax.jit(solver.interpolate_physical)
    for k in range(4):
        np.testing.assert_array_equal(
            interpolate(node_time[k], node_time, jnp.asarray(nodes)), nodes[k])
    # Temperature constant on the first segment: exact inside it, not only at its ends.
    assert float(interpolate(jnp.asarray(0.37e11), node_time, jnp.asarray(nodes))[1]) == 15.0


def limits_network() -> Network:
    """Rows switching on or off at integer temperatures, with touching ranges at 15 and 20 K."""
    R = Reaction
    reactions = [R(("H2",), ("H2+", "e-"), "cosmic_ray", 1.2e-17, 0.0, 0.0)]
    for limit in INTEGER_LIMITS_K:
        reactions += [
            R(("C", "O"), ("CO",), "two_body", 1e-17 * limit, 0.3, 2.0, limit, 41000.0),
            R(("C+", "e-"), ("C",), "two_body", 2e-12, -0.6, 0.0, min(limit, 10.0), limit),
        ]
    reactions += [
        R(("O+", "H2"), ("OH+", "H"), "two_body", 1.6e-9, 0.0, 0.0, 10.0, 15.0),
        R(("O+", "H2"), ("OH+", "H"), "two_body", 1.7e-9, 0.1, 0.0, 15.0, 20.0),
        R(("O+", "H2"), ("OH+", "H"), "two_body", 1.8e-9, 0.2, 0.0, 20.0, 41000.0),
        R(("H2",), ("H", "H"), "h2_photodissociation", 5.68e-11, 0.0, 3.74, 15.0, 41000.0),
        R(("CO",), ("C", "O"), "co_photodissociation", 2.4e-10, 0.0, 3.88, 20.0, 41000.0),
        R(("H", "H"), ("H2",), "h2_formation", 1.0, 0.0, 0.0, 13.0, 41000.0),
    ]
    species = ("H", "H2", "H2+", "C", "C+", "O", "O+", "OH+", "CO", "e-")
    return Network("limits", species, tuple(reactions))


@pytest.mark.parametrize("temperature", INTEGER_LIMITS_K)
def test_solver_rates_on_a_constant_track_equal_rates_at_the_exact_temperature(temperature):
    """The coefficients the solver's RHS uses on a constant track at T are those of
    `rates.rate_coefficients` at T itself, for every row (issue 11: 15 K and 20 K rows were
    switched off by a 10**log10 round trip)."""
    from astrochem_jax.chemistry import rates

    network = limits_network()
    model = solver.build_model(network)
    node = np.array([1e5, temperature, 2.0, 1.0, 1.0])
    nodes = jnp.asarray(np.tile(node, (3, 1)))
    node_time = jnp.asarray([0.0, 1e12, 3e13])
    x = np.full(network.n_species, 1e-5)
    shield = jnp.asarray(x[[network.index(s) for s in ("H2", "C", "CO")]])
    for t in (0.0, 5e11, 1e12, 2e13):
        physical = solver.interpolate_physical(jnp.asarray(t), node_time, nodes)
        used = np.asarray(model.rate_coefficients(shield, physical))
        exact = np.asarray(rates.rate_coefficients(
            model.table, *node, abundances=jnp.asarray(x))) * node[0] ** model.table.density_power
        np.testing.assert_array_equal(used != 0, exact != 0)
        np.testing.assert_allclose(used, exact, rtol=1e-11, atol=0.0)
    on = np.asarray(rates.active_rows(model.table, temperature)) > 0
    # The three touching O+ + H2 rows: exactly one applies at every temperature.
    assert on[-6:-3].sum() == 1


@pytest.mark.parametrize("temperature", (15.0, 20.0))
def test_rows_starting_at_the_track_temperature_are_integrated(temperature):
    """End to end: on a constant track at T, a row whose range starts at T is on (its product
    follows the exact first-order solution) and a row whose range ends at T is on too."""
    R = Reaction
    network = Network("edges", ("H2", "H2+", "He", "He+", "e-"), (
        R(("H2",), ("H2+", "e-"), "cosmic_ray", 2e-14, 0.0, 0.0, temperature, 41000.0),
        R(("He",), ("He+", "e-"), "cosmic_ray", 1e-14, 0.0, 0.0, 10.0, temperature),
    ))
    x0 = np.array([0.5, 0.0, 0.1, 0.0, 0.0])
    physical = np.tile([1e4, temperature, 5.0, 1.0, 1.0], (1, 2, 1))
    out = np.array([0.0, 1e5, 1e6])
    result = solver.solve_tracks(network, x0, np.array([[0.0, 1e6]]), physical, out,
                                 solver.SolverSettings(batch_size=1, rtol=1e-9), progress=False)
    np.testing.assert_array_equal(result.result_code, 0)
    t_s = out * solver.SECONDS_PER_YEAR
    np.testing.assert_allclose(result.abundances[0, :, 0], 0.5 * np.exp(-2e-14 * t_s), rtol=1e-6)
    np.testing.assert_allclose(result.abundances[0, :, 2], 0.1 * np.exp(-1e-14 * t_s), rtol=1e-6)


def test_bad_inputs_name_the_field(tiny):
    node_time, physical = collapse_like_track(2)
    out = np.array([0.0, 1.0])
    with pytest.raises(ValueError, match="initial_abundances"):
        solver.solve_tracks(tiny, np.zeros(3), node_time, physical, out, progress=False)
    with pytest.raises(ValueError, match="node_physical"):
        solver.solve_tracks(tiny, tiny_initial(tiny), node_time, physical[..., :4], out,
                            progress=False)
    with pytest.raises(ValueError, match="output_time_years"):
        solver.solve_tracks(tiny, tiny_initial(tiny), node_time, physical, out[::-1],
                            progress=False)
    bad = physical.copy()
    bad[0, 0, 3] = 0.0
    with pytest.raises(ValueError, match="node_physical"):
        solver.solve_tracks(tiny, tiny_initial(tiny), node_time, bad, out, progress=False)
    with pytest.raises(ValueError, match="solver"):
        solver.make_solver(tiny, solver.SolverSettings(solver="euler"))
    broken = Network("broken", ("H", "H2"), (Reaction(("H", "X"), ("H2",), "two_body", 1, 0, 0,
                                                       source="f.rates:7"),))
    with pytest.raises(ValueError, match=r"f\.rates:7.*'X'"):
        solver.build_model(broken)


@pytest.mark.slow
def test_default_network_conservation_and_tolerance():
    from astrochem_jax.chemistry.initial_abundances import default_initial_abundances
    from astrochem_jax.chemistry.network import load_default_network

    network = load_default_network()
    x0 = default_initial_abundances(network)
    node_time, physical = collapse_like_track(2)
    out = np.concatenate([[0.0], np.logspace(1, 6, 20)])
    coarse = solver.solve_tracks(network, x0, node_time, physical, out,
                                 solver.SolverSettings(batch_size=2), progress=False)
    fine = solver.solve_tracks(network, x0, node_time, physical, out,
                               solver.SolverSettings(rtol=1e-9, batch_size=2), progress=False)
    np.testing.assert_array_equal(coarse.result_code, 0)
    np.testing.assert_array_equal(fine.result_code, 0)
    assert element_and_charge_drift(network, coarse.abundances) <= 1e-8
    assert element_and_charge_drift(network, fine.abundances) <= 1e-8
    mask = fine.abundances > 1e-12
    dex = np.abs(np.log10(np.maximum(coarse.abundances[mask], 1e-30))
                 - np.log10(fine.abundances[mask]))
    assert dex.max() <= 0.01


def test_stop_times_keep_only_significant_kinks():
    t = jnp.asarray([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    log_p = jnp.zeros((6, 5)).at[:, 0].set(jnp.asarray([0.0, 1.0, 2.0, 2.0, 2.0005, 2.001]))
    stops = np.asarray(solver.stop_times(t, log_p, 1e-3))
    # Node 2 (slope 1 -> 0) is a real kink; nodes 1 and 4 are straight; node 3 bends by 5e-4 dex.
    np.testing.assert_array_equal(stops, [0.0, 0.0, 0.0, 0.0, 2.0, 5.0])
    np.testing.assert_array_equal(solver.stop_times(t, log_p, 0.0), t)
    # A jump (repeated node time) is always a stop.
    t_jump = jnp.asarray([0.0, 1.0, 1.0, 3.0, 4.0, 5.0])
    assert 1.0 in np.asarray(solver.stop_times(t_jump, jnp.zeros((6, 5)), 1e-3))


def test_sparse_stoichiometry_path_matches_dense(tiny, monkeypatch):
    dense_model = solver.build_model(tiny)
    assert dense_model.kinetics.stoichiometry_dense is not None
    monkeypatch.setattr(solver, "DENSE_STOICHIOMETRY_MAX_ENTRIES", 0)
    monkeypatch.setattr(solver, "HEAVY_SPECIES_MIN_REACTIONS", 4)
    sparse_model = solver.build_model(tiny)
    assert sparse_model.kinetics.stoichiometry_dense is None
    assert 0 < sparse_model.kinetics.heavy_species.size < tiny.n_species
    rng = np.random.default_rng(5)
    x = jnp.asarray(10.0 ** rng.uniform(-12, -1, tiny.n_species))
    physical = jnp.asarray([1e4, 15.0, 2.0, 1.0, 1.0])
    np.testing.assert_allclose(sparse_model.rhs_plain(x, physical),
                               dense_model.rhs_plain(x, physical), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(sparse_model.jacobian(x, physical),
                               dense_model.jacobian(x, physical), rtol=1e-12, atol=1e-300)
