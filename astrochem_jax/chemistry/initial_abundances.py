"""Initial abundances (fractions of total H nuclei) for a network: UCLCHEM-like dark-cloud starts.

Presets (`INITIAL_ABUNDANCE_SETS`, fractions of H nuclei; hydrogen starts molecular, H2 0.5):
- "uclchem": UCLCHEM's defaults: He 0.1, C+ 1.77e-4, N 6.18e-5, O 3.34e-4, S+ 3.51e-6,
  Mg+ 2.256e-6, Si+ 7.97e-7, Cl+ 3.39e-8.
- "low_metal" (the default): the same He/C/N/O with the depleted "low-metal" S+ 8e-8, Si+ 8e-9,
  Mg+ 7e-9, Cl+ 1e-9 of Graedel, Langer & Frerking 1982 / Wakelam & Herbst 2008 (EA1).
  Why: a gas-phase-only network has no recombination on grains, so the solar S+ of "uclchem"
  keeps x(e) near 2e-6 for 1e6 yr in a dark cloud and throttles the H3+ chemistry (measured
  with the default network at n_H 1e4, 10 K, Av 10: HCO+ 1e-11 vs 4e-10 at 1e5 yr; CO formation
  slower); with low metals x(e) falls to ~2e-7 at 1e5 yr, as in standard dark-cloud models.
With `atomic_hydrogen=True`, H 1.0 replaces H2 0.5 (a diffuse, atomic start). Electrons are set
to the sum of positive charges so the mixture is neutral.

Species absent from the network are skipped (the shipped default network has no Mg, Si, Cl);
the elements they carried are logged, and `element_totals` shows what the vector really holds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from astrochem_jax.chemistry.formula import is_electron, parse_species, stoichiometry
from astrochem_jax.chemistry.network import Network

logger = logging.getLogger(__name__)

_HE_CNO = {"H2": 0.5, "HE": 0.1, "C+": 1.77e-4, "N": 6.18e-5, "O": 3.34e-4}
# {preset: {species (case-insensitive): fraction of H nuclei}}
INITIAL_ABUNDANCE_SETS: dict[str, dict[str, float]] = {
    "uclchem": {**_HE_CNO, "S+": 3.51e-6, "MG+": 2.256e-6, "SI+": 7.97e-7, "CL+": 3.39e-8},
    "low_metal": {**_HE_CNO, "S+": 8.0e-8, "MG+": 7.0e-9, "SI+": 8.0e-9, "CL+": 1.0e-9},
}
DEFAULT_PRESET = "low_metal"
DEFAULT_INITIAL_ABUNDANCES: dict[str, float] = INITIAL_ABUNDANCE_SETS[DEFAULT_PRESET]


def abundances_from_mapping(
    network: Network,
    values: Mapping[str, float],
    neutralise: bool = True,
    missing: str = "warn",
) -> np.ndarray:
    """Vector [S] (float64) from {species: fraction of H nuclei}; names matched case-insensitively.

    `missing` says what to do with entries for species not in the network: "warn" (skip, log a
    warning naming them and the elements lost), "ignore" (skip, log at info level) or "raise"
    (KeyError). With `neutralise`, the electron abundance is set to the net positive charge
    (ValueError if the network has no electron but the mixture is charged, or if the mixture is
    net negative).
    """
    if missing not in ("warn", "ignore", "raise"):
        raise ValueError(f"missing must be 'warn', 'ignore' or 'raise', found {missing!r}")
    x = np.zeros(network.n_species, dtype=np.float64)
    skipped: dict[str, float] = {}
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"initial abundance of {name!r} must be >= 0, found {value!r}")
        try:
            x[network.index(name)] = value
        except KeyError:
            if missing == "raise":
                raise KeyError(
                    f"initial abundances: species {name!r} is not in network {network.name!r}"
                ) from None
            skipped[name] = value
    if skipped:
        lost: dict[str, float] = {}
        for name, value in skipped.items():
            for element, count in parse_species(name).elements.items():
                lost[element] = lost.get(element, 0.0) + count * value
        level = logging.WARNING if missing == "warn" else logging.INFO
        logger.log(
            level, "network %r lacks %s; skipped (element abundances lost: %s)", network.name,
            sorted(skipped), {e: f"{v:.3g}" for e, v in lost.items()},
        )
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


def default_initial_abundances(
    network: Network, atomic_hydrogen: bool = False, preset: str = DEFAULT_PRESET
) -> np.ndarray:
    """Dark-cloud initial abundances [S] (float64, fractions of H nuclei) from a preset.

    See the module docstring for the sets; species the network lacks are skipped; electrons make
    the mixture neutral.
    """
    if preset not in INITIAL_ABUNDANCE_SETS:
        raise ValueError(
            f"initial abundance preset: expected one of {sorted(INITIAL_ABUNDANCE_SETS)}, "
            f"found {preset!r}"
        )
    values = dict(INITIAL_ABUNDANCE_SETS[preset])
    if atomic_hydrogen:
        del values["H2"]
        values["H"] = 1.0
    return abundances_from_mapping(network, values, missing="ignore")


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
