"""Stoichiometric matrix: parser cases, element conservation on real UCLCHEM output, and every
species of the shared networks parses."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from astrochem_jax.chemistry.formula import NON_SPECIES
from astrochem_jax.preprocess import PreprocessError, open_raw
from astrochem_jax.preprocess.readers import canonical_column
from astrochem_jax.preprocess.stoichiometry import relative_drift, species_matrix

UCLCHEM_META = {"Time", "Density", "gasTemp", "dustTemp", "Av", "radfield", "Radfield", "zeta",
                "point", "dstep", "Index", "Model", "Tracer", "SURFACE", "BULK"}


def test_matrix_and_charges_for_hard_names():
    names = ["CH3OH", "#CH3OH", "@H2O", "E-", "HE+", "SIO", "HCL", "MG+", "NA", "C2H4N+",
             "HC11N", "FE"]
    elements, matrix, charge = species_matrix(names)
    col = {e: i for i, e in enumerate(elements)}
    assert matrix.shape == (12, len(elements))
    assert {e: matrix[0, col[e]] for e in elements if matrix[0, col[e]]} == {"H": 4, "C": 1,
                                                                               "O": 1}
    np.testing.assert_array_equal(matrix[0], matrix[1])  # ice = gas composition
    assert matrix[3].sum() == 0 and charge[3] == -1
    assert matrix[4, col["HE"]] == 1 and charge[4] == 1
    assert matrix[5, col["SI"]] == 1 and matrix[5, col["O"]] == 1
    assert matrix[6, col["CL"]] == 1 and matrix[6, col["H"]] == 1 and "C" not in elements[:0]
    assert matrix[7, col["MG"]] == 1 and matrix[8, col["NA"]] == 1
    assert matrix[10, col["C"]] == 11 and matrix[10, col["N"]] == 1
    assert matrix[11, col["FE"]] == 1


def test_unparseable_species_is_named():
    with pytest.raises(PreprocessError, match="'XQ'"):
        species_matrix(["H2", "XQ"])


def test_renames_keep_composition():
    from astrochem_jax.preprocess.readers import SPECIES_RENAMES

    old = list(SPECIES_RENAMES)
    new = [SPECIES_RENAMES[o] for o in old]
    elements, m_old, c_old = species_matrix(old)
    elements_new, m_new, c_new = species_matrix(new, where="renamed")
    assert elements_new == elements
    np.testing.assert_array_equal(m_old, m_new)
    np.testing.assert_array_equal(c_old, c_new)
    assert canonical_column(" #CH3OH ") == "#CH4O" and canonical_column("radfield") == "Radfield"


def _dat_drift(path):
    with open(path) as f:
        header = [c.strip() for c in f.readline().split(",")]
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    species = [(i, c) for i, c in enumerate(header) if c not in UCLCHEM_META]
    elements, matrix, _ = species_matrix([c for _, c in species])
    return elements, relative_drift(data[:, [i for i, _ in species]], matrix)


def test_element_totals_conserved_on_uclchem_dat(shared_dir):
    worst = {}
    for name in ("uclchem_phase1-full.dat", "uclchem_phase2-full.dat"):
        path = shared_dir / "data" / name
        if not path.exists():
            pytest.skip(f"{path} not present")
        elements, drift = _dat_drift(path)
        worst[name] = dict(zip(elements, drift.round(9).tolist(), strict=True))
        assert drift.max() < 5e-6, worst[name]  # printed with ~6 significant digits
    print(f"worst relative element drift (.dat): {worst}")


def test_element_totals_conserved_on_uclchem_h5(shared_dir):
    path = shared_dir / "data" / "uclchem_grav_small.h5"
    if not path.exists():
        pytest.skip(f"{path} not present")
    with open_raw(path, "uclchem", "df") as table:
        species = [(i, c) for i, c in enumerate(table.columns) if c not in UCLCHEM_META]
        elements, matrix, _ = species_matrix([c for _, c in species])
        worst = np.zeros(len(elements))
        for k in range(table.tracer_ids.size):
            rows = table.read(table.starts[k], table.stops[k], [i for i, _ in species])
            worst = np.maximum(worst, relative_drift(rows, matrix))
    report = dict(zip(elements, worst.tolist(), strict=True))
    print(f"worst relative element drift (uclchem_grav_small.h5): {report}")
    assert worst.max() < 1e-6, report
    assert worst[elements.index("C")] < 1e-12  # heavy elements to round-off


def _network_species(shared_dir):
    net = shared_dir / "networks"
    names = set()
    for f in ("uclchem_species.csv", "uclchem_small_chemistry_species.csv"):
        with open(net / f) as fh:
            names.update(row["NAME"] for row in csv.DictReader(fh))
    with open(net / "uclchem_reactions.csv") as fh:
        for row in csv.DictReader(fh):
            names.update(v for k, v in row.items() if k and k.startswith(("Reactant", "Product")))
    with open(net / "uclchem_small_chemistry_grain_reactions.csv") as fh:  # no header
        for row in csv.reader(fh):
            if row and not row[0].startswith("!"):  # "!" starts a comment line
                names.update(row[:7])
    with open(net / "umist22.rates") as fh:
        for line in fh:
            if not line.startswith("#"):
                names.update(line.split(":")[2:8])
    return sorted(n for n in names if n.strip().upper() not in NON_SPECIES)


def test_every_shared_network_species_parses(shared_dir):
    names = _network_species(shared_dir)
    assert len(names) > 400
    elements, matrix, charge = species_matrix(names)
    assert matrix.shape == (len(names), len(elements))
    assert (matrix.sum(axis=1) > 0).sum() == len(names) - sum(n.upper() in ("E-",) for n in names)
