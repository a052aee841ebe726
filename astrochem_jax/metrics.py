"""Accuracy metrics shared by training (validation) and benchmarking. Pure array functions on
unscaled abundances (fractions of H nuclei); numpy or jax arrays.

Conventions: `x_true`, `x_pred` have shape [..., S]; reductions over leading axes are left to the
caller unless the name says otherwise.
"""

from __future__ import annotations

from astrochem_jax.scaling import _xp

# Abundances below this floor are treated as zero when computing relative errors, so that a 1e-25
# species does not dominate the mean (AstroChemNet divides by the true abundance as is; the clip
# floor of the scaling is the natural choice here).
RELATIVE_ERROR_FLOOR = 1e-20


def relative_error(x_true, x_pred, floor: float = RELATIVE_ERROR_FLOOR):
    """|x_true - x_pred| / x_true elementwise, with x_true floored at `floor`. Shape [..., S]."""
    xp = _xp(x_true)
    return xp.abs(x_true - x_pred) / xp.maximum(x_true, floor)


def abs_dlog10(x_true, x_pred, floor: float = RELATIVE_ERROR_FLOOR):
    """|log10 x_pred - log10 x_true| in dex, both floored at `floor`. Shape [..., S]."""
    xp = _xp(x_true)
    return xp.abs(xp.log10(xp.maximum(x_pred, floor)) - xp.log10(xp.maximum(x_true, floor)))


def element_totals(x, stoichiometric_matrix):
    """Total abundance of each element: x [..., S] @ S_matrix [S, E] -> [..., E]."""
    return x @ stoichiometric_matrix


def element_conservation_error(x_true, x_pred, stoichiometric_matrix, floor: float = 1e-30):
    """Relative error of element totals, |(x_pred - x_true) S| / (x_true S), shape [..., E].

    Elements absent from the data (all-zero column totals) give 0 rather than NaN.
    """
    xp = _xp(x_true)
    true_totals = element_totals(x_true, stoichiometric_matrix)
    pred_totals = element_totals(x_pred, stoichiometric_matrix)
    return xp.where(
        true_totals > floor,
        xp.abs(pred_totals - true_totals) / xp.maximum(true_totals, floor),
        0.0,
    )
