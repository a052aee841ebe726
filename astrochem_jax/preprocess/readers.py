"""Streaming readers for the three raw layouts, chosen by `dataset.format`.

Every reader returns a `RawTable`: canonical column names, the row range of every tracer and a
`read(start, stop, columns)` that loads a block of rows for some columns as float64. Nothing is
read eagerly beyond the tracer index, so memory does not grow with the file.

Layouts
- `astrochem_jax` (ours, docs/architecture.md): `/columns`, `/data` [rows, C], `/tracer_id`,
  `/tracer_ptr` [T + 1] (CSR), `/initial_abundances` [S] (the last S columns' order).
- `uclchem`: a pandas *fixed*-format HDF5 frame (`DataFrame.to_hdf(path, key="df")`), read with
  h5py only: `<key>/axis0` column names, `<key>/axis1` row index, `<key>/block{i}_items` the
  columns held by block i, `<key>/block{i}_values` its values, stored transposed by pandas
  ([rows, columns in block]; attribute `transposed=1`). Tracers come from the `Tracer` column
  (renamed `Model`); the rows of one tracer must be contiguous (true for UCLCHEM dumps), or the
  reader stops with a message saying how to sort the frame. The initial abundances are row 0 of
  the first tracer (UCLCHEM's starting abundances when the file starts at t = 0).
- `carbox`: a group (`/large` or `/small`) with `columns`, `data` [rows, C], `tracer_id` and
  `tracer_ptr`, either CSR [T + 1] or [T, 3] rows of (tracer id, first row, row count). Its
  lower-case column names are mapped to ours (`time -> Time`, `density -> Density`,
  `temperature -> gasTemp`, `av -> Av`, `rad_field -> Radfield`). Initial abundances from
  `<group>/initial_abundances` when present, else row 0 of the first tracer.

Column names are stripped and renamed with `COLUMN_RENAMES` (AstroChemNet's renames; see there).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from astrochem_jax.preprocess.errors import PreprocessError

# AstroChemNet renamed some UCLCHEM species to formula-like names and two metadata columns to its
# own spelling. We apply the same map to whole names (the base name after a `#`/`@` ice prefix),
# not as AstroChemNet's substring replacement, so `HCOOCH3` stays `HCOOCH3`. Every pair has the
# same composition, so the stoichiometry is unchanged.
SPECIES_RENAMES: dict[str, str] = {
    "H2COH+": "H3CO+", "H2COH": "H3CO", "H2CSH+": "H3CS+", "SISH+": "HSIS+", "HOSO+": "HSO2+",
    "OCSH+": "HOCS+", "HCOO": "HCO2", "HCOOH": "H2CO2", "CH2CO": "C2H2O", "CH2OH": "CH3O",
    "CH3CCH": "C3H4", "CH3CHO": "C2H4O", "CH3CN": "C2H3N", "CH3CNH": "C2H4N", "CH3OH": "CH4O",
    "CH3OH2+": "CH5O+", "CH3CNH+": "C2H4N+", "NH2CHO": "CH3NO", "HCO2H": "H2CO2",
    "HCNH": "H2CN", "NCCN": "N2C2",
}
METADATA_RENAMES: dict[str, str] = {"Tracer": "Model", "radfield": "Radfield"}
COLUMN_RENAMES: dict[str, str] = {**SPECIES_RENAMES, **METADATA_RENAMES}
CARBOX_RENAMES: dict[str, str] = {
    "time": "Time", "density": "Density", "temperature": "gasTemp", "av": "Av",
    "rad_field": "Radfield", "tracer_id": "Model", "tracer": "Model",
}
MODEL_COLUMN = "Model"
_TRACER_SCAN_ROWS = 1 << 20


def canonical_column(name: str, renames: dict[str, str] | None = None) -> str:
    """Strip a raw column name and apply the renames (ice prefixes `#`/`@` are kept)."""
    renames = COLUMN_RENAMES if renames is None else renames
    name = name.strip()
    prefix = name[0] if name[:1] in ("#", "@") else ""
    base = name[len(prefix):]
    return prefix + renames.get(base, base)


@dataclass
class RawTable:
    """An open raw file: canonical columns, tracer row ranges and a block reader.

    columns [C] canonical names; raw_columns [C] as stored; tracer_ids / starts / stops int64 [T]
    (rows of tracer k are `starts[k]:stops[k]`, ordered as in the file);
    initial_abundances: {column name: abundance} or None when the file has none.
    """

    path: Path
    format: str
    key: str
    columns: tuple[str, ...]
    raw_columns: tuple[str, ...]
    n_rows: int
    tracer_ids: np.ndarray
    starts: np.ndarray
    stops: np.ndarray
    initial_abundances: dict[str, float] | None
    initial_abundances_source: str
    _read: Callable[[int, int, Sequence[int]], np.ndarray] = field(repr=False)
    _file: h5py.File = field(repr=False)
    _read_groups: Callable[[int, int, Sequence[Sequence[int]]], list[np.ndarray]] = field(
        repr=False, default=None)
    # Columns stored as text or Python objects (pandas object blocks): never read; an error
    # names them if the plan needs one (`validate.plan_columns`).
    non_numeric: tuple[str, ...] = ()
    # Files written by astrochem_jax.generate: the dataset config they were generated from
    # (the root attribute "config"); None for other files.
    generated_by: dict | None = None

    def read(self, start: int, stop: int, columns: Sequence[int]) -> np.ndarray:
        """Rows [start, stop) of the given columns as float64 [stop - start, len(columns)]."""
        return self._read(int(start), int(stop), list(columns))

    def read_groups(self, start: int, stop: int, groups: Sequence[Sequence[int]]
                    ) -> list[np.ndarray]:
        """Rows [start, stop) for several column groups, reading each storage block once.

        Returns one float64 [stop - start, len(group)] array per group; a group that is one run
        of adjacent columns of a block comes back as a (strided) view of the block, no copy.
        """
        if self._read_groups is None:
            return [self.read(start, stop, g) for g in groups]
        return self._read_groups(int(start), int(stop), [list(g) for g in groups])

    def column_index(self, name: str) -> int:
        return self.columns.index(name)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RawTable:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def copy_columns(out: np.ndarray, out_columns: Sequence[int], data: np.ndarray,
                 data_columns: Sequence[int]) -> None:
    """out[:, out_columns] = data[:, data_columns], as slice copies over runs where both index
    lists step by one (a column gather on a row-major block is several times slower)."""
    ks, js = list(out_columns), list(data_columns)
    i = 0
    while i < len(ks):
        n = 1
        while i + n < len(ks) and ks[i + n] == ks[i] + n and js[i + n] == js[i] + n:
            n += 1
        out[:, ks[i] : ks[i] + n] = data[:, js[i] : js[i] + n]
        i += n


def _rows(dataset: h5py.Dataset, start: int, stop: int, j0: int, j1: int,
          transposed: bool = True) -> np.ndarray:
    """Columns [j0, j1) of rows [start, stop) as float64, read straight into a fresh buffer."""
    if transposed and dataset.dtype == np.float64 and stop > start:
        out = np.empty((stop - start, j1 - j0), dtype=np.float64)
        dataset.read_direct(out, np.s_[start:stop, j0:j1], np.s_[0 : stop - start])
        return out
    rows = dataset[start:stop, j0:j1] if transposed else dataset[j0:j1, start:stop].T
    return np.asarray(rows, dtype=np.float64)


def _group_reader(blocks: Sequence[tuple[Callable[[int, int, int, int], np.ndarray], int]],
                  where: Sequence[tuple[int, int]]):
    """read_groups over storage blocks: blocks[b] = (read(start, stop, j0, j1) -> float64
    [rows, j1 - j0], width); where[c] = (block, column within block) of table column c.

    Each block is read once per call, over the span of columns any group needs: the whole width
    when the span is most of it (HDF5 reads whole rows fastest), else only the span (pass 1 needs
    Time and the physical columns, which sit next to each other at the start of the table)."""

    def read_groups(start: int, stop: int, groups: Sequence[Sequence[int]]) -> list[np.ndarray]:
        spans: dict[int, list[int]] = {}
        for cols in groups:
            for c in cols:
                b, j = where[c]
                lo, hi = spans.get(b, [j, j + 1])
                spans[b] = [min(lo, j), max(hi, j + 1)]
        cache: dict[int, tuple[np.ndarray, int]] = {}
        for b, (j0, j1) in spans.items():
            read, width = blocks[b]
            if 2 * (j1 - j0) > width:
                j0, j1 = 0, width
            cache[b] = (read(start, stop, j0, j1), j0)

        out = []
        for cols in groups:
            bs = {where[c][0] for c in cols}
            js = [where[c][1] for c in cols]
            if len(bs) == 1 and js == list(range(js[0], js[0] + len(js))):
                data, j0 = cache[bs.pop()]
                out.append(data[:, js[0] - j0 : js[0] - j0 + len(js)])
                continue
            arr = np.empty((stop - start, len(cols)), dtype=np.float64)
            for b in sorted(bs):
                data, j0 = cache[b]
                ks = [k for k, c in enumerate(cols) if where[c][0] == b]
                copy_columns(arr, ks, data, [where[cols[k]][1] - j0 for k in ks])
            out.append(arr)
        return out

    return read_groups


def _decode(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _open_file(path: Path) -> h5py.File:
    if not path.is_file():
        raise PreprocessError(
            f"raw file {path} does not exist; set --dataset.raw_path to the HDF5 file "
            "(or generate it with `python -m astrochem_jax.generate`)"
        )
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise PreprocessError(f"raw file {path} is not a readable HDF5 file: {exc}") from exc


def _canonical_columns(path: Path, raw: Sequence[str], renames: dict[str, str]) -> tuple[str, ...]:
    columns = tuple(canonical_column(c, renames) for c in raw)
    seen: dict[str, int] = {}
    for i, c in enumerate(columns):
        if c in seen:
            raise PreprocessError(
                f"raw file {path}: columns {raw[seen[c]]!r} (#{seen[c]}) and {raw[i]!r} (#{i}) "
                f"both become {c!r} after stripping and renaming; expected unique column names"
            )
        seen[c] = i
    return columns


def _require(path: Path, group: h5py.Group, names: Sequence[str], where: str) -> None:
    missing = [n for n in names if n not in group]
    if missing:
        raise PreprocessError(
            f"raw file {path}: {where} is missing {missing}; found {sorted(group.keys())}"
        )


def _ptr_ranges(path: Path, ids: np.ndarray, ptr: np.ndarray, n_rows: int, where: str):
    """(ids, starts, stops) from a CSR pointer [T + 1] or a [T, 3] (id, start, length) table."""
    ptr = np.asarray(ptr, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ptr.ndim == 2 and ptr.shape[1] == 3:
        ids, starts = ptr[:, 0], ptr[:, 1]
        stops = starts + ptr[:, 2]
    elif ptr.ndim == 1 and ptr.shape[0] == ids.shape[0] + 1:
        starts, stops = ptr[:-1], ptr[1:]
    else:
        raise PreprocessError(
            f"raw file {path}: {where}tracer_ptr has shape {ptr.shape}; expected "
            f"[{ids.shape[0] + 1}] (CSR pointers for {ids.shape[0]} tracer ids) or [T, 3]"
        )
    bad = np.flatnonzero((starts < 0) | (stops > n_rows) | (stops < starts))
    if bad.size:
        k = int(bad[0])
        raise PreprocessError(
            f"raw file {path}: {where}tracer_ptr gives tracer {int(ids[k])} rows "
            f"{int(starts[k])}:{int(stops[k])}, expected a range inside 0:{n_rows}"
        )
    if np.unique(ids).size != ids.size:
        raise PreprocessError(f"raw file {path}: {where}tracer_id has duplicate tracer ids")
    return ids, starts, stops


def _dense_reader(dataset: h5py.Dataset) -> Callable[[int, int, Sequence[int]], np.ndarray]:
    width = dataset.shape[1]

    def read(start: int, stop: int, columns: Sequence[int]) -> np.ndarray:
        if len(columns) * 8 < width and sorted(set(columns)) == list(columns):
            # A few columns of a wide table: let HDF5 select them instead of reading rows.
            return np.asarray(dataset[start:stop, list(columns)], dtype=np.float64)
        out = np.empty((stop - start, len(columns)), dtype=np.float64)
        copy_columns(out, range(len(columns)), dataset[start:stop], columns)
        return out

    return read


def _initial_from_dataset(columns: tuple[str, ...], values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return dict(zip(columns[len(columns) - values.size:], values.tolist(), strict=True))


def _looks_like_pandas(group: h5py.Group) -> str | None:
    """The key of a pandas frame in `group` (a UCLCHEM dump opened with the wrong format)."""
    for name in sorted(group.keys()):
        item = group[name]
        if isinstance(item, h5py.Group) and "axis0" in item and "pandas_type" in item.attrs:
            return name
    return None


def _generated_by(path: Path, group: h5py.Group) -> dict | None:
    """The dataset config a generated file records (attribute "config", JSON), or None."""
    text = group.attrs.get("config")
    if text is None:
        return None
    try:
        recorded = json.loads(text if isinstance(text, str) else bytes(text).decode())
    except (ValueError, UnicodeDecodeError) as err:
        raise PreprocessError(f"raw file {path}: attribute 'config' is not JSON ({err}); "
                              "expected the dataset config the file was generated from") from err
    return recorded if isinstance(recorded, dict) else None


def open_astrochem_jax(path: Path, key: str = "") -> RawTable:
    f = _open_file(path)
    try:
        group = f[key] if key else f
        frame = _looks_like_pandas(group)
        if frame is not None and "data" not in group:
            raise PreprocessError(
                f"raw file {path}: dataset.format is 'astrochem_jax', but the file holds a pandas "
                f"frame under key {frame!r} (a UCLCHEM dump); expected groups columns, data, "
                f"tracer_id, tracer_ptr. Use a UCLCHEM dataset config (`--dataset=uclchem_grav` "
                f"for preprocess, `--config=<component>.py:uclchem_grav` for train) or set "
                f"--dataset.format=uclchem --dataset.key={frame}"
            )
        _require(path, group, ["columns", "data", "tracer_id", "tracer_ptr"], "the file")
        raw = tuple(c.strip() for c in _decode(group["columns"][()]))
        columns = _canonical_columns(path, raw, COLUMN_RENAMES)
        data = group["data"]
        if data.ndim != 2 or data.shape[1] != len(columns):
            raise PreprocessError(
                f"raw file {path}: /data has shape {data.shape}, expected [rows, {len(columns)}] "
                "(one column per /columns entry)"
            )
        _require_numeric(path, data, "/data")
        ids, starts, stops = _ptr_ranges(
            path, group["tracer_id"][()], group["tracer_ptr"][()], data.shape[0], "/"
        )
        initial, source = None, "none"
        if "initial_abundances" in group:
            initial = _initial_from_dataset(columns, group["initial_abundances"][()])
            source = "/initial_abundances"
        return RawTable(path, "astrochem_jax", key, columns, raw, int(data.shape[0]), ids, starts,
                        stops, initial, source, _dense_reader(data), f,
                        _group_reader([(functools.partial(_rows, data), data.shape[1])],
                                      [(0, j) for j in range(len(columns))]),
                        generated_by=_generated_by(path, group))
    except BaseException:
        f.close()
        raise


def _pick_carbox_group(path: Path, f: h5py.File, key: str) -> tuple[str, h5py.Group]:
    if not key:
        candidates = [k for k in ("large", "small") if k in f]
        if len(candidates) != 1:
            raise PreprocessError(
                f"raw file {path}: set dataset.key to the Carbox group to read; expected one of "
                f"'large'/'small', found groups {sorted(f.keys())}"
            )
        key = candidates[0]
    if key not in f or not isinstance(f[key], h5py.Group):
        raise PreprocessError(
            f"raw file {path}: Carbox group {key!r} (dataset.key) not found; "
            f"found {sorted(f.keys())}"
        )
    return key, f[key]


def open_carbox(path: Path, key: str = "") -> RawTable:
    f = _open_file(path)
    try:
        key, group = _pick_carbox_group(path, f, key)
        _require(path, group, ["columns", "data", "tracer_id", "tracer_ptr"], f"group /{key}")
        raw = tuple(c.strip() for c in _decode(group["columns"][()]))
        columns = _canonical_columns(path, raw, {**COLUMN_RENAMES, **CARBOX_RENAMES})
        data = group["data"]
        if data.ndim != 2 or data.shape[1] != len(columns):
            raise PreprocessError(
                f"raw file {path}: /{key}/data has shape {data.shape}, expected "
                f"[rows, {len(columns)}] (one column per /{key}/columns entry)"
            )
        _require_numeric(path, data, f"/{key}/data")
        ids, starts, stops = _ptr_ranges(
            path, group["tracer_id"][()], group["tracer_ptr"][()], data.shape[0], f"/{key}/"
        )
        initial, source = None, "row 0 of the first tracer"
        if "initial_abundances" in group:
            initial = _initial_from_dataset(columns, group["initial_abundances"][()])
            source = f"/{key}/initial_abundances"
        return RawTable(path, "carbox", key, columns, raw, int(data.shape[0]), ids, starts, stops,
                        initial, source, _dense_reader(data), f,
                        _group_reader([(functools.partial(_rows, data), data.shape[1])],
                                      [(0, j) for j in range(len(columns))]))
    except BaseException:
        f.close()
        raise


# UCLCHEM / pandas fixed format ------------------------------------------------------------------
@dataclass(frozen=True)
class _Block:
    values: h5py.Dataset
    transposed: bool

    def rows(self, start: int, stop: int, columns: Sequence[int] | None = None) -> np.ndarray:
        if self.transposed:
            if columns is not None:
                return self.values[start:stop, list(columns)]
            return self.values[start:stop]
        # Untransposed storage is [columns in block, rows].
        if columns is not None:
            return self.values[list(columns), start:stop].T
        return self.values[:, start:stop].T


def _require_numeric(path: Path, data: h5py.Dataset, where: str) -> None:
    if data.dtype.kind not in NUMERIC_KINDS:
        raise PreprocessError(
            f"raw file {path}: {where} has dtype {data.dtype}; expected numbers (float64)")


NUMERIC_KINDS = "fiub"


def _pandas_blocks(path: Path, group: h5py.Group, key: str):
    """[(block, [column names])] of a pandas fixed-format frame; block is None for a block of
    text / Python objects (pandas stores those as one pickled variable-length row)."""
    nblocks = group.attrs.get("nblocks")
    if nblocks is None:
        nblocks = sum(1 for k in group if k.startswith("block") and k.endswith("_values"))
    blocks = []
    for i in range(int(nblocks)):
        items, values = f"block{i}_items", f"block{i}_values"
        _require(path, group, [items, values], f"pandas group /{key}")
        ds = group[values]
        transposed = bool(ds.attrs.get("transposed", 1))
        names = _decode(group[items][()])
        if ds.dtype.kind not in NUMERIC_KINDS:
            blocks.append((None, names))
            continue
        n_cols = ds.shape[1] if transposed else ds.shape[0]
        if ds.ndim != 2 or n_cols != len(names):
            raise PreprocessError(
                f"raw file {path}: /{key}/{values} has shape {ds.shape}, expected "
                f"{len(names)} columns (the length of /{key}/{items})"
            )
        blocks.append((_Block(ds, transposed), names))
    return blocks


def _check_pandas_group(path: Path, f: h5py.File, key: str) -> h5py.Group:
    key = key or "df"
    if key not in f:
        raise PreprocessError(
            f"raw file {path}: pandas key {key!r} (dataset.key) not found; found keys "
            f"{sorted(f.keys())}"
        )
    group = f[key]
    if "table" in group:
        raise PreprocessError(
            f"raw file {path}: key {key!r} is a pandas *table*-format frame; this reader needs the "
            "fixed format. Convert it once with pandas: "
            f'pd.read_hdf("{path}", key="{key}").to_hdf("<new>.h5", key="df", format="fixed")'
        )
    _require(path, group, ["axis0", "axis1"], f"pandas group /{key}")
    kind = group.attrs.get("pandas_type", b"frame")
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind != "frame":
        raise PreprocessError(
            f"raw file {path}: /{key} has pandas_type {kind!r}, expected 'frame' (a DataFrame "
            "written with DataFrame.to_hdf(..., format='fixed'))"
        )
    return group


def _tracer_runs(path: Path, key: str, n_rows: int, read_model) -> tuple[np.ndarray, ...]:
    """(ids, starts, stops) of the runs of equal `Model` values; errors if a tracer recurs."""
    ids, starts = [], []
    previous = None
    for a in range(0, n_rows, _TRACER_SCAN_ROWS):
        b = min(n_rows, a + _TRACER_SCAN_ROWS)
        model = read_model(a, b)
        if not np.all(np.isfinite(model)):
            bad = a + int(np.flatnonzero(~np.isfinite(model))[0])
            raise PreprocessError(
                f"raw file {path}: /{key} column Model (Tracer) is not finite at row {bad}"
            )
        model = model.astype(np.int64)
        change = np.flatnonzero(np.diff(model) != 0) + 1
        if previous is None or model[0] != previous:
            change = np.concatenate([[0], change])
        ids.extend(model[change].tolist())
        starts.extend((a + change).tolist())
        previous = model[-1]
    ids_a = np.asarray(ids, dtype=np.int64)
    starts_a = np.asarray(starts, dtype=np.int64)
    stops_a = np.append(starts_a[1:], n_rows).astype(np.int64)
    unique, counts = np.unique(ids_a, return_counts=True)
    if np.any(counts > 1):
        tracer = int(unique[np.argmax(counts > 1)])
        runs = [f"{s}:{e}" for i, s, e in zip(ids_a, starts_a, stops_a, strict=True)
                if i == tracer][:3]
        raise PreprocessError(
            f"raw file {path}: /{key} tracers are interleaved: tracer {tracer} (column Tracer) "
            f"occupies rows {', '.join(runs)}; expected the rows of each tracer to be contiguous. "
            "Sort the frame first: df.sort_values(['Tracer', 'Time']).to_hdf(p2, key='df')"
        )
    return ids_a, starts_a, stops_a


def open_uclchem(path: Path, key: str = "df") -> RawTable:
    f = _open_file(path)
    try:
        key = key or "df"
        group = _check_pandas_group(path, f, key)
        raw = tuple(c.strip() for c in _decode(group["axis0"][()]))
        columns = _canonical_columns(path, raw, COLUMN_RENAMES)
        n_rows = int(group["axis1"].shape[0])
        position = {c: i for i, c in enumerate(columns)}
        where: list[tuple[int, int] | None] = [None] * len(columns)
        blocks = _pandas_blocks(path, group, key)
        non_numeric = tuple(canonical_column(name) for block, names in blocks if block is None
                            for name in names)
        for b, (block, names) in enumerate(blocks):
            if block is None:
                continue
            n_block_rows = block.values.shape[0] if block.transposed else block.values.shape[1]
            if n_block_rows != n_rows:
                raise PreprocessError(
                    f"raw file {path}: /{key}/block{b}_values has {n_block_rows} rows, "
                    f"expected {n_rows} (the length of /{key}/axis1)"
                )
            for j, name in enumerate(names):
                c = position.get(canonical_column(name))
                if c is None:
                    raise PreprocessError(
                        f"raw file {path}: /{key}/block{b}_items lists {name!r}, "
                        f"which is not in /{key}/axis0"
                    )
                where[c] = (b, j)
        missing = [raw[i] for i, w in enumerate(where) if w is None
                   and columns[i] not in non_numeric]
        if missing:
            raise PreprocessError(
                f"raw file {path}: columns {missing} of /{key}/axis0 are in no block"
            )

        def read(start: int, stop: int, cols: Sequence[int]) -> np.ndarray:
            out = np.empty((stop - start, len(cols)), dtype=np.float64)
            by_block: dict[int, list[tuple[int, int]]] = {}
            for k, c in enumerate(cols):
                b, j = where[c]
                by_block.setdefault(b, []).append((k, j))
            for b, pairs in by_block.items():
                block = blocks[b][0]
                width = len(blocks[b][1])
                ks, js = [k for k, _ in pairs], [j for _, j in pairs]
                if len(js) * 8 < width and sorted(set(js)) == js:
                    out[:, ks] = block.rows(start, stop, js)
                else:
                    copy_columns(out, ks, block.rows(start, stop), js)
            return out

        if MODEL_COLUMN not in position:
            raise PreprocessError(
                f"raw file {path}: /{key} has no Tracer/Model column; expected one of "
                f"'Tracer' or 'Model' among {list(raw[:12])}..."
            )
        if MODEL_COLUMN in non_numeric:
            raise PreprocessError(
                f"raw file {path}: /{key} column {raw[position[MODEL_COLUMN]]!r} holds text; "
                "expected integer tracer ids. Map them to integers in pandas first: "
                "df['Tracer'] = df['Tracer'].astype('category').cat.codes"
            )
        if n_rows == 0:
            ids = starts = stops = np.zeros(0, dtype=np.int64)
        else:
            model = position[MODEL_COLUMN]
            ids, starts, stops = _tracer_runs(
                path, key, n_rows, lambda a, b: read(a, b, [model])[:, 0]
            )
        full = [(None if block is None else
                 functools.partial(_rows, block.values, transposed=block.transposed), len(names))
                for block, names in blocks]
        return RawTable(path, "uclchem", key, columns, raw, n_rows, ids, starts, stops, None,
                        "row 0 of the first tracer", read, f, _group_reader(full, where),
                        non_numeric)
    except BaseException:
        f.close()
        raise


READERS: dict[str, Callable[[Path, str], RawTable]] = {
    "astrochem_jax": open_astrochem_jax,
    "uclchem": open_uclchem,
    "carbox": open_carbox,
}


def open_raw(path: str | Path, fmt: str, key: str = "") -> RawTable:
    """Open a raw file with the reader of `fmt` (one of `READERS`)."""
    if fmt not in READERS:
        raise PreprocessError(
            f"dataset.format is {fmt!r}; expected one of {sorted(READERS)} (raw file {path})"
        )
    return READERS[fmt](Path(path), key)
