"""Reaction networks: parsers, balance checks, the shipped default network, initial abundances."""

import numpy as np
import pytest

from astrochem_jax.chemistry import initial_abundances as ia
from astrochem_jax.chemistry import network as nw
from astrochem_jax.chemistry.formula import parse_species

LINE = "{n}:{t}:{r1}:{r2}:{p1}:{p2}:::1:{a}:0.00:{g}:10:41000:L:A:\"10.1/x:y\":\"ref: a\":"


def umist_line(n, t, r1, r2, p1, p2, a="1.0e-09", g="0.0"):
    return LINE.format(n=n, t=t, r1=r1, r2=r2, p1=p1, p2=p2, a=a, g=g)


@pytest.fixture(scope="module")
def default_network():
    return nw.load_default_network()


# ------------------------------------------------------------------------------------------------
# The shipped default network


def test_default_network_every_reaction_balanced(default_network):
    for r in default_network.reactions:
        left = [parse_species(s) for s in r.reactants]
        right = [parse_species(s) for s in r.products]
        assert sum(c.charge for c in left) == sum(c.charge for c in right), nw.format_reaction(r)
        for element in {e for c in left + right for e in c.elements}:
            n_left = sum(c.elements.get(element, 0) for c in left)
            n_right = sum(c.elements.get(element, 0) for c in right)
            assert n_left == n_right, (element, nw.format_reaction(r))


def test_default_network_content(default_network):
    net = default_network
    assert 35 <= net.n_species <= 60
    for name in ("H", "H2", "H3+", "He", "He+", "C+", "CO", "H2O", "HCO+", "N2H+", "NH3", "HCN",
                 "HNC", "CS", "SO", "H2S", "e-"):
        assert name in net.species, name
    assert net.species[-1] == "e-"
    assert {p.upper() for s in net.species for p in parse_species(s).elements} == {
        "H", "HE", "C", "N", "O", "S"}
    types = {r.rate_type for r in net.reactions}
    assert types <= nw.RATE_TYPES
    for needed in ("two_body", "cosmic_ray", "cr_photon", "photo", "h2_formation",
                   "h2_photodissociation", "co_photodissociation", "c_photoionisation"):
        assert needed in types, needed
    h2form = [r for r in net.reactions if r.rate_type == "h2_formation"]
    assert len(h2form) == 1 and h2form[0].reactants == ("H", "H") and h2form[0].products == ("H2",)
    assert all(r.source.startswith("default_network.rates:") for r in net.reactions)


def test_default_network_connected(default_network):
    """Every species is both formed and destroyed, and photo rates depend on Av."""
    formed = {s for r in default_network.reactions for s in r.products}
    destroyed = {s for r in default_network.reactions for s in r.reactants}
    assert set(default_network.species) == formed == destroyed
    for r in default_network.reactions:
        if r.rate_type in ("photo", "h2_photodissociation", "co_photodissociation",
                           "c_photoionisation"):
            assert r.gamma > 0, nw.format_reaction(r)


def test_default_network_text_round_trip(default_network):
    text = nw.default_network_text()
    again = nw.parse_umist_text(text, "default", "default_network.rates")
    assert again == default_network
    assert text.lstrip().startswith("#") and "demonstration" in text.lower()


def _physics(reaction):
    """A reaction without its source line, for round-trip comparisons."""
    return nw.replace(reaction, source="")


def test_format_umist_text_round_trip(default_network):
    text = nw.format_umist_text(default_network, header="round trip\nof the default network")
    assert text.startswith("# round trip\n# of the default network\n")
    again = nw.parse_umist_text(text, "again", "again.rates")
    assert again.species == default_network.species
    assert [_physics(r) for r in again.reactions] == [
        _physics(r) for r in default_network.reactions]
    grain = nw.Reaction(("CO",), ("#CO",), "grain:FREEZE", 1.0, 0.0, 0.0)
    with pytest.raises(nw.NetworkError, match="grain:FREEZE"):
        nw.format_umist_text(nw.Network("g", ("CO", "#CO"), (grain,)))


# ------------------------------------------------------------------------------------------------
# UMIST parser on small inline texts


def test_umist_types_keywords_and_ranges():
    text = "\n".join([
        "# comment",
        umist_line(1, "CP", "H2", "CRP", "H2+", "e-", a="1.2e-17"),
        umist_line(2, "PH", "CO", "PHOTON", "C", "O", a="2e-10", g="3.5"),
        umist_line(3, "PH", "OH", "PHOTON", "O", "H", a="3.9e-10", g="2.2"),
        umist_line(4, "CR", "OH", "CRPHOT", "O", "H", a="1.3e-17", g="509"),
        "5:DR:H3+:e-:H2:H:::2:2.3e-08:-0.52:0.0:10:300:L:A:\"a:b\":\"c\":"
        "3.0e-08:-0.60:0.0:301:41000:L:A:\"\":\"\":",
        umist_line(6, "IN", "H2+", "H2", "H3+", "H"),
        umist_line(7, "H2FORM", "H", "H", "H2", ""),
        umist_line(8, "RA", "C+", "H2", "CH2+", "PHOTON", a="2e-16"),
    ])
    net = nw.parse_umist_text(text, "tiny", "tiny.rates")
    types = [r.rate_type for r in net.reactions]
    assert types == ["cosmic_ray", "co_photodissociation", "photo", "cr_photon", "two_body",
                     "two_body", "two_body", "h2_formation", "two_body"]
    assert net.reactions[0].reactants == ("H2",)
    assert net.reactions[1].reactants == ("CO",) and net.reactions[1].gamma == 3.5
    dr = net.reactions[4:6]
    assert [(r.t_min_K, r.t_max_K) for r in dr] == [(10.0, 300.0), (301.0, 41000.0)]
    assert [r.source for r in dr] == ["tiny.rates:6", "tiny.rates:6"]
    assert net.reactions[-1].products == ("CH2+",)
    assert not {"CRP", "PHOTON", "CRPHOT"} & set(net.species)
    assert net.species[-1] == "e-"
    masses = [nw.species_mass_amu(s) for s in net.species[:-1]]
    assert masses == sorted(masses)


def test_umist_unbalanced_line_is_named():
    text = "\n".join([
        umist_line(1, "IN", "H2+", "H2", "H3+", "H"),
        umist_line(2, "NN", "O", "CH", "CO", "H2"),  # H not conserved
        umist_line(3, "IN", "C+", "OH", "CO", "H"),  # charge not conserved
    ])
    with pytest.raises(nw.NetworkError) as err:
        nw.parse_umist_text(text, "bad", "bad.rates")
    message = str(err.value)
    assert "bad.rates:2" in message and "H: 1 -> 2" in message
    assert "bad.rates:3" in message and "charge: +1 -> +0" in message
    assert "bad.rates:1" not in message
    dropped = nw.parse_umist_text(text, "bad", "bad.rates", on_unbalanced="drop")
    assert [r.source for r in dropped.reactions] == ["bad.rates:1"]
    assert set(dropped.species) == {"H", "H2", "H2+", "H3+"}
    kept = nw.parse_umist_text(text, "bad", "bad.rates", on_unbalanced="warn")
    assert kept.n_reactions == 3


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (umist_line(1, "XX", "H2+", "H2", "H3+", "H"), "field type"),
        (umist_line(1, "CP", "H2", "PHOTON", "H2+", "e-"), "expects R2 = CRP"),
        (umist_line(1, "IN", "H2+", "H2", "H3+", "H", a="-1e-9"), "alpha must be >= 0"),
        (umist_line(1, "IN", "H2+", "H2", "H3+", "H", a="fast"), "field alpha[1]"),
        (umist_line(1, "IN", "Xq", "H2", "H3+", "H"), "Xq"),
        ("1:IN:H2+:H2:H3+:H", "at least 14"),
        ("1:DR:H3+:e-:H2:H:::2:2.3e-08:-0.52:0.0:10:300:L:A:\"\":\"\":", "NE = 2"),
    ],
)
def test_umist_bad_input_errors(line, fragment):
    with pytest.raises(nw.NetworkError, match="bad.rates") as err:
        nw.parse_umist_text(line, "bad", "bad.rates")
    assert fragment in str(err.value)


def test_validate_detects_structural_problems():
    ok = nw.Reaction(("H2+", "H2"), ("H3+", "H"), "two_body", 2e-9, 0.0, 0.0, source="x:1")
    species = ("H", "H2", "H2+", "H3+")
    with pytest.raises(nw.NetworkError, match="duplicate species"):
        nw.validate_network(nw.Network("n", (*species, "h2"), (ok,)))
    with pytest.raises(nw.NetworkError, match="unknown rate_type 'three_body'"):
        nw.validate_network(nw.Network("n", species, (nw.replace(ok, rate_type="three_body"),)))
    with pytest.raises(nw.NetworkError, match="empty reactant list"):
        nw.validate_network(nw.Network("n", species, (nw.replace(ok, reactants=()),)))
    with pytest.raises(nw.NetworkError, match="'H3\\+' is not in the species list"):
        nw.validate_network(nw.Network("n", species[:3], (ok,)))
    zero = nw.replace(ok, alpha=0.0)
    assert nw.validate_network(nw.Network("n", species, (ok, zero))).reactions == (ok,)


def test_select_reactions_case_insensitive():
    text = "\n".join([
        umist_line(1, "IN", "H2+", "H2", "H3+", "H"),
        umist_line(2, "CE", "He+", "Si", "Si+", "He"),
        umist_line(3, "IN", "H3+", "CO", "HCO+", "H2"),
        umist_line(4, "DR", "H3+", "e-", "H2", "H"),
    ])
    source = nw.parse_umist_text(text, "src", "src.rates")
    small = nw.select_reactions(source, ["SI+", "HE+", "H", "SI", "HE", "H2", "H3+", "H2+", "XX"],
                                "small")
    assert small.species == ("Si+", "He+", "H", "Si", "He", "H2", "H3+", "H2+", "e-")
    assert [r.source for r in small.reactions] == ["src.rates:1", "src.rates:2", "src.rates:4"]
    with pytest.raises(nw.NetworkError, match="duplicate species"):
        nw.select_reactions(source, ["H", "h"], "dup")


# ------------------------------------------------------------------------------------------------
# UCLCHEM format on a small inline file


UCL_HEADER = ("Reactant 1,Reactant 2,Reactant 3,Product 1,Product 2,Product 3,Product 4,"
              "Alpha,Beta,Gamma,T_min,T_max,reduced_mass,extrapolate\n")
UCL_ROWS = """\
H2,CRP,NAN,H2+,E-,NAN,NAN,1.2,0,0,10,41000,0,False
H,H,H2FORM,H2,NAN,NAN,NAN,1,0,0,10,41000,0,False
CO,PHOTON,NAN,C,O,NAN,NAN,2e-10,0,3.5,10,41000,0,False
CO,FREEZE,NAN,#CO,NAN,NAN,NAN,1,0,0,0,10000,0,False
#CO,THERM,NAN,CO,NAN,NAN,NAN,1,0,0,0,10000,0,False
#H,#H,LH,#H2,NAN,NAN,NAN,1,0,0,0,10000,0,False
H3+,CO,NAN,HCO+,H2,NAN,NAN,1.6e-9,0,0,10,41000,0,False
HCO+,E-,NAN,CO,H,NAN,NAN,2.4e-7,-0.69,0,10,41000,0,False
H2+,H2,NAN,H3+,H,NAN,NAN,2.1e-9,0,0,10,41000,0,False
HCO+,FREEZE,NAN,#CO,#H,NAN,NAN,1,0,0,0,10000,0,False
"""
UCL_SPECIES = """NAME,MASS
H,1
H2,2
H2+,2
H3+,3
C,12
O,16
CO,28
HCO+,29
#H,1
#H2,2
#CO,28
E-,0
"""


def test_uclchem_small_and_gas_subset(tmp_path):
    (tmp_path / "r.csv").write_text(UCL_HEADER + UCL_ROWS)
    (tmp_path / "s.csv").write_text(UCL_SPECIES)
    net = nw.read_uclchem_network(tmp_path / "r.csv", tmp_path / "s.csv")
    by_line = {r.source: r for r in net.reactions}
    assert by_line["r.csv:2"].rate_type == "cosmic_ray"
    assert by_line["r.csv:2"].reactants == ("H2",)
    assert by_line["r.csv:3"].rate_type == "h2_formation"
    assert by_line["r.csv:3"].reactants == ("H", "H")
    assert by_line["r.csv:4"].rate_type == "co_photodissociation"
    assert by_line["r.csv:5"].rate_type == "grain:FREEZE"
    assert by_line["r.csv:7"].rate_type == "grain:LH"
    assert by_line["r.csv:11"].rate_type == "grain:FREEZE"  # ion freeze-out: charge to the grain
    gas = nw.gas_phase_subset(net)
    assert gas.species == ("H", "H2", "H2+", "H3+", "C", "O", "CO", "HCO+", "E-")
    assert {r.rate_type for r in gas.reactions} == {
        "cosmic_ray", "h2_formation", "co_photodissociation", "two_body"}
    assert gas.index("e-") == gas.n_species - 1


def test_uclchem_headerless_extra_reactions_respelled():
    text = ("! extra rows, no header\n"
            "HE,H2,NAN,HE,H2,NAN,NAN,1e-12,0,0,,,,\n"
            "H,H,H2FORM,H2,NAN,NAN,NAN,1,0,0\n")
    extra = nw.parse_uclchem_reactions(text, "extra.csv")
    assert [r.source for r in extra] == ["extra.csv:2", "extra.csv:3"]
    assert extra[0].t_min_K == 10.0 and extra[0].t_max_K == 41000.0
    source = nw.parse_umist_text(umist_line(1, "CE", "He+", "H", "He", "H+"), "src", "src.rates")
    net = nw.select_reactions(source, ["H", "H+", "HE", "HE+", "H2"], "x", extra_reactions=extra)
    assert net.species == ("H", "H+", "He", "He+", "H2")
    assert net.reactions[1].reactants == ("He", "H2")
    with pytest.raises(nw.NetworkError, match="bad.csv:1: expected at least 10 columns"):
        nw.parse_uclchem_reactions("H,H,H2FORM,H2\n", "bad.csv")


def test_uclchem_missing_species_is_named(tmp_path):
    (tmp_path / "r.csv").write_text(UCL_HEADER + UCL_ROWS)
    (tmp_path / "s.csv").write_text(UCL_SPECIES.replace("HCO+,29\n", ""))
    with pytest.raises(nw.NetworkError, match="'HCO\\+'.*r.csv:8"):
        nw.read_uclchem_network(tmp_path / "r.csv", tmp_path / "s.csv")


# ------------------------------------------------------------------------------------------------
# The reference files in ../shared (skipped when absent)


def test_umist22_parses_fully(shared_dir):
    net = nw.read_umist_rates(shared_dir / "networks" / "umist22.rates")
    assert net.n_species > 400 and net.n_reactions > 8000
    assert "e-" in net.species and net.species[-1] == "e-"
    assert {"cosmic_ray", "cr_photon", "photo", "two_body"} <= {r.rate_type for r in net.reactions}
    assert all(r.t_min_K <= r.t_max_K for r in net.reactions)
    # Multi-range lines give one Reaction per range, all naming the same line.
    hminus = [r for r in net.reactions if r.reactants == ("H-", "H") and r.products == ("H2", "e-")]
    assert len(hminus) == 2 and hminus[0].source == hminus[1].source
    assert hminus[0].t_max_K < hminus[1].t_min_K
    # A block repeated verbatim within one line is kept once.
    ch4_cn = [r for r in net.reactions if r.reactants == ("CH4", "CN")]
    assert len(ch4_cn) == 1


def test_uclchem_full_and_gas_subset(shared_dir):
    d = shared_dir / "networks"
    full = nw.read_uclchem_network(d / "uclchem_reactions.csv", d / "uclchem_species.csv")
    assert full.n_reactions > 3000
    assert any(r.rate_type.startswith("grain:") for r in full.reactions)
    gas = nw.gas_phase_subset(full)
    assert 155 <= gas.n_species <= 170 and 2100 <= gas.n_reactions <= 2400
    assert all(not s.startswith(("#", "@")) for s in gas.species)
    assert not {"SURFACE", "BULK"} & set(gas.species)
    assert all(nw.is_gas_phase_type(r.rate_type) for r in gas.reactions)
    assert sum(r.rate_type == "h2_formation" for r in gas.reactions) == 1
    assert "E-" in gas.species
    again = nw.parse_umist_text(nw.format_umist_text(gas), "again", "again.rates")
    assert set(again.species) == set(gas.species)
    assert sorted(map(_physics, again.reactions), key=repr) == sorted(
        map(_physics, gas.reactions), key=repr)


def test_makerates_selection_34_species(shared_dir):
    d = shared_dir / "networks"
    wanted = nw.read_species_list(d / "uclchem_small_chemistry_species.csv")
    assert all(not s.startswith(("#", "@")) for s in wanted)
    umist = nw.read_umist_rates(d / "umist22.rates")
    small = nw.select_reactions(umist, wanted, "small")
    assert small.n_species == 34
    assert small.species[-1] == "e-" and "He" in small.species and "Mg+" in small.species
    upper = {s.upper() for s in wanted} | {"E-"}
    assert all(s.upper() in upper for r in small.reactions for s in (*r.reactants, *r.products))
    assert 300 <= small.n_reactions <= 500
    # MakeRates also merges UCLCHEM's extra list: H2 formation and H2 photodissociation rows.
    extra = nw.read_uclchem_reactions(d / "uclchem_small_chemistry_grain_reactions.csv")
    merged = nw.select_reactions(umist, wanted, "small", extra_reactions=extra)
    assert merged.species == small.species
    assert merged.n_reactions == small.n_reactions + 2
    assert {"h2_formation", "h2_photodissociation"} <= {r.rate_type for r in merged.reactions}


# ------------------------------------------------------------------------------------------------
# Initial abundances


def test_default_initial_abundances_neutral_and_normalised(default_network):
    x = ia.default_initial_abundances(default_network)
    assert x.shape == (default_network.n_species,) and x.dtype == np.float64
    elements, totals = ia.element_totals(default_network, x)
    assert totals[elements.index("H")] == pytest.approx(1.0, rel=1e-12)
    assert totals[elements.index("HE")] == pytest.approx(0.1)
    assert totals[elements.index("C")] == pytest.approx(1.77e-4)
    assert abs(ia.total_charge(default_network, x)) < 1e-20
    assert x[default_network.index("e-")] == pytest.approx(1.77e-4 + 8.0e-8)
    solar = ia.default_initial_abundances(default_network, preset="uclchem")
    assert solar[default_network.index("S+")] == pytest.approx(3.51e-6)
    assert abs(ia.total_charge(default_network, solar)) < 1e-20
    atomic = ia.default_initial_abundances(default_network, atomic_hydrogen=True)
    assert atomic[default_network.index("H")] == 1.0
    assert atomic[default_network.index("H2")] == 0.0


def test_initial_abundances_skip_missing_species():
    text = "\n".join([
        umist_line(1, "IN", "H2+", "H2", "H3+", "H"),
        umist_line(2, "DR", "H3+", "e-", "H2", "H"),
        umist_line(3, "RR", "C+", "e-", "C", ""),
    ])
    net = nw.parse_umist_text(text, "tiny", "tiny.rates")
    x = ia.default_initial_abundances(net)
    elements, totals = ia.element_totals(net, x)
    assert elements == ["H", "C"]
    np.testing.assert_allclose(totals, [1.0, 1.77e-4])
    assert x[net.index("e-")] == pytest.approx(1.77e-4)


def test_abundances_from_mapping_errors(default_network):
    with pytest.raises(KeyError, match="'Fe\\+' is not in network 'default'"):
        ia.abundances_from_mapping(default_network, {"H2": 0.5, "Fe+": 1e-8}, missing="raise")
    with pytest.raises(ValueError, match="must be >= 0"):
        ia.abundances_from_mapping(default_network, {"H2": 0.5, "H3+": -1.0})
    anion = nw.parse_umist_text(umist_line(1, "AD", "H-", "H", "H2", "e-"), "anion", "a.rates")
    with pytest.raises(ValueError, match="net negative"):
        ia.abundances_from_mapping(anion, {"H": 1.0, "H-": 1e-8})
    with pytest.raises(ValueError, match="preset"):
        ia.default_initial_abundances(default_network, preset="solar")
