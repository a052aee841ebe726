"""Collapse tracks, Latin hypercube sampling and user CSV tracks."""

import math

import numpy as np
import pytest

from astrochem_jax.chemistry import tracks

RANGES = {
    "initial_density_cm3": (3e3, 1e5),
    "final_density_cm3": (1e6, 1e7),
    "freefall_factor": (0.3, 1.0),
    "gas_temperature_K": (10.0, 30.0),
    "radfield_habing": (0.1, 10.0),
    "zeta": (0.5, 3.2),
    "base_av_mag": (0.5, 3.2),
    "cloud_radius_pc": (0.05, 0.05),
}
TIME_YEARS = np.linspace(0.0, 1.5e6, 301)


def test_theta_satisfies_its_equation():
    at = np.linspace(0.0, np.pi / 2 - 1e-9, 1001)
    theta = tracks.solve_theta(at)
    assert np.all((theta >= 0) & (theta <= np.pi / 2))
    np.testing.assert_allclose(theta + 0.5 * np.sin(2 * theta), at, rtol=0, atol=1e-14)
    assert np.all(tracks.solve_theta(np.array([np.pi / 2, 10.0])) == pytest.approx(np.pi / 2))


def test_closed_form_solves_the_uclchem_ode():
    """n = n0/cos^6(theta) satisfies dn/dt = b (n^4/n0)^(1/3) sqrt(24 pi G m_H n0 (x - 1))."""
    n0, b = np.array([1e4]), np.array([0.7])
    t = np.linspace(1e4, 0.9 * tracks.freefall_time_years(n0, b)[0], 50)
    n = tracks.collapse_density_cm3(t, n0, np.array([1e30]), b)[0]
    h_years = 1e-3
    dndt = (tracks.collapse_density_cm3(t + h_years, n0, np.array([1e30]), b)[0]
            - tracks.collapse_density_cm3(t - h_years, n0, np.array([1e30]), b)[0]) / (
        2 * h_years * tracks.SECONDS_PER_YEAR)
    k = 24 * np.pi * tracks.GRAVITATIONAL_CONSTANT_CGS * tracks.HYDROGEN_MASS_G
    expected = b * (n**4 / n0) ** (1 / 3) * np.sqrt(k * n0 * ((n / n0) ** (1 / 3) - 1))
    np.testing.assert_allclose(dndt, expected, rtol=1e-5)


def test_density_monotone_capped_and_starts_at_n0():
    params = tracks.sample_track_parameters(16, RANGES, seed=3)
    phys = tracks.collapse_tracks(params, TIME_YEARS)
    assert phys.shape == (16, TIME_YEARS.size, len(tracks.PHYSICAL_COLUMNS))
    density = phys[..., tracks.PHYSICAL_COLUMNS.index("Density")]
    np.testing.assert_allclose(density[:, 0], params["initial_density_cm3"], rtol=1e-12)
    assert np.all(np.diff(density, axis=1) >= 0)
    assert np.all(density <= params["final_density_cm3"][:, None] * (1 + 1e-12))
    # Fast collapses reach the cap within the default span; the slowest ones do not.
    t_ff = tracks.freefall_time_years(params["initial_density_cm3"], params["freefall_factor"])
    reached = np.isclose(density[:, -1], params["final_density_cm3"])
    assert np.all(reached[t_ff < 0.9 * TIME_YEARS[-1]])
    assert not np.all(reached)
    av = phys[..., tracks.PHYSICAL_COLUMNS.index("Av")]
    assert np.all(np.diff(av, axis=1) >= 0) and np.all(av[:, 0] > params["base_av_mag"])
    for name, key in (("gasTemp", "gas_temperature_K"), ("Radfield", "radfield_habing"),
                      ("zeta", "zeta")):
        col = phys[..., tracks.PHYSICAL_COLUMNS.index(name)]
        np.testing.assert_array_equal(col, np.broadcast_to(params[key][:, None], col.shape))
    assert np.all(np.isfinite(phys)) and np.all(phys > 0)


def test_av_follows_mass_conserving_column():
    params = {k: np.array([v[0]]) for k, v in RANGES.items()}
    phys = tracks.collapse_tracks(params, TIME_YEARS)[0]
    n0, n = params["initial_density_cm3"][0], phys[:, 0]
    column = n0 * 0.05 * tracks.PARSEC_CM * (n / n0) ** (2 / 3)
    np.testing.assert_allclose(phys[:, 2], params["base_av_mag"][0] + column / 1.6e21, rtol=1e-12)


def test_latin_hypercube_strata_and_determinism():
    n = 37
    a = tracks.sample_track_parameters(n, RANGES, seed=11)
    b = tracks.sample_track_parameters(n, RANGES, seed=11)
    c = tracks.sample_track_parameters(n, RANGES, seed=12)
    for name, (lo, hi) in RANGES.items():
        np.testing.assert_array_equal(a[name], b[name])
        assert np.all((a[name] >= lo * (1 - 1e-12)) & (a[name] <= hi * (1 + 1e-12)))
        if lo == hi:
            np.testing.assert_allclose(a[name], lo)
            continue
        assert not np.array_equal(a[name], c[name])
        u = (np.log10(a[name]) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        strata = np.floor(u * n).astype(int)
        assert sorted(strata.tolist()) == list(range(n)), name
    # A parameter's draws do not depend on which other parameters are sampled.
    only = tracks.sample_track_parameters(n, {"zeta": RANGES["zeta"]}, seed=11)
    np.testing.assert_array_equal(only["zeta"], a["zeta"])


def test_bad_ranges_rejected():
    with pytest.raises(tracks.TrackError, match="zeta"):
        tracks.sample_track_parameters(4, {"zeta": (3.0, 1.0)}, seed=0)
    with pytest.raises(tracks.TrackError, match="zeta"):
        tracks.sample_track_parameters(4, {"zeta": (0.0, 1.0)}, seed=0)
    with pytest.raises(tracks.TrackError, match="missing track parameters"):
        tracks.collapse_tracks({"zeta": np.ones(2)}, TIME_YEARS)


def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


HEADER = ["tracer", "time", "density", "gasTemp", "Av", "Radfield", "zeta"]


def test_read_tracks_csv_round_trip(tmp_path):
    rows = []
    for tracer in (7, 2):
        for k, t in enumerate((0.0, 1e3, 5e4)):
            rows.append((tracer, t, 1e4 * (k + 1) * (tracer + 1), 10 + tracer, 1.0 + k, 1.0, 2.0))
    path = _write_csv(tmp_path / "tracks.csv", HEADER, rows)
    ids, node_time, node_phys = tracks.read_tracks_csv(path)
    np.testing.assert_array_equal(ids, [2, 7])
    np.testing.assert_array_equal(node_time, [[0.0, 1e3, 5e4]] * 2)
    assert node_phys.shape == (2, 3, 5)
    np.testing.assert_allclose(node_phys[0, :, 0], [3e4, 6e4, 9e4])
    np.testing.assert_allclose(node_phys[1, :, 1], 17.0)
    # zeta optional: the default fills it
    path2 = _write_csv(tmp_path / "nozeta.csv", HEADER[:-1], [r[:-1] for r in rows])
    _, _, phys2 = tracks.read_tracks_csv(path2, default_zeta=1.5)
    np.testing.assert_allclose(phys2[..., 4], 1.5)


@pytest.mark.parametrize(
    "header, rows, match",
    [
        (HEADER[:2] + HEADER[3:], [(0, 0.0, 10, 1, 1, 1)], r"missing column\(s\) \['density'\]"),
        (HEADER, [(0, 0.0, 1e4, 10, 1, 1, 1), (0, 1.0, 1e4, 10, 1, 1, 1),
                  (1, 0.0, 1e4, 10, 1, 1, 1)], "unequal numbers of rows"),
        (HEADER, [(3, 0.0, 1e4, 10, 1, 1, 1), (3, 0.0, 1e4, 10, 1, 1, 1)],
         "tracer 3: column 'time' must be strictly increasing"),
        (HEADER, [(4, 0.0, 1e4, 10, 1, 1, 1), (4, 1.0, -1e4, 10, 1, 1, 1)],
         "tracer 4, line 3: column 'Density' must be finite and > 0"),
        (HEADER, [(5, 0.0, 1e4, 10, "x", 1, 1)], "line 2: column 'Av' expected a number"),
        (HEADER, [(5.5, 0.0, 1e4, 10, 1, 1, 1)], "expected an integer tracer"),
    ],
)
def test_read_tracks_csv_errors(tmp_path, header, rows, match):
    path = _write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(tracks.TrackError, match=match) as info:
        tracks.read_tracks_csv(path)
    assert str(path) in str(info.value)


def test_interpolate_log_tracks_matches_nodes():
    params = tracks.sample_track_parameters(3, RANGES, seed=0)
    phys = tracks.collapse_tracks(params, TIME_YEARS)
    node_time = np.broadcast_to(TIME_YEARS, (3, TIME_YEARS.size))
    out = tracks.interpolate_log_tracks(node_time, phys, TIME_YEARS)
    np.testing.assert_allclose(out, phys, rtol=1e-12)
    mid = tracks.interpolate_log_tracks(node_time, phys, TIME_YEARS[:2].mean()[None])
    np.testing.assert_allclose(mid[:, 0], np.sqrt(phys[:, 0] * phys[:, 1]), rtol=1e-12)


def test_interpolate_log_tracks_is_exact_at_nodes_and_on_constant_segments():
    """Same values, bit for bit, as the solver integrates (no 10**log10 round trip: 15 K stays
    15 K, issue 11)."""
    import jax.numpy as jnp

    from astrochem_jax.chemistry import solver

    node_time = np.array([[0.0, 1e3, 1e4, 1e5]])
    phys = np.array([[[1e4, 15.0, 2.0, 1.0, 1.3], [1e4, 15.0, 3.0, 1.0, 1.3],
                      [5e4, 20.0, 7.0, 0.1, 1.3], [1e6, 13.0, 23.0, 0.1, 1.3]]])
    times = np.array([0.0, 200.0, 1e3, 4e3, 1e4, 7e4, 1e5, 2e5])
    out = tracks.interpolate_log_tracks(node_time, phys, times)
    np.testing.assert_array_equal(out[0, [0, 2, 4, 6, 7]], phys[0, [0, 1, 2, 3, 3]])
    assert out[0, 1, 1] == 15.0 and out[0, 1, 0] == 1e4 and np.all(out[0, :, 4] == 1.3)
    for t, row in zip(times, out[0], strict=True):
        np.testing.assert_array_equal(row, solver.interpolate_physical(
            jnp.asarray(t), jnp.asarray(node_time[0]), jnp.asarray(phys[0])))
