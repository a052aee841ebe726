"""Photodissociation shielding: CO self-shielding and dust attenuation with grain scattering.

Pure jnp functions of column densities [cm^-2] and Av [mag]; differentiable (the solver's Jacobian
differentiates the shielded rates with respect to the shielding species).

CO photodissociation (van Dishoeck & Black 1988, ApJ 334, 771; the treatment of UCLCHEM and
UCL_PDR):

    k_CO = k0 (G0 / 1.7) Theta(N_CO, N_H2) S(lambda_bar, Av)

- k0 = 2e-10 s^-1 (`CO_PHOTO_ALPHA_S`): the unattenuated rate in the Draine field, with which
  Theta was computed; G0 in Habing.
- Theta: shielding of the dissociating bands by 12CO lines (self-shielding) and H2 lines, their
  Table 5: log10 Theta on log10 N(CO) = 12..19 x log10 N(H2) = 18..23 (`LOG_THETA_CO`), read at
  log10(N + 1) clamped to the grid and interpolated by a bicubic natural spline (tensor product
  of natural cubic splines, the two-pass `splie2`/`splin2` scheme of Numerical Recipes).
- lambda_bar: eq. 4, the mean wavelength of the dissociating bands weighted by their contribution
  at that depth, clamped to [913.6, 1076.1] Angstrom (bands 1 and 33).
- S(lambda, Av): dust attenuation including scattering by grains of albedo 0.3 and asymmetry
  g = 0.8: the Wagenblast & Hartquist (1989, MNRAS 237, 1019) fit to Flannery, Roberge & Rybicki
  (1980, ApJ 236, 598), sum_i c_i exp(-k_i tau_lambda) (one term for tau_lambda < 1, five beyond),
  tau_lambda = (Av / 1.086) tau_lambda/tau_V with tau_lambda/tau_V from the Savage & Mathis (1979,
  ARA&A 17, 73, Table 2) extinction curve for R_V = 3.1 (natural cubic spline in wavelength).

Table layouts (`CO_SHIELDING_TABLES`):
- "vdb88": Table 5 as published.
- "uclchem_v3": the same 48 numbers as UCLCHEM v3 (photoreactions.f90) interpolates them: it stores
  the 8 x 6 table but hands it to its spline routines as 7 x 6 (DIMCO = 7), and Fortran passes
  arrays by storage order, so those routines read the first 42 stored values, column by column, as
  a table on log10 N(CO) = 12..18: a scrambled Theta (> 1 near N(CO) = 1e14 cm^-2). Not physical;
  kept to cross-check against UCLCHEM runs. Measured on the shared translucent reference (n_H =
  1e3 cm^-3, 20 K, Av 2.1): 3e-4 dex median |dlog10| at 1 Myr with it, 0.04 dex with "vdb88".
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# Unattenuated CO photodissociation rate in the Draine field [s^-1] (van Dishoeck & Black 1988).
CO_PHOTO_ALPHA_S = 2.0e-10

# van Dishoeck & Black (1988) Table 5: log10 Theta [N(H2) row, N(CO) column].
LOG10_N_CO_GRID = np.arange(12.0, 20.0)  # log10 N(CO) [cm^-2]
LOG10_N_H2_GRID = np.arange(18.0, 24.0)  # log10 N(H2) [cm^-2]
_VDB88_TABLE5 = np.array([
    [0.000, -1.408e-2, -1.099e-1, -4.400e-1, -1.154, -1.888, -2.760, -4.001],
    [-8.539e-2, -1.015e-1, -2.104e-1, -5.608e-1, -1.272, -1.973, -2.818, -4.055],
    [-1.451e-1, -1.612e-1, -2.708e-1, -6.273e-1, -1.355, -2.057, -2.902, -4.122],
    [-4.559e-1, -4.666e-1, -5.432e-1, -8.665e-1, -1.602, -2.303, -3.146, -4.421],
    [-1.303, -1.312, -1.367, -1.676, -2.305, -3.034, -3.758, -5.077],
    [-3.883, -3.888, -3.936, -4.197, -4.739, -5.165, -5.441, -6.446],
])

# Savage & Mathis (1979) Table 2: wavelength [Angstrom] and tau_lambda / tau_V (R_V = 3.1).
_LAMBDA_GRID_A = np.array([
    910.0, 950.0, 1000.0, 1050.0, 1110.0, 1180.0, 1250.0, 1390.0, 1490.0, 1600.0, 1700.0, 1800.0,
    1900.0, 2000.0, 2100.0, 2190.0, 2300.0, 2400.0, 2500.0, 2740.0, 3440.0, 4000.0, 4400.0,
    5500.0, 7000.0, 9000.0, 12500.0, 22000.0, 34000.0, 1.0e9])
_TAU_RATIO_GRID = np.array([
    5.76, 5.18, 4.65, 4.16, 3.73, 3.40, 3.11, 2.74, 2.63, 2.62, 2.54, 2.50, 2.58, 2.78, 3.01, 3.12,
    2.86, 2.58, 2.35, 2.00, 1.58, 1.42, 1.32, 1.00, 0.75, 0.48, 0.28, 0.12, 0.05, 0.00])
# Wagenblast & Hartquist (1989): c_0 exp(-k_0 tau) below tau = 1, sum_i>0 c_i exp(-k_i tau) above.
_SCATTER_C = np.array([1.0, 2.006, -1.438, 7.364e-1, -5.076e-1, -5.920e-2])
_SCATTER_K = np.array([7.514e-1, 8.490e-1, 1.013, 1.282, 2.005, 5.832])
_MAG_PER_TAU = 1.086  # Av = 1.086 tau_V
LAMBDA_BAR_RANGE_A = (913.6, 1076.1)


def natural_spline_matrix(x: np.ndarray) -> np.ndarray:
    """M [n, n] with y'' = M @ y at the knots x [n] of the natural cubic spline through y."""
    n = x.size
    lhs, rhs = np.zeros((n, n)), np.zeros((n, n))
    lhs[0, 0] = lhs[-1, -1] = 1.0
    for i in range(1, n - 1):
        left, right = x[i] - x[i - 1], x[i + 1] - x[i]
        lhs[i, i - 1:i + 2] = left / 6.0, (left + right) / 3.0, right / 6.0
        rhs[i, i - 1:i + 2] = 1.0 / left, -1.0 / left - 1.0 / right, 1.0 / right
    return np.linalg.solve(lhs, rhs)


class NaturalSpline:
    """Natural cubic spline on fixed knots (x clamped to [knots[0], knots[-1]]).

    `__call__(values, second, x)` evaluates along the last axis of `values` [..., n] with their
    knot second derivatives `second` [..., n] (`second_derivatives`): the Numerical Recipes
    `splint` formula. No search loop: the interval is a count of knots passed (small grids),
    which keeps the shielded rates cheap inside the solver's right-hand side.
    """

    def __init__(self, knots: np.ndarray):
        self.knots = np.asarray(knots, dtype=np.float64)
        self.matrix = natural_spline_matrix(self.knots)

    def second_derivatives(self, values):
        """values [..., n] -> second derivatives [..., n] (numpy in, numpy out; jnp in, jnp out)."""
        if isinstance(values, np.ndarray):
            return values @ self.matrix.T
        return values @ jnp.asarray(self.matrix.T)

    def __call__(self, values, second, x):
        knots = jnp.asarray(self.knots)
        x = jnp.clip(x, knots[0], knots[-1])
        # Interval k by counting knots passed; one-hot weights instead of gathers (cheaper under
        # vmap on CPU for these few knots).
        k = jnp.sum(x >= knots[1:-1])
        index = jnp.arange(self.knots.size)
        left, right = index == k, index == k + 1
        h = jnp.sum(jnp.where(right, knots, 0.0)) - jnp.sum(jnp.where(left, knots, 0.0))
        a = (jnp.sum(jnp.where(right, knots, 0.0)) - x) / h
        b = 1.0 - a
        linear = jnp.where(left, a, 0.0) + jnp.where(right, b, 0.0)
        curve = (jnp.where(left, a**3 - a, 0.0) + jnp.where(right, b**3 - b, 0.0)) * h**2 / 6.0
        return values @ linear + second @ curve


class COShieldingTable:
    """log10 Theta [n_co, n_h2] on its grid, interpolated as a tensor-product natural spline:
    along N(H2) for every N(CO) knot (second derivatives precomputed), then along N(CO)."""

    def __init__(self, log10_n_co: np.ndarray, log10_theta: np.ndarray):
        self.log10_theta = np.asarray(log10_theta, dtype=np.float64)
        self.co = NaturalSpline(log10_n_co)
        self.h2 = NaturalSpline(LOG10_N_H2_GRID)
        self.second_h2 = self.h2.second_derivatives(self.log10_theta)

    def __call__(self, column_co_cm2, column_h2_cm2):
        """Theta in (0, ~1]: the shielding factor of CO photodissociation."""
        log_co = jnp.log10(jnp.maximum(column_co_cm2, 0.0) + 1.0)
        log_h2 = jnp.log10(jnp.maximum(column_h2_cm2, 0.0) + 1.0)
        at_h2 = self.h2(jnp.asarray(self.log10_theta), jnp.asarray(self.second_h2), log_h2)
        return 10.0 ** self.co(at_h2, self.co.second_derivatives(at_h2), log_co)


def _uclchem_v3_layout() -> tuple[np.ndarray, np.ndarray]:
    """(log10 N(CO) grid [7], table [7, 6]): Table 5 stored column-major as an 8 x 6 array and
    read back as 7 x 6 (see the module docstring)."""
    stored = _VDB88_TABLE5.reshape(-1)  # [N(CO), N(H2)] column-major = the rows of Table 5 above
    return LOG10_N_CO_GRID[:7], stored[:42].reshape(6, 7).T


CO_SHIELDING_TABLES: dict[str, COShieldingTable] = {
    "vdb88": COShieldingTable(LOG10_N_CO_GRID, _VDB88_TABLE5.T),
    "uclchem_v3": COShieldingTable(*_uclchem_v3_layout()),
}

_TAU_RATIO_SPLINE = NaturalSpline(_LAMBDA_GRID_A)
_TAU_RATIO_SECOND = _TAU_RATIO_SPLINE.second_derivatives(_TAU_RATIO_GRID)


def tau_ratio(wavelength_A):
    """tau_lambda / tau_V (Savage & Mathis 1979, natural cubic spline, floored at 0)."""
    value = _TAU_RATIO_SPLINE(jnp.asarray(_TAU_RATIO_GRID), jnp.asarray(_TAU_RATIO_SECOND),
                              wavelength_A)
    return jnp.maximum(value, 0.0)


# The same spline on the knots that bracket the CO bands (lambda_bar in [913.6, 1076.1] A):
# identical values there, 6 knots to search instead of 30 inside the solver's RHS.
_CO_BAND_KNOTS = 6
_CO_BAND_SPLINE = NaturalSpline(_LAMBDA_GRID_A[:_CO_BAND_KNOTS])


def _tau_ratio_co_bands(wavelength_A):
    return jnp.maximum(_CO_BAND_SPLINE(jnp.asarray(_TAU_RATIO_GRID[:_CO_BAND_KNOTS]),
                                       jnp.asarray(_TAU_RATIO_SECOND[:_CO_BAND_KNOTS]),
                                       wavelength_A), 0.0)


def dust_attenuation(wavelength_A, av_mag, ratio=tau_ratio):
    """S(lambda, Av) in (0, 1]: UV attenuation by dust including grain scattering (Wagenblast &
    Hartquist 1989). `ratio`: tau_lambda / tau_V as a function of wavelength."""
    tau = jnp.maximum(av_mag, 0.0) / _MAG_PER_TAU * ratio(wavelength_A)
    c, k = jnp.asarray(_SCATTER_C), jnp.asarray(_SCATTER_K)
    thin = c[0] * jnp.exp(-k[0] * tau)
    thick = jnp.sum(c[1:] * jnp.exp(-k[1:] * tau[..., None]), axis=-1)
    return jnp.where(tau < 1.0, thin, thick)


def co_band_wavelength_A(column_co_cm2, column_h2_cm2):
    """lambda_bar [Angstrom] of van Dishoeck & Black (1988) eq. 4."""
    lu = jnp.log10(jnp.abs(column_co_cm2) + 1.0)
    lw = jnp.log10(jnp.abs(column_h2_cm2) + 1.0)
    value = (5675.0 - 200.6 * lw) - (571.6 - 24.09 * lw) * lu + (18.22 - 0.7664 * lw) * lu**2
    return jnp.clip(value, *LAMBDA_BAR_RANGE_A)


def co_photodissociation_factor(column_co_cm2, column_h2_cm2, av_mag, table: str = "vdb88"):
    """Theta(N_CO, N_H2) S(lambda_bar, Av): multiply by k0 G0/1.7 for the CO rate [s^-1]."""
    theta = CO_SHIELDING_TABLES[table](column_co_cm2, column_h2_cm2)
    wavelength = co_band_wavelength_A(column_co_cm2, column_h2_cm2)
    return theta * dust_attenuation(wavelength, av_mag, ratio=_tau_ratio_co_bands)
