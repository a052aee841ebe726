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
  (1996, ApJ 468, 269, eq. 37) with Doppler parameter `H2_DOPPLER_B_KMS`; N(H2) = x_H2 N_H and
  N_H = 1.6e21 Av cm^-2 (Bohlin et al. 1978). UCLCHEM's network carries a placeholder row
  (alpha = 1); a row with alpha >= `PLACEHOLDER_ALPHA` gets the unshielded Draine-field rate
  `H2_PHOTO_ALPHA_S` (Heays et al. 2017, A&A 602, A105) and the dust attenuation exp(-3.74 Av)
  of Draine & Bertoldi (1996).
- "c_photoionisation": alpha G0/1.7 exp(-tau_C) with the Kamp & Bertoldi (2000, A&A 353, 276)
  optical depth tau_C = gamma Av + 1.1e-17 N(C) + 0.9 T^0.27 (N(H2)/1.59e21)^0.45 (C
  self-shielding and H2 line overlap); N(C) = x_C N_H.
- "co_photodissociation": the plain photo law (CO self-shielding is not modelled; documented gap).
- "h2_formation": H2 formation on grains, Cazaux & Tielens (2002, ApJ 575, L29; 2004, ApJ 604,
  222) efficiency on silicate and graphite grains with the Hollenbach & McKee (1979) sticking
  coefficient, as in UCL_PDR/UCLCHEM:
  k = 0.5 v_th(T) [sigma_sil eps_sil(Td) + sigma_gra eps_gra(Td)] S(T, Td)  [cm^3 s^-1],
  v_th = 1.45e5 sqrt(T/100) cm s^-1, sigma per H nucleus (8.473e-22 and 7.908e-22 cm^2). The
  formation rate is R = k n_H n(H) [cm^-3 s^-1]: first order in atomic H times n_H; the solver
  removes two H per H2. The row's alpha multiplies k (UCLCHEM's H2FORM row has alpha = 1).
  The dust temperature equals the gas temperature (we carry no separate dust temperature).

Temperature ranges: reactions sharing reactants, products and rate type with several rows are
alternatives for different temperature ranges. At each T exactly one of them is active: the row
whose [t_min, t_max] contains T (the first such row when ranges touch), otherwise the row whose
range is nearest to T. The active row is evaluated at T clamped into its own range ("clamp",
the default; UMIST's advice against extrapolation) or at T itself ("extrapolate").
`build_rate_table(..., temperature_policy=...)` chooses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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
TEMPERATURE_POLICIES = ("clamp", "extrapolate")


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


def co_photodissociation(alpha, beta, gamma, temperature_K, c: Conditions):
    """CO photodissociation: the plain photo law (no CO self-shielding) [s^-1]."""
    return photo(alpha, beta, gamma, temperature_K, c)


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


@dataclass(frozen=True, eq=False)
class RateTable:
    """Per-reaction arrays built once from a `Network` (numpy, so they are static under jit).

    alpha, beta, gamma, t_min_K, t_max_K: float64 [R]; type_code: int [R] into `RATE_TYPES`;
    group: int [R], rows that are temperature-range alternatives of one reaction share a group
    (n_groups groups); type_rows: {rate_type: row indices}; h2_index, c_index, co_index: state
    positions of the shielding species (-1 when absent).
    """

    alpha: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray
    t_min_K: np.ndarray
    t_max_K: np.ndarray
    type_code: np.ndarray
    group: np.ndarray
    n_groups: int
    has_alternatives: bool
    type_rows: dict[str, np.ndarray]
    h2_index: int
    c_index: int
    co_index: int
    temperature_policy: str

    @property
    def n_reactions(self) -> int:
        return int(self.alpha.shape[0])


def build_rate_table(network: Network, temperature_policy: str = "clamp") -> RateTable:
    """Collect the rate parameters of `network` into arrays; raise on unknown rate types."""
    if temperature_policy not in TEMPERATURE_POLICIES:
        raise ValueError(
            f"temperature_policy: expected one of {TEMPERATURE_POLICIES}, "
            f"found {temperature_policy!r}")
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
    t_min = np.array([r.t_min_K for r in reactions], dtype=np.float64)
    t_max = np.array([r.t_max_K for r in reactions], dtype=np.float64)
    bad = np.flatnonzero(~(t_max >= t_min))
    if bad.size:
        r = reactions[int(bad[0])]
        raise ValueError(f"{r.source or network.name}: t_max_K >= t_min_K expected, found "
                         f"t_min_K={r.t_min_K}, t_max_K={r.t_max_K}")
    type_code = np.array([RATE_TYPES.index(r.rate_type) for r in reactions], dtype=np.int32)
    keys: dict[tuple, int] = {}
    group = np.array(
        [keys.setdefault((tuple(sorted(r.reactants)), tuple(sorted(r.products)), r.rate_type),
                         len(keys)) for r in reactions], dtype=np.int32)
    type_rows = {
        name: np.flatnonzero(type_code == code).astype(np.int32)
        for code, name in enumerate(RATE_TYPES) if np.any(type_code == code)
    }

    def index_or_missing(name: str) -> int:
        try:
            return network.index(name)
        except KeyError:
            return -1

    return RateTable(
        alpha=alpha, beta=beta, gamma=gamma, t_min_K=t_min, t_max_K=t_max, type_code=type_code,
        group=group, n_groups=len(keys), has_alternatives=len(keys) < len(reactions),
        type_rows=type_rows, h2_index=index_or_missing("H2"), c_index=index_or_missing("C"),
        co_index=index_or_missing("CO"), temperature_policy=temperature_policy,
    )


def active_rows(table: RateTable, gas_temperature_K) -> jax.Array:
    """1.0 for the row of each temperature-range group that applies at T, else 0.0. [R]"""
    t_min, t_max = jnp.asarray(table.t_min_K), jnp.asarray(table.t_max_K)
    distance = jnp.maximum(jnp.maximum(t_min - gas_temperature_K, gas_temperature_K - t_max), 0.0)
    if not table.has_alternatives:
        return jnp.ones_like(distance)
    group = jnp.asarray(table.group)
    best = jax.ops.segment_min(distance, group, num_segments=table.n_groups)
    candidate = distance <= best[group]
    rows = jnp.arange(table.n_reactions)
    first = jax.ops.segment_min(jnp.where(candidate, rows, table.n_reactions), group,
                                num_segments=table.n_groups)
    return (rows == first[group]).astype(distance.dtype)


def make_conditions(density_cm3, gas_temperature_K, av_mag, radfield_habing, zeta,
                    table: RateTable | None = None, abundances=None,
                    dust_temperature_K=None) -> Conditions:
    """Scalars -> `Conditions`; shielding columns N_X = x_X 1.6e21 Av (zero without abundances)."""
    f64 = jnp.float64
    av = jnp.asarray(av_mag, f64)
    column_h = NH_PER_AV_CM2 * av

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
    """Rate coefficient of every reaction [R] (cm^3 s^-1 or s^-1) at conditions `c`."""
    t = c.gas_temperature_K
    t_min, t_max = jnp.asarray(table.t_min_K), jnp.asarray(table.t_max_K)
    t_row = jnp.clip(t, t_min, t_max) if table.temperature_policy == "clamp" else jnp.full_like(
        t_min, t)
    k = jnp.zeros(table.n_reactions, dtype=jnp.float64)
    for name, rows in table.type_rows.items():
        values = RATE_LAWS[name](
            jnp.asarray(table.alpha[rows]), jnp.asarray(table.beta[rows]),
            jnp.asarray(table.gamma[rows]), t_row[rows], c)
        k = k.at[rows].set(values)
    if table.has_alternatives:
        k = k * active_rows(table, t)
    return k


def rate_coefficients(table: RateTable, density_cm3, gas_temperature_K, av_mag, radfield_habing,
                      zeta, abundances=None) -> jax.Array:
    """Per-reaction coefficient k [R]: cm^3 s^-1 (two-body, h2_formation) or s^-1 (first order).

    Scalars in (units in the module docstring). `abundances` [S] (fractions of H nuclei) feed the
    shielding columns; without them shielded rates are unshielded.
    """
    c = make_conditions(density_cm3, gas_temperature_K, av_mag, radfield_habing, zeta,
                        table=table, abundances=abundances)
    return coefficients_from_conditions(table, c)
