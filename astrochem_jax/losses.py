"""Training loss (AstroChemNet's) and validation metrics. Pure jnp functions, float32-safe.

Inputs are scaled abundances (`astrochem_jax.scaling`: clip, log10, min-max to [0, 1]) of shape
[..., S]; every leading axis (batch, time, ...) is a "sample". With N samples and S species, and the
elementwise loss  l = 10^(power_weight * |o - t|) - 1  (computed as expm1(ln 10 * ...)):

    mean_term         = sum(l) / (N * S)
    worst_term        = (1 / N) * sum_n max_s l[n, s]          (AstroChemNet's worst-species term)
    conservation_term = mean over samples and *present* elements of
                        |log10(x_hat @ S_mat) - log10(x @ S_mat)|
    relative_term     = mean over samples and species of log(1 + |x_hat - x| / x)
    partition_term    = mean over samples and present elements of
                        sum_s S_mat[s, e] |x_hat_s - x_s| / (x @ S_mat)_e
    total = mean_term + worst_weight * worst_term + conservation_weight * conservation_term
            + relative_weight * relative_term + partition_weight * partition_term

where x = unscale(t), x_hat = unscale(o) are abundances relative to H nuclei and S_mat [S, E] is the
stoichiometric matrix. Elements whose column of S_mat is all zero (absent from the network) are
masked out; element totals are floored at `ELEMENT_TOTAL_FLOOR` before the log so that no log of
zero (and no NaN gradient) can appear. AstroChemNet uses worst_weight (its alpha) = 2.

The relative term is the log of AstroChemNet's relative error |x_hat - x| / x, the metric its
papers report: ln(x_hat / x) where x_hat > x (linear in dex, like the mean term for small
errors), ln(2 - x_hat / x) < ln 2 where x_hat < x. It is asymmetric on purpose: where the
prediction cannot know on which side of an abrupt drop the truth is (a transition whose timing
it is unsure of), the mean term's optimum is the log-midpoint, a relative error of
10^(drop / 2) - 1, while an over-prediction costs the relative error without bound and an
under-prediction at most 1. The term moves such predictions to the low side.

float32: 10^(power_weight * d) overflows float32 once power_weight * d > ~38; since |o - t| <= 1
for scaled data, keep power_weight below ~38 (AstroChemNet's values are far below).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from astrochem_jax.metrics import abs_dlog10, relative_error
from astrochem_jax.scaling import unscale_abundances

# Smallest element total (relative to H nuclei) that enters a log10; far below any real element
# abundance (every species is clipped at >= 1e-20 already) and well inside float32's normal range.
ELEMENT_TOTAL_FLOOR = 1e-30

_LN10 = math.log(10.0)


def _check_pair(pred_scaled, true_scaled, where: str):
    if pred_scaled.shape != true_scaled.shape or pred_scaled.ndim < 1:
        raise ValueError(
            f"{where}: pred_scaled and true_scaled must have the same shape [..., species]; "
            f"got {pred_scaled.shape} and {true_scaled.shape}"
        )


def unscale_in_dtype(scaled, abundance_clip, dtype=jnp.float32):
    """scaled [..., S] in [0, 1] -> abundances [..., S] computed in `dtype` (`scaling` keeps the
    input's dtype, float32 included, whether or not x64 is on)."""
    return unscale_abundances(jnp.asarray(scaled, dtype), abundance_clip).astype(dtype)


def elementwise_loss(pred_scaled, true_scaled, power_weight: float):
    """10^(power_weight * |o - t|) - 1 elementwise, shape [..., S] (>= 0, zero iff o == t)."""
    diff = jnp.abs(pred_scaled - true_scaled)
    return jnp.expm1((power_weight * _LN10) * diff)


def _log_ratio(pred_scaled, true_scaled, abundance_clip):
    """ln(x_hat / x) [..., S] from scaled abundances: ln 10 * span_dex * (o - t), exactly 0 where
    o == t (no unscale / log round trip)."""
    span_dex = math.log10(abundance_clip[1]) - math.log10(abundance_clip[0])
    return (span_dex * _LN10) * (pred_scaled - true_scaled)


def _element_matrix(stoichiometric_matrix, pred_scaled, where: str):
    """(S_mat [S, E] in pred_scaled's dtype, present [E]: elements with a non-zero column),
    checked against the species axis of pred_scaled [..., S]."""
    smat = jnp.asarray(stoichiometric_matrix, pred_scaled.dtype)
    if smat.ndim != 2 or smat.shape[0] != pred_scaled.shape[-1]:
        raise ValueError(
            f"{where}: stoichiometric_matrix must be [species={pred_scaled.shape[-1]}, "
            f"elements]; got shape {smat.shape}"
        )
    return smat, jnp.any(smat != 0, axis=0)


def _mean_over_present(values, present, pred_scaled):
    """Mean of values [..., E] (0 where masked) over samples and present elements."""
    n_samples = math.prod(pred_scaled.shape[:-1])
    n_present = jnp.maximum(jnp.sum(present), 1).astype(pred_scaled.dtype)
    return jnp.sum(values) / (n_samples * n_present)


def conservation_term(
    pred_scaled, true_scaled, stoichiometric_matrix, abundance_clip, floor=ELEMENT_TOTAL_FLOOR
):
    """Mean over samples and present elements of |log10(x_hat S) - log10(x S)|, scalar (dex).

    stoichiometric_matrix [S, E]; all-zero columns are masked out. Returns 0 if none is present.
    """
    dtype = pred_scaled.dtype
    smat, present = _element_matrix(stoichiometric_matrix, pred_scaled, "conservation_term")
    # The log-ratio of element totals is formed from x_hat - x = x * (10^(span (o - t)) - 1), which
    # is exactly 0 where o == t (two separate unscale/log evaluations may round differently under
    # jit, e.g. vectorised vs scalar lanes) and has no cancellation for small differences.
    x_true = unscale_in_dtype(true_scaled, abundance_clip, dtype)
    rel_change = jnp.expm1(_log_ratio(pred_scaled, true_scaled, abundance_clip))  # x_hat / x - 1
    # Masked columns are replaced by safe values *before* any log/division: no NaN value or grad.
    tot_true = jnp.where(present, jnp.maximum(x_true @ smat, floor), 1.0)  # [..., E]
    ratio = jnp.where(present, ((x_true * rel_change) @ smat) / tot_true, 0.0)  # x_hat S / x S - 1
    near = jnp.abs(ratio) < 0.5
    dlog_near = jnp.log1p(jnp.where(near, ratio, 0.0)) / _LN10
    # Far from the truth use the totals themselves (log1p would lose the tail as ratio -> -1).
    x_pred = unscale_in_dtype(pred_scaled, abundance_clip, dtype)
    tot_pred = jnp.where(present & ~near, jnp.maximum(x_pred @ smat, floor), 1.0)
    dlog_far = jnp.log10(tot_pred) - jnp.log10(jnp.where(near, 1.0, tot_true))
    dlog = jnp.abs(jnp.where(near, dlog_near, dlog_far))  # [..., E], 0 where masked
    return _mean_over_present(dlog, present, pred_scaled)


def partition_term(pred_scaled, true_scaled, stoichiometric_matrix, abundance_clip,
                   floor=ELEMENT_TOTAL_FLOOR):
    """Mean over samples and present elements of how much of each element's true total the
    prediction puts in the wrong species: sum_s S[s, e] |x_hat_s - x_s| / (x S)_e, scalar
    (0 exact, 2 every atom elsewhere). stoichiometric_matrix [S, E]; all-zero columns masked.

    A log-space loss weighs every species by its dex error, so a 0.06-dex error on a reservoir
    holding 70% of the carbon costs what it costs on a 1e-15 trace species; yet that reservoir's
    error decides when the minor form runs out (C when CO holds nearly all the carbon). This term
    weighs each species by the share of the element it holds, and, unlike the conservation
    term, does not let errors of opposite sign in two carriers cancel."""
    dtype = pred_scaled.dtype
    smat, present = _element_matrix(stoichiometric_matrix, pred_scaled, "partition_term")
    x_true = unscale_in_dtype(true_scaled, abundance_clip, dtype)
    # |x_hat - x| = x |10^(span (o - t)) - 1|: exactly 0 where o == t, no cancellation.
    moved = x_true * jnp.abs(jnp.expm1(_log_ratio(pred_scaled, true_scaled, abundance_clip)))
    tot_true = jnp.where(present, jnp.maximum(x_true @ smat, floor), 1.0)  # [..., E]
    share = jnp.where(present, (moved @ smat) / tot_true, 0.0)  # [..., E]
    return _mean_over_present(share, present, pred_scaled)


def log_relative_error(pred_scaled, true_scaled, abundance_clip):
    """log(1 + |x_hat - x| / x) elementwise for scaled abundances [..., S] -> [..., S] (>= 0,
    zero iff o == t), from a = ln(x_hat / x) (`_log_ratio`): a where a > 0,
    ln(2 - e^a) where a <= 0 (in [0, ln 2)). Finite with finite gradients everywhere."""
    a = _log_ratio(pred_scaled, true_scaled, abundance_clip)
    below = jnp.log(2.0 - jnp.exp(jnp.minimum(a, 0.0)))
    return jnp.where(a > 0, a, below)


def total_loss(
    pred_scaled,
    true_scaled,
    *,
    stoichiometric_matrix,
    abundance_clip,
    power_weight: float,
    worst_weight: float,
    conservation_weight: float,
    relative_weight: float = 0.0,
    partition_weight: float = 0.0,
):
    """AstroChemNet loss on scaled abundances [..., S] -> (scalar, {"mean", "worst",
    "conservation", "relative", "total"}) (unweighted terms plus the weighted total; see the
    module doc). The relative term is computed (and reported) only when `relative_weight` != 0.

    The conservation term is skipped (and reported as 0) when `conservation_weight` is the Python
    number 0, so callers without a stoichiometric matrix may pass `stoichiometric_matrix=None`.
    """
    _check_pair(pred_scaled, true_scaled, "total_loss")
    pred_scaled = jnp.asarray(pred_scaled)
    dtype = pred_scaled.dtype if jnp.issubdtype(pred_scaled.dtype, jnp.floating) else jnp.float32
    pred_scaled = pred_scaled.astype(dtype)
    true_scaled = jnp.asarray(true_scaled, dtype)
    loss = elementwise_loss(pred_scaled, true_scaled, power_weight)
    mean_term = jnp.mean(loss)
    worst_term = jnp.mean(jnp.max(loss.reshape(-1, loss.shape[-1]), axis=-1))
    if isinstance(conservation_weight, int | float) and conservation_weight == 0:
        cons = jnp.zeros((), dtype)
    else:
        if stoichiometric_matrix is None:
            raise ValueError("total_loss: conservation_weight != 0 needs a stoichiometric_matrix")
        cons = conservation_term(pred_scaled, true_scaled, stoichiometric_matrix, abundance_clip)
    total = mean_term + worst_weight * worst_term + conservation_weight * cons
    parts = {"mean": mean_term, "worst": worst_term, "conservation": cons}
    if float(relative_weight) != 0.0:
        parts["relative"] = jnp.mean(log_relative_error(pred_scaled, true_scaled,
                                                        abundance_clip))
        total = total + relative_weight * parts["relative"]
    if float(partition_weight) != 0.0:
        if stoichiometric_matrix is None:
            raise ValueError("total_loss: partition_weight != 0 needs a stoichiometric_matrix")
        parts["partition"] = partition_term(pred_scaled, true_scaled, stoichiometric_matrix,
                                            abundance_clip)
        total = total + partition_weight * parts["partition"]
    total = jnp.asarray(total, dtype)
    return total, {**parts, "total": total}


def validation_metrics(pred_scaled, true_scaled, abundance_clip) -> dict:
    """Accuracy in unscaled space for scaled abundances [..., S].

    Returns {"mean_relative_error": scalar, "mean_abs_dlog10": scalar (dex),
    "relative_error_per_species": [S], "abs_dlog10_per_species": [S], "n_samples": int}.
    Per-species values are means over all samples (leading axes); the scalars are their mean over
    species. Relative error |x - x_hat| / x uses `metrics.relative_error` (x floored at 1e-20).
    To combine batches, average the per-species vectors weighted by `n_samples`.
    """
    _check_pair(pred_scaled, true_scaled, "validation_metrics")
    x_true = unscale_in_dtype(true_scaled, abundance_clip)
    x_pred = unscale_in_dtype(pred_scaled, abundance_clip)
    n_species = x_true.shape[-1]
    rel = jnp.mean(relative_error(x_true, x_pred).reshape(-1, n_species), axis=0)
    dex = jnp.mean(abs_dlog10(x_true, x_pred).reshape(-1, n_species), axis=0)
    return {
        "mean_relative_error": jnp.mean(rel),
        "mean_abs_dlog10": jnp.mean(dex),
        "relative_error_per_species": rel,
        "abs_dlog10_per_species": dex,
        "n_samples": math.prod(x_true.shape[:-1]),
    }


LOSSES = {"astrochemnet": total_loss}
