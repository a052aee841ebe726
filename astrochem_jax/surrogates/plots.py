"""Benchmark figures (matplotlib, Agg backend; each written atomically as PNG).

Inputs are plain arrays / report entries, so every figure can be redrawn from `report.json` plus
the arrays the benchmark holds in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from astrochem_jax.atomic import atomic_path

# Species drawn in the example-trajectory figure (matched case-insensitively), plus the worst one.
EXAMPLE_SPECIES = ("CO", "H2O", "HCO+", "N2H+", "e-")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def match_species(wanted: Sequence[str], species: Sequence[str]) -> list[int]:
    """Indices in `species` of the `wanted` names, matched case-insensitively (E- == e-);
    names not present are skipped, duplicates dropped, order of `wanted` kept."""
    upper = [s.upper() for s in species]
    out: list[int] = []
    for name in wanted:
        if name.upper() in upper:
            i = upper.index(name.upper())
            if i not in out:
                out.append(i)
    return out


def plot_error_vs_step(path: Path, time_years: np.ndarray, error_vs_step: dict,
                       floor_relative_error: float | None = None) -> Path:
    """Mean relative error and mean |dlog10| against time along the closed-loop rollout."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    t = np.asarray(time_years, np.float64)
    ax1.plot(t, error_vs_step["mean_relative_error"], label="surrogate (closed loop)")
    if floor_relative_error is not None:
        ax1.axhline(floor_relative_error, color="gray", ls="--", label="autoencoder floor")
    ax1.set_yscale("log")
    ax1.set_xlabel("time [yr]")
    ax1.set_ylabel("mean relative error")
    ax1.legend()
    ax2.plot(t, error_vs_step["mean_abs_dlog10"], label="mean")
    ax2.plot(t, error_vs_step["p99_abs_dlog10"], label="99th percentile")
    ax2.set_xlabel("time [yr]")
    ax2.set_ylabel("|dlog10| [dex]")
    ax2.legend()
    fig.suptitle("error along the trajectory (validation tracers)")
    return _save(fig, path)


def plot_worst_species(path: Path, worst: Sequence[dict]) -> Path:
    """Horizontal bars of the worst species' mean relative error (report `worst` entries)."""
    plt = _pyplot()
    names = [w["species"] for w in worst][::-1]
    values = [w["value"] for w in worst][::-1]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.22 * len(names) + 1)))
    ax.barh(names, values, color="tab:red")
    ax.set_xscale("log")
    ax.set_xlabel("mean relative error")
    ax.set_title(f"worst {len(names)} species")
    return _save(fig, path)


def plot_example_trajectories(path: Path, time_years: np.ndarray, x_true: np.ndarray,
                              x_pred: np.ndarray, species: Sequence[str],
                              species_indices: Sequence[int], title: str) -> Path:
    """True (solid) vs surrogate (dashed) abundances of the chosen species for one tracer.

    x_true, x_pred [T, S]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    t = np.asarray(time_years, np.float64)
    for k, i in enumerate(species_indices):
        color = f"C{k % 10}"
        ax.plot(t, np.maximum(x_true[:, i], 1e-30), color=color, label=species[i])
        ax.plot(t, np.maximum(x_pred[:, i], 1e-30), color=color, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("time [yr]")
    ax.set_ylabel("abundance relative to H nuclei")
    ax.set_title(title + "  (solid: truth, dashed: surrogate)")
    ax.legend(ncol=2, fontsize=8)
    return _save(fig, path)


def plot_throughput(path: Path, throughput: Sequence[dict], solver_traj_per_s: float | None,
                    device_kind: str) -> Path:
    """Trajectories/s against batch size (log-log), with the solver's rate for reference."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    b = [e["batch_size"] for e in throughput]
    ax.plot(b, [e["trajectories_per_s"] for e in throughput], "o-", label="surrogate")
    if solver_traj_per_s:
        ax.axhline(solver_traj_per_s, color="gray", ls="--", label="solver")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size [trajectories]")
    ax.set_ylabel("trajectories / s")
    ax.set_title(f"throughput on {device_kind}")
    ax.legend()
    return _save(fig, path)


def plot_reliability(path: Path, reliability: Sequence[dict],
                     calibrated: Sequence[dict] | None = None, scale: float | None = None) -> Path:
    """Ensemble calibration: nominal probability vs observed fraction of errors within the
    corresponding number of spreads (the diagonal is a calibrated Gaussian spread); with
    `calibrated`, the same for the spread x `scale` (fitted on validation tracers)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    nominal = [r["nominal"] for r in reliability]
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="calibrated")
    ax.plot(nominal, [r["observed"] for r in reliability], "o-", label="ensemble spread")
    if calibrated is not None:
        ax.plot([r["nominal"] for r in calibrated], [r["observed"] for r in calibrated], "s-",
                label=f"spread x {scale:.3g} (fit on val)")
    ax.set_xlabel("nominal probability (Gaussian, |error| <= z spread)")
    ax.set_ylabel("observed fraction")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_error_vs_spread(path: Path, error_dex: np.ndarray, spread_dex: np.ndarray,
                         max_points: int = 20000, seed: int = 0) -> Path:
    """Scatter of |error| against the ensemble spread (dex, log axes; a random subsample)."""
    plt = _pyplot()
    error, spread = np.ravel(error_dex), np.ravel(spread_dex)
    if error.size > max_points:
        keep = np.random.default_rng(seed).choice(error.size, max_points, replace=False)
        error, spread = error[keep], spread[keep]
    floor = 1e-4
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(np.maximum(spread, floor), np.maximum(error, floor), s=2, alpha=0.25)
    top = max(float(np.max(np.maximum(spread, floor))), float(np.max(np.maximum(error, floor))))
    line = np.array([floor, top])
    ax.plot(line, line, color="k", lw=1, label="error = spread")
    ax.plot(line, 2 * line, color="0.5", lw=1, ls="--", label="error = 2 spread")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ensemble spread (dex)")
    ax.set_ylabel("|log10 mean - log10 truth| (dex)")
    ax.legend(loc="lower right")
    return _save(fig, path)
