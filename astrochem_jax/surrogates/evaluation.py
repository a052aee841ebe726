"""Benchmark aggregation: pure numpy functions from (truth, prediction) arrays to report entries.

Arrays: x_true, x_pred [N, T, S] unscaled abundances (N tracers, T time steps, S species);
stoichiometric_matrix [S, E]. Steps to score are chosen by the caller (the benchmark scores the
closed-loop predictions, steps 1..T, and reports step 0 separately as part of `error_vs_step`).
Element-wise metrics come from `astrochem_jax.metrics`; this module only reduces them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from astrochem_jax import metrics

N_WORST_SPECIES = 40


def species_mean_relative_error(x_true: np.ndarray, x_pred: np.ndarray) -> np.ndarray:
    """AstroChemNet's metric per species: mean over tracers and steps of |x - x_hat| / x -> [S]."""
    err = metrics.relative_error(np.asarray(x_true, np.float64), np.asarray(x_pred, np.float64))
    return err.reshape(-1, err.shape[-1]).mean(axis=0)


def summarize_species_errors(per_species: np.ndarray, species: Sequence[str],
                             n_worst: int = N_WORST_SPECIES) -> dict:
    """per_species [S] -> {mean, std, worst_species, worst_value, worst: [{species, value}]}."""
    per_species = np.asarray(per_species, np.float64)
    if per_species.shape != (len(species),):
        raise ValueError(
            f"summarize_species_errors: per_species has shape {per_species.shape}, expected "
            f"({len(species)},) to match the species list"
        )
    order = np.argsort(per_species)[::-1]
    return {
        "mean": float(per_species.mean()),
        "std": float(per_species.std()),
        "median": float(np.median(per_species)),
        "worst_species": str(species[order[0]]),
        "worst_value": float(per_species[order[0]]),
        "worst": [{"species": str(species[i]), "value": float(per_species[i])}
                  for i in order[:n_worst]],
        "per_species": {str(s): float(v) for s, v in zip(species, per_species, strict=True)},
    }


def dlog10_summary(x_true: np.ndarray, x_pred: np.ndarray) -> dict:
    """|dlog10| (dex) over every (tracer, step, species): mean, median, p90, p99, max."""
    d = metrics.abs_dlog10(np.asarray(x_true, np.float64), np.asarray(x_pred, np.float64))
    d = d.reshape(-1)
    return {
        "mean": float(d.mean()),
        "median": float(np.median(d)),
        "p90": float(np.percentile(d, 90)),
        "p99": float(np.percentile(d, 99)),
        "max": float(d.max()),
    }


# Bands of TRUE abundance (log10, relative to H nuclei) for `dlog10_by_abundance`: at or below
# the metric's floor (1e-20, where only an over-prediction counts), trace species, and the
# species above ~1e-12 that observations detect.
ABUNDANCE_BAND_EDGES_LOG10 = (-20.0, -16.0, -12.0, -8.0, -4.0)


def _band_label(lower: float | None, upper: float | None) -> str:
    if lower is None:
        return f"<= 1e{upper:g}"
    if upper is None:
        return f">= 1e{lower:g}"
    return f"1e{lower:g} .. 1e{upper:g}"


def dlog10_by_abundance(x_true: np.ndarray, x_pred: np.ndarray,
                        edges_log10: Sequence[float] = ABUNDANCE_BAND_EDGES_LOG10) -> list[dict]:
    """|dlog10| (dex) over every (tracer, step, species) entry, grouped by the TRUE abundance.

    x_true, x_pred [..., S]; edges_log10 increasing, E edges -> E + 1 bands: (-inf, e0],
    (e0, e1], ..., (e_last, inf). The first band holds the entries whose truth is at or below
    the first edge (with the default edges: at the metric's 1e-20 floor, where the error is the
    over-prediction alone). Per band: the fraction of the entries, the mean / median / p99
    |dlog10| (None where the band is empty), and the band's share of the summed |dlog10|
    (the shares add to 1, or are 0 where every entry is exact). Where a mean over all species
    is dominated by trace species, the upper bands say how well the observable ones are read.
    """
    edges = [float(e) for e in edges_log10]
    if not edges or bool(np.any(np.diff(edges) <= 0)):
        raise ValueError(f"dlog10_by_abundance: edges_log10 must be increasing and non-empty, "
                         f"got {edges}")
    x_true = np.asarray(x_true, np.float64).reshape(-1)
    x_pred = np.asarray(x_pred, np.float64).reshape(-1)
    if x_true.shape != x_pred.shape:
        raise ValueError(f"dlog10_by_abundance: truth has {x_true.size} entries, prediction "
                         f"{x_pred.size}")
    dex = metrics.abs_dlog10(x_true, x_pred)
    with np.errstate(divide="ignore"):
        log_true = np.log10(np.maximum(x_true, 0.0))
    band = np.searchsorted(np.asarray(edges), log_true, side="left")  # 0 .. E
    total = float(dex.sum())
    bounds = [None, *edges, None]
    out = []
    for k in range(len(edges) + 1):
        d = dex[band == k]
        out.append({
            "band": _band_label(bounds[k], bounds[k + 1]),
            "lower_log10": bounds[k], "upper_log10": bounds[k + 1],
            "fraction_of_entries": float(d.size / dex.size) if dex.size else 0.0,
            "mean": float(d.mean()) if d.size else None,
            "median": float(np.median(d)) if d.size else None,
            "p99": float(np.percentile(d, 99)) if d.size else None,
            "share_of_summed_error": float(d.sum() / total) if total > 0 else 0.0,
        })
    return out


def mean_over_bands_above(bands: list[dict], lower_log10: float) -> float | None:
    """Mean |dlog10| over the entries of the `dlog10_by_abundance` bands whose lower edge is at
    or above `lower_log10` (their means weighted by their fractions); None where they are empty
    or no band starts at or above it."""
    kept = [b for b in bands if b["lower_log10"] is not None and b["lower_log10"] >= lower_log10
            and b["mean"] is not None]
    weight = sum(b["fraction_of_entries"] for b in kept)
    if weight <= 0:
        return None
    return float(sum(b["fraction_of_entries"] * b["mean"] for b in kept) / weight)


def error_vs_step(x_true: np.ndarray, x_pred: np.ndarray) -> dict:
    """Per step t: mean relative error and mean / p99 |dlog10| over tracers and species -> [T]."""
    x_true = np.asarray(x_true, np.float64)
    x_pred = np.asarray(x_pred, np.float64)
    rel = metrics.relative_error(x_true, x_pred)  # [N, T, S]
    dex = metrics.abs_dlog10(x_true, x_pred)
    return {
        "mean_relative_error": rel.mean(axis=(0, 2)).tolist(),
        "mean_abs_dlog10": dex.mean(axis=(0, 2)).tolist(),
        "p99_abs_dlog10": np.percentile(dex.transpose(1, 0, 2).reshape(dex.shape[1], -1), 99,
                                        axis=1).tolist(),
    }


def per_tracer_max_error(x_true: np.ndarray, x_pred: np.ndarray,
                         tracer_ids: Sequence[int]) -> list[dict]:
    """For each tracer: the worst step's species-mean relative error and the largest |dlog10|
    anywhere on its trajectory (with the step and species where it happens)."""
    x_true = np.asarray(x_true, np.float64)
    x_pred = np.asarray(x_pred, np.float64)
    rel = metrics.relative_error(x_true, x_pred).mean(axis=2)  # [N, T]
    dex = metrics.abs_dlog10(x_true, x_pred)  # [N, T, S]
    out = []
    for k, tracer in enumerate(tracer_ids):
        t_dex, s_dex = np.unravel_index(np.argmax(dex[k]), dex[k].shape)
        out.append({
            "tracer": int(tracer),
            "max_mean_relative_error": float(rel[k].max()),
            "step_of_max_mean_relative_error": int(np.argmax(rel[k])),
            "max_abs_dlog10": float(dex[k, t_dex, s_dex]),
            "step_of_max_abs_dlog10": int(t_dex),
            "species_index_of_max_abs_dlog10": int(s_dex),
        })
    return out


def element_conservation_summary(x_true: np.ndarray, x_pred: np.ndarray,
                                 stoichiometric_matrix: np.ndarray,
                                 elements: Sequence[str]) -> dict:
    """Relative element-total error |(x_pred - x_true) S| / (x_true S) per element:
    {element: {mean, max}} over tracers and steps, plus the truth's own drift along each
    trajectory (max over steps of |total(t) - total(0)| / total(0)) as a reference."""
    x_true = np.asarray(x_true, np.float64)
    x_pred = np.asarray(x_pred, np.float64)
    stoich = np.asarray(stoichiometric_matrix, np.float64)
    if stoich.shape != (x_true.shape[-1], len(elements)):
        raise ValueError(
            f"element_conservation_summary: stoichiometric matrix has shape {stoich.shape}, "
            f"expected ({x_true.shape[-1]} species, {len(elements)} elements)"
        )
    err = metrics.element_conservation_error(x_true, x_pred, stoich)  # [N, T, E]
    totals = metrics.element_totals(x_true, stoich)  # [N, T, E]
    t0 = totals[:, :1, :]
    drift = np.where(t0 > 1e-30, np.abs(totals - t0) / np.maximum(t0, 1e-30), 0.0)
    return {
        str(e): {
            "mean": float(err[..., j].mean()),
            "max": float(err[..., j].max()),
            "truth_drift_max": float(drift[..., j].max()),
        }
        for j, e in enumerate(elements)
    }


def nearest_tracer_distance(scored: np.ndarray, reference: np.ndarray,
                            block_elements: int = 2**24) -> np.ndarray:
    """scored [N, T, S], reference [M, T, S] (per-species coordinates: log10 abundances, or
    scaled ones) -> [N, T] in those units: for each scored row, the smallest mean over species
    of |scored - reference| among the M reference tracers at the same step (its nearest
    reference tracer at that step). Computed in blocks of about `block_elements` values."""
    scored = np.asarray(scored, np.float32)
    reference = np.asarray(reference, np.float32)
    if scored.ndim != 3 or reference.ndim != 3 or scored.shape[1:] != reference.shape[1:]:
        raise ValueError(f"nearest_tracer_distance: scored {scored.shape} and reference "
                         f"{reference.shape} must be [N, T, S] and [M, T, S] with equal T, S")
    if reference.shape[0] == 0:
        raise ValueError("nearest_tracer_distance: no reference tracer")
    per_block = max(1, block_elements // max(1, scored.shape[1] * scored.shape[2]))
    best = np.full(scored.shape[:2], np.inf, np.float32)
    for k in range(scored.shape[0]):
        for start in range(0, reference.shape[0], per_block):
            block = reference[start:start + per_block]
            d = np.abs(block - scored[k][None]).mean(axis=2)  # [m, T]
            best[k] = np.minimum(best[k], d.min(axis=0))
    return best.astype(np.float64)


# Abrupt transitions: a one-step change of at least this many dex in the truth (the C -> CO
# conversion of a collapse drops C by ~1.2 dex in one 5-kyr step), with its upper side above
# this abundance (jumps among 1e-19 traces are numerical noise, not chemistry).
TRANSITION_MIN_JUMP_DEX = 1.0
TRANSITION_MIN_ABUNDANCE = 1e-16
# Steps either side of a transition whose relative error is counted as "near" it.
TRANSITION_WINDOW_STEPS = 10


def _crossings(y: np.ndarray, level: np.ndarray, falling: np.ndarray) -> np.ndarray:
    """Fractional steps where each row of y [E, T] crosses its level [E] in its direction
    (falling [E]: from above to at-or-below; else from below to at-or-above) -> [E, T - 1]
    positions, NaN where there is no such crossing in that interval (non-finite y never
    crosses)."""
    d = y - level[:, None]
    sign = np.where(falling[:, None], 1.0, -1.0)
    d = d * sign  # every crossing becomes a fall through 0
    a, b = d[:, :-1], d[:, 1:]
    cross = (a > 0) & (b <= 0) & np.isfinite(a) & np.isfinite(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(cross, a / (a - b), np.nan)
    return np.arange(y.shape[1] - 1)[None, :] + frac


def transition_timing(x_true: np.ndarray, x_pred: np.ndarray, species: Sequence[str],
                      time_years: np.ndarray | None = None,
                      min_jump_dex: float = TRANSITION_MIN_JUMP_DEX,
                      min_abundance: float = TRANSITION_MIN_ABUNDANCE,
                      window_steps: int = TRANSITION_WINDOW_STEPS,
                      physical: np.ndarray | None = None) -> dict:
    """How early or late the prediction steps through the truth's abrupt transitions.

    x_true, x_pred [N, T, S] abundances of whole trajectories; time_years [T] (optional, for
    lags in years). A transition is a (tracer, species) whose truth changes by >= min_jump_dex
    in one step (its largest one-step change k -> k + 1 after the first step, which leaves the
    initial abundances) with the upper side >= min_abundance.
    Its level is the midpoint (log10) of that step, crossed by the truth at k + 0.5; the
    prediction's crossing of the same level in the same direction nearest to it gives the lag
    (steps, > 0: late); a prediction that never crosses it is "missed". Relative errors near
    transitions (steps k - window_steps .. k + 1 + window_steps of that tracer and species) are
    summed against all of them: the share of AstroChemNet's MRE that timing carries.
    With physical [N, T, P] (positive physical conditions, e.g. density), each transition is
    also classed by whether any condition changes (relatively, by more than 1e-6) over steps
    k - 1 .. k + 2: a transition the conditions drive, which the emulator sees coming, or one
    at constant conditions, timed by the chemistry alone (`by_conditions`).

    Returns {n_events, n_missed, lag_steps: {median, mean_abs, median_abs, p90_abs, max_abs,
    late_fraction} (None without events), lag_years (same, when time_years is given),
    relative_error_share_near_transitions, per_species: [{species, n_events, n_missed,
    median_lag_steps, median_abs_lag_steps}] (most events first), by_conditions (with
    physical: {changing, constant}: {n_events, n_missed, lag_steps}), and the criteria}.
    """
    x_true = np.asarray(x_true, np.float64)
    x_pred = np.asarray(x_pred, np.float64)
    if x_true.shape != x_pred.shape or x_true.ndim != 3 or x_true.shape[1] < 2:
        raise ValueError(f"transition_timing: truth {x_true.shape} and prediction "
                         f"{x_pred.shape} must both be [tracers, steps >= 2, species]")
    n, t, s = x_true.shape
    if len(species) != s:
        raise ValueError(f"transition_timing: {len(species)} species names for {s} species")
    if physical is not None and (np.ndim(physical) != 3 or np.shape(physical)[:2] != (n, t)):
        raise ValueError(f"transition_timing: physical has shape {np.shape(physical)}, "
                         f"expected ({n}, {t}, P)")
    if time_years is not None and np.shape(time_years) != (t,):
        raise ValueError(f"transition_timing: time_years has shape {np.shape(time_years)}, "
                         f"expected ({t},)")
    floor = metrics.RELATIVE_ERROR_FLOOR
    y = np.log10(np.maximum(x_true, floor)).transpose(0, 2, 1).reshape(n * s, t)  # [E, T]
    with np.errstate(invalid="ignore"):
        y_hat = np.log10(np.maximum(x_pred, floor)).transpose(0, 2, 1).reshape(n * s, t)
    step = np.diff(y, axis=1)  # [E, T - 1]
    # Leaving the initial abundances (step 0 -> 1) moves many species by several dex at once; it
    # is the surrogate's input, not a chemical event whose timing it has to find.
    step[:, 0] = 0.0
    k = np.argmax(np.abs(step), axis=1)
    rows = np.arange(n * s)
    jump = step[rows, k]
    upper = np.maximum(y[rows, k], y[rows, k + 1])
    event = (np.abs(jump) >= min_jump_dex) & (upper >= np.log10(min_abundance))
    ev_rows, ev_k = rows[event], k[event]
    level = 0.5 * (y[ev_rows, ev_k] + y[ev_rows, ev_k + 1])
    positions = _crossings(y_hat[ev_rows], level, jump[event] < 0)  # [V, T - 1]
    truth_at = ev_k + 0.5
    distance = np.where(np.isnan(positions), np.inf, np.abs(positions - truth_at[:, None]))
    nearest = np.argmin(distance, axis=1)  # [V] (empty without events)
    found = np.isfinite(distance[np.arange(ev_rows.size), nearest])
    lag = positions[np.arange(ev_rows.size), nearest] - truth_at

    def summary(values: np.ndarray) -> dict | None:
        if values.size == 0:
            return None
        a = np.abs(values)
        return {"median": float(np.median(values)), "mean_abs": float(a.mean()),
                "median_abs": float(np.median(a)), "p90_abs": float(np.percentile(a, 90)),
                "max_abs": float(a.max()), "late_fraction": float(np.mean(values > 0))}

    lag_found = lag[found]
    out = {"min_jump_dex": float(min_jump_dex), "min_abundance": float(min_abundance),
           "window_steps": int(window_steps), "n_events": int(ev_rows.size),
           "n_missed": int(np.sum(~found)), "lag_steps": summary(lag_found)}
    if time_years is not None:
        dt = np.diff(np.asarray(time_years, np.float64))[ev_k[found]]
        out["lag_years"] = summary(lag_found * dt)
    if physical is not None:
        log_p = np.log10(np.maximum(np.asarray(physical, np.float64), 1e-300))  # [N, T, P]
        around = np.clip(ev_k[:, None] + np.arange(-1, 3)[None, :], 0, t - 1)  # [V, 4]
        window = log_p[(ev_rows // s)[:, None], around]  # [V, 4, P]
        moved = (window.max(axis=1) - window.min(axis=1)).max(axis=-1) > 1e-6 / np.log(10)
        out["by_conditions"] = {
            name: {"n_events": int(mask.sum()), "n_missed": int(np.sum(mask & ~found)),
                   "lag_steps": summary(lag[mask & found])}
            for name, mask in (("changing", moved), ("constant", ~moved))}
    rel = metrics.relative_error(x_true, x_pred).transpose(0, 2, 1).reshape(n * s, t)
    rel = np.where(np.isfinite(rel), rel, 0.0)
    steps = np.arange(t)[None, :]
    near = ((steps >= (ev_k - window_steps)[:, None])
            & (steps <= (ev_k + 1 + window_steps)[:, None]))
    total = float(rel.sum())
    out["relative_error_share_near_transitions"] = (
        float((rel[ev_rows] * near).sum() / total) if total > 0 else None)
    species_of = ev_rows % s
    per_species = []
    for j in np.unique(species_of):
        mine = species_of == j
        got = lag[mine & found]
        per_species.append({
            "species": str(species[j]), "n_events": int(mine.sum()),
            "n_missed": int(np.sum(mine & ~found)),
            "median_lag_steps": float(np.median(got)) if got.size else None,
            "median_abs_lag_steps": float(np.median(np.abs(got))) if got.size else None})
    out["per_species"] = sorted(per_species, key=lambda e: (-e["n_events"], e["species"]))
    return out


def accuracy_report(x_true: np.ndarray, x_pred: np.ndarray, species: Sequence[str],
                    tracer_ids: Sequence[int], stoichiometric_matrix: np.ndarray | None = None,
                    elements: Sequence[str] | None = None) -> dict:
    """Everything the benchmark reports about one (truth, prediction) pair of [N, T, S] arrays."""
    if x_true.shape != x_pred.shape:
        raise ValueError(f"accuracy_report: truth {x_true.shape} and prediction {x_pred.shape} "
                         "shapes differ")
    report = {
        "n_tracers": int(x_true.shape[0]),
        "n_steps": int(x_true.shape[1]),
        "relative_error": summarize_species_errors(
            species_mean_relative_error(x_true, x_pred), species),
        "abs_dlog10": dlog10_summary(x_true, x_pred),
        "abs_dlog10_by_abundance": dlog10_by_abundance(x_true, x_pred),
    }
    if stoichiometric_matrix is not None and elements is not None:
        report["element_conservation"] = element_conservation_summary(
            x_true, x_pred, stoichiometric_matrix, elements)
    report["per_tracer"] = per_tracer_max_error(x_true, x_pred, tracer_ids)
    for entry in report["per_tracer"]:
        entry["species_of_max_abs_dlog10"] = str(species[entry["species_index_of_max_abs_dlog10"]])
    return report


# ------------------------------------------------------------------------------------------------
# Speed


def timing_summary(seconds: Sequence[float]) -> dict:
    """Repeated wall times of one call -> {median_s, min_s, mean_s, repeats}."""
    s = np.asarray(seconds, np.float64)
    return {"median_s": float(np.median(s)), "min_s": float(s.min()), "mean_s": float(s.mean()),
            "repeats": int(s.size)}


def throughput_entry(batch_size: int, seconds: Sequence[float], flops_per_trajectory: int,
                     peak_gflops: float | None) -> dict:
    """One batch size's speed: trajectories/s and GFLOP/s from the median time, fraction of the
    measured matmul peak."""
    t = timing_summary(seconds)
    traj_per_s = batch_size / t["median_s"]
    gflops = traj_per_s * flops_per_trajectory / 1e9
    return {
        "batch_size": int(batch_size),
        **t,
        "trajectories_per_s": traj_per_s,
        "achieved_gflops": gflops,
        "fraction_of_peak": (gflops / peak_gflops) if peak_gflops else None,
    }
