"""Generate a ground-truth raw dataset: tracers along collapse (or user CSV) tracks, integrated
with the float64 stiff solver, written atomically in our raw HDF5 layout (docs/architecture.md).

    python -m astrochem_jax.generate --config=configs/datasets/grav.py [--config.n_tracers=8]

The program is a thin absl main around `generate_dataset(config) -> Path`. Every knob lives in the
dataset config (`n_tracers`, `n_steps`, `seed`, `raw_path` and the `generator` section).

Output times: `n_steps` points from t = 0 (row 0 = the initial abundances) to
`generator.time_end_years`, evenly spaced (`time_spacing="linear"`) or t = 0 followed by
log-spaced times from `generator.log_first_time_years` (`"log"`). Collapse tracks use the output
times as the solver's nodes, so the stored physical columns are exactly what was integrated
(log-linear in between) and `rawio.read_raw_dataset` gives everything needed to re-solve.
CSV tracks keep their own nodes for the solve; the stored columns are their log-linear
interpolation at the output times.

A tracer fails (reported on stderr, listed under `/solver` and in attr `failed_tracers`, never
written to `/data`) when the solver returns a non-zero result code, or when its output is not
finite (code `RESULT_NOT_FINITE`), or when an element total or the total charge drifts by more
than `generator.conservation_rtol` (code `RESULT_NOT_CONSERVED`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from astrochem_jax import runtime

if __name__ == "__main__":
    # Before numpy/jax load anywhere: one BLAS thread, float64, persistent compile cache.
    runtime.setup_entry_point(x64=True)

import dataclasses  # noqa: E402
import importlib.resources  # noqa: E402

import numpy as np  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from astrochem_jax import config_utils, rawio  # noqa: E402
from astrochem_jax.chemistry import tracks  # noqa: E402
from astrochem_jax.chemistry.formula import stoichiometry  # noqa: E402

# Result codes: 0 = success, small positive codes = diffrax RESULTS (from the solver), 100 =
# non-finite output (the solver's RESULT_NONFINITE), 101 = element/charge drift (ours).
RESULT_NOT_FINITE = 100
RESULT_NOT_CONSERVED = 101
TIME_SPACINGS = ("linear", "log")


class GenerateError(RuntimeError):
    """The generator cannot produce a dataset from this configuration."""


# --- pure helpers ----------------------------------------------------------------------------


def output_time_grid(
    n_steps: int, time_end_years: float, spacing: str, log_first_time_years: float
) -> np.ndarray:
    """Output times [n_steps] in years, t[0] = 0, strictly increasing."""
    if n_steps < 2:
        raise GenerateError(f"config n_steps: expected >= 2 output times, found {n_steps}")
    if not time_end_years > 0:
        raise GenerateError(
            f"config generator.time_end_years: expected > 0, found {time_end_years}"
        )
    if spacing == "linear":
        return np.linspace(0.0, float(time_end_years), n_steps)
    if spacing == "log":
        if not 0 < log_first_time_years < time_end_years:
            raise GenerateError(
                "config generator.log_first_time_years: expected 0 < value < time_end_years "
                f"({time_end_years}), found {log_first_time_years}"
            )
        logs = np.geomspace(float(log_first_time_years), float(time_end_years), n_steps - 1)
        return np.concatenate([[0.0], logs])
    raise GenerateError(
        f"config generator.time_spacing: expected one of {TIME_SPACINGS}, found {spacing!r}"
    )


def conservation_errors(
    abundances: np.ndarray, initial_abundances: np.ndarray, species: list[str] | tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Worst relative drift along each trajectory of element totals and of the total charge.

    abundances [B, T, S], initial_abundances [S]. Element e: max_t |N_e(t) - N_e(0)| / N_e(0).
    Charge: max_t |Q(t) - Q(0)| / max_t sum_i |q_i| x_i(t) (the charged-species scale; Q(0) is
    usually 0). Returns (element_rel [B], charge_rel [B]).
    """
    _, matrix, charges = stoichiometry(list(species))
    matrix = np.asarray(matrix, dtype=np.float64).reshape(len(species), -1)
    charges = np.asarray(charges, dtype=np.float64)
    totals0 = initial_abundances @ matrix  # [E]
    totals = abundances @ matrix  # [B, T, E]
    present = totals0 > 0
    element_rel = np.zeros(abundances.shape[0])
    if present.any():
        drift = np.abs(totals[..., present] - totals0[present]) / totals0[present]
        element_rel = drift.max(axis=(1, 2))
    q0 = initial_abundances @ charges
    charge_scale = np.maximum((abundances @ np.abs(charges)).max(axis=1), 1e-300)
    charge_rel = np.abs(abundances @ charges - q0).max(axis=1) / charge_scale
    return element_rel, charge_rel


# --- stages ----------------------------------------------------------------------------------


def load_network(spec: str, species_csv: str | None = None, gas_phase: bool = False):
    """The network to integrate and its UMIST RATE22 text (stored in the raw file, so that the
    benchmark re-solves the same network): (Network, text).

    spec: `"default"` (the packaged demonstration network), a UMIST RATE22 `.rates` path, or a
    UCLCHEM reactions `.csv` path with its species CSV in `species_csv`; `gas_phase` keeps the
    gas-phase subset (`network.gas_phase_subset`). A UCLCHEM network is converted to RATE22 text
    and read back from it, so the stored text reproduces exactly the network that was solved.
    """
    from astrochem_jax.chemistry import network as network_module

    if spec == "default":
        net = network_module.load_default_network()
        text = _default_rates_text(network_module)
    else:
        path = Path(spec)
        if not path.is_file():
            raise GenerateError(
                f"config generator.network: expected 'default', an existing UMIST .rates file or "
                f"a UCLCHEM reactions .csv file, found {spec!r} (no such file)"
            )
        if path.suffix.lower() == ".csv":
            if not species_csv or not Path(species_csv).is_file():
                raise GenerateError(
                    f"config generator.network_species_csv: a UCLCHEM network ({path}) needs its "
                    f"species CSV; found {species_csv!r}")
            net = network_module.read_uclchem_network(path, species_csv, name=path.stem)
            if gas_phase:
                net = network_module.gas_phase_subset(net, f"{path.stem}_gas")
            text = network_module.format_umist_text(
                net, header=f"{net.name}: converted from {path.name} + "
                            f"{Path(species_csv).name}" + (" (gas-phase subset)" if gas_phase
                                                            else ""))
            net = network_module.parse_umist_text(text, net.name, str(path))
            return net, text
        text = path.read_text(encoding="utf-8", errors="replace")
        net = network_module.parse_umist_text(text, path.stem, str(path))
    if gas_phase:
        net = network_module.gas_phase_subset(net, net.name)
        text = network_module.format_umist_text(net, header=f"{net.name} (gas-phase subset)")
    return net, text


def _default_rates_text(network_module) -> str:
    reader = getattr(network_module, "default_network_text", None)
    if reader is not None:
        return reader()
    resource = importlib.resources.files("astrochem_jax.chemistry") / "data"
    return (resource / "default_network.rates").read_text()


def initial_abundances_for(network, mapping, atomic_hydrogen: bool) -> np.ndarray:
    """Initial abundances [S]: the default dark-cloud set, or `mapping` ({species: fraction of H
    nuclei}, replacing the default set) when given; electrons make the mixture neutral."""
    from astrochem_jax.chemistry import initial_abundances as ia

    if not mapping:
        return np.asarray(ia.default_initial_abundances(network, atomic_hydrogen=atomic_hydrogen),
                          dtype=np.float64)
    mapping = {str(k): float(v) for k, v in dict(mapping).items()}
    for name in mapping:
        try:
            network.index(name)
        except KeyError:
            raise GenerateError(
                f"config generator.initial_abundances: species {name!r} is not in network "
                f"{network.name!r}"
            ) from None
    return np.asarray(ia.abundances_from_mapping(network, mapping), dtype=np.float64)


def build_tracks(config: ConfigDict, output_time_years: np.ndarray):
    """Tracks to integrate.

    Returns (tracer_ids int64 [B], node_time_years [B, N], node_physical [B, N, 5],
    physical_at_output [B, T, 5], track_parameters {name: [B]} (empty for CSV tracks)).
    """
    g = config.generator
    if g.tracks_csv:
        ids, node_time, node_phys = tracks.read_tracks_csv(g.tracks_csv, g.csv_default_zeta)
        first, last = node_time[:, 0], node_time[:, -1]
        bad = np.flatnonzero((first > 0) | (last < output_time_years[-1]))
        if bad.size:
            k = int(bad[0])
            raise GenerateError(
                f"tracks CSV {g.tracks_csv}: tracer {ids[k]} covers {first[k]}..{last[k]} yr; "
                f"the output grid needs 0..{output_time_years[-1]} yr "
                "(config generator.time_end_years)"
            )
        at_output = tracks.interpolate_log_tracks(node_time, node_phys, output_time_years)
        return ids, node_time, node_phys, at_output, {}
    n_tracers = int(config.n_tracers)
    params = tracks.sample_track_parameters(n_tracers, dict(g.track_ranges), int(config.seed))
    node_phys = tracks.collapse_tracks(params, output_time_years)
    node_time = np.broadcast_to(output_time_years, (n_tracers, output_time_years.size)).copy()
    ids = np.arange(n_tracers, dtype=np.int64)
    return ids, node_time, node_phys, node_phys, params


def solver_settings(config: ConfigDict):
    """`solver.SolverSettings` from `config.generator.solver` (fields the solver knows)."""
    from astrochem_jax.chemistry.solver import SolverSettings

    wanted = config_utils.to_dict(config.generator.solver)
    known = {f.name for f in dataclasses.fields(SolverSettings)}
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise GenerateError(
            f"config generator.solver: unknown settings {unknown}; "
            f"SolverSettings has {sorted(known)}"
        )
    return SolverSettings(**wanted)


def solver_workers(config: ConfigDict) -> int | None:
    """`config.generator.solver_workers`: None (every core) or a process count >= 1."""
    value = config.generator.get("solver_workers")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GenerateError(
            "config generator.solver_workers: expected None (every core) or an integer >= 1, "
            f"found {value!r}"
        )
    return value


def solve_all(network, x0, node_time, node_phys, output_time_years, settings, n_workers=1):
    """`solve_tracks` over every tracer (vmapped batches of `settings.batch_size`, one compiled
    shape) with its tracers/s progress line, on `n_workers` processes (None: every core; 1: in
    this process). The result does not depend on `n_workers` (same batches, same function).
    Returns (abundances [B, T, S], result_code [B], n_steps [B])."""
    from astrochem_jax.chemistry.parallel import solve_tracks_parallel

    res = solve_tracks_parallel(network, x0, node_time, node_phys, output_time_years,
                                settings=settings, n_workers=n_workers, progress=True,
                                solver_fn=_jitted_solver(network, settings))
    return (np.asarray(res.abundances, dtype=np.float64),
            np.asarray(res.result_code, dtype=np.int64).reshape(-1),
            np.asarray(res.n_steps, dtype=np.int64).reshape(-1))


_SOLVERS: dict = {}


def _jitted_solver(network, settings):
    """One jitted solver per (network, settings) per process: repeated `generate_dataset` calls
    (tests, notebooks) skip re-tracing diffrax, which costs several seconds each time."""
    from astrochem_jax.chemistry.solver import make_solver

    key = (network, settings)
    if key not in _SOLVERS:
        if len(_SOLVERS) >= 4:
            _SOLVERS.pop(next(iter(_SOLVERS)))
        _SOLVERS[key] = make_solver(network, settings)
    return _SOLVERS[key]


def classify_failures(abundances, result_code, x0, species, conservation_rtol) -> np.ndarray:
    """Final result codes [B]: the solver's, or RESULT_NOT_FINITE / RESULT_NOT_CONSERVED."""
    codes = np.asarray(result_code, dtype=np.int64).copy()
    finite = np.isfinite(abundances).all(axis=(1, 2))
    codes[(codes == 0) & ~finite] = RESULT_NOT_FINITE
    ok = codes == 0
    if ok.any():
        element_rel, charge_rel = conservation_errors(abundances[ok], x0, species)
        drifted = np.maximum(element_rel, charge_rel) > conservation_rtol
        codes[np.flatnonzero(ok)[drifted]] = RESULT_NOT_CONSERVED
    return codes


def generate_dataset(config: ConfigDict, *, stream=None) -> Path:
    """Generate the raw dataset described by a dataset config; returns the written path."""
    from astrochem_jax.chemistry.parallel import effective_n_workers

    stream = stream if stream is not None else sys.stderr
    start = time.perf_counter()
    g = config.generator
    out_path = Path(config.raw_path)
    output_time_years = output_time_grid(
        int(config.n_steps), g.time_end_years, g.time_spacing, g.log_first_time_years
    )
    network, rates_text = load_network(g.network, g.get("network_species_csv"),
                                       bool(g.get("network_gas_phase", False)))
    species = list(network.species)
    x0 = initial_abundances_for(network, g.initial_abundances, g.atomic_hydrogen)
    ids, node_time, node_phys, at_output, params = build_tracks(config, output_time_years)
    settings = solver_settings(config)
    workers = effective_n_workers(solver_workers(config), ids.size, settings.batch_size)
    print(
        f"generate {config.name}: {ids.size} tracers x {output_time_years.size} steps, network "
        f"{network.name!r} ({len(species)} species, {network.n_reactions} reactions), "
        f"t = 0..{output_time_years[-1]:.4g} yr ({g.time_spacing}), "
        f"{workers} solver process{'es' if workers > 1 else ''}",
        file=stream,
    )
    abundances, solver_codes, n_steps = solve_all(
        network, x0, node_time, node_phys, output_time_years, settings, n_workers=workers
    )
    codes = classify_failures(abundances, solver_codes, x0, species, g.conservation_rtol)
    failed = np.flatnonzero(codes != 0)
    for k in failed:
        print(f"generate {config.name}: tracer {ids[k]} FAILED: result_code {codes[k]} "
              f"(solver {solver_codes[k]}), {n_steps[k]} solver steps; not written", file=stream)
    ok = codes == 0
    if not ok.any():
        raise GenerateError(
            f"generate {config.name}: all {ids.size} tracers failed (result codes "
            f"{sorted(set(codes.tolist()))}); nothing written to {out_path}. Try a larger "
            "config generator.solver.max_steps or looser tolerances."
        )
    attrs = {
        "network_name": network.name,
        "network_rates": rates_text,
        "solver": {**config_utils.to_dict(g.solver), "settings": _settings_dict(settings)},
        "config": stored_config(config),
        "failed_tracers": ids[failed].tolist(),
        "track_parameters": {k: v[ok].tolist() for k, v in params.items()},
    }
    rawio.write_raw_dataset(
        out_path,
        species=species,
        tracer_ids=ids[ok],
        time_years=output_time_years,
        physical=at_output[ok],
        abundances=abundances[ok],
        initial_abundances=x0,
        attrs=attrs,
        solver_report={"tracer_id": ids, "result_code": codes, "n_steps": n_steps},
    )
    wall_s = time.perf_counter() - start
    print(
        f"generate {config.name}: {int(ok.sum())} tracers ok, {failed.size} failed, "
        f"{wall_s:.1f} s wall -> {out_path}",
        file=stream,
    )
    return out_path


def stored_config(config: ConfigDict) -> dict:
    """The config snapshot written to the raw file, less `generator.solver_workers`: the worker
    count changes no number in the file, and the file's sha256 keys the preprocess cache, so the
    file must not depend on it (neither does the `solver` attr)."""
    snapshot = config_utils.to_dict(config)
    snapshot.get("generator", {}).pop("solver_workers", None)
    return snapshot


def _settings_dict(settings) -> dict:
    return config_utils.to_dict(dataclasses.asdict(settings))


# --- program ---------------------------------------------------------------------------------


def main(argv) -> None:
    from absl import app

    from astrochem_jax import cli

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.setup_logging(str(_CONFIG.value.name), "generate")
    generate_dataset(_CONFIG.value)


if __name__ == "__main__":
    from ml_collections import config_flags

    from astrochem_jax import cli

    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "dataset config file or bare name, e.g. configs/datasets/grav.py",
        lock_config=True
    )
    cli.run(main, {"config": "datasets"}, errors=(GenerateError,))
