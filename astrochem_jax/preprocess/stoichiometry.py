"""Stoichiometric matrix, charge vector and element-conservation drift for a species list.

Built on `astrochem_jax.chemistry.formula` (the real parser: multi-letter elements, counts,
repeated elements, `#`/`@` ice prefixes, charges, `E-`). SURFACE/BULK are not species and must be
dropped before (they are in `columns_to_drop`); a column that does not parse is reported by name.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from astrochem_jax.chemistry.formula import FormulaError, elements_of, stoichiometry
from astrochem_jax.preprocess.errors import PreprocessError


def species_matrix(species: Sequence[str], where: str = "species list"
                   ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(elements [E], matrix float64 [S, E] of atom counts, charge float64 [S] in units of e)."""
    try:
        elements, matrix, charges = _parsed(tuple(species))
    except FormulaError as exc:
        raise PreprocessError(
            f"{where}: {exc}. Columns that are not species belong in dataset.columns_to_drop "
            "or dataset.metadata_columns"
        ) from exc
    return list(elements), matrix.copy(), charges.copy()


@functools.lru_cache(maxsize=16)
def _parsed(species: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    elements, matrix, charges = stoichiometry(list(species), elements_of(list(species)))
    return (tuple(elements),
            np.asarray(matrix, dtype=np.float64).reshape(len(species), len(elements)),
            np.asarray(charges, dtype=np.float64))


def element_totals(abundances: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """abundances [..., S] (fractions of H nuclei) @ matrix [S, E] -> element totals [..., E]."""
    return abundances @ matrix


def relative_drift(abundances: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Worst |total(t) / total(0) - 1| per element over trajectories [..., T, S] -> [E]."""
    drift = trajectory_drift(abundances, matrix)
    return drift.reshape(-1, drift.shape[-1]).max(axis=0)


def trajectory_drift(abundances: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Worst |total(t) / total(0) - 1| per trajectory and element: [..., T, S] -> [..., E]."""
    totals = element_totals(np.asarray(abundances, dtype=np.float64), matrix)
    first = totals[..., :1, :]
    reference = np.where(first > 0, first, 1.0)
    return np.abs(totals / reference - 1.0).max(axis=-2)
