"""Rate coefficients of gas-phase astrochemical reactions.

Conventions (all functions here take and return these units):

- T: gas temperature [K]; Av: visual extinction [mag]; G0: radiation field [Habing];
  zeta: cosmic-ray ionisation rate in units of 1.3e-17 s^-1; n: H-nuclei density [cm^-3].
- Two-body coefficients are in cm^3 s^-1, first-order ones in s^-1. The solver multiplies them
  by the reactant fractional abundances and n^(order - 1) (see `solver.py`).

Rate laws (the `RATE_LAWS` registry at the bottom, keyed by `Reaction.rate_type`):

- "two_body": Arrhenius-Kooij  alpha (T/300)^beta exp(-gamma/T).
- "ion_polar_1", "ion_polar_2": KIDA ion-polar forms (Wakelam et al. 2012, ApJS 199, 21)
  alpha beta (0.62 + 0.4767 gamma sqrt(300/T)) and
  alpha beta (1 + 0.0967 gamma sqrt(300/T) + gamma^2 300/(10.526 T)).
- "cosmic_ray": alpha zeta. UMIST quotes CP rates (alpha, in s^-1) for its standard ionisation
  rate (1.36e-17 s^-1 in RATE22; 1.3e-17 s^-1 in older releases); like UCLCHEM we read alpha as
  the rate at zeta = 1 (1.3e-17 s^-1) and ignore the 5 % difference.
- "cr_photon": alpha gamma/(1 - omega) zeta (T/300)^beta with albedo omega = 0.5 (UMIST CR;
  alpha already holds the standard ionisation rate, 1.3e-17 s^-1, so zeta is again a multiple).
- "photo": alpha exp(-gamma Av) G0/1.7. UMIST/UCLCHEM alphas are unshielded rates in the Draine
  (1978) field, which is 1.7 Habing; our G0 is in Habing, hence the division.
- "h2_photodissociation": photo law times the H2 self-shielding factor of Draine & Bertoldi
  (1996, ApJ 468, 269, eq. 37) with Doppler parameter `H2_DOPPLER_B_KMS`; N(H2) = x_H2 N_H with
  the shielding column N_H below. UCLCHEM's network carries a placeholder row
  (alpha = 1); a row with alpha >= `PLACEHOLDER_ALPHA` gets the unshielded Draine-field rate
  `H2_PHOTO_ALPHA_S` (Heays et al. 2017, A&A 602, A105) and the dust attenuation exp(-3.74 Av)
  of Draine & Bertoldi (1996).
- "c_photoionisation": alpha G0/1.7 exp(-tau_C) with the Kamp & Bertoldi (2000, A&A 353, 276)
  optical depth tau_C = gamma Av + 1.1e-17 N(C) + 0.9 T^0.27 (N(H2)/1.59e21)^0.45 (C
  self-shielding and H2 line overlap); N(C) = x_C N_H.
- "co_photodissociation": van Dishoeck & Black (1988, ApJ 334, 771), as UCLCHEM:
  k = 2e-10 s^-1 (G0/1.7) Theta(N_CO, N_H2) S(lambda_bar, Av), with CO self-shielding and
  shielding by H2 lines Theta (their Table 5, bicubic spline) and dust attenuation with grain
  scattering S at the bands' mean wavelength lambda_bar (see `shielding.py`). The row's alpha is
  replaced by that unattenuated rate (`shielding.CO_PHOTO_ALPHA_S`, with which Theta was
  computed; UCLCHEM does the same) and its gamma is unused (S replaces exp(-gamma Av)).
  `co_self_shielding` picks the table layout: "vdb88" (as published, default) or "uclchem_v3"
  (as UCLCHEM v3 reads it, for cross-checks; see `shielding.py`).
- "h2_formation": H2 formation on grains, Cazaux & Tielens (2002, ApJ 575, L29; 2004, ApJ 604,
  222) efficiency on silicate and graphite grains with the Hollenbach & McKee (1979) sticking
  coefficient, as in UCL_PDR/UCLCHEM:
  k = 0.5 v_th(T) [sigma_sil eps_sil(Td) + sigma_gra eps_gra(Td)] S(T, Td)  [cm^3 s^-1],
  v_th = 1.45e5 sqrt(T/100) cm s^-1, sigma per H nucleus (8.473e-22 and 7.908e-22 cm^2). The
  formation rate is R = k n_H n(H) [cm^-3 s^-1]: first order in atomic H times n_H; the solver
  removes two H per H2. The row's alpha multiplies k (UCLCHEM's H2FORM row has alpha = 1).
  The dust temperature equals the gas temperature (we carry no separate dust temperature).

Shielding column (`shielding_column`): N_X = x_X N_H for X = H2, C, CO with
- "cloud" (default; UCLCHEM's one-point cloud model): N_H = 0.5 n_H L, half the column through
  a cloud of size L (`cloud_size_pc`, default 0.05 pc = UCLCHEM's default `rout`). UCLCHEM's Av
  adds an external base extinction that carries no H2, C or CO. Measured on the shared
  translucent UCLCHEM run (n_H = 1e3 cm^-3, 20 K, Av 2.1), median |dlog10| at 1 Myr:
  column "av" / "cloud" with the plain photo law for CO 0.185 / 0.013 dex; with CO
  self-shielding "vdb88" 0.165 / 0.038; "uclchem_v3" table and "cloud" 3e-4 (the dark-cloud
  level). The column is most of the gap: it sets the C photoionisation (H2 line overlap).
- "av": N_H = 1.6e21 Av cm^-2 (Bohlin et al. 1978), the whole column to the surface.

Temperature ranges. Each row is used inside its own [t_min, t_max]. Rows of one reaction (same
reactants, products and rate type) whose ranges touch (t_max of one = t_min of the next) are
alternatives: the shared end point belongs to the higher range. Rows whose ranges overlap are
separate channels and add up (UCLCHEM's network lists e.g. C + S -> CS four times with one
range; a code that evaluates row by row, like UCLCHEM, sums them). `temperature_policy`:

- "cutoff" (default; UCLCHEM's behaviour, measured: it reproduces UCLCHEM's dark-cloud run to
  3e-4 dex median): a row is off outside [t_min, t_max], with lower limits <= 10 K (the
  databases' conventional floor, `DATABASE_FLOOR_K`) read as 0 K so that T < 10 K does not
  switch the network off. Important at 10 K: Cl+ + H2 -> HCl+ + H (fitted 80-510 K) stays off.
- "clamp": below the lowest t_min (above the highest t_max) of its reaction the lowest (highest)
  row is used, at T clamped into its range (UMIST's advice against extrapolation). This turns
  on endothermic rows fitted at high T (e.g. that Cl+ + H2 row at 80 K), so at 10 K it is far
  from UCLCHEM (median 1.4 dex).
- "extrapolate": the same rows as "clamp", evaluated at T itself (median 0.2-0.3 dex from
  UCLCHEM).
In the (rare) gap between two non-touching ranges of one reaction no row is used.
Limits are compared with a relative tolerance (`RANGE_RTOL` = 1e-6): T within it of a limit is on
the limit, so a T that went through log/exp (10**log10(15) = 14.999999999999996) or float32
selects the same rows as the limit itself (issue 11: rows starting at 15 K or 20 K were off).

Fast path: `effective_coefficients` returns k n^p (p = order - 1) with one exp per reaction:
for every log-linear law, ln(k n^p / prefactor) = E @ [ln(T/300), 1/T, ln n, Av, ln zeta, ln G0]
with a constant [R, 6] matrix E; the other laws (ion-polar, H2 formation, shielded photo rates)
are evaluated on their few rows with `RATE_LAWS`. Tests check it against `RATE_LAWS` row by row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from astrochem_jax.chemistry import shielding
from astrochem_jax.chemistry.network import Network

# N_H per magnitude of visual extinction (Bohlin, Savage & Drake 1978) [cm^-2 mag^-1].
NH_PER_AV_CM2 = 1.6e21
# Draine (1978) field in Habing units.
DRAINE_PER_HABING = 1.7
# Albedo of grains for cosmic-ray-induced photons (UMIST CR rows).
CR_PHOTON_ALBEDO = 0.5
# Doppler parameter for H2 self-shielding (UCLCHEM's default turbulent velocity, 1 km/s).
H2_DOPPLER_B_KMS = 1.0
# Unshielded H2 photodissociation in the Draine field [s^-1] and its dust attenuation factor.
H2_PHOTO_ALPHA_S = 5.7e-11
H2_PHOTO_GAMMA = 3.74
# Rows of photo type with alpha at or above this are placeholders (1 s^-1 is unphysical).
PLACEHOLDER_ALPHA = 1e-3
TEMPERATURE_POLICIES = ("clamp", "extrapolate", "cutoff")
SHIELDING_COLUMNS = ("cloud", "av")
CO_SELF_SHIELDING = tuple(shielding.CO_SHIELDING_TABLES)
PARSEC_CM = 3.0856775814913673e18
# Lower limits at or below this are the databases' conventional floor, not a measured limit.
DATABASE_FLOOR_K = 10.0
# Relative tolerance of temperature-range limits: conditions that went through log/exp or float32
# (relative error ~1e-16 or ~6e-8) still land on an integer limit; physically nil (15 uK at 15 K).
RANGE_RTOL = 1e-6


class Conditions(NamedTuple):
    """Physical conditions at one instant; every field a scalar (float64)."""

    density_cm3: jax.Array
    gas_temperature_K: jax.Array
    av_mag: jax.Array
    radfield_habing: jax.Array
    zeta: jax.Array  # units of 1.3e-17 s^-1
    dust_temperature_K: jax.Array
    column_h2_cm2: jax.Array
    column_c_cm2: jax.Array
    column_co_cm2: jax.Array


# --- rate laws: f(alpha, beta, gamma [n], temperature_K [n] (per row, range policy applied),
#     conditions) -> k [n] -------------------------------------------------------------------


def two_body(alpha, beta, gamma, temperature_K, c: Conditions):
    """Arrhenius-Kooij alpha (T/300)^beta exp(-gamma/T) [cm^3 s^-1]."""
    return alpha * (temperature_K / 300.0) ** beta * jnp.exp(-gamma / temperature_K)


def ion_polar_1(alpha, beta, gamma, temperature_K, c: Conditions):
    """KIDA ion-polar, first form: alpha beta (0.62 + 0.4767 gamma sqrt(300/T)) [cm^3 s^-1]."""
    return alpha * beta * (0.62 + 0.4767 * gamma * jnp.sqrt(300.0 / temperature_K))


def ion_polar_2(alpha, beta, gamma, temperature_K, c: Conditions):
    """KIDA ion-polar, second form:
    alpha beta (1 + 0.0967 gamma sqrt(300/T) + gamma^2 300/(10.526 T)) [cm^3 s^-1]."""
    return alpha * beta * (
        1.0 + 0.0967 * gamma * jnp.sqrt(300.0 / temperature_K)
        + gamma**2 * 300.0 / (10.526 * temperature_K)
    )


def cosmic_ray(alpha, beta, gamma, temperature_K, c: Conditions):
    """Direct cosmic-ray ionisation alpha zeta [s^-1]."""
    return alpha * c.zeta * jnp.ones_like(temperature_K)


def cr_photon(alpha, beta, gamma, temperature_K, c: Conditions):
    """Cosmic-ray-induced photons alpha gamma/(1-omega) zeta (T/300)^beta [s^-1]."""
    return alpha * gamma / (1.0 - CR_PHOTON_ALBEDO) * c.zeta * (temperature_K / 300.0) ** beta


def photo(alpha, beta, gamma, temperature_K, c: Conditions):
    """Interstellar photoreaction alpha exp(-gamma Av) G0/1.7 [s^-1] (alpha: Draine field)."""
    return (alpha * jnp.exp(-gamma * c.av_mag) * (c.radfield_habing / DRAINE_PER_HABING)
            * jnp.ones_like(temperature_K))


def h2_self_shielding(column_h2_cm2, doppler_b_kms: float = H2_DOPPLER_B_KMS):
    """Draine & Bertoldi (1996) eq. 37: f(N_H2) in (0, 1]; N_H2 in cm^-2."""
    x = jnp.maximum(column_h2_cm2, 0.0) / 5e14
    root = jnp.sqrt(1.0 + x)
    return 0.965 / (1.0 + x / doppler_b_kms) ** 2 + 0.035 / root * jnp.exp(-8.5e-4 * root)


def h2_photodissociation(alpha, beta, gamma, temperature_K, c: Conditions):
    """Photo law times Draine & Bertoldi (1996) H2 self-shielding [s^-1]."""
    return photo(alpha, beta, gamma, temperature_K, c) * h2_self_shielding(c.column_h2_cm2)


def c_photoionisation(alpha, beta, gamma, temperature_K, c: Conditions):
    """C photoionisation with Kamp & Bertoldi (2000) shielding by C and H2 lines [s^-1]."""
    tau = (gamma * c.av_mag + 1.1e-17 * jnp.maximum(c.column_c_cm2, 0.0)
           + 0.9 * c.gas_temperature_K**0.27
           * (jnp.maximum(c.column_h2_cm2, 0.0) / 1.59e21) ** 0.45)
    return alpha * (c.radfield_habing / DRAINE_PER_HABING) * jnp.exp(-tau) * jnp.ones_like(
        temperature_K)


def co_photodissociation(alpha, beta, gamma, temperature_K, c: Conditions,
                         co_table: str = "vdb88"):
    """van Dishoeck & Black (1988) CO photodissociation, alpha (G0/1.7) Theta S [s^-1] (alpha:
    the unattenuated Draine-field rate; gamma unused; see `shielding.py`)."""
    factor = shielding.co_photodissociation_factor(c.column_co_cm2, c.column_h2_cm2, c.av_mag,
                                                   co_table)
    return alpha * (c.radfield_habing / DRAINE_PER_HABING) * factor * jnp.ones_like(temperature_K)


def h2_formation_rate_cm3_s(gas_temperature_K, dust_temperature_K):
    """Cazaux & Tielens (2002, 2004) H2 formation coefficient k [cm^3 s^-1], R = k n_H n(H).

    Silicate and graphite grains; Hollenbach & McKee (1979) sticking coefficient.
    """
    tg, td = gas_temperature_K, dust_temperature_K
    v_thermal_cm_s = 1.45e5 * jnp.sqrt(tg / 100.0)
    sticking = 1.0 / (1.0 + 0.04 * jnp.sqrt(tg + td) + 0.002 * tg + 8e-6 * tg**2)
    flux_ml_s = 1e-10  # flux of H atoms in monolayers per second
    nu_h2, nu_hc = 3e12, 1.3e13  # vibrational frequencies [s^-1]
    e_hc = 3e4  # desorption energy of chemisorbed H [K]

    def efficiency(mu, e_s, e_h2, e_hp):
        barrier = (1.0 + jnp.sqrt((e_hc - e_s) / (e_hp - e_s))) ** 2
        factor1 = mu * flux_ml_s / (2.0 * nu_h2 * jnp.exp(-e_h2 / td))
        factor2 = barrier / 4.0 * jnp.exp(-e_s / td)
        eps = 1.0 / (1.0 + nu_hc / (2.0 * flux_ml_s) * jnp.exp(-1.5 * e_hc / td) * barrier)
        return eps / (1.0 + factor1 + factor2)

    silicate = 8.473e-22 * efficiency(0.005, 110.0, 320.0, 450.0)
    graphite = 7.908e-22 * efficiency(0.005, 260.0, 520.0, 800.0)
    return 0.5 * v_thermal_cm_s * (silicate + graphite) * sticking


def h2_formation(alpha, beta, gamma, temperature_K, c: Conditions):
    """alpha times the Cazaux & Tielens H2 formation coefficient [cm^3 s^-1]."""
    return alpha * h2_formation_rate_cm3_s(c.gas_temperature_K, c.dust_temperature_K) * (
        jnp.ones_like(temperature_K))


RATE_LAWS: dict[str, Callable] = {
    "two_body": two_body,
    "ion_polar_1": ion_polar_1,
    "ion_polar_2": ion_polar_2,
    "cosmic_ray": cosmic_ray,
    "cr_photon": cr_photon,
    "photo": photo,
    "h2_photodissociation": h2_photodissociation,
    "co_photodissociation": co_photodissociation,
    "c_photoionisation": c_photoionisation,
    "h2_formation": h2_formation,
}
RATE_TYPES: tuple[str, ...] = tuple(RATE_LAWS)
# Rate types whose coefficient depends on the state through shielding columns.
SHIELDED_TYPES = frozenset({"h2_photodissociation", "c_photoionisation", "co_photodissociation"})


# Log-linear features: ln(T/300), 1/T, ln n, Av, ln zeta, ln G0.
N_LOG_FEATURES = 6
# Laws evaluated row by row in the fast path (not of the form prefactor * exp(E @ features)).
SPECIAL_TYPES = ("ion_polar_1", "ion_polar_2", "h2_formation", *sorted(SHIELDED_TYPES))
_TINY = 1e-300  # floor inside logs of zeta and G0 (zero gives rate 0, not NaN)


@dataclass(frozen=True, eq=False)
class RateTable:
    """Per-reaction arrays built once from a `Network` (numpy, so they are static under jit).

    alpha, beta, gamma, t_min_K, t_max_K, density_power: float64 [R] (density_power p: the
    flux per H nucleus is k n^p times the reactant abundances); type_code: int [R] into
    `RATE_TYPES`; type_rows: {rate_type: row indices}; upper_open, is_lowest, is_highest: bool
    [R] (temperature-range bookkeeping, see the module docstring); prefactor [R] and
    exponent [R, 6]: the log-linear fast path; h2_index, c_index, co_index: state positions of
    the shielding species (-1 when absent); shielding_column, cloud_size_cm, co_self_shielding:
    the shielding model (module docstring).
    """

    alpha: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray
    t_min_K: np.ndarray
    t_max_K: np.ndarray
    density_power: np.ndarray
    type_code: np.ndarray
    type_rows: dict[str, np.ndarray]
    upper_open: np.ndarray
    is_lowest: np.ndarray
    is_highest: np.ndarray
    prefactor: np.ndarray
    exponent: np.ndarray
    h2_index: int
    c_index: int
    co_index: int
    temperature_policy: str
    shielding_column: str = "cloud"
    cloud_size_cm: float = 0.05 * PARSEC_CM
    co_self_shielding: str = "vdb88"

    @property
    def n_reactions(self) -> int:
        return int(self.alpha.shape[0])


def _log_linear_form(rate_type: str, alpha: float, beta: float, gamma: float, power: float):
    """(prefactor, exponent row [6]) with k n^p = prefactor exp(row @ features)."""
    row = np.zeros(N_LOG_FEATURES)
    row[2] = power
    if rate_type == "two_body":
        row[0], row[1] = beta, -gamma
        return alpha, row
    if rate_type == "cosmic_ray":
        row[4] = 1.0
        return alpha, row
    if rate_type == "cr_photon":
        row[0], row[4] = beta, 1.0
        return alpha * gamma / (1.0 - CR_PHOTON_ALBEDO), row
    if rate_type == "photo":
        row[3], row[5] = -gamma, 1.0
        return alpha / DRAINE_PER_HABING, row
    return 0.0, row  # special types: filled in by their rate law


def build_rate_table(network: Network, temperature_policy: str = "cutoff",
                     shielding_column: str = "cloud", cloud_size_pc: float = 0.05,
                     co_self_shielding: str = "vdb88") -> RateTable:
    """Collect the rate parameters of `network` into arrays; raise on unknown rate types or
    settings (temperature policy and shielding model: see the module docstring)."""
    for name, value, allowed in (("temperature_policy", temperature_policy, TEMPERATURE_POLICIES),
                                 ("shielding_column", shielding_column, SHIELDING_COLUMNS),
                                 ("co_self_shielding", co_self_shielding, CO_SELF_SHIELDING)):
        if value not in allowed:
            raise ValueError(f"{name}: expected one of {allowed}, found {value!r}")
    if not cloud_size_pc > 0:
        raise ValueError(f"cloud_size_pc: expected > 0, found {cloud_size_pc!r}")
    reactions = network.reactions
    for r in reactions:
        if r.rate_type not in RATE_LAWS:
            raise ValueError(
                f"{r.source or network.name}: rate_type expected one of {sorted(RATE_LAWS)}, "
                f"found {r.rate_type!r}")
    alpha = np.array([r.alpha for r in reactions], dtype=np.float64)
    beta = np.array([r.beta for r in reactions], dtype=np.float64)
    gamma = np.array([r.gamma for r in reactions], dtype=np.float64)
    for i, r in enumerate(reactions):
        if r.rate_type == "h2_photodissociation" and r.alpha >= PLACEHOLDER_ALPHA:
            alpha[i], beta[i], gamma[i] = H2_PHOTO_ALPHA_S, 0.0, H2_PHOTO_GAMMA
        if r.rate_type == "co_photodissociation":
            alpha[i], beta[i], gamma[i] = shielding.CO_PHOTO_ALPHA_S, 0.0, 0.0
    t_min = np.array([r.t_min_K for r in reactions], dtype=np.float64)
    t_max = np.array([r.t_max_K for r in reactions], dtype=np.float64)
    bad = np.flatnonzero(~(t_max >= t_min))
    if bad.size:
        r = reactions[int(bad[0])]
        raise ValueError(f"{r.source or network.name}: t_max_K >= t_min_K expected, found "
                         f"t_min_K={r.t_min_K}, t_max_K={r.t_max_K}")
    power = np.array([1.0 if r.rate_type == "h2_formation" else len(r.reactants) - 1.0
                      for r in reactions], dtype=np.float64)
    type_code = np.array([RATE_TYPES.index(r.rate_type) for r in reactions], dtype=np.int32)
    type_rows = {
        name: np.flatnonzero(type_code == code).astype(np.int32)
        for code, name in enumerate(RATE_TYPES) if np.any(type_code == code)
    }
    forms = [_log_linear_form(r.rate_type, a, b, g, p)
             for r, a, b, g, p in zip(reactions, alpha, beta, gamma, power, strict=True)]
    prefactor = np.array([f[0] for f in forms], dtype=np.float64)
    exponent = np.stack([f[1] for f in forms]) if forms else np.zeros((0, N_LOG_FEATURES))

    rows_of: dict[tuple, list[int]] = {}
    for i, r in enumerate(reactions):
        key = (tuple(sorted(r.reactants)), tuple(sorted(r.products)), r.rate_type)
        rows_of.setdefault(key, []).append(i)
    upper_open = np.zeros(len(reactions), dtype=bool)
    is_lowest = np.zeros(len(reactions), dtype=bool)
    is_highest = np.zeros(len(reactions), dtype=bool)
    for rows in rows_of.values():
        lo, hi = min(t_min[rows]), max(t_max[rows])
        for i in rows:
            is_lowest[i], is_highest[i] = t_min[i] == lo, t_max[i] == hi
            upper_open[i] = any(t_min[j] == t_max[i] and t_max[j] > t_max[i] for j in rows)

    def index_or_missing(name: str) -> int:
        try:
            return network.index(name)
        except KeyError:
            return -1

    return RateTable(
        alpha=alpha, beta=beta, gamma=gamma, t_min_K=t_min, t_max_K=t_max, density_power=power,
        type_code=type_code, type_rows=type_rows, upper_open=upper_open, is_lowest=is_lowest,
        is_highest=is_highest, prefactor=prefactor, exponent=exponent,
        h2_index=index_or_missing("H2"), c_index=index_or_missing("C"),
        co_index=index_or_missing("CO"), temperature_policy=temperature_policy,
        shielding_column=shielding_column, cloud_size_cm=float(cloud_size_pc) * PARSEC_CM,
        co_self_shielding=co_self_shielding,
    )


def shielding_column_h_cm2(table: RateTable, density_cm3, av_mag):
    """N_H [cm^-2] that multiplies x_H2, x_C, x_CO in the shielding columns (module docstring)."""
    if table.shielding_column == "cloud":
        return 0.5 * table.cloud_size_cm * density_cm3
    return NH_PER_AV_CM2 * av_mag


def rate_law(table: RateTable, rate_type: str) -> Callable:
    """`RATE_LAWS[rate_type]` with the table's options bound (the CO shielding table)."""
    if rate_type == "co_photodissociation":
        return functools.partial(co_photodissociation, co_table=table.co_self_shielding)
    return RATE_LAWS[rate_type]


def active_rows(table: RateTable, gas_temperature_K) -> jax.Array:
    """1.0 where a row applies at T under the table's temperature policy, else 0.0. [R]

    Limits are compared with a relative tolerance `RANGE_RTOL`: T within it of a limit counts as
    on the limit (see the module docstring).
    """
    t = gas_temperature_K
    t_min, t_max = table.t_min_K, table.t_max_K
    if table.temperature_policy == "cutoff":
        t_min = np.where(t_min <= DATABASE_FLOOR_K, 0.0, t_min)
    # Snapped limits: lower ones (and the shared end of touching ranges) move down, closed upper
    # ones up, so T = limit (1 +- RANGE_RTOL) selects exactly the rows T = limit does.
    lower = jnp.asarray(t_min * (1.0 - RANGE_RTOL))
    upper_open = jnp.asarray(t_max * (1.0 - RANGE_RTOL))
    upper_closed = jnp.asarray(t_max * (1.0 + RANGE_RTOL))
    below_top = jnp.where(jnp.asarray(table.upper_open), t < upper_open, t <= upper_closed)
    active = (t >= lower) & below_top
    if table.temperature_policy != "cutoff":
        active = active | (jnp.asarray(table.is_lowest) & (t < lower)) | (
            jnp.asarray(table.is_highest) & (t > upper_closed))
    return active.astype(jnp.float64)


def row_temperatures(table: RateTable, gas_temperature_K) -> jax.Array:
    """Temperature at which each row's law is evaluated [R] (clamped under "clamp")."""
    t = jnp.asarray(gas_temperature_K, jnp.float64)
    if table.temperature_policy == "clamp":
        return jnp.clip(t, jnp.asarray(table.t_min_K), jnp.asarray(table.t_max_K))
    return jnp.full((table.n_reactions,), t)


def make_conditions(density_cm3, gas_temperature_K, av_mag, radfield_habing, zeta,
                    table: RateTable | None = None, abundances=None,
                    dust_temperature_K=None) -> Conditions:
    """Scalars -> `Conditions`; shielding columns N_X = x_X N_H (`shielding_column_h_cm2`; zero
    without abundances)."""
    f64 = jnp.float64
    av = jnp.asarray(av_mag, f64)
    column_h = (shielding_column_h_cm2(table, jnp.asarray(density_cm3, f64), av)
                if table is not None else None)

    def column(index: int):
        if abundances is None or table is None or index < 0:
            return jnp.zeros((), f64)
        return jnp.asarray(abundances, f64)[index] * column_h

    tg = jnp.asarray(gas_temperature_K, f64)
    return Conditions(
        density_cm3=jnp.asarray(density_cm3, f64), gas_temperature_K=tg, av_mag=av,
        radfield_habing=jnp.asarray(radfield_habing, f64), zeta=jnp.asarray(zeta, f64),
        dust_temperature_K=tg if dust_temperature_K is None else jnp.asarray(dust_temperature_K,
                                                                             f64),
        column_h2_cm2=column(table.h2_index if table else -1),
        column_c_cm2=column(table.c_index if table else -1),
        column_co_cm2=column(table.co_index if table else -1),
    )


def coefficients_from_conditions(table: RateTable, c: Conditions) -> jax.Array:
    """Rate coefficient of every reaction [R] (cm^3 s^-1 or s^-1) at conditions `c`, law by law
    from `RATE_LAWS` (the reference the fast `effective_coefficients` is tested against)."""
    t_row = row_temperatures(table, c.gas_temperature_K)
    k = jnp.zeros(table.n_reactions, dtype=jnp.float64)
    for name, rows in table.type_rows.items():
        values = rate_law(table, name)(
            jnp.asarray(table.alpha[rows]), jnp.asarray(table.beta[rows]),
            jnp.asarray(table.gamma[rows]), t_row[rows], c)
        k = k.at[rows].set(values)
    return k * active_rows(table, c.gas_temperature_K)


def effective_coefficients(table: RateTable, c: Conditions) -> jax.Array:
    """k n^p [R] (s^-1): multiply by the reactant abundances to get the flux per H nucleus.

    One exp per reaction for the log-linear laws; see the module docstring.
    """
    t = c.gas_temperature_K
    ln_n = jnp.log(c.density_cm3)
    rest = jnp.stack([ln_n, c.av_mag, jnp.log(jnp.maximum(c.zeta, _TINY)),
                      jnp.log(jnp.maximum(c.radfield_habing, _TINY))])
    exponent = jnp.asarray(table.exponent)
    if table.temperature_policy == "clamp":
        t_row = row_temperatures(table, t)
        log_k = (exponent[:, 0] * jnp.log(t_row / 300.0) + exponent[:, 1] / t_row
                 + exponent[:, 2:] @ rest)
    else:
        t_row = None
        features = jnp.concatenate([jnp.stack([jnp.log(t / 300.0), 1.0 / t]), rest])
        log_k = exponent @ features
    k_eff = jnp.asarray(table.prefactor) * jnp.exp(log_k)
    for name in SPECIAL_TYPES:
        rows = table.type_rows.get(name)
        if rows is None:
            continue
        t_special = t_row[rows] if t_row is not None else jnp.full(rows.shape, t)
        law = rate_law(table, name)(jnp.asarray(table.alpha[rows]), jnp.asarray(table.beta[rows]),
                                    jnp.asarray(table.gamma[rows]), t_special, c)
        k_eff = k_eff.at[rows].set(law * jnp.exp(jnp.asarray(table.density_power[rows]) * ln_n))
    return k_eff * active_rows(table, t)


def rate_coefficients(table: RateTable, density_cm3, gas_temperature_K, av_mag, radfield_habing,
                      zeta, abundances=None) -> jax.Array:
    """Per-reaction coefficient k [R]: cm^3 s^-1 (two-body, h2_formation) or s^-1 (first order).

    Scalars in (units in the module docstring). `abundances` [S] (fractions of H nuclei) feed the
    shielding columns; without them shielded rates are unshielded.
    """
    c = make_conditions(density_cm3, gas_temperature_K, av_mag, radfield_habing, zeta,
                        table=table, abundances=abundances)
    return coefficients_from_conditions(table, c)
