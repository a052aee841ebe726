"""Benchmark a surrogate: closed-loop accuracy on the TEST tracers and speed versus the
ground-truth solver on the same tracks.

    python -m astrochem_jax.benchmark --config=configs/surrogates/ae_emulator_grav.py \
        [--config.benchmark.batch_sizes="(1, 64, 256)" --config.benchmark.solver.enabled=False]

Thin absl main around `run_benchmark(config) -> dict`, which writes
`outputs/benchmarks/<config.name>/report.json` (atomically) and PNG plots there, prints a summary
table and returns the report.

Protocol:
- Accuracy: each test tracer starts from its true t0 abundances and is rolled out closed loop
  over its whole trajectory, driven by the stored physical conditions (the preprocessed
  `sequential` split `test`, unscaled to physical units). Test tracers are never read by training:
  no weight, checkpoint choice or hyperparameter saw them, and the benchmark refuses to score a
  tracer any component recorded as seen (`data_info.seen_tracers`: its train + val tracers).
  Steps 1..T-1 are scored against the truth (error vs step includes step 0, the reconstruction
  of the initial state).
- Distance to training: how far each scored row is from the emulator's TRAIN tracers (mean
  |dlog10| to the nearest one at the same step), per tracer next to its closed-loop error. The
  train split is read for this measurement only; nothing is chosen with it.
- Speed: the jitted rollout is compiled first (compile time reported separately), warmed up once,
  then timed over repeats with `block_until_ready`; batches replicate the scored tracks. The
  solver re-solves the same scored tracks from the raw file's network text, initial
  abundances and nodes (only for `astrochem_jax`-format datasets that carry `network_rates`),
  compile excluded the same way. FLOPs are the rollout's matrix-product FLOPs counted from its
  jaxpr (`surrogates.flops`); the peak is a warm float32 `jnp.dot` timed in the same run.
"""

from __future__ import annotations

import time
from pathlib import Path

from astrochem_jax import runtime

if __name__ == "__main__":
    # Before numpy/jax load: one BLAS thread, compile cache, one CPU device per core (float32
    # process-wide: the solver turns float64 on around itself).
    runtime.setup_entry_point(cpu_device_per_core=True)

import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from astrochem_jax import atomic, config_utils, locks, metrics, paths, shards  # noqa: E402
from astrochem_jax.surrogates import Surrogate, build, plots, speed  # noqa: E402
from astrochem_jax.surrogates import evaluation as ev  # noqa: E402
from astrochem_jax.surrogates import flops as flops_lib  # noqa: E402
from astrochem_jax.surrogates import uncertainty as uq  # noqa: E402
from astrochem_jax.surrogates.rollout import rollout_physical, shard_batch  # noqa: E402

# Fraction of the measured matmul peak the rollout should reach at batch >= PEAK_TARGET_BATCH.
PEAK_TARGET_FRACTION = 0.5
PEAK_TARGET_BATCH = 256


class BenchmarkError(RuntimeError):
    """The benchmark cannot run on this surrogate / dataset (message says why and what to do)."""


# ------------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass(frozen=True)
class ScoredData:
    """Scored tracers (one split of the sequential data) in physical units.

    split: "test" (the benchmark) or "val"; tracer_ids [N]; time_years [T]; abundances
    [N, T, S] (float64, clipped at the scaling floor as in training); physical [N, T, P] (row t
    drives step t -> t + 1).
    """

    split: str

    tracer_ids: np.ndarray
    time_years: np.ndarray
    abundances: np.ndarray
    physical: np.ndarray


def check_unseen(surrogate: Surrogate, tracer_ids: np.ndarray, where: str) -> None:
    """Refuse to score tracers that any component saw in training or checkpoint choice."""
    for role, seen in surrogate.seen_tracers.items():
        if seen is None:
            raise BenchmarkError(
                f"{where}: component {surrogate.components[role]!r} ({role}) does not record "
                "which tracers it trained on (trained before train / val / test splits "
                "existed); retrain it so that the test tracers can be checked as unseen")
        leaked = sorted(set(seen) & {int(t) for t in tracer_ids})
        if leaked:
            raise BenchmarkError(
                f"{where}: the scored tracers {leaked[:10]} were seen by component "
                f"{surrogate.components[role]!r} ({role}) in training or checkpoint choice; "
                "scores on them would be optimistic. Re-preprocess and retrain the components on "
                "the current split (train / val / test), or score another split"
            )


def load_split_tracers(surrogate: Surrogate, n_tracers: int | None,
                       split: str = "test") -> ScoredData:
    """Tracers of the emulator's preprocessed `sequential` split `split` (the benchmark scores
    "test"; the trainer check re-reads "val")."""
    with paths.using_outputs(surrogate.outputs_dir):  # `surrogates.load(..., workdir=)`
        directory = paths.preprocessed_dir(surrogate.dataset, surrogate.preprocessing_method)
    manifest = shards.read_manifest(directory)
    if split not in manifest["splits"]:
        raise BenchmarkError(
            f"{directory}/manifest.json: no split {split!r} (found {sorted(manifest['splits'])});"
            " it was written before test splits existed: rerun preprocessing and retrain")
    val = np.asarray(shards.load_split(directory, split), np.float64)
    n_p = surrogate.n_physical
    if val.ndim != 3 or val.shape[-1] != n_p + surrogate.n_species:
        raise BenchmarkError(
            f"{directory}: split {split!r} has shape {val.shape}, expected [tracers, steps, "
            f"{n_p} physical + {surrogate.n_species} species] (a 'sequential' preprocessing)"
        )
    ids = manifest.get("split_tracers", {}).get(split)
    if ids is None or len(ids) != val.shape[0]:
        raise BenchmarkError(
            f"{directory}/manifest.json: split_tracers[{split!r}] lists "
            f"{None if ids is None else len(ids)} tracers, the split holds {val.shape[0]}")
    ids = np.asarray(ids, np.int64)
    if split == "test":
        check_unseen(surrogate, ids, f"{directory} split {split!r}")
    if n_tracers is not None:
        val, ids = val[: int(n_tracers)], ids[: int(n_tracers)]
    # Tracers of different lengths are NaN-padded at the end: score the common finite length.
    finite = np.all(np.isfinite(val), axis=2)  # [N, T]
    lengths = np.where(finite.all(axis=1), val.shape[1], np.argmin(finite, axis=1))
    if lengths.size and lengths.min() < val.shape[1]:
        val = val[:, : int(lengths.min())]
    if val.shape[0] == 0 or val.shape[1] < 2:
        raise BenchmarkError(f"{directory}: split {split!r} {val.shape} has no trajectory to "
                             "score")
    time_years = np.asarray(manifest.get("time_years") or np.arange(val.shape[1]), np.float64)
    time_years = time_years[: val.shape[1]]
    if time_years.shape[0] != val.shape[1]:
        time_years = np.arange(val.shape[1], dtype=np.float64)
    scaler = surrogate.scaler
    return ScoredData(
        split=split,
        tracer_ids=ids.astype(np.int64),
        time_years=time_years,
        abundances=np.asarray(scaler.unscale_abundances(val[..., n_p:]), np.float64),
        physical=np.asarray(scaler.unscale_physical(val[..., :n_p]), np.float64),
    )


def stoichiometry_for(surrogate: Surrogate) -> tuple[list[str], np.ndarray]:
    """(elements [E], matrix [S, E]): preprocessing's utils file, else from the species formulae."""
    path = paths.utils_dir(surrogate.dataset) / "stoichiometric_matrix.npy"
    elements = surrogate.info.get("elements")
    if path.exists() and elements:
        matrix = np.load(path)
        if matrix.shape == (surrogate.n_species, len(elements)):
            return list(elements), np.asarray(matrix, np.float64)
    from astrochem_jax.chemistry.formula import stoichiometry

    elements, matrix, _ = stoichiometry(list(surrogate.species))
    return list(elements), np.asarray(matrix, np.float64).reshape(surrogate.n_species, -1)


# ------------------------------------------------------------------------------------------------
# Accuracy


def predict(surrogate: Surrogate, data: ScoredData) -> np.ndarray:
    """Closed-loop rollout of every scored tracer from its t0: [N, T, S] float64."""
    x0 = shard_batch(np.asarray(data.abundances[:, 0], np.float32))
    phys = shard_batch(np.asarray(data.physical[:, :-1], np.float32))
    return np.asarray(surrogate(x0, phys), np.float64)


def accuracy_section(surrogate: Surrogate, data: ScoredData, pred: np.ndarray,
                     elements: list[str], matrix: np.ndarray, n_worst: int) -> dict:
    report = ev.accuracy_report(data.abundances[:, 1:], pred[:, 1:], surrogate.species,
                                data.tracer_ids, matrix, elements)
    report["relative_error"]["worst"] = report["relative_error"]["worst"][:n_worst]
    finite = np.isfinite(pred[:, 1:])
    report["non_finite_predictions"] = {
        "count": int(finite.size - np.count_nonzero(finite)), "of": int(finite.size),
        "note": "closed-loop rollouts that diverge overflow to inf; emulators trained with "
                "model.state_bounds keep their state in the training range"}
    report["error_vs_step"] = {"time_years": data.time_years.tolist(),
                               **ev.error_vs_step(data.abundances, pred)}
    report["scored_steps"] = "1..T-1 (closed loop from the true t0 abundances)"
    report["transition_timing"] = ev.transition_timing(
        data.abundances, pred, surrogate.species, data.time_years, physical=data.physical)
    return report


def reconstruction_floor(surrogate: Surrogate, data: ScoredData) -> dict:
    """decode(encode(x)) on every scored row: with the autoencoder's own decoder, the best any
    rollout can do; with a closed-loop decoder (`closed_loop_decoder`: refit on the emulator's
    states, not on encode(x)) only what the surrogate returns at t0, and the `what` says so."""
    flat = data.abundances.reshape(-1, surrogate.n_species)
    x_hat = np.asarray(surrogate.reconstruct(surrogate.params, shard_batch(
        np.asarray(flat, np.float32))), np.float64)
    per_species = ev.species_mean_relative_error(flat, x_hat)
    summary = ev.summarize_species_errors(per_species, surrogate.species, n_worst=5)
    summary.pop("per_species")
    refit = closed_loop_decoder_of(surrogate)
    what = ("decode(encode(x)) on every scored row (identity + clipping for direct emulators)"
            if refit is None else
            f"decode(encode(x)) on every scored row with the closed-loop decoder {refit!r}, "
            "refit on the emulator's states: not a floor of the rollout (the autoencoder's "
            "floor is that of its own decoder)")
    return {"relative_error": summary, "abs_dlog10": ev.dlog10_summary(flat, x_hat),
            "abs_dlog10_by_abundance": ev.dlog10_by_abundance(flat, x_hat),
            "what": what, "closed_loop_decoder": refit}


def closed_loop_decoder_of(surrogate: Surrogate) -> str | None:
    """The surrogate's decoder component when it is a closed-loop decoder, else None."""
    decoder = surrogate.components.get("decoder")
    config = surrogate.component_configs.get("decoder") or {}
    return decoder if config.get("type") == "closed_loop_decoder" else None


def training_reference(surrogate: Surrogate, max_tracers: int, n_steps: int
                       ) -> tuple[np.ndarray, int]:
    """Scaled abundances [K, n_steps, S] (as stored: log10 mapped to [0, 1]) of the emulator's
    train tracers (all of them, or a seeded sample of `max_tracers`), and how many there are."""
    with paths.using_outputs(surrogate.outputs_dir):
        directory = paths.preprocessed_dir(surrogate.dataset, surrogate.preprocessing_method)
    manifest = shards.read_manifest(directory)
    total = int(manifest["splits"]["train"]["shape"][0])
    keep = np.arange(total)
    if total > max_tracers:
        keep = np.sort(np.random.default_rng(0).permutation(total)[:max_tracers])
    picked, offset = [], 0
    for shard in shards.iter_split(directory, "train"):  # memory-mapped: read only the picks
        local = keep[(keep >= offset) & (keep < offset + shard.shape[0])] - offset
        picked.append(np.asarray(shard[local, :n_steps, surrogate.n_physical:], np.float32))
        offset += shard.shape[0]
    return np.concatenate(picked), total


def distance_to_training(surrogate: Surrogate, data: ScoredData, pred: np.ndarray,
                         max_reference_tracers: int) -> dict:
    """How new the scored tracers are: for every scored row, the mean |dlog10| over species to
    the nearest train tracer at the same step, and per tracer its mean next to the closed-loop
    error. Errors that grow with this distance say more training tracers would help."""
    n_steps = data.abundances.shape[1]
    reference, total = training_reference(surrogate, max_reference_tracers, n_steps)
    scaler = surrogate.scaler
    span_dex = float(np.log10(scaler.abundance_clip[1]) - np.log10(scaler.abundance_clip[0]))
    # Scaled abundances are log10 mapped linearly onto [0, 1]: distances x span are in dex.
    distance = ev.nearest_tracer_distance(scaler.scale_abundances(data.abundances),
                                          reference) * span_dex  # [N, T]
    closed_loop = metrics.abs_dlog10(data.abundances[:, 1:], pred[:, 1:]).mean(axis=(1, 2))
    per_tracer = distance.mean(axis=1)
    return {
        "what": "per scored row, mean |dlog10| over species to the nearest train tracer at the "
                "same step (dex); per tracer, its mean over steps next to the tracer's "
                "closed-loop mean |dlog10|",
        "n_reference_tracers": int(reference.shape[0]),
        "n_train_tracers": total,
        "abs_dlog10": {"mean": float(distance.mean()), "median": float(np.median(distance)),
                       "p90": float(np.percentile(distance, 90)), "max": float(distance.max())},
        "spearman_tracers": uq.spearman(per_tracer, closed_loop),
        "per_tracer": [{"tracer": int(t), "distance_abs_dlog10": float(d),
                        "closed_loop_abs_dlog10": float(e)}
                       for t, d, e in zip(data.tracer_ids, per_tracer, closed_loop, strict=True)],
    }


def window_validation_metrics(surrogate: Surrogate, data: ScoredData, horizon: int,
                              chunk: int = 1024) -> dict:
    """The emulator trainer's validation protocol, run through the surrogate: every stride-1
    window of `horizon` steps of every tracer, rolled out from the true state at its start;
    mean relative error and mean |dlog10| over windows, steps 1..horizon and species."""
    n, t, _ = data.abundances.shape
    starts = [(k, s) for k in range(n) for s in range(t - horizon)]
    if not starts:
        raise BenchmarkError(f"no validation window: trajectories of {t} steps, horizon {horizon}")
    k_idx, s_idx = (np.asarray(v) for v in zip(*starts, strict=True))
    steps = s_idx[:, None] + np.arange(horizon)[None, :]  # [W, H]
    rel_sum = dex_sum = 0.0
    count = 0
    for lo in range(0, len(starts), chunk):
        k, st, win = k_idx[lo:lo + chunk], s_idx[lo:lo + chunk], steps[lo:lo + chunk]
        x0 = np.asarray(data.abundances[k, st], np.float32)
        phys = np.asarray(data.physical[k[:, None], win], np.float32)
        truth = np.asarray(data.abundances[k[:, None], win + 1], np.float32)
        pred = np.asarray(surrogate(shard_batch(x0), shard_batch(phys)))[:, 1:]
        rel_sum += float(np.sum(metrics.relative_error(truth, pred), dtype=np.float64))
        dex_sum += float(np.sum(metrics.abs_dlog10(truth, pred), dtype=np.float64))
        count += truth.size
    return {"horizon": int(horizon), "n_windows": len(starts),
            "mean_relative_error": rel_sum / count, "mean_abs_dlog10": dex_sum / count}


def trainer_check(surrogate: Surrogate) -> dict:
    """The emulator's validation numbers recomputed through the surrogate (all validation
    tracers, the trainer's windows) next to those in its summary.json."""
    # The trainer validates on windows of `val_horizon` steps (older components: `horizon`).
    horizon = surrogate.info.get("val_horizon", surrogate.info.get("horizon"))
    summary_path = paths.weights_dir(surrogate.components["emulator"]) / "summary.json"
    if horizon is None or not summary_path.exists():
        return {"available": False, "reason": f"no horizon in the emulator's data_info or no "
                                              f"{summary_path}"}
    trainer = json.loads(summary_path.read_text()).get("best_val_metrics", {})
    ours = window_validation_metrics(surrogate, load_split_tracers(surrogate, None, "val"),
                                     int(horizon))
    out = {"available": True, "surrogate": ours,
           "trainer": {k: trainer.get(k) for k in ("mean_relative_error", "mean_abs_dlog10")}}
    out["relative_difference"] = {
        k: abs(ours[k] - v) / max(abs(v), 1e-30) for k, v in out["trainer"].items()
        if v is not None}
    return out


# ------------------------------------------------------------------------------------------------
# Speed


def rollout_flops(surrogate: Surrogate, n_steps: int) -> dict:
    """Matrix-product FLOPs of one trajectory of `n_steps` steps (batch of one), with the
    per-sample cost of each part; an ensemble's trajectory costs every member's."""
    s = jax.ShapeDtypeStruct((1, surrogate.n_species), np.float32)
    p = jax.ShapeDtypeStruct((1, n_steps, surrogate.n_physical), np.float32)
    parts, params = surrogate.parts, surrogate.params
    members = surrogate.ensemble_size
    if members > 1:  # one member's parameters; every member costs the same
        params = jax.tree.map(lambda leaf: leaf[0], params)
    total = members * flops_lib.count_dot_flops(
        functools.partial(rollout_physical, parts, surrogate.scaler), params, s, p)
    z = jax.eval_shape(parts.encode, params, s)
    p1 = jax.ShapeDtypeStruct((1, surrogate.n_physical), np.float32)
    return {
        "per_trajectory": int(total),
        "n_steps": int(n_steps),
        "encode_per_sample": flops_lib.count_dot_flops(parts.encode, params, s),
        "step_per_sample": flops_lib.count_dot_flops(parts.step, params, p1, z),
        "decode_per_sample": flops_lib.count_dot_flops(parts.decode, params, z),
        "members": int(members),
        "counted": "2 * multiply-adds of every dot_general (dense layers); encode once, "
                   "T-1 emulator steps, decode T times (per_trajectory: x members; the "
                   "*_per_sample entries are one member's)",
    }


def replicate_tracks(data: ScoredData, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x0 [B, S], physical [B, T-1, P]) float32, scored tracks repeated to fill B."""
    idx = np.arange(batch_size) % data.abundances.shape[0]
    return (np.asarray(data.abundances[idx, 0], np.float32),
            np.asarray(data.physical[idx, :-1], np.float32))


def time_rollout(surrogate: Surrogate, x0: np.ndarray, phys: np.ndarray, repeats: int,
                 min_total_s: float) -> tuple[float, list[float]]:
    """(compile seconds, warm timed seconds per call) of the rollout on one batch."""
    x0, phys = shard_batch(x0), shard_batch(phys)
    compile_s = speed.time_compile(surrogate.rollout, surrogate.params, x0, phys)
    times = speed.time_calls(surrogate.rollout, surrogate.params, x0, phys, repeats=repeats,
                             warmup=1, min_total_s=min_total_s)
    return compile_s, times


def speed_section(surrogate: Surrogate, data: ScoredData, bench: ConfigDict,
                  log) -> dict:
    n_steps = data.abundances.shape[1] - 1
    flops = rollout_flops(surrogate, n_steps)
    log(f"matmul peak: timing a float32 [{bench.matmul_size}]^2 jnp.dot ...")
    peak = speed.matmul_peak_gflops(int(bench.matmul_size), min_total_s=float(bench.min_timing_s))
    repeats, min_s = int(bench.timing_repeats), float(bench.min_timing_s)

    n_scored = data.abundances.shape[0]
    compile_s, times = time_rollout(surrogate, *replicate_tracks(data, n_scored), repeats, min_s)
    same = ev.throughput_entry(n_scored, times, flops["per_trajectory"], peak["gflops"])
    same["compile_s"] = compile_s
    log(f"surrogate on the {n_scored} scored tracks: {same['trajectories_per_s']:.4g} traj/s "
        f"(compile {compile_s:.2f} s)")

    throughput = []
    for b in sorted({int(b) for b in bench.batch_sizes}):
        c_s, t = time_rollout(surrogate, *replicate_tracks(data, b), repeats, min_s)
        entry = ev.throughput_entry(b, t, flops["per_trajectory"], peak["gflops"])
        entry["compile_s"] = compile_s if b == n_scored else c_s  # n_scored: compiled just above
        throughput.append(entry)
        log(f"batch {b:5d}: {entry['trajectories_per_s']:10.4g} traj/s, "
            f"{entry['achieved_gflops']:8.3g} GFLOP/s ({100 * entry['fraction_of_peak']:.1f}% of "
            f"peak), compile {entry['compile_s']:.2f} s")
    best = max(throughput, key=lambda e: e["trajectories_per_s"]) if throughput else same
    large = [e for e in throughput if e["batch_size"] >= PEAK_TARGET_BATCH]
    best_large = max(large, key=lambda e: e["fraction_of_peak"]) if large else None
    return {
        "device": speed.device_summary(),
        "flops": flops,
        "matmul_peak": peak,
        "same_tracks": same,
        "throughput": throughput,
        "best": {"batch_size": best["batch_size"],
                 "trajectories_per_s": best["trajectories_per_s"],
                 "achieved_gflops": best["achieved_gflops"],
                 "fraction_of_peak": best["fraction_of_peak"]},
        "peak_target": {
            "fraction": PEAK_TARGET_FRACTION,
            "at_batch_size_ge": PEAK_TARGET_BATCH,
            "best_fraction_at_large_batch": best_large and best_large["fraction_of_peak"],
            # The conservative reading: against the fastest matmul repeat, not the median one.
            "best_fraction_vs_best_peak": best_large
            and best_large["achieved_gflops"] / peak["best_gflops"],
            "met": best_large is not None
            and best_large["fraction_of_peak"] >= PEAK_TARGET_FRACTION,
        },
    }


# ------------------------------------------------------------------------------------------------
# Ground-truth solver on the same tracks


def solver_unavailable(reason: str) -> dict:
    return {"available": False, "reason": f"solver: not available for this dataset ({reason})"}


def _raw_path(surrogate: Surrogate) -> Path | None:
    """The raw file the emulator's dataset was preprocessed from (its config, else the
    manifest's `source.path`)."""
    dataset = surrogate.component_configs.get("emulator", {}).get("dataset") or {}
    raw = dataset.get("raw_path")
    if not raw:
        directory = paths.preprocessed_dir(surrogate.dataset, surrogate.preprocessing_method)
        raw = shards.read_manifest(directory).get("source", {}).get("path")
    return Path(raw) if raw else None


def solver_settings_for(raw: dict, overrides: ConfigDict):
    """The raw file's solver settings (those that generated it), with benchmark overrides."""
    from astrochem_jax.chemistry.solver import SolverSettings

    stored = dict((raw.get("solver_settings") or {}).get("settings") or {})
    known = {f.name for f in dataclasses.fields(SolverSettings)}
    values = {k: v for k, v in stored.items() if k in known}
    for key in ("rtol", "atol", "max_steps", "batch_size"):
        if key in known and overrides.get(key) is not None:
            values[key] = overrides.get(key)
    return SolverSettings(**values)


def solver_workers(requested: int | None) -> int:
    """Solver worker processes: `requested`, else one per usable core on the CPU backend (the
    surrogate's rollout is sharded over one CPU device per core, so both use the whole machine)
    and 1 on accelerators (the solver then runs on the accelerator, in process)."""
    if requested is not None:
        if int(requested) < 1:
            raise BenchmarkError(f"benchmark.solver.workers: expected >= 1, found {requested}")
        return int(requested)
    return runtime.usable_cores() if jax.default_backend() == "cpu" else 1


def solve_same_tracks(surrogate: Surrogate, data: ScoredData, bench: ConfigDict,
                      log) -> dict:
    """Re-solve the scored tracks with the float64 solver; time it warm."""
    if not bench.solver.enabled:
        return solver_unavailable("disabled by config benchmark.solver.enabled=False")
    raw_path = _raw_path(surrogate)
    fmt = surrogate.component_configs.get("emulator", {}).get("dataset", {}).get("format")
    if fmt not in (None, "astrochem_jax"):
        return solver_unavailable(f"raw format {fmt!r} stores no solvable network; only "
                                  "'astrochem_jax' files written by generate do")
    if raw_path is None or not raw_path.is_file():
        return solver_unavailable(f"raw file {raw_path} not found")
    from astrochem_jax import rawio

    try:
        raw = rawio.read_raw_dataset(raw_path)
    except (rawio.RawFormatError, OSError, KeyError) as err:
        return solver_unavailable(f"{raw_path} is not a raw file written by generate: {err}")
    if not raw.get("network_rates"):
        return solver_unavailable(f"{raw_path} has no 'network_rates' attribute")

    from astrochem_jax.chemistry.network import parse_umist_text
    from astrochem_jax.chemistry.solver import solve_tracks

    network = parse_umist_text(raw["network_rates"], raw.get("network_name") or "raw",
                               f"{raw_path}:network_rates")
    if list(network.species) != list(raw["species"]):
        return solver_unavailable("the network text's species order differs from the file's")
    rows = {int(t): k for k, t in enumerate(raw["tracer_ids"])}
    missing = [int(t) for t in data.tracer_ids if int(t) not in rows]
    if missing:
        return solver_unavailable(f"scored tracers {missing[:5]} are not in {raw_path}")
    n = data.tracer_ids.shape[0] if bench.solver.n_tracers is None else min(
        int(bench.solver.n_tracers), data.tracer_ids.shape[0])
    idx = np.asarray([rows[int(t)] for t in data.tracer_ids[:n]])
    settings = solver_settings_for(raw, bench.solver)
    batch = max(1, int(getattr(settings, "batch_size", n) or n))
    workers = solver_workers(bench.solver.get("workers"))
    # Whole batches of the generator's batch size (one compiled shape, usually already in the
    # persistent compile cache), at least one per worker; tracks repeat to fill them, and every
    # solved track is timed.
    n_batches = max(-(-n // batch), workers)
    n_batches = -(-n_batches // workers) * workers
    n_solved = n_batches * batch
    sel = idx[np.arange(n_solved) % n]
    node_time, node_phys = raw["node_time_years"][sel], raw["node_physical"][sel]
    output_time = raw["time_years"][idx[0]]
    x0 = raw["initial_abundances"]
    log(f"solver: compiling, then solving {n_solved} tracks ({n} scored tracers, batches of "
        f"{batch}, {workers} worker process{'es' if workers > 1 else ''}) ...")
    if workers > 1:
        from astrochem_jax.chemistry.parallel import SolverPool

        start = time.perf_counter()
        with SolverPool(network, settings, workers, initial_abundances=x0,
                        physical=node_phys[0, 0], n_nodes=node_time.shape[1],
                        n_outputs=output_time.size) as pool:
            first_call_s = time.perf_counter() - start  # spawn + import + compile + warm-up
            start = time.perf_counter()
            res = pool.solve(x0, node_time, node_phys, output_time, progress=False)
            solve_s = time.perf_counter() - start
        pieces = [(np.asarray(res.abundances), np.asarray(res.result_code).reshape(-1))]
    else:
        def solve(k):
            part = slice(k * batch, (k + 1) * batch)
            res = solve_tracks(network, x0, node_time[part], node_phys[part], output_time,
                               settings=settings, progress=False)
            return np.asarray(res.abundances), np.asarray(res.result_code).reshape(-1)

        start = time.perf_counter()
        solve(0)
        first_call_s = time.perf_counter() - start
        start = time.perf_counter()
        pieces = [solve(k) for k in range(n_batches)]
        solve_s = time.perf_counter() - start
    solved = np.concatenate([p[0] for p in pieces])[:n]
    codes = np.concatenate([p[1] for p in pieces])[:n]
    stored = raw["abundances"][idx]
    big = stored > 1e-12
    dex = np.abs(np.log10(np.maximum(solved, 1e-30)) - np.log10(np.maximum(stored, 1e-30)))
    log(f"solver: {n_solved / solve_s:.4g} traj/s ({solve_s:.2f} s for {n_solved}; "
        f"{'workers started and warm' if workers > 1 else 'first call incl. compile'} in "
        f"{first_call_s:.1f} s)")
    return {
        "available": True,
        "n_tracers": int(n),
        "n_solved": int(n_solved),
        "trajectories_per_s": n_solved / solve_s,
        "seconds": solve_s,
        "first_call_s_incl_compile": first_call_s,
        "batch_size": int(batch),
        "n_workers": int(workers),
        "parallelism": (f"{workers} worker processes, one per core, each one vmapped batch at a "
                        "time" if workers > 1 else "one process, vmapped batches"),
        "device": speed.device_summary()["device_kind"],
        "settings": config_utils.to_dict(dataclasses.asdict(settings)),
        "failed": int(np.count_nonzero(codes != 0)),
        "max_abs_dlog10_vs_stored_above_1e-12": float(dex[big].max()) if big.any() else 0.0,
        "network": {"name": network.name, "n_species": network.n_species,
                    "n_reactions": network.n_reactions},
    }


# ------------------------------------------------------------------------------------------------
# Plots and summary


def ensemble_rollout(surrogate: Surrogate, data: ScoredData) -> tuple[np.ndarray, ...]:
    """(truth, mean, raw spread, members) on steps 1..T-1, closed loop from t0: [N, T-1, S]
    each, members [M, N, T-1, S] (float64; spread in dex, uncalibrated)."""
    raw = surrogate.calibrated(1.0)
    x0 = np.asarray(data.abundances[:, 0], np.float32)
    phys = np.asarray(data.physical[:, :-1], np.float32)
    mean, spread, members = raw.predict(x0, phys, return_spread=True, return_members=True)
    return (data.abundances[:, 1:], np.asarray(mean, np.float64)[:, 1:],
            np.asarray(spread, np.float64)[:, 1:], np.asarray(members, np.float64)[:, :, 1:])


def uncertainty_section(surrogate: Surrogate, data: ScoredData,
                        n_tracers: int | None = None) -> tuple[dict, tuple]:
    """An ensemble's spread against its error on the scored tracers (`surrogates.uncertainty`),
    steps 1..T-1 closed loop from t0, and the spread factor fitted on the VALIDATION tracers
    (`calibration`); returns (report section, (error, spread) arrays of the scored tracers)."""
    truth, mean, spread, members = ensemble_rollout(surrogate, data)
    section = uq.uncertainty_report(truth, mean, spread, members, surrogate.meta.members)
    section["excluded_members"] = sorted(set(range(max(surrogate.meta.members) + 1))
                                         - set(surrogate.meta.members))
    error = uq.abs_error_dex(truth, mean)
    val = load_split_tracers(surrogate, n_tracers, "val")
    val_truth, val_mean, val_spread, _ = ensemble_rollout(surrogate, val)
    section["calibration"] = uq.calibration_report(uq.abs_error_dex(val_truth, val_mean),
                                                   val_spread, error, spread, fitted_on="val")
    section["calibration"]["n_fit_tracers"] = int(val.tracer_ids.size)
    return section, (error, spread)


def ensemble_throughput(speed: dict, members: int) -> dict:
    """The ensemble's throughput (trajectories of the combined surrogate per second) and that
    of its members (x members) at each timed batch size."""
    return {"n_members": int(members),
            "batches": [{"batch_size": e["batch_size"],
                         "ensemble_trajectories_per_s": e["trajectories_per_s"],
                         "member_trajectories_per_s": e["trajectories_per_s"] * members}
                        for e in speed["throughput"]]}


def write_uncertainty_plots(out_dir: Path, report: dict, error: np.ndarray,
                            spread: np.ndarray) -> dict:
    unc = report["uncertainty"]
    return {"reliability": str(plots.plot_reliability(
                out_dir / "reliability.png", unc["reliability"],
                calibrated=unc["calibration"]["reliability"],
                scale=unc["calibration"]["spread_scale"])),
            "error_vs_spread": str(plots.plot_error_vs_spread(
                out_dir / "error_vs_spread.png", error, spread))}


def write_plots(out_dir: Path, surrogate: Surrogate, data: ScoredData, pred: np.ndarray,
                report: dict, bench: ConfigDict) -> dict:
    acc = report["accuracy"]
    floor = report.get("reconstruction_floor", {}).get("relative_error", {}).get("mean")
    files = {
        "error_vs_step": plots.plot_error_vs_step(
            out_dir / "error_vs_step.png", data.time_years, acc["error_vs_step"], floor),
        "worst_species": plots.plot_worst_species(
            out_dir / "worst_species.png", acc["relative_error"]["worst"]),
    }
    wanted = [*bench.plot_species, acc["relative_error"]["worst_species"]]
    indices = plots.match_species(wanted, surrogate.species)
    files["example_trajectories"] = plots.plot_example_trajectories(
        out_dir / "example_trajectories.png", data.time_years, data.abundances[0], pred[0],
        surrogate.species, indices, f"{surrogate.name}: tracer {int(data.tracer_ids[0])}")
    if report["speed"] and report["speed"]["throughput"]:
        files["throughput"] = plots.plot_throughput(
            out_dir / "throughput.png", report["speed"]["throughput"],
            report["solver"].get("trajectories_per_s"),
            report["speed"]["device"]["device_kind"])
    return {k: str(v) for k, v in files.items()}


def _bands_text(bands: list[dict]) -> str:
    """'mean dex (share of the entries)' per band of true abundance, empty bands left out."""
    return " | ".join(f"{b['band']}: {b['mean']:.3g} ({100 * b['fraction_of_entries']:.0f}%)"
                      for b in bands if b["mean"] is not None) + " (mean dex, share of entries)"


def format_summary(report: dict) -> str:
    """The human-readable table printed at the end of a benchmark."""
    acc, sp, solver = report["accuracy"], report["speed"], report["solver"]
    rel, dex = acc["relative_error"], acc["abs_dlog10"]
    floor = report["reconstruction_floor"]
    rows = [
        ("surrogate", f"{report['surrogate']} ({report['type']}) on {report['dataset']}"),
        ("scored", f"{acc['n_tracers']} {report.get('scored_split', 'test')} tracers x "
                   f"{acc['n_steps']} steps, closed loop from t0"),
        ("mean relative error", f"{rel['mean']:.4g} (std over species {rel['std']:.3g}; worst "
                                f"{rel['worst_species']} {rel['worst_value']:.3g})"),
        ("|dlog10| mean / median / p99", f"{dex['mean']:.3g} / {dex['median']:.3g} / "
                                         f"{dex['p99']:.3g} dex"),
        *([("|dlog10| by true abundance", _bands_text(acc["abs_dlog10_by_abundance"]))]
          if acc.get("abs_dlog10_by_abundance") else []),
        *([("non-finite predictions", f"{acc['non_finite_predictions']['count']} of "
                                        f"{acc['non_finite_predictions']['of']} values")]
          if acc.get("non_finite_predictions", {}).get("count") else []),
        ("decode(encode(x))" if floor.get("closed_loop_decoder") else
         "reconstruction floor", f"{floor['relative_error']['mean']:.4g} mean rel. error, "
                              f"{floor['abs_dlog10']['mean']:.3g} dex"),
    ]
    timing = acc.get("transition_timing")
    if timing and timing["n_events"]:
        lag = timing["lag_steps"]
        slowest = sorted((e for e in timing["per_species"]
                          if e["median_abs_lag_steps"] is not None and e["n_events"] >= 3),
                         key=lambda e: -e["median_abs_lag_steps"])[:2]
        lag_text = ("never crossed" if lag is None else
                    f"lag median {lag['median']:+.2g} steps (|lag| p90 {lag['p90_abs']:.2g}, "
                    f"max {lag['max_abs']:.3g}; worst median |lag| " + ", ".join(
                        f"{e['species']} {e['median_abs_lag_steps']:.2g}" for e in slowest)
                    + f"), {timing['n_missed']} missed")
        split = timing.get("by_conditions") or {}
        if all((split.get(k) or {}).get("lag_steps") for k in ("changing", "constant")):
            lag_text += "; median |lag| " + ", ".join(
                f"{split[k]['lag_steps']['median_abs']:.2g} ({split[k]['n_events']} {what})"
                for k, what in (("changing", "as the conditions change"),
                                ("constant", "at constant conditions")))
        rows.append(("abrupt transitions", f"{timing['n_events']} (>= {timing['min_jump_dex']:g}"
                     f" dex in one step): {lag_text}; "
                     f"{100 * (timing['relative_error_share_near_transitions'] or 0):.0f}% of "
                     f"the summed relative error within {timing['window_steps']} steps of "
                     "them"))
    novelty = report.get("distance_to_training")
    if novelty:
        rho = novelty["spearman_tracers"]
        rows.append(("distance to training", f"{novelty['abs_dlog10']['mean']:.3g} dex mean to the "
                     f"nearest of {novelty['n_reference_tracers']} train tracers at the same "
                     f"step; tracers' closed-loop error vs distance: Spearman {_fmt(rho)}"))
    if "element_conservation" in acc:
        worst_el = max(acc["element_conservation"].items(), key=lambda kv: kv[1]["mean"])
        rows.append(("element conservation", f"worst element {worst_el[0]}: mean "
                                             f"{worst_el[1]['mean']:.3g}, max "
                                             f"{worst_el[1]['max']:.3g} (relative)"))
    unc = report.get("uncertainty")
    if unc:
        ms = unc["member_summary"]["mean_abs_dlog10"]
        rows += [
            ("ensemble", f"{unc['n_members']} members: mean |dlog10| of the mean "
                         f"{unc['ensemble_mean']['mean_abs_dlog10']:.3g} dex; members best / "
                         f"median / worst {ms['best']:.3g} / {ms['median']:.3g} / "
                         f"{ms['worst']:.3g}"),
            ("spread vs error", f"Spearman {_fmt(unc['spearman']['entries'])} (entries), "
                                f"{_fmt(unc['spearman']['species_steps'])} (species-steps), "
                                f"{_fmt(unc['spearman']['tracers'])} (tracers); coverage "
                                f"+-1 / 2 sigma {100 * unc['coverage']['1_sigma']:.1f} / "
                                f"{100 * unc['coverage']['2_sigma']:.1f}% (Gaussian 68.3 / "
                                "95.4%)"),
        ]
        cal = unc.get("calibration")
        if cal:
            rows.append(("calibrated spread", f"x {cal['spread_scale']:.3g} (fitted on "
                         f"{cal['n_fit_tracers']} {cal['fitted_on']} tracers): coverage +-1 / 2 "
                         f"sigma {100 * cal['coverage']['1_sigma']:.1f} / "
                         f"{100 * cal['coverage']['2_sigma']:.1f}%"))
    if sp is None:
        rows.append(("speed", "not measured (benchmark.measure_speed=False)"))
        return _table(rows)
    rows += [
        ("device", f"{sp['device']['device_kind']} x{sp['device']['n_devices']} "
                   f"({sp['device']['backend']})"),
        ("FLOPs / trajectory", f"{sp['flops']['per_trajectory']:.4g}"),
        ("matmul peak (fp32)", f"{sp['matmul_peak']['gflops']:.4g} GFLOP/s (median; best "
                               f"{sp['matmul_peak']['best_gflops']:.4g})"),
        ("surrogate, same tracks", f"{sp['same_tracks']['trajectories_per_s']:.4g} traj/s "
                                   f"(batch {sp['same_tracks']['batch_size']}, compile "
                                   f"{sp['same_tracks']['compile_s']:.2f} s)"),
        ("surrogate, best batch", f"{sp['best']['trajectories_per_s']:.4g} traj/s at batch "
                                  f"{sp['best']['batch_size']}, {sp['best']['achieved_gflops']:.3g}"
                                  f" GFLOP/s = {100 * (sp['best']['fraction_of_peak'] or 0):.1f}%"
                                  " of peak"),
    ]
    if solver["available"]:
        workers = solver.get("n_workers", 1)
        rows.append(("solver, same tracks", f"{solver['trajectories_per_s']:.4g} traj/s "
                                            f"({solver['n_tracers']} tracks, {solver['n_solved']} "
                                            f"solves, {workers} worker process"
                                            f"{'es' if workers > 1 else ''})"))
        su = report["speedup"]
        rows.append(("speedup", f"{su['same_tracks']:.4g}x same tracks and batch; "
                                f"{su['best_batch']:.4g}x at the best batch"))
    else:
        rows.append(("solver", solver["reason"]))
    return _table(rows)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    bar = "-" * max(len(line) for line in lines)
    return "\n".join([bar, *lines, bar])


# ------------------------------------------------------------------------------------------------
# Entry


def _quiet(fn, *args):
    """Call `fn` without numpy's overflow/invalid warnings (a diverged rollout's inf values are
    reported once, as `non_finite_predictions`)."""
    import warnings

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args)


def _default_log(message: str) -> None:
    import logging

    print(f"[benchmark] {message}", file=sys.stderr, flush=True)
    logging.getLogger("astrochem_jax").info("[benchmark] %s", message)


def ensure_writable(directory: Path) -> bool:
    """Create `directory` if needed and write a probe file there; returns whether it was
    created. BenchmarkError (naming it) when that fails: before the work, not after."""
    import tempfile

    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise BenchmarkError(
            f"cannot write the benchmark outputs to {directory} ({type(err).__name__}: "
            f"{err.strerror or err}); make it writable, or move the outputs with "
            "ASTROCHEM_JAX_OUTPUTS=<a writable directory>") from err
    return created


def _locked_and_writable(run):
    """One benchmark of a surrogate at a time (lock under outputs/runs/<name>/), its output
    directory checked writable first; a failed run leaves no empty output directory behind."""

    @functools.wraps(run)
    def wrapper(config: ConfigDict, *args, **kwargs) -> dict:
        out_dir = paths.benchmarks_dir(str(config.name))
        with locks.exclusive(paths.runs_dir() / str(config.name) / "benchmark.lock",
                             f"the benchmark of surrogate {str(config.name)!r} ({out_dir})"):
            created = ensure_writable(out_dir)
            try:
                return run(config, *args, **kwargs)
            except BaseException:
                if created:
                    locks.remove_empty_dirs(out_dir, paths.outputs_dir())
                raise

    return wrapper


@_locked_and_writable
def run_benchmark(config: ConfigDict, *, log=None) -> dict:
    """Benchmark the surrogate a config describes; write report.json + plots; return the report.

    The surrogate side (rollout, matmul peak) runs under `config.matmul_precision`, the solver in
    float64 (`chemistry.solver.float64`); both are recorded in the report's `numerics`."""
    log = log or _default_log
    surrogate = build(config)
    with jax.default_matmul_precision(surrogate.matmul_precision):
        return _run_benchmark(config, surrogate, log)


def _run_benchmark(config: ConfigDict, surrogate: Surrogate, log) -> dict:
    wall_start = time.perf_counter()
    bench = config.benchmark
    log(f"surrogate {surrogate.name}: {surrogate.type} {surrogate.components}, "
        f"{surrogate.n_species} species, physical {list(surrogate.physical_parameters)}")
    data = load_split_tracers(surrogate, bench.n_test_tracers, "test")
    elements, matrix = stoichiometry_for(surrogate)
    out_dir = paths.benchmarks_dir(str(config.name))

    # Speed first, so each batch shape's compile time is measured before anything compiled it.
    measure_speed = bool(bench.get("measure_speed", True))
    speed_report = speed_section(surrogate, data, bench, log) if measure_speed else None
    pred = predict(surrogate, data)
    if not np.isfinite(pred).all():
        log("WARNING: the rollout produced non-finite abundances (a diverging closed loop); "
            "metrics involving them are inf/nan")
    report: dict = {
        "surrogate": surrogate.name,
        "type": surrogate.type,
        "components": surrogate.components,
        "dataset": surrogate.dataset,
        "preprocessing_method": surrogate.preprocessing_method,
        "species": list(surrogate.species),
        "physical_parameters": list(surrogate.physical_parameters),
        "elements": elements,
        "scored_split": data.split,
        "scored_tracers": data.tracer_ids.tolist(),
        "scored_note": "closed-loop accuracy on the test tracers only: no component trained on "
                       "them or chose a checkpoint or hyperparameter with them (checked against "
                       "each component's recorded train + val tracers)",
        "package_versions": runtime.package_versions(),
        "numerics": {"matmul_precision": surrogate.matmul_precision,
                     "x64": bool(jax.config.jax_enable_x64),
                     "solver": "float64 (jax.enable_x64 around the solver only)"},
        "accuracy": _quiet(accuracy_section, surrogate, data, pred, elements, matrix,
                           int(bench.n_worst_species)),
        "reconstruction_floor": reconstruction_floor(surrogate, data),
        "distance_to_training": _quiet(distance_to_training, surrogate, data, pred,
                                       int(bench.get("max_reference_tracers", 1024))),
        "trainer_check": (trainer_check(surrogate) if surrogate.ensemble_size == 1 else
                          {"available": False, "reason": "an ensemble: the trainer's validation "
                           "metrics are means over members, not the ensemble mean's"}),
    }
    uq_arrays = None
    if surrogate.ensemble_size > 1:
        report["uncertainty"], uq_arrays = _quiet(uncertainty_section, surrogate, data,
                                                  bench.n_test_tracers)
    log(f"accuracy: mean relative error {report['accuracy']['relative_error']['mean']:.4g}, "
        f"mean |dlog10| {report['accuracy']['abs_dlog10']['mean']:.3g} dex")
    report["speed"] = speed_report
    report["solver"] = (solve_same_tracks(surrogate, data, bench, log) if measure_speed else
                        solver_unavailable("speed not measured (benchmark.measure_speed=False)"))
    if report["solver"]["available"]:
        solver_rate = report["solver"]["trajectories_per_s"]
        report["speedup"] = {
            "same_tracks": report["speed"]["same_tracks"]["trajectories_per_s"] / solver_rate,
            "best_batch": report["speed"]["best"]["trajectories_per_s"] / solver_rate,
            "note": "surrogate trajectories/s over solver trajectories/s on the same tracks and "
                    "device (solver: float64, vmapped batches; both warm, compile excluded)",
        }
    else:
        report["speedup"] = None
    report["plots"] = _quiet(write_plots, out_dir, surrogate, data, pred, report, bench)
    if uq_arrays is not None:
        report["plots"].update(_quiet(write_uncertainty_plots, out_dir, report, *uq_arrays))
        if report["speed"]:
            report["uncertainty"]["throughput"] = ensemble_throughput(report["speed"],
                                                                      surrogate.ensemble_size)
    report["config"] = config_utils.to_dict(config)
    report["wall_time_s"] = time.perf_counter() - wall_start
    atomic.write_json(out_dir / "report.json", report)
    summary = format_summary(report)
    print(summary)
    print(f"report: {out_dir / 'report.json'}")
    for name, path in report["plots"].items():
        print(f"plot {name}: {path}")
    return report


def main(argv) -> None:
    from absl import app

    from astrochem_jax import cli

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.setup_logging(str(_CONFIG.value.name), "benchmark")
    run_benchmark(_CONFIG.value)


if __name__ == "__main__":
    from ml_collections import config_flags

    from astrochem_jax import cli

    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "surrogate config file or bare name, e.g. "
        "configs/surrogates/ae_emulator_grav.py", lock_config=True)
    cli.run(main, {"config": "surrogates"}, errors=(BenchmarkError,))
