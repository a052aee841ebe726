"""Column planning and validation of raw tables (pass 1 of the pipeline, plus the per-chunk
abundance checks of pass 2). Every error names the file, the column or tracer, and what was
expected and found."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from astrochem_jax.preprocess.errors import PreprocessError
from astrochem_jax.preprocess.readers import RawTable
from astrochem_jax.preprocess.stoichiometry import species_matrix

TIME_COLUMN = "Time"


@dataclass(frozen=True)
class ColumnPlan:
    """Column indices into a `RawTable`: time, physical parameters [P] and species [S]."""

    time: int
    physical_names: tuple[str, ...]
    physical: tuple[int, ...]
    species_names: tuple[str, ...]
    species: tuple[int, ...]

    @property
    def all(self) -> list[int]:
        """Read order used by the pipeline: [time, *physical, *species]."""
        return [self.time, *self.physical, *self.species]


def plan_columns(table: RawTable, dataset) -> ColumnPlan:
    """Pick time, physical and species columns; species = every column that is neither metadata,
    physical, nor dropped. Checks required columns, species count and that species parse."""
    physical_names = tuple(dataset.physical_parameters)
    required = [TIME_COLUMN, *physical_names]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise PreprocessError(
            f"raw file {table.path}: required columns {missing} are missing; expected "
            f"{required} (after renames such as radfield -> Radfield); found "
            f"{list(table.columns[:12])}{' ...' if len(table.columns) > 12 else ''}"
        )
    excluded = {*dataset.metadata_columns, *physical_names, *dataset.columns_to_drop,
                TIME_COLUMN, "Model", "Index"}
    text = [c for c in (TIME_COLUMN, *physical_names) if c in table.non_numeric]
    text += [c for c in table.non_numeric if c not in excluded]
    if text:
        raise PreprocessError(
            f"raw file {table.path}: column(s) {text} hold text (a pandas object block), "
            "expected numbers. Time and physical columns must be numeric; any other text column "
            "is not a species: drop it, e.g. --dataset.columns_to_drop="
            f"{','.join([*dataset.columns_to_drop, *text])}"
        )
    species = [(c, i) for i, c in enumerate(table.columns) if c not in excluded]
    if dataset.get("sort_species", False):
        species.sort()
    names = tuple(c for c, _ in species)
    if not names:
        raise PreprocessError(f"raw file {table.path}: no species columns left after dropping "
                              f"{sorted(excluded)}")
    expected = dataset.get("n_species")
    if expected is not None and len(names) != int(expected):
        raise PreprocessError(
            f"raw file {table.path}: found {len(names)} species columns, expected "
            f"dataset.n_species = {expected} (dropped: {list(dataset.columns_to_drop)}; first "
            f"species {list(names[:5])}, last {list(names[-3:])})"
        )
    species_matrix(names, where=f"raw file {table.path}, species columns")
    return ColumnPlan(
        time=table.column_index(TIME_COLUMN),
        physical_names=physical_names,
        physical=tuple(table.column_index(c) for c in physical_names),
        species_names=names,
        species=tuple(i for _, i in species),
    )


# Fields that identify a generated dataset: a raw file generated with other values is not the
# dataset its config describes (e.g. a file left from before the config changed).
GENERATED_IDENTITY_FIELDS = ("n_tracers", "n_steps", "seed")


def check_generated_identity(table: RawTable, dataset) -> None:
    """Refuse a generated raw file whose recorded n_tracers / n_steps / seed differ from the
    dataset config's (a stale file: preprocessing it would silently train on other tracers)."""
    recorded = table.generated_by
    if not recorded:
        return
    for field in GENERATED_IDENTITY_FIELDS:
        ours, theirs = dataset.get(field), recorded.get(field)
        if ours is None or theirs is None or ours == theirs:
            continue
        raise PreprocessError(
            f"raw file {table.path}: generated with {field} = {theirs!r}, but dataset "
            f"{dataset.get('name')!r} expects {field} = {ours!r}. The file is from another "
            "config (or an older version of this one); regenerate it with `python -m "
            "astrochem_jax.generate --config=configs/datasets/<dataset>.py` (quickstart: "
            f"FORCE_GENERATE=1), or describe this file: --dataset.{field}={theirs!r} "
            f"(preprocess) / --config.dataset.{field}={theirs!r} (train)")


def tracer_chunks(table: RawTable, tracers: Sequence[int], chunk_rows: int
                  ) -> Iterator[list[int]]:
    """Group tracer indices (in the given order) into chunks of <= chunk_rows rows whose rows are
    one contiguous range of the file (a single read). A tracer longer than chunk_rows is alone."""
    chunk: list[int] = []
    rows = 0
    for k in tracers:
        n = int(table.stops[k] - table.starts[k])
        contiguous = not chunk or table.starts[k] == table.stops[chunk[-1]]
        if chunk and (rows + n > chunk_rows or not contiguous):
            yield chunk
            chunk, rows = [], 0
        chunk.append(int(k))
        rows += n
    if chunk:
        yield chunk


def floor_physical(physical: np.ndarray, floors: Sequence[float | None]) -> tuple[np.ndarray, int]:
    """Raise values below a per-parameter floor to it (AstroChemNet floors Radfield at 1e-4 so its
    log10 exists). physical [..., P]; returns (floored copy, number of values raised)."""
    n = 0
    for p, floor in enumerate(floors):
        if floor is None:
            continue
        low = physical[..., p] < floor
        n += int(low.sum())
        physical[..., p] = np.where(low, floor, physical[..., p])
    return physical, n


def check_tracer_metadata(table: RawTable, tracer: int, time: np.ndarray, physical: np.ndarray,
                          physical_names: Sequence[str]) -> None:
    """Time finite and strictly increasing; physical parameters finite and > 0 (log10 scaling)."""
    tid = int(table.tracer_ids[tracer])
    where = f"raw file {table.path}, tracer {tid} (rows {int(table.starts[tracer])}:" \
            f"{int(table.stops[tracer])})"
    if time.size == 0:
        raise PreprocessError(f"{where}: tracer has no rows; expected at least 1")
    if not np.all(np.isfinite(time)):
        i = int(np.flatnonzero(~np.isfinite(time))[0])
        raise PreprocessError(f"{where}: column Time is {time[i]} at row {i}; expected finite")
    steps = np.diff(time)
    if np.any(steps <= 0):
        i = int(np.flatnonzero(steps <= 0)[0])
        raise PreprocessError(
            f"{where}: column Time is not increasing: row {i + 1} has "
            f"{float(time[i + 1])!r} after {float(time[i])!r}; expected strictly increasing "
            "times within a tracer"
        )
    bad = ~np.isfinite(physical) | (physical <= 0)
    if np.any(bad):
        i, p = (int(v[0]) for v in np.nonzero(bad))
        raise PreprocessError(
            f"{where}: column {physical_names[p]} is {float(physical[i, p])!r} at row {i} "
            f"(Time {float(time[i])!r}); expected a finite value > 0 (physical parameters are "
            "log10 scaled; set dataset.physical_floor to raise small values)"
        )


def check_abundances(table: RawTable, chunk: Sequence[int], offsets: np.ndarray,
                     abundances: np.ndarray, species_names: Sequence[str], time: np.ndarray,
                     negative_tolerance: float, above_one_tolerance: float | None = 1e-6) -> int:
    """Abundances [rows, S] must be finite, >= -negative_tolerance and <= 1 +
    above_one_tolerance (fractions of H nuclei; None = no upper check); tiny negatives are set to
    0 in place. Returns how many values were zeroed."""
    low, high = abundances.min(), abundances.max()
    ceiling = np.inf if above_one_tolerance is None else 1.0 + float(above_one_tolerance)
    if np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= ceiling:
        return 0  # the common case, without boolean temporaries
    finite = np.isfinite(abundances)
    if not finite.all():
        _raise_at(table, chunk, offsets, ~finite, abundances, species_names, time,
                  "expected a finite abundance")
    above = abundances > ceiling
    if above.any():
        _raise_at(table, chunk, offsets, above, abundances, species_names, time,
                  f"expected <= 1 (abundances are fractions of H nuclei; values up to 1 + "
                  f"{above_one_tolerance:g}, dataset.above_one_tolerance, are clipped to 1). "
                  "A corrupted value or a column in other units? Fix the file or list the column "
                  "in dataset.columns_to_drop")
    negative = abundances < 0
    if negative.any():
        too_negative = abundances < -negative_tolerance
        if too_negative.any():
            _raise_at(table, chunk, offsets, too_negative, abundances, species_names, time,
                      f"expected >= -{negative_tolerance:g} (dataset.negative_tolerance; smaller "
                      "negatives are set to 0)")
        abundances[negative] = 0.0
    return int(negative.sum())


def _raise_at(table, chunk, offsets, mask, values, names, time, expected):
    row, col = (int(v[0]) for v in np.nonzero(mask))
    k = int(np.searchsorted(offsets, row, side="right") - 1)
    tracer = chunk[k]
    raise PreprocessError(
        f"raw file {table.path}: column {names[col]} of tracer {int(table.tracer_ids[tracer])} "
        f"is {float(values[row, col])!r} at row {row - int(offsets[k])} (file row "
        f"{int(table.starts[tracer]) + row - int(offsets[k])}, Time {float(time[row])!r}); "
        f"{expected}; "
        f"{int(mask.sum())} such values in this chunk"
    )
