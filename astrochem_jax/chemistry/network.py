"""Reaction networks: data types (this header is the contract the solver and rates build on).

A `Network` is an ordered species list (the state vector order, electrons included) and a tuple of
`Reaction`s whose `rate_type` is a key of `astrochem_jax.chemistry.rates.RATE_LAWS`:

- "two_body": Arrhenius-Kooij alpha (T/300)^beta exp(-gamma/T), cm^3 s^-1 (UMIST AD, CD, CE, DR,
  IN, MN, NN, RA, RR, REA; UCLCHEM two-body rows)
- "ion_polar_1", "ion_polar_2": KIDA ion-polar forms, cm^3 s^-1 (UCLCHEM IONOPOL1 / IONOPOL2)
- "cosmic_ray": alpha zeta, s^-1 (UMIST CP; UCLCHEM CRP)
- "cr_photon": alpha gamma/(1-omega) zeta (T/300)^beta, s^-1 (UMIST CR; UCLCHEM CRPHOT)
- "photo": alpha exp(-gamma Av) G0/1.7, s^-1 (UMIST PH; UCLCHEM PHOTON)
- "h2_photodissociation", "co_photodissociation", "c_photoionisation": photo rates with shielding
- "h2_formation": H2 formation on grains; reactants ("H", "H") -> ("H2",) but first order in atomic
  H times the total density (UCLCHEM H2FORM)

Keywords (CRP, PHOTON, ...) never appear in `reactants`; only real species do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reaction:
    """One reaction. Temperatures in K; alpha/beta/gamma as in the source file."""

    reactants: tuple[str, ...]
    products: tuple[str, ...]
    rate_type: str
    alpha: float
    beta: float
    gamma: float
    t_min_K: float = 10.0
    t_max_K: float = 41000.0
    source: str = ""  # "file:line" for error messages


@dataclass(frozen=True)
class Network:
    """An ordered species list and its reactions."""

    name: str
    species: tuple[str, ...]
    reactions: tuple[Reaction, ...]

    @property
    def n_species(self) -> int:
        return len(self.species)

    @property
    def n_reactions(self) -> int:
        return len(self.reactions)

    def index(self, name: str) -> int:
        """Position of `name` in the state vector (exact match first, then case-insensitive)."""
        try:
            return self.species.index(name)
        except ValueError:
            upper = [s.upper() for s in self.species]
            if name.upper() in upper:
                return upper.index(name.upper())
            raise KeyError(f"species {name!r} is not in network {self.name!r}") from None
