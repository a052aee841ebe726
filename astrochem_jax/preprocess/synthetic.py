"""Writers of small synthetic raw files in the three layouts, for tests and the benchmark.

`write_uclchem_fixed` writes the exact pandas fixed-format structure (`axis0`, `axis1`,
`block{i}_items`, `block{i}_values` stored transposed, pandas/PyTables attributes) with h5py,
so no pandas is needed; it can write a table bigger than memory block by block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

UCLCHEM_PHYSICAL = ("Density", "gasTemp", "dustTemp", "Av", "radfield", "zeta", "dstep")
OUR_PHYSICAL = ("Density", "gasTemp", "Av", "Radfield", "zeta")
DEMO_SPECIES = ("H", "H2", "HE", "C", "C+", "CO", "#CO", "@H2O", "H2O", "E-")


@dataclass(frozen=True)
class Trajectories:
    """tracer_ids int64 [B]; time_years [B, T]; physical [B, T, 5] (Density cm^-3, gasTemp K,
    Av mag, Radfield Habing, zeta); abundances [B, T, S]; species [S]."""

    tracer_ids: np.ndarray
    time_years: np.ndarray
    physical: np.ndarray
    abundances: np.ndarray
    species: tuple[str, ...]


def make_trajectories(n_tracers: int, n_steps: int, species: Sequence[str] = DEMO_SPECIES,
                      seed: int = 0, start_at_zero: bool = True) -> Trajectories:
    """Smooth random trajectories with abundances log-uniform in [1e-25, 0.5] (some below the
    clip floor on purpose) and physical parameters in realistic ranges."""
    rng = np.random.default_rng(seed)
    t0 = 0.0 if start_at_zero else 1.0e3
    time = np.broadcast_to(np.linspace(t0, 1.5e6, n_steps), (n_tracers, n_steps)).copy()
    frac = np.linspace(0.0, 1.0, n_steps)[None, :, None]
    lo = np.array([3e3, 10.0, 0.5, 0.1, 0.5])
    hi = np.array([1e6, 30.0, 20.0, 10.0, 3.2])
    start = np.exp(rng.uniform(np.log(lo), np.log(hi), (n_tracers, 1, 5)))
    end = np.exp(rng.uniform(np.log(lo), np.log(hi), (n_tracers, 1, 5)))
    physical = start * (end / start) ** frac
    log_start = rng.uniform(-25, np.log10(0.5), (n_tracers, 1, len(species)))
    log_end = rng.uniform(-25, np.log10(0.5), (n_tracers, 1, len(species)))
    abundances = 10.0 ** (log_start + (log_end - log_start) * frac)
    ids = np.sort(rng.choice(10 * n_tracers + 10, n_tracers, replace=False)).astype(np.int64)
    return Trajectories(ids, time, physical, abundances, tuple(species))


def uclchem_frame_columns(species: Sequence[str]) -> list[str]:
    """The UCLCHEM dump's column order: Index, Time, physical..., species..., Tracer."""
    return ["Index", "Time", *UCLCHEM_PHYSICAL, *species, "Tracer"]


def _uclchem_float_block(traj: Trajectories, rows: slice) -> np.ndarray:
    """Float columns (Time, UCLCHEM_PHYSICAL, species) for a row range of the flattened table."""
    n_t, n_s = traj.time_years.shape[1], len(traj.species)
    flat_time = traj.time_years.reshape(-1)[rows]
    phys = traj.physical.reshape(-1, 5)[rows]
    out = np.empty((flat_time.size, 1 + len(UCLCHEM_PHYSICAL) + n_s))
    out[:, 0] = flat_time
    out[:, 1] = phys[:, 0]  # Density
    out[:, 2] = phys[:, 1]  # gasTemp
    out[:, 3] = phys[:, 1]  # dustTemp
    out[:, 4] = phys[:, 2]  # Av
    out[:, 5] = phys[:, 3]  # radfield
    out[:, 6] = phys[:, 4]  # zeta
    out[:, 7] = 1.0  # dstep
    out[:, 8:] = traj.abundances.reshape(-1, n_s)[rows]
    del n_t
    return out


def _string_array(names: Sequence[str]) -> np.ndarray:
    width = max(1, max(len(n.encode()) for n in names))
    return np.array([n.encode() for n in names], dtype=f"S{width}")


def _carray(group: h5py.Group, name: str, data=None, shape=None, dtype=None) -> h5py.Dataset:
    ds = group.create_dataset(name, data=data, shape=shape, dtype=dtype)
    ds.attrs["CLASS"] = np.bytes_(b"CARRAY")
    ds.attrs["VERSION"] = np.bytes_(b"1.1")
    ds.attrs["transposed"] = np.uint8(1)
    return ds


def _write_fixed_frame(path: Path, key: str, float_names: Sequence[str], tracer_of_row: np.ndarray,
                       float_block: Callable[[slice], np.ndarray], rows_per_write: int) -> Path:
    """A pandas fixed-format frame: float block [n_rows, len(float_names)] written
    `rows_per_write` rows at a time from `float_block(rows)`, then the int64 block
    [Index, Tracer] with tracer_of_row [n_rows]."""
    n_rows = int(tracer_of_row.shape[0])
    with h5py.File(path, "w") as f:
        f.attrs["PYTABLES_FORMAT_VERSION"] = np.bytes_(b"2.1")
        g = f.create_group(key)
        for name, value in (("pandas_type", b"frame"), ("pandas_version", b"0.15.2"),
                            ("encoding", b"UTF-8"), ("axis0_variety", b"regular"),
                            ("axis1_variety", b"regular"), ("block0_items_variety", b"regular"),
                            ("block1_items_variety", b"regular")):
            g.attrs[name] = np.bytes_(value)
        g.attrs["ndim"] = np.int64(2)
        g.attrs["nblocks"] = np.int64(2)
        _carray(g, "axis0", _string_array(["Index", *float_names, "Tracer"]))
        _carray(g, "axis1", np.arange(n_rows, dtype=np.int64))
        _carray(g, "block0_items", _string_array(float_names))
        values = _carray(g, "block0_values", shape=(n_rows, len(float_names)), dtype=np.float64)
        for a in range(0, n_rows, rows_per_write):
            rows = slice(a, min(n_rows, a + rows_per_write))
            values[rows] = float_block(rows)
        _carray(g, "block1_items", _string_array(["Index", "Tracer"]))
        ints = np.stack([np.arange(n_rows), tracer_of_row], axis=1)
        _carray(g, "block1_values", ints.astype(np.int64))
    return path


def write_uclchem_fixed(path: str | Path, traj: Trajectories, key: str = "df",
                        pad_names: bool = True, rows_per_write: int = 65536,
                        edit_float_block: Callable[[np.ndarray, slice], None] | None = None
                        ) -> Path:
    """Write `traj` as a pandas fixed-format frame (float block + int64 block [Index, Tracer]),
    rows sorted by tracer then time. `pad_names` pads species names with spaces like UCLCHEM's
    .dat headers. `edit_float_block(block, rows)` may alter each float block before writing."""
    n_t = traj.time_years.shape[1]
    species = [f"{s:<7}" if pad_names else s for s in traj.species]

    def float_block(rows: slice) -> np.ndarray:
        block = _uclchem_float_block(traj, rows)
        if edit_float_block is not None:
            edit_float_block(block, rows)
        return block

    return _write_fixed_frame(Path(path), key, ["Time", *UCLCHEM_PHYSICAL, *species],
                              np.repeat(traj.tracer_ids, n_t), float_block, rows_per_write)


def _flat_table(traj: Trajectories, names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Columns Index, Model, Time, Density, gasTemp, Av, Radfield, zeta, species (our layout)."""
    n_b, n_t = traj.time_years.shape
    columns = ["Index", "Model", "Time", *names[:5], *traj.species]
    table = np.empty((n_b * n_t, len(columns)))
    table[:, 0] = np.arange(n_b * n_t)
    table[:, 1] = np.repeat(traj.tracer_ids, n_t)
    table[:, 2] = traj.time_years.reshape(-1)
    table[:, 3:8] = traj.physical.reshape(-1, 5)
    table[:, 8:] = traj.abundances.reshape(-1, len(traj.species))
    return columns, table


def write_astrochem_jax(path: str | Path, traj: Trajectories, initial: np.ndarray | None = None
                        ) -> Path:
    """Our raw layout (docs/architecture.md), without the solver report and network attrs."""
    path = Path(path)
    columns, table = _flat_table(traj, OUR_PHYSICAL)
    n_b, n_t = traj.time_years.shape
    with h5py.File(path, "w") as f:
        f.create_dataset("columns", data=np.array(columns, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("data", data=table, chunks=(min(4096, table.shape[0]), table.shape[1]))
        f.create_dataset("tracer_id", data=traj.tracer_ids)
        f.create_dataset("tracer_ptr", data=np.arange(n_b + 1, dtype=np.int64) * n_t)
        init = traj.abundances[0, 0] if initial is None else initial
        f.create_dataset("initial_abundances", data=np.asarray(init, dtype=np.float64))
        f.attrs["format"] = "astrochem_jax"
        f.attrs["format_version"] = 1
    return path


CARBOX_PHYSICAL = ("density", "temperature", "av", "rad_field", "zeta")


def write_carbox(path: str | Path, traj: Trajectories, key: str = "large",
                 triple_ptr: bool = False) -> Path:
    """Carbox grouped layout with Carbox's lower-case names; `triple_ptr` writes tracer_ptr as
    [T, 3] (id, start, length) instead of CSR [T + 1]."""
    path = Path(path)
    n_b, n_t = traj.time_years.shape
    columns = ["tracer", "time", *CARBOX_PHYSICAL, *traj.species]
    _, table = _flat_table(traj, OUR_PHYSICAL)
    table = table[:, 1:]  # no Index column
    with h5py.File(path, "w") as f:
        g = f.create_group(key)
        g.create_dataset("columns", data=_string_array(columns))
        g.create_dataset("data", data=table)
        g.create_dataset("tracer_id", data=traj.tracer_ids)
        starts = np.arange(n_b, dtype=np.int64) * n_t
        if triple_ptr:
            ptr = np.stack([traj.tracer_ids, starts, np.full(n_b, n_t)], axis=1)
        else:
            ptr = np.append(starts, n_b * n_t)
        g.create_dataset("tracer_ptr", data=ptr.astype(np.int64))
    return path


def synthetic_species(n: int) -> list[str]:
    """`n` distinct parseable species names (CcHh in gas, ion, surface and bulk forms)."""
    bases = [f"C{c}H{h}" for c in range(1, 11) for h in range(1, 11)]
    names = [*bases, *(b + "+" for b in bases), *("#" + b for b in bases),
             *("@" + b for b in bases)]
    if n > len(names):
        raise ValueError(f"at most {len(names)} synthetic species, asked for {n}")
    return names[:n]


def write_uclchem_fixed_streamed(path: str | Path, n_tracers: int, n_steps: int,
                                 species: Sequence[str], seed: int = 0, key: str = "df",
                                 rows_per_write: int = 32768) -> Path:
    """A large UCLCHEM-layout (pandas fixed format) file generated block by block, so writing a
    multi-GB benchmark file needs little memory. Values are random but valid."""
    rng = np.random.default_rng(seed)
    n_rows = n_tracers * n_steps
    n_phys = len(UCLCHEM_PHYSICAL)
    grid = np.linspace(0.0, 1.5e6, n_steps)

    def float_block(rows: slice) -> np.ndarray:
        n = rows.stop - rows.start
        block = np.empty((n, 1 + n_phys + len(species)))
        block[:, 0] = grid[np.arange(rows.start, rows.stop) % n_steps]
        block[:, 1 : 1 + n_phys] = rng.uniform(1.0, 100.0, (n, n_phys))
        block[:, 1 + n_phys :] = 10.0 ** rng.uniform(-25, -0.5, (n, len(species)))
        return block

    return _write_fixed_frame(Path(path), key, ["Time", *UCLCHEM_PHYSICAL, *species],
                              np.arange(n_rows) // n_steps, float_block, rows_per_write)
