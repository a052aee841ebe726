"""raw HDF5 -> validated, scaled float32 shards + manifest, streamed in chunks of whole tracers.

Pass 1 reads only Time and the physical columns: tracer lengths, time order, physical validity,
per-tracer physical ranges. Then the train/val split and the `Scaler` are fixed. Pass 2 reads every
needed column chunk by chunk, checks abundances, applies the method and streams shards into a
temporary directory that is renamed into place only when everything succeeded (nothing is left
behind on failure). The dataset's static files go to `paths.utils_dir(name)` the same way.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time as _time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from astrochem_jax import atomic, config_utils, locks, paths
from astrochem_jax.preprocess import cache
from astrochem_jax.preprocess.errors import PreprocessError
from astrochem_jax.preprocess.methods import PREPROCESSORS, Method, TracerBatch
from astrochem_jax.preprocess.readers import RawTable, open_raw
from astrochem_jax.preprocess.sinks import ShardWriter, ShuffleWriter
from astrochem_jax.preprocess.stoichiometry import species_matrix, trajectory_drift
from astrochem_jax.preprocess.validate import (
    ColumnPlan,
    check_abundances,
    check_generated_identity,
    check_tracer_metadata,
    floor_physical,
    plan_columns,
    tracer_chunks,
)
from astrochem_jax.progress import Progress
from astrochem_jax.scaling import Scaler
from astrochem_jax.shards import FORMAT_VERSION, MANIFEST_NAME

LENGTH_POLICIES = ("error", "crop", "drop")
PROGRESS_MIN_ROWS = 200_000  # smaller files finish before a progress line would help


# Configs ---------------------------------------------------------------------------------------
def _load(config, kind: str):
    return config_utils.load_config(config, kind) if isinstance(config, str | Path) else config


def method_name(method_config) -> str:
    name = method_config.get("method")
    if name not in PREPROCESSORS:
        raise PreprocessError(
            f"method config: field method is {name!r}; expected one of {sorted(PREPROCESSORS)}"
        )
    return name


def output_dirs(dataset_config, method_config) -> tuple[Path, Path]:
    """(preprocessed dir, utils dir) of a dataset + method."""
    dataset_config = _load(dataset_config, "datasets")
    method_config = _load(method_config, "preprocessing")
    return (paths.preprocessed_dir(dataset_config.name, method_name(method_config)),
            paths.utils_dir(dataset_config.name))


def cache_status(dataset_config, method_config) -> cache.CacheStatus:
    """Whether the outputs for these configs are up to date (cheap: no re-hash when the raw
    file's size and mtime are unchanged)."""
    dataset_config = _load(dataset_config, "datasets")
    method_config = _load(method_config, "preprocessing")
    directory, utils = output_dirs(dataset_config, method_config)
    return cache.check(directory, utils, Path(dataset_config.raw_path), dataset_config,
                       method_config)


def is_cached(dataset_config, method_config) -> bool:
    return cache_status(dataset_config, method_config).hit


# Pass 1 ----------------------------------------------------------------------------------------
@dataclass
class Scan:
    """What pass 1 learned. Arrays are per tracer, in file order: lengths [T] (rows), first_time
    [T], physical_min / physical_max [T, P] (after floors), time grid of each distinct length,
    times {tracer index: Time column [rows]} (8 bytes a row, for the shared-grid check)."""

    lengths: np.ndarray
    first_time: np.ndarray
    physical_min: np.ndarray
    physical_max: np.ndarray
    grids: dict[int, np.ndarray] = field(default_factory=dict)
    shared_grid: bool = True
    n_floored: int = 0
    times: dict[int, np.ndarray] = field(default_factory=dict)


def _floors(dataset, plan: ColumnPlan) -> list[float | None]:
    floors = dataset.get("physical_floor") or {}
    floors = dict(floors)
    unknown = sorted(set(floors) - set(plan.physical_names))
    if unknown:
        raise PreprocessError(
            f"dataset.physical_floor names {unknown}, which are not in "
            f"dataset.physical_parameters {list(plan.physical_names)}"
        )
    return [None if floors.get(p) is None else float(floors[p]) for p in plan.physical_names]


def empty_scan(table: RawTable, plan: ColumnPlan) -> Scan:
    """A Scan to fill chunk by chunk; lengths are known from the tracer index already."""
    n, n_phys = table.tracer_ids.size, len(plan.physical)
    return Scan((table.stops - table.starts).astype(np.int64), np.zeros(n),
                np.zeros((n, n_phys)), np.zeros((n, n_phys)))


def scan_chunk(table: RawTable, plan: ColumnPlan, floors, prepend: bool, chunk: list[int],
               offsets: np.ndarray, meta: np.ndarray, out: Scan) -> None:
    """Validate Time and physical columns of one chunk (meta [rows, 1 + P]) and record per-tracer
    stats in `out`. Vectorised; the per-tracer check only runs to word an error."""
    lengths = np.diff(offsets)
    if np.any(lengths == 0):
        k = chunk[int(np.argmax(lengths == 0))]
        check_tracer_metadata(table, k, meta[:0, 0], meta[:0, 1:], plan.physical_names)
    time = meta[:, 0]
    physical, n_floored = floor_physical(meta[:, 1:].copy(), floors)
    steps = np.diff(time)
    steps[offsets[1:-1] - 1] = 1.0  # tracer boundaries are not steps
    if not (np.all(np.isfinite(time)) and np.all(steps > 0)
            and np.all(np.isfinite(physical)) and np.all(physical > 0)):
        for j, k in enumerate(chunk):
            rows = slice(offsets[j], offsets[j + 1])
            check_tracer_metadata(table, k, time[rows], physical[rows], plan.physical_names)
    first_time = time[offsets[:-1]]
    if prepend and np.any(first_time <= 0):
        tid = int(table.tracer_ids[chunk[int(np.argmax(first_time <= 0))]])
        raise PreprocessError(
            f"raw file {table.path}: tracer {tid} already starts at Time 0 and "
            "dataset.prepend_initial_abundances is True; expected first times > 0 "
            "(set --dataset.prepend_initial_abundances=False)"
        )
    index = np.asarray(chunk)
    out.n_floored += n_floored
    out.first_time[index] = first_time
    out.physical_min[index] = np.minimum.reduceat(physical, offsets[:-1], axis=0)
    out.physical_max[index] = np.maximum.reduceat(physical, offsets[:-1], axis=0)
    for j in range(len(chunk)):
        tracer_time = time[offsets[j] : offsets[j + 1]]
        out.times[int(chunk[j])] = tracer_time.copy()
        grid = out.grids.setdefault(tracer_time.size, tracer_time.copy())
        if out.shared_grid and (len(out.grids) > 1 or not np.array_equal(grid, tracer_time)):
            out.shared_grid = False


def chunk_rows_and_offsets(table: RawTable, chunk: list[int]) -> tuple[int, int, np.ndarray]:
    """(first row, stop row, offsets [len(chunk) + 1]) of a chunk of contiguous tracers."""
    offsets = np.concatenate([[0], np.cumsum(table.stops[chunk] - table.starts[chunk])])
    return int(table.starts[chunk[0]]), int(table.stops[chunk[-1]]), offsets


def scan(table: RawTable, plan: ColumnPlan, floors, prepend: bool, chunk_rows: int,
         label: str) -> Scan:
    """Pass 1 over Time and the physical columns of every tracer (needed when the physical
    scaling ranges come from the train split, before anything is scaled)."""
    out = empty_scan(table, plan)
    columns = [plan.time, *plan.physical]
    with _progress(table.n_rows, f"{label} scan") as progress:
        for chunk in tracer_chunks(table, range(table.tracer_ids.size), chunk_rows):
            start, stop, offsets = chunk_rows_and_offsets(table, chunk)
            # Whole rows read straight into memory, then the few columns picked: faster than an
            # HDF5 column selection on a wide table (measured 2x).
            (meta,) = table.read_groups(start, stop, [columns])
            scan_chunk(table, plan, floors, prepend, chunk, offsets, meta, out)
            progress.update(stop - start)
    return out


# Split, lengths, time grid, scaling -------------------------------------------------------------
# Output times of two tracers closer than this (relative) are the same time.
TIME_GRID_RTOL = 1e-9


def first_grid_mismatch(scan_result: Scan, kept: np.ndarray, steps: int | None
                        ) -> tuple[int, int, int] | None:
    """(reference tracer index, other tracer index, row) of the first kept tracer whose output
    times (its first `steps` rows; all when None) differ from the first kept tracer's, or None
    when they all share one time grid."""
    if kept.size == 0:
        return None
    reference = scan_result.times[int(kept[0])][:steps]
    for k in kept[1:]:
        times = scan_result.times[int(k)][:steps]
        n = min(times.size, reference.size)
        close = np.isclose(times[:n], reference[:n], rtol=TIME_GRID_RTOL, atol=0.0)
        if times.size != reference.size or not close.all():
            row = int(np.argmin(close)) if not close.all() else n
            return int(kept[0]), int(k), row
    return None


def check_shared_time_grid(table: RawTable, scan_result: Scan, kept: np.ndarray,
                           steps: int | None) -> None:
    """Sequential data: every kept tracer must have the same output times. The emulator learns a
    fixed step t -> t + 1 and takes no step size as input, so mixed grids would silently train
    it on mixed step sizes."""
    mismatch = first_grid_mismatch(scan_result, kept, steps)
    if mismatch is None:
        return
    a, b, row = mismatch
    ta, tb = scan_result.times[a][:steps], scan_result.times[b][:steps]

    def at(times: np.ndarray) -> str:
        if row >= times.size:
            return "no such row"
        step = f"; step {times[row] - times[row - 1]:.6g} yr" if row > 0 else ""
        return f"Time {float(times[row])!r} yr{step}"

    raise PreprocessError(
        f"raw file {table.path}: tracers {int(table.tracer_ids[a])} and "
        f"{int(table.tracer_ids[b])} have different output times (row {row}: {at(ta)} vs "
        f"{at(tb)}); the sequential method needs one time grid shared by every tracer, because "
        "the emulator learns a fixed step t -> t + 1 and takes no step size as input. Resample "
        "the tracers onto one grid (e.g. UCLCHEM's output times set to one list), or use "
        "--method=timeless (autoencoders), which does not depend on time"
    )


def select_tracers(table: RawTable, scan_result: Scan, method: Method, policy: str
                   ) -> tuple[np.ndarray, int | None, list[int]]:
    """(kept tracer indices, rows per tracer for sequential or None, dropped tracer ids)."""
    everything = np.arange(table.tracer_ids.size)
    if method.item != "tracer":
        return everything, None, []
    lengths = scan_result.lengths
    distinct, counts = np.unique(lengths, return_counts=True)
    if distinct.size == 1:
        return everything, int(distinct[0]), []
    if policy == "crop":
        return everything, int(distinct.min()), []
    if policy == "drop":
        modal = int(distinct[np.argmax(counts)])
        kept = everything[lengths == modal]
        return kept, modal, table.tracer_ids[lengths != modal].tolist()
    examples = {int(v): table.tracer_ids[lengths == v][:3].tolist() for v in distinct[:5]}
    raise PreprocessError(
        f"raw file {table.path}: tracers have different lengths (rows per tracer: "
        f"{dict(zip(distinct.tolist(), counts.tolist(), strict=True))}; example tracer ids "
        f"{examples}); sequential needs equal lengths. Set the method's length_policy to "
        "'crop' (cut every tracer to the shortest) or 'drop' (keep the most common length)"
    )


SPLITS = ("train", "val", "test")


def split_counts(n: int, train_split: float, test_split: float, where: str) -> tuple[int, ...]:
    """(train, val, test) counts of n items: round(n * (1 - train_split - test_split))
    validation and round(n * test_split) test, each at least one, the rest train (at least one).
    Only when n is too small for three non-empty splits (n = 2) is the test split left empty:
    such a dataset trains, and the benchmark says it has nothing to score."""
    train_split, test_split = float(train_split), float(test_split)
    val_split = 1.0 - train_split - test_split
    n_val = max(1, int(round(n * val_split)))
    n_test = max(1, int(round(n * test_split)))
    if n - n_val - n_test < 1:
        n_test = max(0, n - n_val - 1)
    n_train = n - n_val - n_test
    if not (0.0 < train_split < 1.0 and 0.0 < test_split < 1.0 and val_split > 0.0
            and n_train >= 1):
        raise PreprocessError(
            f"{where}: {n} items with dataset.train_split = {train_split:g} and "
            f"dataset.test_split = {test_split:g} (validation: the rest, {val_split:g}) give "
            f"{n_train} train, {n_val} validation and {n_test} test items; expected fractions "
            "in (0, 1) summing below 1 and at least one item in each split (at least 3 tracers)"
        )
    return n_train, n_val, n_test


def split_tracers(all_tracer_ids: np.ndarray, kept_ids: np.ndarray, train_split: float,
                  test_split: float, seed: int, where: str) -> np.ndarray:
    """Split index per kept tracer [K] int8 (0 train, 1 val, 2 test).

    The assignment is a seeded permutation of EVERY tracer of the file (not only the kept ones),
    so a tracer lands in the same split whichever method dropped which tracers: the timeless
    rows of a test tracer are never training rows of an autoencoder whose emulator is scored on
    it. Counts follow `split_counts` over the whole file."""
    n_train, n_val, _ = split_counts(all_tracer_ids.size, train_split, test_split, where)
    order = np.random.default_rng(seed).permutation(all_tracer_ids.size)
    split_of = np.empty(all_tracer_ids.size, dtype=np.int8)
    split_of[order[:n_train]] = 0
    split_of[order[n_train:n_train + n_val]] = 1
    split_of[order[n_train + n_val:]] = 2
    by_id = dict(zip(all_tracer_ids.tolist(), split_of.tolist(), strict=True))
    out = np.asarray([by_id[int(t)] for t in kept_ids], dtype=np.int8)
    n_test = int(np.count_nonzero(split_of == 2))
    missing = [SPLITS[k] for k in range(3 if n_test else 2) if not np.any(out == k)]
    if missing:
        raise PreprocessError(
            f"{where}: after dropping tracers, split(s) {missing} have no tracer left; "
            "expected at least one tracer in each of train, val and test"
        )
    return out


def limit_train_tracers(table: RawTable, kept: np.ndarray, method: Method, dataset,
                        where: str) -> tuple[np.ndarray, dict | None]:
    """Data-scaling studies: keep only `dataset.train_tracers` of the train split's tracers.

    kept [K] tracer indices -> (kept without the left-out train tracers, manifest record or
    None when `train_tracers` is unset). The split of every tracer is the full dataset's, so
    validation and test are unchanged; the kept train tracers are the first n of a permutation
    seeded by `dataset.seed`, so smaller subsets are nested in larger ones."""
    n_keep = dataset.get("train_tracers")
    if n_keep is None:
        return kept, None
    if method.split_by != "tracer":
        raise PreprocessError(
            f"{where}: dataset.train_tracers is {n_keep!r} but the method splits rows, not "
            "tracers (the leakage ablation); expected train_tracers unset for it")
    seed = int(dataset.seed)
    split_of = split_tracers(table.tracer_ids, table.tracer_ids[kept], float(dataset.train_split),
                             float(dataset.get("test_split") or 0.0), seed, where)
    train = kept[split_of == 0]
    if isinstance(n_keep, bool) or not isinstance(n_keep, int) or not 1 <= n_keep <= train.size:
        raise PreprocessError(
            f"{where}: dataset.train_tracers is {n_keep!r}; expected an integer from 1 to "
            f"{train.size} (the train split's tracers)")
    order = np.random.default_rng([seed, 1]).permutation(train.size)
    left_out = np.sort(train[order[n_keep:]])
    record = {"n": int(n_keep), "of": int(train.size),
              "left_out": table.tracer_ids[left_out].tolist()}
    return np.setdiff1d(kept, left_out), record


def make_scaler(dataset, plan: ColumnPlan, scan_result: Scan, kept: np.ndarray,
                range_mask: np.ndarray) -> tuple[Scaler, dict[str, list[float]], str]:
    """Scaler from dataset.physical_ranges, or from min/max over the tracers in range_mask."""
    given = dataset.get("physical_ranges")
    if given:
        given = dict(given)
        missing = [p for p in plan.physical_names if p not in given]
        if missing:
            raise PreprocessError(
                f"dataset.physical_ranges lacks {missing}; expected [min, max] for each of "
                f"{list(plan.physical_names)} (or leave physical_ranges unset to use the train "
                "split's range)"
            )
        ranges = {p: [float(given[p][0]), float(given[p][1])] for p in plan.physical_names}
        source = "config"
    else:
        rows = kept[range_mask]
        lo = scan_result.physical_min[rows].min(axis=0)
        hi = scan_result.physical_max[rows].max(axis=0)
        ranges = {p: [float(lo[i]), float(hi[i])] for i, p in enumerate(plan.physical_names)}
        source = "train split"
    for p, (lo_v, hi_v) in ranges.items():
        if not (lo_v > 0 and hi_v >= lo_v):
            raise PreprocessError(
                f"physical range of {p} is [{lo_v}, {hi_v}] ({source}); expected 0 < min <= max"
            )
    clip = tuple(float(v) for v in dataset.abundance_clip)
    scaler = Scaler(
        abundance_clip=clip,
        physical_parameters=plan.physical_names,
        physical_log10_min=tuple(float(np.log10(ranges[p][0])) for p in plan.physical_names),
        physical_log10_max=tuple(float(np.log10(ranges[p][1])) for p in plan.physical_names),
    )
    return scaler, ranges, source


@dataclass(frozen=True)
class SplitPlan:
    """counts: items per split (tracers for sequential, rows otherwise); tracer_ids per split;
    tracer_split [T] int8 over table tracers (0 train, 1 val, 2 test; tracer splits) or
    row_split [rows] int8 (row split); range_mask [kept] bool: tracers whose physical values set
    the scaling ranges (the train tracers)."""

    counts: dict[str, int]
    tracer_ids: dict[str, list[int]]
    tracer_split: np.ndarray | None
    row_split: np.ndarray | None
    range_mask: np.ndarray


def plan_split(table: RawTable, method: Method, kept: np.ndarray, n_rows_kept: np.ndarray,
               dataset, where: str) -> SplitPlan:
    """Train/val/test assignment: by tracer (`split_tracers`), or for the row-split ablation by
    row (seeded permutation of every output row, in stream order)."""
    ids = table.tracer_ids[kept]
    seed, train_split = int(dataset.seed), float(dataset.train_split)
    test_split = float(dataset.get("test_split") or 0.0)
    if method.split_by == "tracer":
        of_kept = split_tracers(table.tracer_ids, ids, train_split, test_split, seed, where)
        tracer_split = np.full(table.tracer_ids.size, -1, dtype=np.int8)
        tracer_split[kept] = of_kept
        sizes = n_rows_kept if method.item == "row" else np.ones(kept.size, dtype=np.int64)
        counts = {name: int(sizes[of_kept == k].sum()) for k, name in enumerate(SPLITS)}
        return SplitPlan(counts, {name: ids[of_kept == k].tolist()
                                  for k, name in enumerate(SPLITS)},
                         tracer_split, None, of_kept == 0)
    total = int(n_rows_kept.sum())
    n_train, n_val, _ = split_counts(total, train_split, test_split, where)
    row_split = np.full(total, 2, dtype=np.int8)
    order = np.random.default_rng(seed).permutation(total)
    row_split[order[:n_train]] = 0
    row_split[order[n_train:n_train + n_val]] = 1
    counts = {name: int(np.count_nonzero(row_split == k)) for k, name in enumerate(SPLITS)}
    return SplitPlan(counts, {name: ids.tolist() for name in SPLITS}, None, row_split,
                     np.ones(kept.size, dtype=bool))


# Pass 2 ----------------------------------------------------------------------------------------
def initial_abundances(table: RawTable, plan: ColumnPlan) -> np.ndarray:
    """[S] abundances at t = 0: the file's own vector, else row 0 of the first tracer."""
    if table.initial_abundances is not None:
        missing = [s for s in plan.species_names if s not in table.initial_abundances]
        if missing:
            raise PreprocessError(
                f"raw file {table.path}: initial abundances ({table.initial_abundances_source}) "
                f"lack species {missing[:5]}"
            )
        values = np.array([table.initial_abundances[s] for s in plan.species_names])
    else:
        start = int(table.starts[0])
        values = table.read(start, start + 1, plan.species)[0]
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise PreprocessError(
            f"raw file {table.path}: initial abundances ({table.initial_abundances_source}) must "
            "be finite and >= 0"
        )
    return values


@dataclass
class Routing:
    """Where the rows of pass 2 go: writers per split and the train membership."""

    writers: dict[str, Any]
    tracer_split: np.ndarray | None  # [T] int8, tracer-split methods
    row_split: np.ndarray | None  # [total rows] int8, the row-split method
    row_cursor: int = 0


def _route(routing: Routing, method: Method, out: np.ndarray, tracers: list[int],
           steps: int) -> None:
    if method.split_by == "tracer":
        member = routing.tracer_split[tracers]
        if method.item == "row":
            member = np.repeat(member, steps)
    else:
        member = routing.row_split[routing.row_cursor : routing.row_cursor + out.shape[0]]
        routing.row_cursor += out.shape[0]
    for k, name in enumerate(SPLITS):
        mine = member == k
        if mine.all():
            routing.writers[name].append(out)
        elif mine.any():
            routing.writers[name].append(out[mine])


def _batches(tracers: list[int], rows: list[np.ndarray]):
    """Group consecutive tracers of equal length: yields (tracer indices, [B, T, C] array)."""
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end].shape[0] != rows[start].shape[0]:
            yield tracers[start:end], np.stack(rows[start:end])
            start = end


def run_pass2(table: RawTable, plan: ColumnPlan, dataset, method: Method, kept: np.ndarray,
              steps: int | None, floors, scaler: Scaler, initial: np.ndarray,
              routing: Routing, chunk_rows: int, label: str, scan_into: Scan | None = None
              ) -> dict[str, Any]:
    """Stream every kept tracer through validation, the method and the writers. With
    `scan_into` (no pass 1 was needed) Time and physical columns are validated here too."""
    n_phys = len(plan.physical)
    prepend = bool(dataset.prepend_initial_abundances)
    tolerance = float(dataset.get("negative_tolerance", 1e-14))
    above_one = dataset.get("above_one_tolerance", 1e-6)
    elements, matrix, _ = species_matrix(plan.species_names)
    drift = np.zeros(matrix.shape[1])
    check_conservation = bool(dataset.get("check_conservation", True))
    max_drift = dataset.get("max_element_drift") if check_conservation else None

    def track_drift(tracers, trajectories: np.ndarray) -> np.ndarray:
        """trajectories [B, T, S] of table tracers `tracers` -> running worst drift [E]."""
        per_tracer = trajectory_drift(trajectories, matrix)  # [B, E]
        if max_drift is not None and np.any(per_tracer > float(max_drift)):
            j, e = (int(v[0]) for v in np.nonzero(per_tracer > float(max_drift)))
            check_element_drift(table, int(tracers[j]), elements[e], float(per_tracer[j, e]),
                                float(max_drift))
        return np.maximum(drift, per_tracer.max(axis=0))
    n_zeroed = 0
    # Do the tracers that start at t = 0 all start from the recorded initial abundances?
    initial_mismatch: list[int] = []
    total = int((table.stops[kept] - table.starts[kept]).sum())
    with _progress(total, f"{label} write") as progress:
        for chunk in tracer_chunks(table, kept, chunk_rows):
            start, stop, offsets = chunk_rows_and_offsets(table, chunk)
            # One read per storage block; the species come back as a view of it when adjacent.
            meta, abundances = table.read_groups(
                start, stop, [[plan.time, *plan.physical], list(plan.species)])
            if scan_into is not None:
                scan_chunk(table, plan, floors, prepend, chunk, offsets, meta, scan_into)
            time = meta[:, 0]
            n_zeroed += check_abundances(table, chunk, offsets, abundances, plan.species_names,
                                         time, tolerance, above_one)
            starts_at_zero = time[offsets[:-1]] == 0
            if starts_at_zero.any():
                first = abundances[offsets[:-1]][starts_at_zero]
                same = np.all(np.isclose(first, initial, rtol=1e-6, atol=1e-30), axis=1)
                initial_mismatch += table.tracer_ids[np.asarray(chunk)[starts_at_zero][~same]
                                                     ].tolist()
            lengths = np.diff(offsets)
            if not prepend and np.all(lengths == lengths[0]) and steps in (None, lengths[0]):
                # The common case: equal-length tracers, reshapes only. Abundances go to float32
                # once here (scaling runs in float32); conservation uses the float64 values.
                shape = (len(chunk), int(lengths[0]))
                batches = [(chunk, meta.reshape(*shape, -1),
                            abundances.astype(np.float32).reshape(*shape, -1))]
                if check_conservation and lengths[0] > 1:
                    drift = track_drift(chunk, abundances.reshape(*shape, -1))
            else:
                per_tracer = []
                for j in range(len(chunk)):
                    rows = np.concatenate([meta[offsets[j] : offsets[j + 1]],
                                           abundances[offsets[j] : offsets[j + 1]]], axis=1)
                    if steps is not None:
                        rows = rows[:steps]
                    if check_conservation and rows.shape[0] > 1:
                        drift = track_drift([chunk[j]], rows[None, :, 1 + n_phys :])
                    if prepend:
                        first = np.concatenate([[0.0], rows[0, 1 : 1 + n_phys], initial])
                        rows = np.concatenate([first[None], rows])
                    per_tracer.append(rows)
                batches = [(tracers, stacked[..., : 1 + n_phys], stacked[..., 1 + n_phys :])
                           for tracers, stacked in _batches(chunk, per_tracer)]
            for tracers, stacked_meta, stacked_abundances in batches:
                physical, _ = floor_physical(stacked_meta[..., 1:].copy(), floors)
                batch = TracerBatch(
                    tracer_ids=table.tracer_ids[tracers],
                    time_years=stacked_meta[..., 0],
                    physical=physical,
                    abundances=stacked_abundances,
                )
                out = method.transform(batch, scaler, bool(dataset.shift_physical))
                _route(routing, method, out, tracers, stacked_meta.shape[1])
            progress.update(stop - start)
    return {"element_drift": dict(zip(elements, drift.tolist(), strict=True)) if
            check_conservation else None, "abundances_zeroed": n_zeroed,
            "tracers_not_starting_from_initial_abundances": initial_mismatch[:100]}


def check_element_drift(table: RawTable, tracer: int, element: str, drift: float,
                        max_drift: float) -> None:
    """A tracer whose element total drifts by more than `max_drift` (relative) is refused."""
    raise PreprocessError(
        f"raw file {table.path}: the total of element {element} along tracer "
        f"{int(table.tracer_ids[tracer])} (rows {int(table.starts[tracer])}:"
        f"{int(table.stops[tracer])}) drifts by {drift:.3g} (relative to its first row); "
        f"expected <= dataset.max_element_drift = {max_drift:g}. A solver output conserves "
        "elements to ~1e-6: a corrupted abundance, a species column dropped by "
        "dataset.columns_to_drop, or a non-species column counted as a species? Fix the file, "
        "or set --dataset.max_element_drift=inf to record the drift in the manifest without "
        "checking it"
    )


def _progress(total: int, label: str) -> Progress:
    stream = sys.stderr if total >= PROGRESS_MIN_ROWS else _Null()
    return Progress(total, label, unit="rows", stream=stream)


class _Null:
    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def open_writers(directory: Path, method: Method, method_cfg, counts: dict[str, int],
                 item_shape: tuple[int, ...], seed: int) -> dict[str, Any]:
    """A shard writer per split (wrapped in an external shuffle for the rows methods)."""
    max_shard_bytes = int(float(method_cfg.get("max_shard_mb", 256)) * 2**20)
    bucket_bytes = int(float(method_cfg.get("shuffle_bucket_mb", 128)) * 2**20)
    rng = np.random.default_rng([seed, 1])
    writers: dict[str, Any] = {}
    for split in SPLITS:
        writer = ShardWriter(directory, split, counts[split], item_shape, max_shard_bytes)
        if method.shuffle:
            writer = ShuffleWriter(writer, directory / ".scratch", bucket_bytes, rng)
        writers[split] = writer
    return writers


# Utils dir -------------------------------------------------------------------------------------
def write_utils(directory: Path, species: tuple[str, ...], initial: np.ndarray) -> None:
    """species.txt, stoichiometric_matrix.npy float32 [S, E], charges.npy float32 [S],
    initial_abundances.npy float64 [S], elements.json {elements, charge}."""
    elements, matrix, charges = species_matrix(species)
    with atomic.atomic_dir(directory) as tmp:
        (tmp / "species.txt").write_text("\n".join(species) + "\n")
        np.save(tmp / "stoichiometric_matrix.npy", matrix.astype(np.float32))
        np.save(tmp / "charges.npy", charges.astype(np.float32))
        np.save(tmp / "initial_abundances.npy", initial.astype(np.float64))
        (tmp / "elements.json").write_text(json.dumps(
            {"elements": elements, "n_elements": len(elements),
             "charge": charges.astype(int).tolist()}, indent=2) + "\n")


# Entry -----------------------------------------------------------------------------------------
def preprocess(dataset_config, method_config, force: bool = False, verbose: bool = True) -> Path:
    """Build (or reuse) `outputs/preprocessed/<dataset>/<method>/`; returns that directory.

    dataset_config / method_config: ConfigDicts, config file paths or bare names (`grav`,
    `sequential`). A cache hit returns at once; a changed raw file or config rebuilds; `force`
    always rebuilds.
    """
    t0 = _time.perf_counter()
    dataset = _load(dataset_config, "datasets")
    method_cfg = _load(method_config, "preprocessing")
    name = method_name(method_cfg)
    method = PREPROCESSORS[name]
    directory, utils = output_dirs(dataset, method_cfg)
    label = f"preprocess {dataset.name}/{name}"
    raw_path = Path(dataset.raw_path)
    if not force:
        status = cache.check(directory, utils, raw_path, dataset, method_cfg)
        if status.hit:
            _say(verbose, f"{label}: cache hit ({directory}, checked in "
                          f"{_time.perf_counter() - t0:.3f} s)")
            return directory
    # One build per dataset at a time (its methods share the utils directory): a second process
    # waits, then usually finds the cache filled.
    with locks.exclusive(lock_path(dataset.name), f"the preprocessed outputs of dataset "
                         f"{dataset.name!r}", wait=True, say=lambda m: _say(True, f"{label}: {m}")):
        if not force:
            status = cache.check(directory, utils, raw_path, dataset, method_cfg)
            if status.hit:
                _say(verbose, f"{label}: cache hit ({directory}, built by another process)")
                return directory
            _say(verbose, f"{label}: rebuilding ({status.reason})")
        else:
            _say(verbose, f"{label}: rebuilding (--force)")
        remove_stale_temporaries(directory, utils, lambda m: _say(verbose, f"{label}: {m}"))
        try:
            _build(dataset, method_cfg, name, method, directory, utils, raw_path, label)
        except BaseException:
            _remove_empty_parents(directory)
            raise
    _say(verbose, f"{label}: wrote {directory} in {_time.perf_counter() - t0:.1f} s")
    return directory


def lock_path(dataset_name: str) -> Path:
    """The lock file held while a dataset's preprocessed outputs are (re)built."""
    return paths.runs_dir() / dataset_name / "preprocess.lock"


def remove_stale_temporaries(directory: Path, utils: Path, say) -> None:
    """Delete the temporary directories (`.<name>.XXXX.tmp`, `.<name>.old`) that killed builds
    of this dataset left beside its outputs. Call with the dataset's lock held: no live build
    of it can own them."""
    stale = []
    for parent, stem in ((directory.parent, None), (utils.parent, utils.name)):
        if not parent.is_dir():
            continue
        for entry in parent.iterdir():
            name = entry.name
            if not (entry.is_dir() and name.startswith(".")
                    and (name.endswith(".tmp") or name.endswith(".old"))):
                continue
            if stem is None or name.startswith(f".{stem}."):
                stale.append(entry)
    if not stale:
        return
    size = sum(f.stat().st_size for d in stale for f in d.rglob("*") if f.is_file())
    for entry in stale:
        shutil.rmtree(entry, ignore_errors=True)
    say(f"removed {len(stale)} temporary director{'y' if len(stale) == 1 else 'ies'} left by an "
        f"interrupted run ({size / 2**20:.1f} MB): {[str(e) for e in stale]}")


def _build(dataset, method_cfg, name, method, directory, utils, raw_path, label) -> None:
    policy = method_cfg.get("length_policy", "error")
    if policy not in LENGTH_POLICIES:
        raise PreprocessError(f"method config: length_policy is {policy!r}; expected one of "
                              f"{list(LENGTH_POLICIES)}")
    chunk_rows = int(method_cfg.get("chunk_rows", 8192))
    # Hash the raw file in a thread while the stage reads it (hashlib releases the GIL): the
    # content hash of a multi-GB file would otherwise add seconds.
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        hashing = (pool.submit(cache.source_identity, raw_path, None, stop)
                   if raw_path.is_file() else None)
        try:
            _build_from(dataset, method_cfg, name, method, directory, utils, raw_path, label,
                        policy, chunk_rows, hashing)
        finally:
            stop.set()  # a failed build does not wait for the hash of a large file


def _build_from(dataset, method_cfg, name, method, directory, utils, raw_path, label, policy,
                chunk_rows, hashing) -> None:
    with open_raw(raw_path, dataset.format, dataset.get("key", "")) as table:
        if table.n_rows == 0 or table.tracer_ids.size == 0:
            raise PreprocessError(f"raw file {raw_path}: no rows (empty file); expected tracers")
        check_generated_identity(table, dataset)
        plan = plan_columns(table, dataset)
        floors = _floors(dataset, plan)
        prepend = bool(dataset.prepend_initial_abundances)
        # Pass 1 only when sequential needs physical ranges from the train split; otherwise
        # pass 2 validates Time and physical columns as it goes (one read of the file less).
        configured_ranges = bool(dataset.get("physical_ranges"))
        prescan = method.item == "tracer" and not configured_ranges
        scanned = (scan(table, plan, floors, prepend, chunk_rows, label) if prescan
                   else empty_scan(table, plan))
        if prescan and policy == "error":
            # Different grids, not different lengths, are the problem to report (cropping to
            # a common length would not help).
            check_shared_time_grid(table, scanned, np.arange(table.tracer_ids.size),
                                   int(scanned.lengths.min()))
        kept, steps, dropped = select_tracers(table, scanned, method, policy)
        if prescan:
            check_shared_time_grid(table, scanned, kept, steps)
        where = f"raw file {raw_path}"
        kept, train_subset = limit_train_tracers(table, kept, method, dataset, where)
        n_rows_kept = (np.full(kept.size, steps) if steps is not None
                       else scanned.lengths[kept]) + int(bool(dataset.prepend_initial_abundances))
        seed = int(dataset.seed)
        split = plan_split(table, method, kept, n_rows_kept, dataset, where)
        if prescan or configured_ranges:
            scaler, ranges, ranges_source = make_scaler(dataset, plan, scanned, kept,
                                                           split.range_mask)
        else:
            # Rows carry no physical parameters: the ranges are recorded after pass 2.
            scaler = Scaler(tuple(float(v) for v in dataset.abundance_clip), plan.physical_names,
                            (0.0,) * len(plan.physical), (1.0,) * len(plan.physical))
        initial = initial_abundances(table, plan)
        n_p, n_s = len(plan.physical), len(plan.species)
        if method.item == "tracer":
            item_shape = (int(n_rows_kept[0]), n_p + n_s)
        else:
            item_shape = (n_s,)

        with atomic.atomic_dir(directory) as tmp:
            writers = open_writers(tmp, method, method_cfg, split.counts, item_shape, seed)
            routing = Routing(writers, split.tracer_split, split.row_split)
            stats = run_pass2(table, plan, dataset, method, kept, steps, floors, scaler, initial,
                              routing, chunk_rows, label, None if prescan else scanned)
            if method.item == "tracer" and not prescan:
                check_shared_time_grid(table, scanned, kept, steps)
            if not (prescan or configured_ranges):
                scaler, ranges, ranges_source = make_scaler(dataset, plan, scanned, kept,
                                                               split.range_mask)
            time_grid = scanned.grids[int(scanned.lengths[kept[0]])]
            if steps is not None:
                time_grid = time_grid[:steps]
            if prepend:
                time_grid = np.concatenate([[0.0], time_grid])
            splits = {name_: writer.close() for name_, writer in writers.items()}
            shutil.rmtree(tmp / ".scratch", ignore_errors=True)
            source = hashing.result()
            elements, _, _ = species_matrix(plan.species_names)
            manifest = {
                "format_version": FORMAT_VERSION,
                "method": name,
                "method_description": method.description,
                "dataset": dataset.name,
                "species": list(plan.species_names),
                "elements": elements,
                "physical_parameters": list(plan.physical_names),
                "n_species": n_s,
                "n_physical": n_p,
                "scaling": scaler.to_dict(),
                "physical_ranges": ranges,
                "physical_ranges_source": ranges_source,
                "splits": splits,
                "split_unit": method.split_by,
                "split_tracers": split.tracer_ids,
                "dropped_tracers": dropped,
                **({"train_subset": train_subset} if train_subset else {}),
                "time_years": time_grid.tolist(),
                "time_grid_shared": first_grid_mismatch(scanned, kept, steps) is None,
                "tracer_length_counts": {int(v): int(c) for v, c in zip(
                    *np.unique(scanned.lengths, return_counts=True), strict=True)},
                "steps": int(item_shape[0]) if method.item == "tracer" else None,
                "shift_physical": bool(dataset.shift_physical),
                "prepend_initial_abundances": bool(dataset.prepend_initial_abundances),
                "initial_abundances_source": table.initial_abundances_source,
                "physical_values_floored": scanned.n_floored,
                **stats,
                "config": cache.config_snapshot(dataset, method_cfg),
                "source": source,
                "source_format": table.format,
                "source_key": table.key,
                "code_version": cache.code_version(),
                "preprocess_version": cache.PREPROCESS_VERSION,
                "cache_key": cache.cache_key(dataset, method_cfg, source["sha256"]),
            }
            write_utils(utils, plan.species_names, initial)
            atomic.write_json(tmp / MANIFEST_NAME, manifest)


def _remove_empty_parents(directory: Path) -> None:
    """After a failure, drop the `<dataset>` folder that atomic_dir created if it is empty."""
    parent = directory.parent
    try:
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    except OSError:
        pass


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, flush=True)
