"""Uncertainty of ensemble surrogates: how well the members' spread predicts the actual error.
Pure numpy / scipy functions of (truth, ensemble mean, spread, members) arrays.

Arrays: x_true, x_mean [N, T, S] abundances (N tracers, T scored steps, S species), spread
[N, T, S] the std over members of log10 abundance (dex), members [M, N, T, S]. The error of an
entry is |log10 x_mean - log10 x_true| (dex, both floored at `metrics.RELATIVE_ERROR_FLOOR`).

- Rank calibration: Spearman correlation of spread and error over every entry, over
  species-steps (each (step, species) cell averaged over tracers) and over tracers (each tracer
  averaged over steps and species): does a larger spread mean a larger error?
- Coverage: the fraction of entries whose error is within 1 and 2 spreads (a Gaussian error of
  that std: 68.3% and 95.4%).
- Reliability: for nominal probabilities p, the fraction of errors within z_p spreads, z_p the
  two-sided Gaussian quantile (sqrt(2) erfinv(p)); a calibrated spread lies on the diagonal.
- Recalibration: members that share training data, an autoencoder and a decoder's floor agree
  with each other more than with the truth, so the raw spread is too small. One factor c, fitted
  on the VALIDATION tracers so that 95.45% of their errors lie within 2 c spreads, rescales the
  spread; the test tracers then measure whether it holds (`calibration_report`).
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from astrochem_jax import metrics

RELIABILITY_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
GAUSSIAN_COVERAGE = {"1_sigma": 0.6826894921370859, "2_sigma": 0.9544997361036416}


def abs_error_dex(x_true: np.ndarray, x_pred: np.ndarray) -> np.ndarray:
    return np.asarray(metrics.abs_dlog10(np.asarray(x_true, np.float64),
                                         np.asarray(x_pred, np.float64)))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation of two equal-size arrays (None when either is constant)."""
    a, b = np.ravel(a), np.ravel(b)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)


def coverage(error: np.ndarray, spread: np.ndarray, k: float) -> float:
    """Fraction of entries with error <= k x spread."""
    return float(np.mean(np.ravel(error) <= k * np.ravel(spread)))


def reliability(error: np.ndarray, spread: np.ndarray,
                levels=RELIABILITY_LEVELS) -> list[dict]:
    """[{nominal p, z (spreads), observed fraction of errors within z spreads}]."""
    out = []
    for p in levels:
        z = float(np.sqrt(2.0) * special.erfinv(p))
        out.append({"nominal": float(p), "z": z, "observed": coverage(error, spread, z)})
    return out


SPREAD_FLOOR_DEX = 1e-6  # a zero spread (members that agree exactly) divides as this


def spread_scale(error: np.ndarray, spread: np.ndarray, k: float = 2.0,
                 target: float = GAUSSIAN_COVERAGE["2_sigma"]) -> float:
    """The factor c with a fraction `target` of entries inside |error| <= k c spread: the
    `target` quantile of error / (k spread). error, spread: same shape, dex."""
    error, spread = np.ravel(error), np.maximum(np.ravel(spread), SPREAD_FLOOR_DEX)
    if error.shape != spread.shape or error.size == 0:
        raise ValueError(f"spread_scale: error {error.shape} and spread {spread.shape} must be "
                         "non-empty and of one shape")
    return float(np.quantile(error / spread, target) / k)


def calibration_report(error_fit: np.ndarray, spread_fit: np.ndarray, error: np.ndarray,
                       spread: np.ndarray, fitted_on: str = "val") -> dict:
    """Fit c on (error_fit, spread_fit) (validation tracers), report coverage and reliability of
    c x spread on (error, spread) (test tracers); every array in dex."""
    c = spread_scale(error_fit, spread_fit)
    return {
        "spread_scale": c,
        "fitted_on": fitted_on,
        "fit_coverage": {"1_sigma": coverage(error_fit, c * spread_fit, 1.0),
                         "2_sigma": coverage(error_fit, c * spread_fit, 2.0)},
        "coverage": {"1_sigma": coverage(error, c * spread, 1.0),
                     "2_sigma": coverage(error, c * spread, 2.0)},
        "reliability": reliability(error, c * spread),
        "what": f"spread x spread_scale, the factor fitted on the {fitted_on} tracers so that "
                "95.45% of their errors lie within 2 spreads; coverage and reliability on the "
                "scored (test) tracers. `surrogate.calibrated(spread_scale)` applies it.",
    }


def member_accuracy(x_true: np.ndarray, members: np.ndarray) -> list[dict]:
    """Per member: mean |dlog10| (dex) and mean relative error over every entry."""
    out = []
    for k, x_m in enumerate(members):
        out.append({"member": k,
                    "mean_abs_dlog10": float(np.mean(abs_error_dex(x_true, x_m))),
                    "mean_relative_error": float(np.mean(metrics.relative_error(
                        np.asarray(x_true, np.float64), np.asarray(x_m, np.float64))))})
    return out


def uncertainty_report(x_true: np.ndarray, x_mean: np.ndarray, spread: np.ndarray,
                       members: np.ndarray, member_ids=None) -> dict:
    """The benchmark's `uncertainty` section (arrays as in the module doc)."""
    if not (x_true.shape == x_mean.shape == spread.shape == members.shape[1:]):
        raise ValueError(f"uncertainty_report: shapes differ: truth {x_true.shape}, mean "
                         f"{x_mean.shape}, spread {spread.shape}, members {members.shape}")
    error = abs_error_dex(x_true, x_mean)
    spread = np.asarray(spread, np.float64)
    per_member = member_accuracy(x_true, members)
    if member_ids is not None:
        for entry, k in zip(per_member, member_ids, strict=True):
            entry["member"] = int(k)
    dex = np.array([m["mean_abs_dlog10"] for m in per_member])
    rel = np.array([m["mean_relative_error"] for m in per_member])
    return {
        "n_members": int(members.shape[0]),
        "ensemble_mean": {"mean_abs_dlog10": float(np.mean(error)),
                          "mean_relative_error": float(np.mean(metrics.relative_error(
                              np.asarray(x_true, np.float64), np.asarray(x_mean, np.float64))))},
        "members": per_member,
        "member_summary": {
            "mean_abs_dlog10": {"best": float(dex.min()), "median": float(np.median(dex)),
                                "worst": float(dex.max())},
            "mean_relative_error": {"best": float(rel.min()), "median": float(np.median(rel)),
                                    "worst": float(rel.max())},
        },
        "spread_dex": {"mean": float(np.mean(spread)), "median": float(np.median(spread)),
                       "p99": float(np.percentile(spread, 99))},
        "spearman": {
            "entries": spearman(spread, error),
            "species_steps": spearman(spread.mean(axis=0), error.mean(axis=0)),
            "tracers": spearman(spread.mean(axis=(1, 2)), error.mean(axis=(1, 2))),
        },
        "coverage": {"1_sigma": coverage(error, spread, 1.0),
                     "2_sigma": coverage(error, spread, 2.0),
                     "gaussian": dict(GAUSSIAN_COVERAGE)},
        "reliability": reliability(error, spread),
        "what": "error = |log10 mean - log10 truth| (dex) on the scored test entries; spread = "
                "std over members of log10 abundance (dex); species_steps: means over tracers "
                "per (step, species); tracers: means per tracer",
    }
