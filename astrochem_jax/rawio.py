"""Writer (and a small in-memory reader) of our raw HDF5 layout (`format = "astrochem_jax"`).

The layout is specified in docs/architecture.md ("Raw HDF5 layout"): a UCLCHEM-like table
`/data` [rows, C] with `/columns` = Index, Model, Time, Density, gasTemp, Av, Radfield, zeta,
<species...>, rows sorted by Model (tracer id) then Time, stored CSR-style with `/tracer_id` and
`/tracer_ptr`; `/initial_abundances`; `/solver/{tracer_id,result_code,n_steps}` for every
attempted tracer; metadata as attributes (JSON strings where structured).

`Index` is the global row number (as in UCLCHEM/pandas dumps), `Model` the tracer id.
The preprocessing stage has its own streaming reader; `read_raw_dataset` loads everything into
memory and is meant for tests, small files and the benchmark's re-solves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from astrochem_jax import __version__
from astrochem_jax.atomic import atomic_path, json_default
from astrochem_jax.chemistry.formula import elements_of
from astrochem_jax.chemistry.tracks import PHYSICAL_COLUMNS

FORMAT = "astrochem_jax"
FORMAT_VERSION = 1
METADATA_COLUMNS: tuple[str, ...] = ("Index", "Model", "Time")
SOLVER_FIELDS: tuple[str, ...] = ("tracer_id", "result_code", "n_steps")
# Attributes stored as JSON text (decoded by the reader).
JSON_ATTRS: tuple[str, ...] = (
    "species", "elements", "solver", "config", "failed_tracers", "track_parameters",
)
ROWS_PER_CHUNK = 4096
GZIP_LEVEL = 1  # light: writing is I/O- not CPU-bound at level 1, and files shrink ~2x


class RawFormatError(ValueError):
    """A raw dataset (in memory or on disk) that does not follow the documented layout."""


def raw_columns(species: Sequence[str]) -> list[str]:
    """`/columns`: metadata, physical parameters, then species."""
    return [*METADATA_COLUMNS, *PHYSICAL_COLUMNS, *species]


def write_raw_dataset(
    path: str | Path,
    *,
    species: Sequence[str],
    tracer_ids: np.ndarray,
    time_years: np.ndarray,
    physical: np.ndarray,
    abundances: np.ndarray,
    initial_abundances: np.ndarray,
    attrs: Mapping[str, Any],
    solver_report: Mapping[str, np.ndarray],
) -> Path:
    """Write one raw dataset atomically (temporary file beside `path`, renamed on success).

    species [S]; tracer_ids int [B] (unique; rows are written in ascending id order);
    time_years [B, T] (years, non-decreasing per tracer; a [T] grid is broadcast);
    physical [B, T, 5] in `PHYSICAL_COLUMNS` order; abundances [B, T, S] (fractions of H nuclei);
    initial_abundances [S]; solver_report {tracer_id, result_code, n_steps}: int [A] over every
    attempted tracer, failed ones included.
    attrs: must hold `network_name`, `network_rates` (rate file text), `solver` (settings dict) and
    `config` (dict); may hold `elements` and `failed_tracers` (derived when absent: elements from
    the species formulae, failed tracers = result_code != 0). Other keys are stored as given.
    Returns the final path.
    """
    path = Path(path)
    species = [str(s) for s in species]
    arrays = _validated_arrays(
        path, species, tracer_ids, time_years, physical, abundances, initial_abundances
    )
    tracer_ids, time_years, physical, abundances, initial_abundances = arrays
    report = _validated_report(path, solver_report)
    attributes = _attributes(path, species, attrs, report)

    order = np.argsort(tracer_ids, kind="stable")
    n_tracers, n_times, _ = abundances.shape
    n_rows = n_tracers * n_times
    table = np.empty((n_rows, len(raw_columns(species))), dtype=np.float64)
    table[:, 0] = np.arange(n_rows, dtype=np.float64)
    table[:, 1] = np.repeat(tracer_ids[order], n_times).astype(np.float64)
    table[:, 2] = time_years[order].reshape(-1)
    n_meta, n_phys = len(METADATA_COLUMNS), len(PHYSICAL_COLUMNS)
    table[:, n_meta : n_meta + n_phys] = physical[order].reshape(n_rows, n_phys)
    table[:, n_meta + n_phys :] = abundances[order].reshape(n_rows, len(species))
    tracer_ptr = np.arange(n_tracers + 1, dtype=np.int64) * n_times

    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("columns", data=np.array(raw_columns(species), dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.create_dataset(
            "data", data=table, dtype=np.float64,
            chunks=(max(1, min(n_rows, ROWS_PER_CHUNK)), table.shape[1]),
            compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True,
        )
        f.create_dataset("tracer_id", data=tracer_ids[order].astype(np.int64))
        f.create_dataset("tracer_ptr", data=tracer_ptr)
        f.create_dataset("initial_abundances", data=initial_abundances)
        _write_solver_group(f, report)
        for key, value in attributes.items():
            f.attrs[key] = value
        # mkstemp creates 0600 files; a dataset is meant to be shared like any other output.
        tmp.chmod(0o644)
    return path


def _write_solver_group(f: h5py.File, report: Mapping[str, np.ndarray]) -> None:
    group = f.create_group("solver")
    for field in SOLVER_FIELDS:
        group.create_dataset(field, data=np.asarray(report[field], dtype=np.int64))


def _validated_arrays(path, species, tracer_ids, time_years, physical, abundances,
                      initial_abundances):
    where = f"raw dataset {path}"
    abundances = np.asarray(abundances, dtype=np.float64)
    if abundances.ndim != 3 or abundances.shape[2] != len(species):
        raise RawFormatError(
            f"{where}: abundances must be [tracers, times, {len(species)} species], "
            f"found shape {abundances.shape}"
        )
    n_tracers, n_times, n_species = abundances.shape
    if n_tracers < 1 or n_times < 1:
        raise RawFormatError(f"{where}: nothing to write (abundances shape {abundances.shape})")
    tracer_ids = np.asarray(tracer_ids).reshape(-1)
    if tracer_ids.shape != (n_tracers,) or not np.issubdtype(tracer_ids.dtype, np.integer):
        raise RawFormatError(
            f"{where}: tracer_ids must be integers [{n_tracers}], found "
            f"{tracer_ids.dtype} {tracer_ids.shape}"
        )
    if np.unique(tracer_ids).size != n_tracers:
        raise RawFormatError(f"{where}: tracer_ids must be unique, found {tracer_ids.tolist()}")
    time_years = np.asarray(time_years, dtype=np.float64)
    if time_years.ndim == 1:
        time_years = np.broadcast_to(time_years, (n_tracers, time_years.shape[0]))
    if time_years.shape != (n_tracers, n_times):
        raise RawFormatError(
            f"{where}: time_years must be [{n_tracers}, {n_times}] or [{n_times}], "
            f"found {time_years.shape}"
        )
    if np.any(np.diff(time_years, axis=1) < 0):
        raise RawFormatError(f"{where}: time_years must be non-decreasing along each tracer")
    physical = np.asarray(physical, dtype=np.float64)
    expected = (n_tracers, n_times, len(PHYSICAL_COLUMNS))
    if physical.shape != expected:
        raise RawFormatError(
            f"{where}: physical must be {expected} ({', '.join(PHYSICAL_COLUMNS)}), "
            f"found {physical.shape}"
        )
    initial_abundances = np.asarray(initial_abundances, dtype=np.float64).reshape(-1)
    if initial_abundances.shape != (n_species,):
        raise RawFormatError(
            f"{where}: initial_abundances must be [{n_species}], found {initial_abundances.shape}"
        )
    for name, arr in (("time_years", time_years), ("physical", physical),
                      ("abundances", abundances), ("initial_abundances", initial_abundances)):
        if not np.isfinite(arr).all():
            raise RawFormatError(
                f"{where}: {name} contains {int((~np.isfinite(arr)).sum())} non-finite values "
                "(failed tracers must be dropped before writing)"
            )
    return tracer_ids.astype(np.int64), time_years, physical, abundances, initial_abundances


def _validated_report(path, solver_report) -> dict[str, np.ndarray]:
    missing = [k for k in SOLVER_FIELDS if k not in solver_report]
    if missing:
        raise RawFormatError(
            f"raw dataset {path}: solver_report is missing {missing}; "
            f"expected {list(SOLVER_FIELDS)}"
        )
    report = {k: np.asarray(solver_report[k]).reshape(-1) for k in SOLVER_FIELDS}
    sizes = {k: v.shape[0] for k, v in report.items()}
    if len(set(sizes.values())) != 1:
        raise RawFormatError(f"raw dataset {path}: solver_report fields differ in length {sizes}")
    return report


def _attributes(path, species, attrs, report) -> dict[str, Any]:
    required = ("network_name", "network_rates", "solver", "config")
    missing = [k for k in required if k not in attrs]
    if missing:
        raise RawFormatError(f"raw dataset {path}: attrs is missing {missing}")
    failed = attrs.get("failed_tracers")
    if failed is None:
        failed = report["tracer_id"][report["result_code"] != 0].tolist()
    out: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "code_version": __version__,
        "elements": attrs.get("elements") or elements_of(species),
        "failed_tracers": [int(t) for t in failed],
        "species": list(species),
    }
    for key, value in attrs.items():
        if key not in out or key == "code_version":
            out[key] = value
    encoded: dict[str, Any] = {}
    for key, value in out.items():
        if key in JSON_ATTRS or isinstance(value, dict | list | tuple):
            encoded[key] = json.dumps(value, default=json_default)
        elif isinstance(value, str | int | float | np.integer | np.floating):
            encoded[key] = value
        else:
            raise RawFormatError(
                f"raw dataset {path}: attribute {key!r} must be str, number, list or dict, "
                f"found {type(value).__name__}"
            )
    return encoded



def read_raw_dataset(path: str | Path) -> dict[str, Any]:
    """Load a whole raw dataset into memory.

    Returns a dict with
      species [S] (list), columns [C] (list), elements (list), tracer_ids int64 [B],
      time_years [B, T], physical [B, T, 5], abundances [B, T, S] (float64),
      node_time_years [B, T] and node_physical [B, T, 5] (the same arrays, named for re-solving:
      the stored conditions are the solver's nodes, log-linear in between),
      initial_abundances [S], solver {tracer_id, result_code, n_steps} int64 [A],
      network_name, network_rates (text), solver_settings (dict), config (dict),
      failed_tracers (list), code_version, attrs (every attribute, JSON ones decoded).
    Requires every tracer to have the same number of rows (true for files `generate` writes).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"raw dataset {path} does not exist")
    with h5py.File(path, "r") as f:
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            raise RawFormatError(
                f"raw dataset {path}: attribute 'format' expected {FORMAT!r}, found {fmt!r}"
            )
        for name in ("columns", "data", "tracer_id", "tracer_ptr", "initial_abundances"):
            if name not in f:
                raise RawFormatError(f"raw dataset {path}: missing dataset /{name}")
        columns = [c.decode() if isinstance(c, bytes) else str(c) for c in f["columns"][()]]
        data = f["data"][()]
        tracer_ids = f["tracer_id"][()].astype(np.int64)
        tracer_ptr = f["tracer_ptr"][()].astype(np.int64)
        initial = f["initial_abundances"][()]
        solver = {k: f["solver"][k][()].astype(np.int64) for k in SOLVER_FIELDS}
        attrs = {k: _decode_attr(k, v) for k, v in f.attrs.items()}

    expected_meta = [*METADATA_COLUMNS, *PHYSICAL_COLUMNS]
    if columns[: len(expected_meta)] != expected_meta:
        raise RawFormatError(
            f"raw dataset {path}: /columns must start with {expected_meta}, "
            f"found {columns[: len(expected_meta)]}"
        )
    species = columns[len(expected_meta) :]
    lengths = np.diff(tracer_ptr)
    if tracer_ptr.shape != (tracer_ids.shape[0] + 1,) or tracer_ptr[-1] != data.shape[0]:
        raise RawFormatError(
            f"raw dataset {path}: /tracer_ptr {tracer_ptr.tolist()[:5]}... does not match "
            f"{tracer_ids.shape[0]} tracers and {data.shape[0]} rows"
        )
    if lengths.size and np.any(lengths != lengths[0]):
        raise RawFormatError(
            f"raw dataset {path}: tracers have different row counts {sorted(set(lengths))}; "
            "read_raw_dataset needs equal lengths"
        )
    n_times = int(lengths[0]) if lengths.size else 0
    table = data.reshape(tracer_ids.shape[0], n_times, len(columns))
    n_meta, n_phys = len(METADATA_COLUMNS), len(PHYSICAL_COLUMNS)
    time_years = table[:, :, 2]
    physical = table[:, :, n_meta : n_meta + n_phys]
    return {
        "path": path,
        "species": species,
        "columns": columns,
        "elements": attrs.get("elements"),
        "tracer_ids": tracer_ids,
        "time_years": time_years,
        "physical": physical,
        "abundances": table[:, :, n_meta + n_phys :],
        "node_time_years": time_years,
        "node_physical": physical,
        "initial_abundances": initial,
        "solver": solver,
        "network_name": attrs.get("network_name"),
        "network_rates": attrs.get("network_rates"),
        "solver_settings": attrs.get("solver"),
        "config": attrs.get("config"),
        "failed_tracers": attrs.get("failed_tracers"),
        "code_version": attrs.get("code_version"),
        "attrs": attrs,
    }


def _decode_attr(key: str, value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if key in JSON_ATTRS and isinstance(value, str):
        return json.loads(value)
    return value
