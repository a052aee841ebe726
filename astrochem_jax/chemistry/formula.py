"""Parse species names into element counts and charge.

Handles UMIST mixed case (`HCl`, `NaCN`, `SiO`) and UCLCHEM upper case (`HCL`, `SIO`, `#CH3OH`,
`@H2O`), multi-digit counts (`HC11N`), repeated elements (`CH3OH` -> C1 H4 O1), isomer prefixes
(`l-C3H`, `c-C3H2`), charges (`+`, `++`, `-`) and electrons (`e-`, `E-`). Surface (`#`) and bulk
(`@`) prefixes are stripped: an ice molecule has the composition of its gas-phase twin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Elements that may appear in networks, in the order used for stoichiometric matrices.
KNOWN_ELEMENTS: tuple[str, ...] = (
    "H", "D", "HE", "C", "N", "O", "F", "NA", "MG", "AL", "SI", "P", "S", "CL", "AR", "CA", "TI",
    "FE",
)
_TWO_LETTER = tuple(e for e in KNOWN_ELEMENTS if len(e) == 2)
ELECTRON_NAMES = frozenset({"E-", "ELECTR"})
# Pseudo-species and process keywords that are not chemical species.
NON_SPECIES = frozenset({
    "SURFACE", "BULK", "NAN", "", "CRP", "CRPHOT", "PHOTON", "FREEZE", "DESORB",
    "DESOH2", "DESCR", "DEUVCR", "THERM", "LH", "LHDES", "ER", "ERDES", "H2FORM", "BULKSWAP",
    "SURFSWAP", "CR", "CRPHOTON",
})
_ISOMER_PREFIX = re.compile(r"^[a-z]+-(?=[A-Z])")


class FormulaError(ValueError):
    """A species name that cannot be read as a chemical formula."""


@dataclass(frozen=True)
class Composition:
    """Element counts (upper-case symbols, e.g. {"C": 1, "O": 1}) and charge in units of e."""

    elements: dict[str, int]
    charge: int


def is_electron(name: str) -> bool:
    return name.strip().upper() in ELECTRON_NAMES


def phase_of(name: str) -> str:
    """'gas', 'surface' (`#` prefix) or 'bulk' (`@` prefix)."""
    name = name.strip()
    if name.startswith("#"):
        return "surface"
    if name.startswith("@"):
        return "bulk"
    return "gas"


def parse_species(name: str) -> Composition:
    """Element counts and charge of one species name.

    Raises `FormulaError` naming the species and the unreadable part.
    """
    raw = name
    name = name.strip()
    if name.upper() in NON_SPECIES:
        raise FormulaError(f"{raw!r} is a process keyword or pseudo-species, not a species")
    if is_electron(name):
        return Composition(elements={}, charge=-1)
    body = name.lstrip("#@")
    body = _ISOMER_PREFIX.sub("", body)
    charge = 0
    while body and body[-1] in "+-":
        charge += 1 if body[-1] == "+" else -1
        body = body[:-1]
    if not body:
        raise FormulaError(f"species {raw!r} has no elements")
    mixed_case = any(c.islower() for c in body)
    elements: dict[str, int] = {}
    i = 0
    while i < len(body):
        symbol = _match_element(body, i, mixed_case)
        if symbol is None:
            raise FormulaError(
                f"species {raw!r}: cannot read an element at position {i} ({body[i:]!r}); "
                f"known elements: {', '.join(KNOWN_ELEMENTS)}"
            )
        i += len(symbol)
        j = i
        while j < len(body) and body[j].isdigit():
            j += 1
        count = int(body[i:j]) if j > i else 1
        i = j
        key = symbol.upper()
        elements[key] = elements.get(key, 0) + count
    return Composition(elements=elements, charge=charge)


def _match_element(body: str, i: int, mixed_case: bool) -> str | None:
    if mixed_case:
        # Symbols are an upper-case letter optionally followed by a lower-case one.
        if not body[i].isupper():
            return None
        if i + 1 < len(body) and body[i + 1].islower():
            symbol = body[i : i + 2]
            return symbol if symbol.upper() in KNOWN_ELEMENTS else None
        return body[i] if body[i] in KNOWN_ELEMENTS else None
    two = body[i : i + 2].upper()
    if two in _TWO_LETTER:
        return body[i : i + 2]
    one = body[i].upper()
    return body[i] if one in KNOWN_ELEMENTS else None


def elements_of(species: list[str] | tuple[str, ...]) -> list[str]:
    """Elements present in `species`, in `KNOWN_ELEMENTS` order."""
    present: set[str] = set()
    for name in species:
        if name.strip().upper() in NON_SPECIES:
            continue
        present.update(parse_species(name).elements)
    return [e for e in KNOWN_ELEMENTS if e in present]


def stoichiometry(
    species: list[str] | tuple[str, ...], elements: list[str] | None = None
) -> tuple[list[str], list[list[int]], list[int]]:
    """(elements, matrix [species][elements] of atom counts, charge [species]).

    Pseudo-species (SURFACE, BULK) get zero rows so that columns stay aligned with the data.
    """
    elements = list(elements) if elements is not None else elements_of(species)
    index = {e: k for k, e in enumerate(elements)}
    matrix: list[list[int]] = []
    charges: list[int] = []
    for name in species:
        row = [0] * len(elements)
        if name.strip().upper() in NON_SPECIES:
            matrix.append(row)
            charges.append(0)
            continue
        comp = parse_species(name)
        for element, count in comp.elements.items():
            if element not in index:
                raise FormulaError(
                    f"species {name!r} contains {element}, which is not among elements {elements}"
                )
            row[index[element]] = count
        matrix.append(row)
        charges.append(comp.charge)
    return elements, matrix, charges
