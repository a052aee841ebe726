"""Cross-check against UCLCHEM itself: integrate the gas-phase subset of UCLCHEM's network from the
initial abundances and fixed conditions of ../shared/reference/uclchem_gasphase_*.npz (real
UCLCHEM runs with freeze-out and desorption off) and compare |dlog10| for species above 1e-12.

Run as a script to print the numbers as JSON:
    .venv/bin/python tests/test_uclchem_crosscheck.py [../shared]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

COMPARE_TIMES_YEARS = (1e5, 1e6)
ABUNDANCE_FLOOR = 1e-12
CASES = ("dark_cloud_n1e4_T10_Av10", "translucent_n1e3_T20_Av2")


def uclchem_gas_network(shared: Path):
    from astrochem_jax.chemistry import network as network_mod

    nets = shared / "networks"
    full = network_mod.read_uclchem_network(nets / "uclchem_reactions.csv",
                                            nets / "uclchem_species.csv")
    return network_mod.gas_phase_subset(full, "uclchem_gas")


def crosscheck(shared: Path, case: str, network=None) -> dict:
    """Integrate one reference case; returns median / p90 |dlog10| per comparison time."""
    from astrochem_jax.chemistry import solver

    network = network if network is not None else uclchem_gas_network(shared)
    ref = np.load(shared / "reference" / f"uclchem_gasphase_{case}.npz")
    names = [str(s).upper() for s in ref["species"]]
    missing = [s for s in network.species if s.upper() not in names]
    if missing:
        raise ValueError(f"{case}: species {missing} not in the reference file")
    columns = [names.index(s.upper()) for s in network.species]
    reference = ref["abundances"][:, columns]
    time_years = np.asarray(ref["time_years"], dtype=np.float64)
    physical = np.array([ref["density_cm3"][0], ref["gas_temperature_K"][0], ref["av_mag"][0],
                         ref["radfield_habing"][0], ref["zeta_units_1p3e17"][0]], dtype=float)
    result = solver.solve_tracks(
        network, reference[0], np.array([[0.0, time_years[-1]]]),
        np.stack([physical, physical])[None], time_years,
        solver.SolverSettings(batch_size=1), progress=False)
    out = {"case": case, "n_species": network.n_species, "n_reactions": network.n_reactions,
           "result_code": int(result.result_code[0]), "n_steps": int(result.n_steps[0]),
           "conditions": dict(zip(solver.PHYSICAL_COLUMNS, physical.tolist(), strict=True))}
    for t in COMPARE_TIMES_YEARS:
        i = int(np.argmin(np.abs(time_years - t)))
        ours, theirs = result.abundances[0, i], reference[i]
        mask = theirs > ABUNDANCE_FLOOR
        dex = np.abs(np.log10(np.maximum(ours[mask], 1e-30)) - np.log10(theirs[mask]))
        worst = np.argsort(-dex)[:5]
        out[f"{t:.0e}_years"] = {
            "time_years": float(time_years[i]),
            "n_compared": int(mask.sum()),
            "median_dex": float(np.median(dex)),
            "p90_dex": float(np.percentile(dex, 90)),
            "worst": {np.asarray(network.species)[mask][j]: round(float(dex[j]), 3)
                      for j in worst},
        }
    return out


@pytest.fixture(scope="module")
def gas_network(shared_dir):
    if not (shared_dir / "reference").is_dir():
        pytest.skip("../shared/reference is not present")
    return uclchem_gas_network(shared_dir)


@pytest.mark.slow
def test_dark_cloud_matches_uclchem(shared_dir, gas_network):
    report = crosscheck(shared_dir, "dark_cloud_n1e4_T10_Av10", gas_network)
    print(json.dumps(report, indent=1))
    assert report["result_code"] == 0
    for t in COMPARE_TIMES_YEARS:
        numbers = report[f"{t:.0e}_years"]
        assert numbers["n_compared"] >= 50
        assert numbers["median_dex"] <= 0.1, numbers


@pytest.mark.slow
def test_translucent_cloud_close_to_uclchem(shared_dir, gas_network):
    """No CO self-shielding and a different shielding column (1.6e21 Av) than UCLCHEM's cloud
    column: measured median ~0.2 dex; guard against regressions only."""
    report = crosscheck(shared_dir, "translucent_n1e3_T20_Av2", gas_network)
    print(json.dumps(report, indent=1))
    assert report["result_code"] == 0
    for t in COMPARE_TIMES_YEARS:
        assert report[f"{t:.0e}_years"]["median_dex"] <= 0.5


def main(argv: list[str]) -> int:
    from astrochem_jax import runtime

    runtime.setup_entry_point(x64=True)
    shared = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "shared"
    if not (shared / "reference").is_dir():
        print(json.dumps({"skipped": f"{shared / 'reference'} is absent"}))
        return 0
    network = uclchem_gas_network(shared)
    print(json.dumps([crosscheck(shared, case, network) for case in CASES], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
