"""Initial abundances (fractions of total H nuclei) for a network, UCLCHEM-like dark-cloud start.

Default set (`DEFAULT_INITIAL_ABUNDANCES`; UCLCHEM's solar-ish defaults for a cloud that starts
molecular): H2 0.5 (all hydrogen molecular), He 0.1, C+ 1.77e-4, N 6.18e-5, O 3.34e-4,
S+ 3.51e-6, Mg+ 2.26e-6, Si+ 7.97e-7, Cl+ 3.39e-8; electrons = sum of positive charges (neutral
mixture). With `atomic_hydrogen=True`, H 1.0 replaces H2 0.5 (a diffuse, atomic start).

Species absent from the network are skipped and their elements are reported: the returned vector
then carries fewer nuclei of that element than the default set (checked with `element_totals`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from astrochem_jax.chemistry.formula import is_electron, parse_species, stoichiometry
from astrochem_jax.chemistry.network import Network

logger = logging.getLogger(__name__)

# Fractions of total H nuclei; keys are case-insensitive species names.
DEFAULT_INITIAL_ABUNDANCES: dict[str, float] = {
    "H2": 0.5,
    "HE": 0.1,
    "C+": 1.77e-4,
    "N": 6.18e-5,
    "O": 3.34e-4,
    "S+": 3.51e-6,
    "MG+": 2.26e-6,
    "SI+": 7.97e-7,
    "CL+": 3.39e-8,
}


def abundances_from_mapping(
    network: Network, values: Mapping[str, float], neutralise: bool = True
) -> np.ndarray:
    """Vector [S] (float64) from {species: fraction of H nuclei}; names matched case-insensitively.

    Entries for species not in the network are skipped with a logged warning. With `neutralise`,
    the electron abundance is set to the net positive charge (error if the network has no
    electron but the mixture is charged, or if the mixture is net negative).
    """
    x = np.zeros(network.n_species, dtype=np.float64)
    skipped = []
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"initial abundance of {name!r} must be >= 0, found {value!r}")
        try:
            x[network.index(name)] = value
        except KeyError:
            skipped.append(name)
    if skipped:
        logger.warning(
            "network %r lacks %s; their initial abundances are skipped", network.name, skipped)
    if not neutralise:
        return x
    electrons = [k for k, s in enumerate(network.species) if is_electron(s)]
    for k in electrons:
        x[k] = 0.0
    charge = float(sum(
        x[k] * parse_species(s).charge for k, s in enumerate(network.species)
        if s.upper() not in ("SURFACE", "BULK")
    ))
    if charge < 0:
        raise ValueError(f"initial mixture for {network.name!r} is net negative ({charge:.3e})")
    if charge > 0:
        if not electrons:
            raise ValueError(
                f"network {network.name!r} has no electron species but the initial mixture "
                f"carries charge {charge:.3e}"
            )
        x[electrons[0]] = charge
    return x


def default_initial_abundances(network: Network, atomic_hydrogen: bool = False) -> np.ndarray:
    """UCLCHEM-like dark-cloud initial abundances [S] (float64, fractions of H nuclei).

    See the module docstring for the set; electrons make the mixture neutral.
    """
    values = dict(DEFAULT_INITIAL_ABUNDANCES)
    if atomic_hydrogen:
        del values["H2"]
        values["H"] = 1.0
    return abundances_from_mapping(network, values)


def element_totals(network: Network, abundances: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(elements [E], totals [..., E]) = abundances [..., S] @ stoichiometric matrix [S, E].

    Total nuclei of each element per H nucleus; the H total of a valid state is 1.
    """
    elements, matrix, _ = stoichiometry(network.species)
    return elements, np.asarray(abundances, dtype=np.float64) @ np.asarray(matrix, np.float64)


def total_charge(network: Network, abundances: np.ndarray) -> np.ndarray:
    """Net charge per H nucleus [...] (0 for a neutral mixture)."""
    _, _, charges = stoichiometry(network.species)
    return np.asarray(abundances, dtype=np.float64) @ np.asarray(charges, np.float64)
