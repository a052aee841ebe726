"""Physical tracks for the ground-truth generator: free-fall collapse, Latin hypercube sampling of
per-tracer parameters, and user tracks read from CSV.

Every track array has the physical quantities on its last axis in `PHYSICAL_COLUMNS` order:
density (H nuclei, cm^-3), gas temperature (K), visual extinction Av (mag), radiation field
(Habing) and cosmic-ray ionisation rate (units of 1.3e-17 s^-1).

Free-fall collapse (Rawlings et al. 1992, MNRAS 255, 471; the law UCLCHEM's cloud model uses)
------------------------------------------------------------------------------------------------
UCLCHEM integrates the density of H nuclei n(t) with

    dn/dt = b (n^4 / n0)^(1/3) sqrt(24 pi G m_H n0 ((n/n0)^(1/3) - 1)),

where n0 is the initial density and b the free-fall (slow-down) factor (b = 1: pure free fall,
b < 1: collapse retarded, e.g. by magnetic support). With x = (n/n0)^(1/3) = 1/cos^2(theta)
this becomes cos^2(theta) dtheta/dt = (b/6) sqrt(24 pi G m_H n0), which integrates in closed form:

    n(t) = n0 / cos^6(theta),   theta + sin(2 theta)/2 = a t,   a = b sqrt(8 pi G m_H n0 / 3).

The left side is monotone in theta on [0, pi/2] (derivative 2 cos^2 theta >= 0), so theta(t) is
found by vectorised bisection; theta reaches pi/2 (infinite density) at the free-fall time
t_ff = pi / (2 a), e.g. 0.52 Myr for n0 = 1e4 cm^-3 and b = 1, 3.1 Myr for n0 = 3e3 cm^-3 and
b = 0.3. The density is capped at a per-tracer final density n_max (UCLCHEM's `finalDens`).

Extinction from a mass-conserving cloud: a sphere of initial radius r0 keeps its mass, so
r = r0 (n0/n)^(1/3) and the column N_H = n r = n0 r0 (n/n0)^(2/3); Av = Av_base + N_H / 1.6e21
(UCLCHEM's conversion, mag per cm^-2). r0 defaults to 0.05 pc in the dataset config (UCLCHEM's
default `rout`). Gas temperature, radiation field and zeta are constant along each track (as in
UCLCHEM's isothermal collapse phase); they vary between tracers.
"""

from __future__ import annotations

import csv
import math
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

PHYSICAL_COLUMNS: tuple[str, ...] = ("Density", "gasTemp", "Av", "Radfield", "zeta")

# Physical constants (cgs).
GRAVITATIONAL_CONSTANT_CGS = 6.67430e-8  # cm^3 g^-1 s^-2
HYDROGEN_MASS_G = 1.6735575e-24
PARSEC_CM = 3.0856775814913673e18
SECONDS_PER_YEAR = 3.15576e7  # Julian year
COLUMN_PER_AV_CM2 = 1.6e21  # N_H per magnitude of visual extinction (UCLCHEM)

# Per-tracer parameters `collapse_tracks` needs (the keys of `sample_track_parameters` output).
TRACK_PARAMETERS: tuple[str, ...] = (
    "initial_density_cm3",
    "final_density_cm3",
    "freefall_factor",
    "gas_temperature_K",
    "radfield_habing",
    "zeta",
    "base_av_mag",
    "cloud_radius_pc",
)

_BISECTION_ITERATIONS = 64  # halves pi/2 down to below float64 resolution


class TrackError(ValueError):
    """Track input (parameter ranges or a user CSV) that cannot be used."""


# --- sampling --------------------------------------------------------------------------------


def sample_track_parameters(
    n_tracers: int, ranges: Mapping[str, tuple[float, float]], seed: int
) -> dict[str, np.ndarray]:
    """Latin hypercube sample, uniform in log10, of every parameter in `ranges`.

    Each parameter's range [lo, hi] is cut into `n_tracers` equal strata in log10 space and every
    stratum gets exactly one tracer; strata are paired across parameters at random. Each parameter
    has its own random stream derived from (seed, name), so adding a parameter leaves the others'
    draws unchanged. `lo == hi` gives a constant.

    Returns {name: float64 [n_tracers]}.
    """
    if n_tracers < 1:
        raise TrackError(f"n_tracers must be >= 1, found {n_tracers}")
    out: dict[str, np.ndarray] = {}
    for name, bounds in ranges.items():
        lo, hi = _check_range(name, bounds)
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
        strata = rng.permutation(n_tracers)
        u = (strata + rng.uniform(size=n_tracers)) / n_tracers
        log_lo, log_hi = math.log10(lo), math.log10(hi)
        out[name] = 10.0 ** (log_lo + u * (log_hi - log_lo))
    return out


def _check_range(name: str, bounds) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise TrackError(
            f"track parameter range {name!r}: expected (lo, hi), found {bounds!r}"
        ) from None
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise TrackError(
            f"track parameter range {name!r}: expected 0 < lo <= hi (log-space sampling), "
            f"found ({lo}, {hi})"
        )
    return lo, hi


# --- free-fall collapse ----------------------------------------------------------------------


def freefall_rate_per_s(initial_density_cm3: np.ndarray, freefall_factor: np.ndarray) -> np.ndarray:
    """a = b sqrt(8 pi G m_H n0 / 3) in s^-1, shape of the (broadcast) inputs."""
    n0 = np.asarray(initial_density_cm3, dtype=np.float64)
    b = np.asarray(freefall_factor, dtype=np.float64)
    return b * np.sqrt(8.0 * np.pi * GRAVITATIONAL_CONSTANT_CGS * HYDROGEN_MASS_G * n0 / 3.0)


def freefall_time_years(initial_density_cm3, freefall_factor) -> np.ndarray:
    """Time at which the uncapped density diverges (theta = pi/2): pi / (2 a), in years."""
    return np.pi / (2.0 * freefall_rate_per_s(initial_density_cm3, freefall_factor)) / (
        SECONDS_PER_YEAR
    )


def solve_theta(at: np.ndarray) -> np.ndarray:
    """theta in [0, pi/2] with theta + sin(2 theta)/2 = at (any shape; at >= pi/2 -> pi/2).

    Vectorised bisection: robust where Newton is not (the derivative 2 cos^2 theta vanishes at
    pi/2), and 64 halvings reach float64 resolution. Near pi/2 the equation itself is
    ill-conditioned (f ~ pi/2 - (2/3)(pi/2 - theta)^3), so theta is exact only to ~1e-5 there;
    such densities (n/n0 > 1e20) are far above any cap.
    """
    target = np.clip(np.asarray(at, dtype=np.float64), 0.0, np.pi / 2)
    lo = np.zeros_like(target)
    hi = np.full_like(target, np.pi / 2)
    for _ in range(_BISECTION_ITERATIONS):
        mid = 0.5 * (lo + hi)
        below = mid + 0.5 * np.sin(2.0 * mid) < target
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return np.where(target >= np.pi / 2, np.pi / 2, 0.5 * (lo + hi))


def collapse_density_cm3(
    time_years: np.ndarray,
    initial_density_cm3: np.ndarray,
    final_density_cm3: np.ndarray,
    freefall_factor: np.ndarray,
) -> np.ndarray:
    """Capped free-fall density n(t) = min(n0 / cos^6 theta(t), n_max).

    time_years [N]; the per-tracer arrays [B]. Returns [B, N] (cm^-3), non-decreasing in time.
    """
    t_s = np.asarray(time_years, dtype=np.float64)[None, :] * SECONDS_PER_YEAR
    n0 = np.asarray(initial_density_cm3, dtype=np.float64)[:, None]
    n_max = np.asarray(final_density_cm3, dtype=np.float64)[:, None]
    a = freefall_rate_per_s(n0, np.asarray(freefall_factor, dtype=np.float64)[:, None])
    theta = solve_theta(a * np.maximum(t_s, 0.0))
    cos6 = np.cos(theta) ** 6
    # cos6 -> 0 at theta = pi/2; the cap takes over long before, so guard the division only.
    uncapped = n0 / np.maximum(cos6, np.finfo(np.float64).tiny)
    return np.minimum(uncapped, np.maximum(n_max, n0))


def collapse_tracks(params: Mapping[str, np.ndarray], time_years: np.ndarray) -> np.ndarray:
    """Physical conditions along free-fall collapse tracks.

    params: {name: [B]} with every key of `TRACK_PARAMETERS` (see the module docstring);
    time_years: [N] node times (years, non-decreasing, t >= 0).
    Returns node_physical [B, N, 5] float64 in `PHYSICAL_COLUMNS` order.
    """
    missing = [k for k in TRACK_PARAMETERS if k not in params]
    if missing:
        raise TrackError(
            f"collapse_tracks: missing track parameters {missing}; "
            f"expected {list(TRACK_PARAMETERS)}"
        )
    p = {k: np.asarray(params[k], dtype=np.float64).reshape(-1) for k in TRACK_PARAMETERS}
    sizes = {k: v.shape[0] for k, v in p.items()}
    if len(set(sizes.values())) != 1:
        raise TrackError(f"collapse_tracks: parameters have different lengths {sizes}")
    time_years = np.asarray(time_years, dtype=np.float64).reshape(-1)
    if np.any(time_years < 0) or np.any(np.diff(time_years) < 0):
        raise TrackError("collapse_tracks: time_years must be >= 0 and non-decreasing")

    density = collapse_density_cm3(
        time_years, p["initial_density_cm3"], p["final_density_cm3"], p["freefall_factor"]
    )
    n0 = p["initial_density_cm3"][:, None]
    r0_cm = p["cloud_radius_pc"][:, None] * PARSEC_CM
    column_cm2 = n0 * r0_cm * (density / n0) ** (2.0 / 3.0)
    av = p["base_av_mag"][:, None] + column_cm2 / COLUMN_PER_AV_CM2

    def constant(name: str) -> np.ndarray:
        return np.broadcast_to(p[name][:, None], density.shape)

    columns = {
        "Density": density,
        "gasTemp": constant("gas_temperature_K"),
        "Av": av,
        "Radfield": constant("radfield_habing"),
        "zeta": constant("zeta"),
    }
    return np.stack([columns[c] for c in PHYSICAL_COLUMNS], axis=-1)


# --- interpolation ---------------------------------------------------------------------------


def interpolate_log_tracks(
    node_time_years: np.ndarray, node_physical: np.ndarray, time_years: np.ndarray
) -> np.ndarray:
    """Physical conditions at `time_years` [T], piecewise linear in log10 between nodes (the
    solver's convention and formula, `solver.interpolate_physical`: node values and constant
    segments come out bit for bit). node_time_years [B, N], node_physical [B, N, P].
    Returns [B, T, P].

    Times outside a track's node range take its end values.
    """
    node_time_years = np.asarray(node_time_years, dtype=np.float64)
    node_physical = np.asarray(node_physical, dtype=np.float64)
    time_years = np.asarray(time_years, dtype=np.float64)
    n_nodes = node_time_years.shape[1]
    out = np.empty((node_physical.shape[0], time_years.shape[0], node_physical.shape[2]))
    for b in range(node_physical.shape[0]):
        if n_nodes == 1:
            out[b] = node_physical[b, 0]
            continue
        t_nodes = node_time_years[b]
        i = np.clip(np.searchsorted(t_nodes, time_years, side="right") - 1, 0, n_nodes - 2)
        span = np.maximum(t_nodes[i + 1] - t_nodes[i], 1e-300)
        w = np.clip((time_years - t_nodes[i]) / span, 0.0, 1.0)[:, None]
        p_a, p_b = node_physical[b, i], node_physical[b, i + 1]
        from_a = w <= 0.5
        near, far = np.where(from_a, p_a, p_b), np.where(from_a, p_b, p_a)
        out[b] = near * (far / near) ** np.where(from_a, w, 1.0 - w)
    return out


# --- user CSV tracks -------------------------------------------------------------------------

CSV_REQUIRED_COLUMNS: tuple[str, ...] = ("tracer", "time", "density", "gasTemp", "Av", "Radfield")
CSV_OPTIONAL_COLUMNS: tuple[str, ...] = ("zeta",)


def read_tracks_csv(
    path: str | Path, default_zeta: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read user tracks (e.g. from a hydrodynamic simulation) from a CSV file.

    Columns (header names case-insensitive, any order, extra columns ignored): `tracer` (integer
    id), `time` (years), `density` (cm^-3), `gasTemp` (K), `Av` (mag), `Radfield` (Habing) and
    optionally `zeta` (1.3e-17 s^-1; `default_zeta` when absent). A tracer's rows need not be
    contiguous, but their times must be strictly increasing in file order; every tracer must have
    the same number of rows; all physical values must be finite and > 0.

    Returns (tracer_ids int64 [B] ascending, node_time_years [B, N], node_physical [B, N, 5]).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [(line_no, row) for line_no, row in enumerate(reader, start=2) if row]
    except OSError as exc:
        raise TrackError(f"tracks CSV {path}: cannot read ({exc})") from exc
    if header is None:
        raise TrackError(f"tracks CSV {path}: empty file, expected a header with columns "
                         f"{list(CSV_REQUIRED_COLUMNS)}")
    lookup = {name.strip().lower(): k for k, name in enumerate(header)}
    missing = [c for c in CSV_REQUIRED_COLUMNS if c.lower() not in lookup]
    if missing:
        raise TrackError(
            f"tracks CSV {path}: missing column(s) {missing}; expected "
            f"{list(CSV_REQUIRED_COLUMNS)} (+ optional {list(CSV_OPTIONAL_COLUMNS)}), "
            f"found {[h.strip() for h in header]}"
        )
    if not rows:
        raise TrackError(f"tracks CSV {path}: no data rows")

    by_tracer: dict[int, list[tuple[int, list[float]]]] = {}
    value_columns = ("time", "density", "gasTemp", "Av", "Radfield")
    has_zeta = "zeta" in lookup
    for line_no, row in rows:
        tracer = _csv_int(path, line_no, row, lookup, "tracer")
        values = [_csv_float(path, line_no, row, lookup, c) for c in value_columns]
        values.append(_csv_float(path, line_no, row, lookup, "zeta") if has_zeta
                      else float(default_zeta))
        by_tracer.setdefault(tracer, []).append((line_no, values))

    lengths = {t: len(v) for t, v in by_tracer.items()}
    if len(set(lengths.values())) != 1:
        raise TrackError(
            f"tracks CSV {path}: tracers have unequal numbers of rows {lengths}; every tracer "
            "needs the same number of track points"
        )
    tracer_ids = np.array(sorted(by_tracer), dtype=np.int64)
    table = np.array([[v for _, v in by_tracer[t]] for t in tracer_ids], dtype=np.float64)
    node_time_years = table[:, :, 0]
    node_physical = table[:, :, 1:]
    for k, t in enumerate(tracer_ids):
        lines = [line for line, _ in by_tracer[int(t)]]
        steps = np.diff(node_time_years[k])
        if np.any(steps <= 0):
            bad = int(np.argmax(steps <= 0))
            raise TrackError(
                f"tracks CSV {path}: tracer {t}: column 'time' must be strictly increasing, "
                f"found {node_time_years[k, bad]} then {node_time_years[k, bad + 1]} "
                f"(lines {lines[bad]}-{lines[bad + 1]})"
            )
        for j, name in enumerate(PHYSICAL_COLUMNS):
            col = node_physical[k, :, j]
            bad_rows = np.flatnonzero(~(np.isfinite(col) & (col > 0)))
            if bad_rows.size:
                r = int(bad_rows[0])
                raise TrackError(
                    f"tracks CSV {path}: tracer {t}, line {lines[r]}: column {name!r} must be "
                    f"finite and > 0, found {col[r]}"
                )
        if not np.isfinite(node_time_years[k]).all() or node_time_years[k, 0] < 0:
            raise TrackError(
                f"tracks CSV {path}: tracer {t}: column 'time' must be finite and >= 0, found "
                f"first time {node_time_years[k, 0]}"
            )
    return tracer_ids, node_time_years, node_physical


def _csv_cell(path: Path, line_no: int, row: list[str], lookup: dict[str, int], column: str):
    k = lookup[column.lower()]
    if k >= len(row) or not row[k].strip():
        raise TrackError(f"tracks CSV {path}, line {line_no}: column {column!r} is empty")
    return row[k].strip()


def _csv_float(path: Path, line_no: int, row, lookup, column: str) -> float:
    cell = _csv_cell(path, line_no, row, lookup, column)
    try:
        return float(cell)
    except ValueError:
        raise TrackError(
            f"tracks CSV {path}, line {line_no}: column {column!r} expected a number, "
            f"found {cell!r}"
        ) from None


def _csv_int(path: Path, line_no: int, row, lookup, column: str) -> int:
    cell = _csv_cell(path, line_no, row, lookup, column)
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value == int(value)):
        raise TrackError(
            f"tracks CSV {path}, line {line_no}: column {column!r} expected an integer tracer "
            f"id, found {cell!r}"
        )
    return int(value)
