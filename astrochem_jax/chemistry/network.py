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

Beyond that vocabulary, UCLCHEM grain processes are kept with rate_type "grain:<KEYWORD>" (e.g.
"grain:FREEZE", "grain:LH", "grain:THERM"); no rate law exists for them and `gas_phase_subset`
drops them.

Readers (all return a validated `Network`; see `validate_network` for the checks):
- `read_umist_rates(path)` / `parse_umist_text(text, name, source_label)`: UMIST RATE22 `.rates`.
  Extension type code `H2FORM` (ours; UMIST has no grain chemistry) -> "h2_formation".
- `read_uclchem_network(reactions_csv, species_csv)`: UCLCHEM `reactions.csv` + `species.csv`.
  Its `extrapolate` and `reduced_mass` columns are not kept.
- `gas_phase_subset(network)`, `select_reactions(source, species, name)` (UCLCHEM MakeRates),
  `read_species_list(csv_path)`, `load_default_network()`, `default_network_text()`.
- `format_umist_text(network)`: write any gas-phase network back as RATE22 text.

Temperature ranges: a reaction may come as several rows (same reactants, products, rate_type).
Disjoint ranges are alternatives (pick the row whose range holds T); overlapping ranges, found
in both RATE22 (H + CH2 -> CH + H2, C + S -> CS) and UCLCHEM, are additive terms of one fit.

Species order (the state vector order):
- UMIST files: by nominal mass (integer mass numbers, `species_mass_amu`), then neutral before
  cation before anion, then first appearance in the file; the electron `e-` is always last.
- UCLCHEM: the order of `species.csv` (UCLCHEM's own order), restricted to species that occur.
- `select_reactions`: the order of the requested list; names take the *source network's* spelling
  (e.g. UMIST `Si` for a list entry `SI`); the electron is appended last when reactions need it.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from astrochem_jax.chemistry.formula import (
    NON_SPECIES,
    FormulaError,
    is_electron,
    parse_species,
    phase_of,
)

logger = logging.getLogger(__name__)


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


class NetworkError(ValueError):
    """A network file or object that breaks a rule; the message names file:line and the values."""


# ------------------------------------------------------------------------------------------------
# Vocabulary

# rate_type values with a rate law (keys of rates.RATE_LAWS); "grain:<KW>" is accepted in addition.
RATE_TYPES: frozenset[str] = frozenset({
    "two_body", "ion_polar_1", "ion_polar_2", "cosmic_ray", "cr_photon", "photo",
    "h2_photodissociation", "co_photodissociation", "c_photoionisation", "h2_formation",
})
GRAIN_PREFIX = "grain:"

UMIST_TWO_BODY_TYPES = ("AD", "CD", "CE", "DR", "IN", "MN", "NN", "RA", "RR", "REA")
# UMIST type code -> (rate_type, keyword expected in the R2 column or None).
UMIST_TYPES: dict[str, tuple[str, str | None]] = {
    **{code: ("two_body", None) for code in UMIST_TWO_BODY_TYPES},
    "CP": ("cosmic_ray", "CRP"),
    "CR": ("cr_photon", "CRPHOT"),
    "PH": ("photo", "PHOTON"),
    "H2FORM": ("h2_formation", None),  # our extension: H + H -> H2 on grains
}
# Process keywords with a gas-phase rate law (UMIST R2 column; UCLCHEM reactant columns).
PROCESS_KEYWORDS: dict[str, str] = {
    "CRP": "cosmic_ray",
    "CRPHOT": "cr_photon",
    "PHOTON": "photo",
    "H2FORM": "h2_formation",
    "IONOPOL1": "ion_polar_1",
    "IONOPOL2": "ion_polar_2",
}
# UCLCHEM grain-only processes (kept as "grain:<KW>" so that gas_phase_subset drops them).
GRAIN_KEYWORDS: frozenset[str] = frozenset({
    "FREEZE", "DESORB", "DESOH2", "DESCR", "DEUVCR", "THERM", "LH", "LHDES", "ER", "ERDES",
    "BULKSWAP", "SURFSWAP", "CHEMDES",
})
PSEUDO_SPECIES: frozenset[str] = frozenset({"SURFACE", "BULK"})
_EMPTY = frozenset({"", "NAN"})
# Photoreactions whose rates include shielding, keyed by (reactant, sorted products), upper case.
_SPECIAL_PHOTO: dict[tuple[str, tuple[str, ...]], str] = {
    ("H2", ("H", "H")): "h2_photodissociation",
    ("CO", ("C", "O")): "co_photodissociation",
    ("C", ("C+", "E-")): "c_photoionisation",
}
_ELECTRON = "e-"

# Nominal (integer) atomic masses in amu, used for the species order only.
ATOMIC_MASS_AMU: dict[str, int] = {
    "H": 1, "D": 2, "HE": 4, "C": 12, "N": 14, "O": 16, "F": 19, "NA": 23, "MG": 24, "AL": 27,
    "SI": 28, "P": 31, "S": 32, "CL": 35, "AR": 40, "CA": 40, "TI": 48, "FE": 56,
}


@functools.cache
def _composition(name: str):
    return parse_species(name)


def species_mass_amu(name: str) -> int:
    """Nominal mass of one species in amu (0 for the electron)."""
    comp = _composition(name)
    return sum(ATOMIC_MASS_AMU[e] * n for e, n in comp.elements.items())


def _is_keyword(token: str) -> bool:
    t = token.upper()
    return t in PROCESS_KEYWORDS or t in GRAIN_KEYWORDS or (t in NON_SPECIES and t not in _EMPTY)


def is_gas_phase_type(rate_type: str) -> bool:
    """True for rate types with a gas-phase rate law (everything but "grain:*")."""
    return not rate_type.startswith(GRAIN_PREFIX)


def photo_rate_type(reactant: str, products: Sequence[str]) -> str:
    """Rate type of a photoreaction: shielded special cases H2 -> H + H, CO -> C + O,
    C -> C+ + e-, otherwise "photo"."""
    key = (reactant.upper(), tuple(sorted(p.upper() for p in products)))
    return _SPECIAL_PHOTO.get(key, "photo")


# ------------------------------------------------------------------------------------------------
# Validation


def reaction_imbalance(reaction: Reaction) -> str | None:
    """None if elements and charge balance, else a short description of the mismatch.

    Grain processes ("grain:*") are exempt for charge and hydrogen: UCLCHEM's freeze-out gives an
    ion's charge to the grain and hydrogenates some species on the way (C2N -> #CH3CNH).
    """
    left: dict[str, int] = {}
    right: dict[str, int] = {}
    charge = [0, 0]
    for side, names, k in ((left, reaction.reactants, 0), (right, reaction.products, 1)):
        for name in names:
            if name.upper() in PSEUDO_SPECIES:
                continue
            comp = _composition(name)
            charge[k] += comp.charge
            for element, count in comp.elements.items():
                side[element] = side.get(element, 0) + count
    problems = []
    gas = is_gas_phase_type(reaction.rate_type)
    for element in sorted(set(left) | set(right)):
        if element == "H" and not gas:
            continue
        if left.get(element, 0) != right.get(element, 0):
            problems.append(f"{element}: {left.get(element, 0)} -> {right.get(element, 0)}")
    if charge[0] != charge[1] and gas:
        problems.append(f"charge: {charge[0]:+d} -> {charge[1]:+d}")
    return "; ".join(problems) if problems else None


def format_reaction(reaction: Reaction) -> str:
    """`A + B -> C + D [rate_type] (source)` for messages."""
    text = f"{' + '.join(reaction.reactants)} -> {' + '.join(reaction.products) or '(nothing)'}"
    return f"{text} [{reaction.rate_type}] ({reaction.source or 'no source'})"


def _structural_problems(network: Network) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    for name in network.species:
        key = name.upper()
        if key in seen:
            problems.append(f"duplicate species {name!r} (also listed as {seen[key]!r})")
        seen[key] = name
        if _is_keyword(name) and name.upper() not in PSEUDO_SPECIES:
            problems.append(f"species list contains the process keyword {name!r}")
    species = set(network.species)
    for r in network.reactions:
        where = format_reaction(r)
        if not r.reactants:
            problems.append(f"empty reactant list: {where}")
        if r.rate_type not in RATE_TYPES and not r.rate_type.startswith(GRAIN_PREFIX):
            problems.append(
                f"unknown rate_type {r.rate_type!r} (expected one of {sorted(RATE_TYPES)} or "
                f"'grain:<KEYWORD>'): {where}"
            )
        if r.alpha < 0:
            problems.append(f"alpha must be >= 0 for {r.rate_type}, found {r.alpha!r}: {where}")
        if r.t_min_K > r.t_max_K:
            problems.append(f"t_min_K {r.t_min_K} > t_max_K {r.t_max_K}: {where}")
        for name in (*r.reactants, *r.products):
            if _is_keyword(name) and name.upper() not in PSEUDO_SPECIES:
                problems.append(f"process keyword {name!r} used as a species: {where}")
            elif name not in species:
                problems.append(f"species {name!r} is not in the species list: {where}")
    return problems


def _raise_if(problems: list[str], header: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise NetworkError(f"{header}: {len(problems)} problem(s):\n  {shown}{more}")


def validate_network(network: Network, on_unbalanced: str = "raise") -> Network:
    """Check a network; return it (minus unbalanced reactions when `on_unbalanced="drop"`).

    Always raises `NetworkError` for: duplicate species (case-insensitive), keywords used as
    species, species missing from the species list, empty reactant lists, unknown rate types,
    alpha < 0, t_min_K > t_max_K. Gas-phase reactions with alpha == 0 never proceed; they are
    dropped with a logged warning (UMIST RATE22 has two such lines).
    Element and charge balance of every reaction: `on_unbalanced` = "raise" (NetworkError listing
    each bad reaction with its source line), "drop" (log a warning and remove them) or "warn"
    (log a warning and keep them).
    """
    if on_unbalanced not in ("raise", "drop", "warn"):
        raise ValueError(
            f"on_unbalanced must be 'raise', 'drop' or 'warn', found {on_unbalanced!r}")
    network = _drop_inert(network)
    try:
        _raise_if(_structural_problems(network), f"network {network.name!r}")
        bad = [(r, reaction_imbalance(r)) for r in network.reactions]
    except FormulaError as err:
        raise NetworkError(f"network {network.name!r}: {err}") from err
    bad = [(r, why) for r, why in bad if why is not None]
    if not bad:
        return network
    lines = [f"{format_reaction(r)}: {why}" for r, why in bad]
    if on_unbalanced == "raise":
        _raise_if(lines, f"network {network.name!r} has unbalanced reactions")
    logger.warning(
        "network %r: %d unbalanced reaction(s) %s:\n  %s", network.name, len(bad),
        "dropped" if on_unbalanced == "drop" else "kept", "\n  ".join(lines),
    )
    if on_unbalanced == "warn":
        return network
    drop = {id(r) for r, _ in bad}
    return _prune_species(replace(network, reactions=tuple(
        r for r in network.reactions if id(r) not in drop)))


def _drop_inert(network: Network) -> Network:
    def is_inert(r: Reaction) -> bool:
        return r.alpha == 0 and is_gas_phase_type(r.rate_type)

    inert = [r for r in network.reactions if is_inert(r)]
    if not inert:
        return network
    logger.warning(
        "network %r: %d reaction(s) with alpha = 0 dropped:\n  %s", network.name, len(inert),
        "\n  ".join(format_reaction(r) for r in inert),
    )
    keep = tuple(r for r in network.reactions if not is_inert(r))
    return _prune_species(replace(network, reactions=keep))


def _used_species(reactions: Iterable[Reaction]) -> set[str]:
    return {name for r in reactions for name in (*r.reactants, *r.products)}


def _prune_species(network: Network) -> Network:
    used = _used_species(network.reactions)
    return replace(network, species=tuple(s for s in network.species if s in used))


# ------------------------------------------------------------------------------------------------
# UMIST RATE22


def _ordered_species(first_seen: Sequence[str]) -> tuple[str, ...]:
    """Species by nominal mass, then neutral before cation before anion, then first appearance;
    electrons last."""
    order = {name: k for k, name in enumerate(first_seen)}
    heavy = [s for s in first_seen if not is_electron(s)]

    def key(s: str) -> tuple[int, int, int, int]:
        charge = _composition(s).charge
        return species_mass_amu(s), abs(charge), -charge, order[s]

    heavy.sort(key=key)
    return tuple(heavy) + tuple(s for s in first_seen if is_electron(s))


def _float(value: str, where: str, field: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise NetworkError(f"{where}: field {field} must be a number, found {value!r}") from None


def _umist_line(fields: list[str], where: str) -> list[Reaction]:
    if len(fields) < 14:
        raise NetworkError(
            f"{where}: expected at least 14 ':'-separated fields "
            f"(id:type:R1:R2:P1:P2:P3:P4:NE:alpha:beta:gamma:Tlow:Thigh), found {len(fields)}"
        )
    code = fields[1].strip().upper()
    if code not in UMIST_TYPES:
        raise NetworkError(
            f"{where}: field type: expected one of {sorted(UMIST_TYPES)}, found {fields[1]!r}"
        )
    rate_type, keyword = UMIST_TYPES[code]
    reactants = [f.strip() for f in fields[2:4] if f.strip()]
    products = tuple(f.strip() for f in fields[4:8] if f.strip() and f.strip() != "PHOTON")
    if keyword is not None:
        if len(reactants) != 2 or reactants[1].upper() != keyword:
            raise NetworkError(
                f"{where}: type {code} expects R2 = {keyword}, found {fields[3].strip()!r}"
            )
        reactants = reactants[:1]
    if rate_type == "photo" and len(reactants) == 1:
        rate_type = photo_rate_type(reactants[0], products)
    for name in (*reactants, *products):
        if _is_keyword(name):
            raise NetworkError(f"{where}: keyword {name!r} in a species column (type {code})")
    try:
        n_ranges = int(fields[8])
    except ValueError:
        raise NetworkError(f"{where}: field NE must be an integer, found {fields[8]!r}") from None
    out = []
    for k in range(max(n_ranges, 1)):
        start = 9 + 9 * k
        block = fields[start : start + 5]
        if len(block) < 5:
            raise NetworkError(
                f"{where}: NE = {n_ranges} but temperature range {k + 1} is incomplete "
                f"(fields {start + 1}-{start + 5} of {len(fields)})"
            )
        alpha, beta, gamma, t_lo, t_hi = (
            _float(v, where, f"{f}[{k + 1}]")
            for v, f in zip(block, ("alpha", "beta", "gamma", "Tlow", "Thigh"), strict=True)
        )
        reaction = Reaction(tuple(reactants), products, rate_type, alpha, beta, gamma,
                            t_lo, t_hi, where)
        # RATE22 sometimes repeats one fit within a line (two references, "single fit across
        # both data sets"); summing overlapping rows is right for distinct terms, so keep one.
        if reaction not in out:
            out.append(reaction)
    return out


def parse_umist_text(
    text: str, name: str = "umist", source_label: str = "<text>", on_unbalanced: str = "raise"
) -> Network:
    """Parse UMIST RATE22 colon-separated text into a validated `Network`.

    Lines: `id:type:R1:R2:P1:P2:P3:P4:NE:` then NE blocks
    `alpha:beta:gamma:Tlow:Thigh:clem:accuracy:ref:refname` (references may be quoted and contain
    ':'). `#` lines and blank lines are comments. Each temperature range becomes its own Reaction
    with `source="<source_label>:<line>"` (a block repeating an earlier block of the same line
    exactly is skipped). Rows of one reaction whose ranges overlap (on different lines) are
    additive terms of one fit (e.g. H + CH2 -> CH + H2 in RATE22): rate code should sum the rows
    whose range contains T. `PHOTON` in a product column (radiative association)
    is dropped; CRP / CRPHOT / PHOTON in R2 select the rate type and are not species.
    Type `H2FORM` (our extension): `n:H2FORM:H:H:H2:::::1:alpha:0:0:Tlow:Thigh` -> "h2_formation".
    """
    reactions: list[Reaction] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = next(csv.reader([stripped], delimiter=":", quotechar='"'))
        reactions.extend(_umist_line(fields, f"{source_label}:{lineno}"))
    if not reactions:
        raise NetworkError(f"{source_label}: no reactions found")
    first_seen: dict[str, None] = {}
    for r in reactions:
        for s in (*r.reactants, *r.products):
            first_seen.setdefault(s, None)
    try:
        species = _ordered_species(list(first_seen))
    except FormulaError as err:
        raise NetworkError(f"{source_label}: {err}") from err
    return validate_network(Network(name, species, tuple(reactions)), on_unbalanced)


def read_umist_rates(
    path: str | Path, name: str | None = None, on_unbalanced: str = "raise"
) -> Network:
    """Read a UMIST RATE22 `.rates` file (see `parse_umist_text`); name defaults to the stem."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    return parse_umist_text(text, name or path.stem, path.name, on_unbalanced)


# rate_type -> (UMIST type code, R2 keyword or None) for writing; two_body codes are chosen below.
_UMIST_CODE_FOR: dict[str, tuple[str, str | None]] = {
    "cosmic_ray": ("CP", "CRP"),
    "cr_photon": ("CR", "CRPHOT"),
    "photo": ("PH", "PHOTON"),
    "h2_photodissociation": ("PH", "PHOTON"),
    "co_photodissociation": ("PH", "PHOTON"),
    "c_photoionisation": ("PH", "PHOTON"),
    "h2_formation": ("H2FORM", None),
}


def _two_body_code(r: Reaction) -> str:
    if any(is_electron(s) for s in r.reactants):
        return "DR" if len(r.products) > 1 else "RR"
    if any(_composition(s).charge for s in r.reactants):
        return "IN"
    return "NN"


def format_umist_text(network: Network, header: str = "") -> str:
    """The network as UMIST RATE22 text that `parse_umist_text` reads back to the same reactions.

    One line per Reaction (NE = 1), numbered from 1; two-body code DR/RR/IN/NN from the
    reactants (all read back as "two_body"); `source` goes to the reference field. `header` lines
    are written as `#` comments. Raises `NetworkError` for what RATE22 cannot hold: grain
    processes, ion-polar rows, more than 2 reactants (3 for none) or 4 products.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for n, r in enumerate(network.reactions, start=1):
        where = format_reaction(r)
        if r.rate_type == "two_body":
            code, keyword = _two_body_code(r), None
        elif r.rate_type in _UMIST_CODE_FOR:
            code, keyword = _UMIST_CODE_FOR[r.rate_type]
        else:
            raise NetworkError(f"rate_type {r.rate_type!r} has no UMIST RATE22 form: {where}")
        reactants = [*r.reactants, keyword] if keyword else list(r.reactants)
        if len(reactants) != 2 or len(r.products) > 4:
            raise NetworkError(
                f"UMIST RATE22 holds 2 reactant columns and 4 products; found {len(reactants)} "
                f"and {len(r.products)}: {where}"
            )
        products = [*r.products, *[""] * (4 - len(r.products))]
        numbers = [f"{v!r}" for v in (r.alpha, r.beta, r.gamma, r.t_min_K, r.t_max_K)]
        source = r.source.replace('"', "'")
        lines.append(":".join(
            [str(n), code, *reactants, *products, "1", *numbers, "", "", '""', f'"{source}"', ""]))
    return "\n".join(lines) + "\n"


def default_network_text() -> str:
    """Text of the shipped demonstration network (UMIST RATE22 format)."""
    resource = importlib.resources.files("astrochem_jax.chemistry") / "data"
    return (resource / "default_network.rates").read_text(encoding="utf-8")


def load_default_network() -> Network:
    """The shipped reduced H/He/C/N/O/S gas-phase demonstration network (see the file header)."""
    return parse_umist_text(default_network_text(), "default", "default_network.rates")


# ------------------------------------------------------------------------------------------------
# UCLCHEM

_UCL_REACTANTS = ("Reactant 1", "Reactant 2", "Reactant 3")
_UCL_PRODUCTS = ("Product 1", "Product 2", "Product 3", "Product 4")
_UCL_NUMBERS = ("Alpha", "Beta", "Gamma")
_UCL_POSITIONAL = (*_UCL_REACTANTS, *_UCL_PRODUCTS, *_UCL_NUMBERS, "T_min", "T_max")


def _uclchem_row(row: dict[str, str], where: str) -> Reaction:
    tokens = [(row.get(c) or "").strip() for c in _UCL_REACTANTS]
    tokens = [t for t in tokens if t.upper() not in _EMPTY]
    keywords = [t.upper() for t in tokens if _is_keyword(t) and t.upper() not in PSEUDO_SPECIES]
    reactants = tuple(t for t in tokens if t.upper() not in keywords)
    products = tuple(
        t for t in ((row.get(c) or "").strip() for c in _UCL_PRODUCTS)
        if t.upper() not in _EMPTY and t.upper() not in PROCESS_KEYWORDS
    )
    for name in products:
        if _is_keyword(name) and name.upper() not in PSEUDO_SPECIES:
            raise NetworkError(f"{where}: keyword {name!r} in a product column")
    if len(keywords) > 1:
        raise NetworkError(f"{where}: more than one process keyword in reactants: {keywords}")
    if not keywords:
        rate_type = "two_body"
    elif keywords[0] in PROCESS_KEYWORDS:
        rate_type = PROCESS_KEYWORDS[keywords[0]]
    else:
        rate_type = GRAIN_PREFIX + keywords[0]
    if rate_type == "photo" and len(reactants) == 1:
        rate_type = photo_rate_type(reactants[0], products)
    numbers = [_float(row.get(f) or "", where, f) for f in _UCL_NUMBERS]
    t_min = row.get("T_min") or ""
    t_max = row.get("T_max") or ""
    t_min_K = _float(t_min, where, "T_min") if t_min.strip() else Reaction.t_min_K
    t_max_K = _float(t_max, where, "T_max") if t_max.strip() else Reaction.t_max_K
    return Reaction(reactants, products, rate_type, *numbers, t_min_K, t_max_K, where)


def parse_uclchem_reactions(text: str, source_label: str = "<reactions>") -> list[Reaction]:
    """Rows of a UCLCHEM reactions CSV.

    With a header row (`Reactant 1, ..., Alpha, Beta, Gamma, T_min, T_max, ...`) columns are
    found by name; without one (UCLCHEM's extra reaction lists) they are positional in that
    order. `NAN`/empty cells are absent (empty T_min/T_max take the Reaction defaults); keyword
    reactants pick the rate type (module docstring); `PHOTON` products are dropped; `!` lines are
    comments.
    """
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    reactions = []
    for row in reader:
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("!"):
            continue
        if header is None:
            if "Reactant 1" in cells:
                header = cells
                required = (*_UCL_REACTANTS[:2], *_UCL_PRODUCTS[:1], *_UCL_NUMBERS)
                missing = [c for c in required if c not in header]
                if missing:
                    raise NetworkError(
                        f"{source_label}:{reader.line_num}: missing columns {missing}; "
                        f"header is {header}"
                    )
                continue
            header = list(_UCL_POSITIONAL)
        where = f"{source_label}:{reader.line_num}"
        if len(cells) < len(_UCL_POSITIONAL) - 2 and header == list(_UCL_POSITIONAL):
            raise NetworkError(
                f"{where}: expected at least {len(_UCL_POSITIONAL) - 2} columns "
                f"({', '.join(_UCL_POSITIONAL[:-2])}), found {len(cells)}"
            )
        reactions.append(_uclchem_row(dict(zip(header, cells, strict=False)), where))
    return reactions


def read_uclchem_species(species_csv: str | Path) -> list[str]:
    """The NAME column of a UCLCHEM species CSV, in file order."""
    path = Path(species_csv)
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    if not reader.fieldnames or "NAME" not in [f.strip() for f in reader.fieldnames]:
        raise NetworkError(f"{path}:1: expected a NAME column, found {reader.fieldnames}")
    key = next(f for f in reader.fieldnames if f.strip() == "NAME")
    names = []
    for row in reader:
        name = (row.get(key) or "").strip()
        if name and not name.startswith("!"):
            names.append(name)
    return names


def read_uclchem_network(
    reactions_csv: str | Path,
    species_csv: str | Path,
    name: str = "uclchem",
    on_unbalanced: str = "raise",
) -> Network:
    """UCLCHEM network: reactions CSV + species CSV (species order from the species CSV).

    Species listed but used by no reaction are dropped; a reaction species missing from the
    species CSV raises `NetworkError` naming the reaction's line. SURFACE / BULK pseudo-species
    are kept as species if reactions use them (`gas_phase_subset` removes them).
    """
    reactions_csv, species_csv = Path(reactions_csv), Path(species_csv)
    listed = read_uclchem_species(species_csv)
    reactions = parse_uclchem_reactions(
        reactions_csv.read_text(encoding="utf-8"), reactions_csv.name)
    dupes = sorted({s for s in listed if [x.upper() for x in listed].count(s.upper()) > 1})
    if dupes:
        raise NetworkError(f"{species_csv}: duplicate species names {dupes}")
    listed_set = set(listed)
    missing = [
        f"{s!r} in {format_reaction(r)}"
        for r in reactions for s in (*r.reactants, *r.products) if s not in listed_set
    ]
    _raise_if(missing, f"{reactions_csv}: species not in {species_csv.name}")
    used = _used_species(reactions)
    species = tuple(s for s in listed if s in used)
    return validate_network(Network(name, species, tuple(reactions)), on_unbalanced)


def gas_phase_subset(network: Network, name: str | None = None) -> Network:
    """Drop `#`/`@` species, SURFACE/BULK and every reaction touching them or a grain process.

    H2 formation on grains ("h2_formation", UCLCHEM H2FORM) is kept: it is the gas-phase H2
    formation route. Species order is kept; species left without reactions are dropped.
    """
    def gas(s: str) -> bool:
        return phase_of(s) == "gas" and s.upper() not in PSEUDO_SPECIES

    reactions = tuple(
        r for r in network.reactions
        if is_gas_phase_type(r.rate_type) and all(gas(s) for s in (*r.reactants, *r.products))
    )
    return _prune_species(Network(name or f"{network.name}_gas", network.species, reactions))


# ------------------------------------------------------------------------------------------------
# MakeRates-style selection


def read_species_list(csv_path: str | Path, gas_only: bool = True) -> list[str]:
    """Species names from a UCLCHEM-style species CSV (NAME column, or the first column).

    With `gas_only`, `#`/`@` ice species and SURFACE/BULK are skipped. Names keep the file's
    spelling (UCLCHEM upper case).
    """
    path = Path(csv_path)
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    if not rows:
        raise NetworkError(f"{path}: empty species list")
    col = 0
    start = 0
    header = [c.strip().upper() for c in rows[0]]
    if "NAME" in header:
        col, start = header.index("NAME"), 1
    names = []
    for lineno, row in enumerate(rows[start:], start=start + 1):
        if not row or not row[col].strip() or row[col].strip().startswith("!"):
            continue
        name = row[col].strip()
        if gas_only and (phase_of(name) != "gas" or name.upper() in PSEUDO_SPECIES):
            continue
        try:
            _composition(name)
        except FormulaError as err:
            raise NetworkError(f"{path}:{lineno}: field NAME: {err}") from err
        names.append(name)
    return names


def select_reactions(
    reactions_source: Network,
    species: Sequence[str],
    name: str = "selected",
    on_unbalanced: str = "raise",
    extra_reactions: Sequence[Reaction] = (),
) -> Network:
    """Keep the reactions of `reactions_source` (then `extra_reactions`, e.g. UCLCHEM's H2FORM
    and H2 photodissociation rows from `read_uclchem_reactions`) whose reactants and products
    are all in `species` (UCLCHEM MakeRates).

    Matching is case-insensitive; the result uses the source's spelling (so UMIST `Si` for a
    UCLCHEM list entry `SI`; extra reactions are respelled the same way, species the source
    lacks keep the list's spelling) in the order of `species`; the electron is always allowed
    and is appended last when used. Requested species that no selected reaction uses are dropped
    and logged (UCLCHEM lists carry grain-only species such as H3 that UMIST does not know).
    """
    by_upper: dict[str, str] = {}
    for s in reactions_source.species:
        if s.upper() in by_upper:
            raise NetworkError(
                f"network {reactions_source.name!r}: species {by_upper[s.upper()]!r} and {s!r} "
                "differ only in case; case-insensitive selection is ambiguous"
            )
        by_upper[s.upper()] = s
    wanted_upper = [s.strip().upper() for s in species]
    dupes = sorted({s for s in wanted_upper if wanted_upper.count(s) > 1})
    if dupes:
        raise NetworkError(f"select_reactions({name!r}): duplicate species in the list {dupes}")
    for s in species:
        by_upper.setdefault(s.strip().upper(), s.strip())
    by_upper.setdefault(_ELECTRON.upper(), _ELECTRON)
    allowed = set(wanted_upper) | {_ELECTRON.upper()}

    def respell(r: Reaction) -> Reaction:
        return replace(r, reactants=tuple(by_upper[s.upper()] for s in r.reactants),
                       products=tuple(by_upper[s.upper()] for s in r.products))

    reactions = tuple(
        respell(r) for r in (*reactions_source.reactions, *extra_reactions)
        if all(s.upper() in allowed for s in (*r.reactants, *r.products))
    )
    used = {s.upper() for s in _used_species(reactions)}
    order = [by_upper[s] for s in wanted_upper if s in used and not is_electron(s)]
    order += [by_upper[_ELECTRON.upper()]] if _ELECTRON.upper() in used else []
    unused = [s for s in species if s.strip().upper() not in used]
    if unused:
        logger.warning("select_reactions(%r): species without reactions dropped: %s", name, unused)
    return validate_network(Network(name, tuple(order), reactions), on_unbalanced)


def read_uclchem_reactions(reactions_csv: str | Path) -> tuple[Reaction, ...]:
    """Reactions of a UCLCHEM reactions CSV without a species file (e.g. the extra grain /
    custom reaction lists that MakeRates merges into a UMIST selection)."""
    path = Path(reactions_csv)
    return tuple(parse_uclchem_reactions(path.read_text(encoding="utf-8"), path.name))
