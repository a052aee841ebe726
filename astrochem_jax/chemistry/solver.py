"""Float64 stiff integration of gas-phase networks along physical tracks (diffrax Kvaerno5).

State: fractional abundances x [S] (fractions of H nuclei, linear space). For reaction r with
kinetic reactants a, b, ... the flux per H nucleus is

    f_r = k_r x_a x_b ... n_H^(p_r)      [s^-1],  p_r = order - 1 (h2_formation: p_r = 1)

and dx/dt = sum_r nu[:, r] f_r over the nonzero net stoichiometric coefficients (a dense matmul
for small networks; for large ones dense rows for the few species in many reactions plus a padded
gather table for the rest: XLA's CPU scatter was the slowest part of the RHS). Every reaction is
element- and charge-balanced, so the RHS conserves elements and charge exactly up to round-off.

The Jacobian is analytic and injected with `jax.custom_jvp`: df_r/dx_a = k_r n^p_r x_b ...
(the product of the OTHER reactants, so no division by small abundances), assembled into a dense
S x S matrix by one scatter-add at precomputed positions; the tangent is J @ v. Diffrax's
Kvaerno5 uses the chord method (`VeryChord`): lineax materialises I - h gamma J once per step (vmap
of the linearised RHS over the identity; `apply_jacobian`'s batching rule then returns J instead of
J @ I) and LU-factorises it. Shielded photo rates depend on x_H2, x_C, x_CO through column
densities; that dependence is added as three extra columns.

Physical conditions between track nodes are piecewise linear in log10 of each parameter versus
time, exact (bit for bit) at nodes and on constant segments (`interpolate_physical`). Node times
where the track has a significant kink (`SolverSettings.node_kink_dex`) are passed to the PID
controller as `step_ts` (steps end exactly there; `jump_ts` is available for discontinuous
conditions). Times are years at the interface, seconds inside. Failures
(max_steps, step-size collapse, non-finite output) come back as per-tracer result codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from astrochem_jax.chemistry import rates as rates_mod
from astrochem_jax.chemistry.network import Network

# Last axis of track arrays; units cm^-3, K, mag, Habing, 1.3e-17 s^-1.
PHYSICAL_COLUMNS: tuple[str, ...] = ("Density", "gasTemp", "Av", "Radfield", "zeta")
SECONDS_PER_YEAR = 3.15576e7  # Julian year
MAX_KINETIC_REACTANTS = 3
# Below this many S x R entries the RHS scatters with a dense matmul (measured ~2.5x faster than
# segment_sum for 34 species x 381 reactions; 2.5x slower for 164 x 2236).
DENSE_STOICHIOMETRY_MAX_ENTRIES = 50_000
# Larger networks: species in more than this many reactions (e-, H2, H, ...) get dense rows, the
# rest a padded gather table (measured 1.6x faster than segment_sum for 164 x 2236).
HEAVY_SPECIES_MIN_REACTIONS = 48
# Result codes: 0 = success, 1.. = diffrax RESULTS indices; NONFINITE = a finite-looking
# "success" whose output holds NaN/inf (never accepted silently).
RESULT_SUCCESS = 0
RESULT_NONFINITE = 100

SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "kvaerno5": diffrax.Kvaerno5,
    "kvaerno4": diffrax.Kvaerno4,
    "kvaerno3": diffrax.Kvaerno3,
}


@dataclass(frozen=True)
class SolverSettings:
    """Integration settings. rtol/atol apply to fractional abundances; atol <= 1e-30 was
    measured to reject half the steps. pcoeff/icoeff: diffrax PID controller gains."""

    rtol: float = 1e-6
    atol: float = 1e-20
    max_steps: int = 20_000
    solver: str = "kvaerno5"
    batch_size: int = 16
    pcoeff: float = 0.0
    icoeff: float = 1.0
    temperature_policy: str = "cutoff"  # see rates.py: "cutoff" | "clamp" | "extrapolate"
    # Shielding model (rates.py): column N_H = 0.5 n_H cloud_size ("cloud", UCLCHEM) or
    # 1.6e21 Av ("av"); CO self-shielding table "vdb88" or "uclchem_v3" (UCLCHEM's layout).
    shielding_column: str = "cloud"
    cloud_size_pc: float = 0.05
    co_self_shielding: str = "vdb88"
    # How track nodes reach the step-size controller: "step_ts" (steps end exactly at nodes:
    # right for kinks, where the conditions are continuous) or "jump_ts" (also restarts the
    # solver across the node, needed only for discontinuous conditions).
    node_stops: str = "step_ts"
    # Only nodes whose kink is significant become stops: the slope change of any log10 parameter
    # times the shorter neighbouring interval, in dex (0 = every node). Finely sampled smooth
    # tracks (the collapse: 300 nodes) have mostly negligible kinks; stopping at all of them
    # costs ~1.5x the steps, skipping all costs rejected steps at the real kinks (measured on
    # 34-species collapse tracks: 1e-3 dex -> 6e-5 dex max change vs stopping at every node).
    node_kink_dex: float = 1e-3

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SolveResult:
    """abundances [B, T, S] float64; result_code, n_steps, n_accepted, n_rejected [B] int64."""

    abundances: np.ndarray
    result_code: np.ndarray
    n_steps: np.ndarray
    n_accepted: np.ndarray
    n_rejected: np.ndarray
    output_time_years: np.ndarray
    species: tuple[str, ...] = field(default_factory=tuple)

    @property
    def success(self) -> np.ndarray:
        return self.result_code == RESULT_SUCCESS


# --- network structure ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Kinetics:
    """Index arrays of a network (numpy; static under jit).

    kinetic_index [R, 3]: state positions of the reactants that enter the flux (pad = S, which
    points at a constant 1.0 appended to the state); density_power [R];
    entry_reaction, entry_species, entry_coeff [E]: nonzero net stoichiometric coefficients,
    sorted by species; jac_flat [Ej], jac_entry [Ej], jac_slot [Ej]: Jacobian scatter plan,
    J.flat[jac_flat] += entry_coeff[jac_entry] * partial[entry_reaction[jac_entry], jac_slot];
    shield_index [3]: positions of H2, C, CO (pad = S).
    """

    n_species: int
    n_reactions: int
    kinetic_index: np.ndarray
    density_power: np.ndarray
    entry_reaction: np.ndarray
    entry_species: np.ndarray
    entry_coeff: np.ndarray
    jac_flat: np.ndarray
    jac_entry: np.ndarray
    jac_slot: np.ndarray
    shield_index: np.ndarray
    has_shielding: bool
    stoichiometry_dense: np.ndarray | None  # [S, R] net coefficients when dense is faster
    gather_reaction: np.ndarray  # [S, L] reactions of light species (pad = R)
    gather_coeff: np.ndarray  # [S, L] their net coefficients (0 in padding and heavy rows)
    heavy_species: np.ndarray  # [H] species with dense rows
    heavy_stoichiometry: np.ndarray  # [H, R]


def build_kinetics(network: Network, table: rates_mod.RateTable) -> Kinetics:
    """Index arrays for the RHS and Jacobian; raises naming the reaction on unknown species."""
    s_count = network.n_species
    position = {name: i for i, name in enumerate(network.species)}

    def locate(name: str, reaction) -> int:
        if name in position:
            return position[name]
        try:
            return network.index(name)
        except KeyError:
            raise ValueError(
                f"{reaction.source or network.name}: species {name!r} of reaction "
                f"{' + '.join(reaction.reactants)} -> {' + '.join(reaction.products)} is not in "
                f"the network's species list") from None

    kinetic = np.full((network.n_reactions, MAX_KINETIC_REACTANTS), s_count, dtype=np.int32)
    power = np.zeros(network.n_reactions, dtype=np.float64)
    entries: list[tuple[int, int, float]] = []
    for r, reaction in enumerate(network.reactions):
        reactant_idx = [locate(name, reaction) for name in reaction.reactants]
        if reaction.rate_type == "h2_formation":
            kinetic_idx, power[r] = reactant_idx[:1], 1.0
        else:
            kinetic_idx, power[r] = reactant_idx, len(reactant_idx) - 1.0
        if not 1 <= len(kinetic_idx) <= MAX_KINETIC_REACTANTS:
            raise ValueError(
                f"{reaction.source or network.name}: 1..{MAX_KINETIC_REACTANTS} reactants "
                f"expected, found {len(kinetic_idx)} ({reaction.reactants})")
        kinetic[r, : len(kinetic_idx)] = kinetic_idx
        net: dict[int, float] = {}
        for i in reactant_idx:
            net[i] = net.get(i, 0.0) - 1.0
        for name in reaction.products:
            i = locate(name, reaction)
            net[i] = net.get(i, 0.0) + 1.0
        entries.extend((r, i, c) for i, c in net.items() if c != 0.0)
    entries.sort(key=lambda e: (e[1], e[0]))
    entry_reaction = np.array([e[0] for e in entries], dtype=np.int32)
    entry_species = np.array([e[1] for e in entries], dtype=np.int32)
    entry_coeff = np.array([e[2] for e in entries], dtype=np.float64)

    jac_flat, jac_entry, jac_slot = [], [], []
    for e, (r, row) in enumerate(zip(entry_reaction, entry_species, strict=True)):
        for slot in range(MAX_KINETIC_REACTANTS):
            col = kinetic[r, slot]
            if col < s_count:
                jac_flat.append(row * s_count + col)
                jac_entry.append(e)
                jac_slot.append(slot)
    r_count = network.n_reactions
    dense = None
    if s_count * r_count <= DENSE_STOICHIOMETRY_MAX_ENTRIES:
        dense = np.zeros((s_count, r_count))
        np.add.at(dense, (entry_species, entry_reaction), entry_coeff)
    counts = np.bincount(entry_species, minlength=s_count)
    heavy = np.flatnonzero(counts > HEAVY_SPECIES_MIN_REACTIONS).astype(np.int32)
    is_heavy = np.zeros(s_count, dtype=bool)
    is_heavy[heavy] = True
    width = max(1, int(counts[~is_heavy].max(initial=0)))
    gather_reaction = np.full((s_count, width), r_count, dtype=np.int32)
    gather_coeff = np.zeros((s_count, width))
    heavy_rows = np.zeros((heavy.size, r_count))
    heavy_pos = {int(sp): i for i, sp in enumerate(heavy)}
    fill = np.zeros(s_count, dtype=np.int64)
    for r, sp, c in zip(entry_reaction, entry_species, entry_coeff, strict=True):
        if is_heavy[sp]:
            heavy_rows[heavy_pos[int(sp)], r] += c
        else:
            gather_reaction[sp, fill[sp]], gather_coeff[sp, fill[sp]] = r, c
            fill[sp] += 1
    shield = np.array([i if i >= 0 else s_count
                       for i in (table.h2_index, table.c_index, table.co_index)], dtype=np.int32)
    return Kinetics(
        n_species=s_count, n_reactions=network.n_reactions, kinetic_index=kinetic,
        density_power=power, entry_reaction=entry_reaction, entry_species=entry_species,
        entry_coeff=entry_coeff, jac_flat=np.array(jac_flat, dtype=np.int64),
        jac_entry=np.array(jac_entry, dtype=np.int32),
        jac_slot=np.array(jac_slot, dtype=np.int32), shield_index=shield,
        has_shielding=bool(rates_mod.SHIELDED_TYPES & set(table.type_rows)),
        stoichiometry_dense=dense, gather_reaction=gather_reaction, gather_coeff=gather_coeff,
        heavy_species=heavy, heavy_stoichiometry=heavy_rows,
    )


# --- right-hand side and analytic Jacobian ---------------------------------------------------


@jax.custom_batching.custom_vmap
def apply_jacobian(jac, v):
    """jac [S, S] @ v [S]. lineax materialises the Newton matrix by vmapping the linearised RHS
    over the identity; this batching rule spots that and returns jac itself instead of an
    S^3 matmul with the identity (measured ~0.2-0.6 ms per step for S = 164)."""
    return jac @ v


@apply_jacobian.def_vmap
def _apply_jacobian_vmap(axis_size, in_batched, jac, v):
    jac_batched, v_batched = in_batched
    if jac_batched or not v_batched:
        out = jax.vmap(lambda j, x: j @ x, in_axes=(0 if jac_batched else None,
                                                      0 if v_batched else None),
                       axis_size=axis_size)(jac, v)
        return out, True
    size = jac.shape[0]
    if axis_size != size or v.shape != (size, size):
        return v @ jac.T, True
    is_identity = jnp.all(v == jnp.eye(size, dtype=v.dtype))
    return jax.lax.cond(is_identity, lambda: jac.T, lambda: v @ jac.T), True



@dataclass(frozen=True, eq=False)
class ChemistryModel:
    """A network's rate table and index plan, with pure RHS/Jacobian functions.

    `physical` is always [5] in `PHYSICAL_COLUMNS` order (linear values, not logs).
    """

    network: Network
    table: rates_mod.RateTable
    kinetics: Kinetics

    def rate_coefficients(self, shield_abundances, physical) -> jax.Array:
        """k_eff = k n^p [R] (per-H-nucleus flux = k_eff * product of reactant abundances)."""
        n, tg, av, g0, zeta = (physical[i] for i in range(5))
        column_h = rates_mod.shielding_column_h_cm2(self.table, n, av)
        c = rates_mod.Conditions(
            density_cm3=n, gas_temperature_K=tg, av_mag=av, radfield_habing=g0, zeta=zeta,
            dust_temperature_K=tg, column_h2_cm2=shield_abundances[0] * column_h,
            column_c_cm2=shield_abundances[1] * column_h,
            column_co_cm2=shield_abundances[2] * column_h)
        return rates_mod.effective_coefficients(self.table, c)

    def _shield(self, x):
        x_ext = jnp.concatenate([x, jnp.zeros((1,), x.dtype)])
        return x_ext.at[self.kinetics.shield_index].get(mode="promise_in_bounds")

    def _reactants(self, x):
        """Reactant abundances [R, 3] (1.0 in unused slots)."""
        x_ext = jnp.concatenate([x, jnp.ones((1,), x.dtype)])
        # Indices are valid by construction; skipping XLA's bounds handling halves the cost.
        return x_ext.at[self.kinetics.kinetic_index].get(mode="promise_in_bounds")

    def _scatter(self, per_reaction):
        """sum_r nu[:, r] per_reaction[r] -> [S] (no XLA scatter: matmul and gathers)."""
        kin = self.kinetics
        if kin.stoichiometry_dense is not None:
            return jnp.asarray(kin.stoichiometry_dense) @ per_reaction
        padded = jnp.concatenate([per_reaction, jnp.zeros((1,), per_reaction.dtype)])
        light = jnp.sum(jnp.asarray(kin.gather_coeff) * padded.at[kin.gather_reaction].get(
            mode="promise_in_bounds"), axis=1)
        if kin.heavy_species.size == 0:
            return light
        return light.at[kin.heavy_species].add(
            jnp.asarray(kin.heavy_stoichiometry) @ per_reaction, mode="promise_in_bounds")

    def rhs_plain(self, x, physical):
        """dx/dt [S] (s^-1) without the custom derivative (reference for tests)."""
        k_eff = self.rate_coefficients(self._shield(x), physical)
        flux = k_eff * jnp.prod(self._reactants(x), axis=1)
        return self._scatter(flux)

    def jacobian(self, x, physical):
        """Analytic d(dx/dt)/dx [S, S] (s^-1)."""
        kin = self.kinetics
        s_count = kin.n_species
        shield = self._shield(x)
        k_eff = self.rate_coefficients(shield, physical)
        xr = self._reactants(x)
        others = jnp.stack([xr[:, 1] * xr[:, 2], xr[:, 0] * xr[:, 2], xr[:, 0] * xr[:, 1]], axis=1)
        partial = k_eff[:, None] * others  # [R, 3] d flux / d reactant slot
        values = (jnp.asarray(kin.entry_coeff[kin.jac_entry])
                  * partial.at[kin.entry_reaction[kin.jac_entry], kin.jac_slot].get(
                      mode="promise_in_bounds"))
        jac = jnp.zeros(s_count * s_count, x.dtype).at[jnp.asarray(kin.jac_flat)].add(
            values, mode="promise_in_bounds")
        jac = jac.reshape(s_count, s_count)
        if kin.has_shielding:
            # Columns from k's dependence on x_H2, x_C, x_CO through shielding columns.
            dk = jax.jacfwd(self.rate_coefficients, argnums=0)(shield, physical)  # [R, 3]
            flux_per_k = jnp.prod(xr, axis=1)
            cols = jax.vmap(lambda d: self._scatter(d * flux_per_k), in_axes=1, out_axes=1)(dk)
            valid = kin.shield_index < s_count
            idx = np.where(valid, kin.shield_index, 0)
            jac = jac.at[:, idx].add(jnp.where(jnp.asarray(valid), cols, 0.0))
        return jac

    def make_rhs(self) -> Callable:
        """rhs(x [S], physical [5]) -> dx/dt [S] with the analytic Jacobian as its JVP."""

        @jax.custom_jvp
        def rhs(x, physical):
            return self.rhs_plain(x, physical)

        def rhs_jvp(primals, tangents):
            x, physical = primals
            x_dot, physical_dot = tangents
            y = self.rhs_plain(x, physical)
            y_dot = jnp.zeros_like(y)
            if not isinstance(x_dot, SymbolicZero):
                y_dot = y_dot + apply_jacobian(self.jacobian(x, physical), x_dot)
            if not isinstance(physical_dot, SymbolicZero):
                y_dot = y_dot + jax.jvp(lambda p: self.rhs_plain(x, p), (physical,),
                                        (physical_dot,))[1]
            return y, y_dot

        rhs.defjvp(rhs_jvp, symbolic_zeros=True)
        return rhs


def build_model(network: Network, temperature_policy: str = "cutoff",
                **shielding) -> ChemistryModel:
    """Rate table and index plan of `network`; `shielding`: the shielding keywords of
    `rates.build_rate_table` (shielding_column, cloud_size_pc, co_self_shielding)."""
    table = rates_mod.build_rate_table(network, temperature_policy=temperature_policy,
                                       **shielding)
    return ChemistryModel(network=network, table=table, kinetics=build_kinetics(network, table))


# --- tracks ----------------------------------------------------------------------------------


def interpolate_physical(t_s, node_time_s, node_physical):
    """Conditions [5] at time t_s: log of each parameter linear in time between nodes.

    node_time_s [N] ascending; node_physical [N, 5] linear values (> 0); constant beyond the end
    nodes. Evaluated as p = p_near (p_far / p_near)^f from the node nearer in time (f <= 1/2 the
    fraction of the interval from it), so node values (f = 0) and constant segments
    (p_far = p_near) come out bit for bit: a 10**log10 round trip gives 14.999999999999996 K for
    15 K, which switched off every reaction whose range starts at 15 K (issue 11).
    """
    n_nodes = node_time_s.shape[0]
    if n_nodes == 1:
        return node_physical[0]
    i = jnp.clip(jnp.searchsorted(node_time_s, t_s, side="right") - 1, 0, n_nodes - 2)
    t_a, t_b = node_time_s[i], node_time_s[i + 1]
    w = jnp.clip((t_s - t_a) / jnp.maximum(t_b - t_a, 1e-300), 0.0, 1.0)
    p_a, p_b = node_physical[i], node_physical[i + 1]
    from_a = w <= 0.5
    near = jnp.where(from_a, p_a, p_b)
    far = jnp.where(from_a, p_b, p_a)
    return near * (far / near) ** jnp.where(from_a, w, 1.0 - w)


def stop_times(node_time_s, node_log10_physical, kink_dex: float):
    """Node times [N] at which the solver must end a step; unneeded ones are moved to t0.

    Interior node k is kept when max_p |slope_k - slope_(k-1)| min(dt_k, dt_(k-1)) > kink_dex
    (zero-length intervals, i.e. jumps, are always kept). Sorted, same shape as node_time_s.
    """
    n_nodes = node_time_s.shape[0]
    if n_nodes < 3 or kink_dex <= 0:
        return node_time_s
    dt = jnp.diff(node_time_s)
    safe_dt = jnp.where(dt > 0, dt, 1.0)
    slope = jnp.diff(node_log10_physical, axis=0) / safe_dt[:, None]
    kink = jnp.max(jnp.abs(jnp.diff(slope, axis=0)), axis=1) * jnp.minimum(dt[1:], dt[:-1])
    jump = (dt[1:] <= 0) | (dt[:-1] <= 0)
    keep = jnp.concatenate([jnp.ones(1, bool), (kink > kink_dex) | jump, jnp.ones(1, bool)])
    return jnp.sort(jnp.where(keep, node_time_s, node_time_s[0]))


def float64():
    """Context in which JAX computes in float64 (`jax.enable_x64(True)`): the solver runs in it
    wherever it is called, so programs that also train or roll out float32 models (the
    benchmark) need not turn x64 on process-wide."""
    return jax.enable_x64(True)


def make_solver(network: Network, settings: SolverSettings = SolverSettings()) -> Callable:
    """Jitted, vmapped solve, always in float64 (`float64()`, whatever the process's x64
    setting).

    fn(initial_abundances [B, S], node_time_years [B, N], node_physical [B, N, 5],
       output_time_years [T]) -> (abundances [B, T, S], result_code [B], n_steps [B],
       n_accepted [B], n_rejected [B]). Integration runs from output_time_years[0] (where the
    state equals initial_abundances) to output_time_years[-1]; failures never raise.
    """
    with float64():
        jitted = _make_solver(network, settings)

    def solve(*args):
        with float64():
            return jitted(*args)

    return solve


def _make_solver(network: Network, settings: SolverSettings) -> Callable:
    if settings.solver not in SOLVERS:
        raise ValueError(f"SolverSettings.solver: expected one of {sorted(SOLVERS)}, "
                         f"found {settings.solver!r}")
    if settings.node_stops not in ("step_ts", "jump_ts", "none"):
        raise ValueError(f"SolverSettings.node_stops: expected 'step_ts' or 'jump_ts', "
                         f"found {settings.node_stops!r}")
    model = build_model(network, temperature_policy=settings.temperature_policy,
                        shielding_column=settings.shielding_column,
                        cloud_size_pc=settings.cloud_size_pc,
                        co_self_shielding=settings.co_self_shielding)
    rhs = model.make_rhs()

    def vector_field(t, y, args):
        node_time_s, node_physical = args
        return rhs(y, interpolate_physical(t, node_time_s, node_physical))

    term = diffrax.ODETerm(vector_field)
    solver = SOLVERS[settings.solver]()

    def solve_one(x0, node_time_years, node_physical, output_time_years):
        node_time_s = node_time_years * SECONDS_PER_YEAR
        ts = output_time_years * SECONDS_PER_YEAR
        stops = stop_times(node_time_s, jnp.log10(node_physical), settings.node_kink_dex)
        controller = diffrax.PIDController(
            rtol=settings.rtol, atol=settings.atol, pcoeff=settings.pcoeff,
            icoeff=settings.icoeff,
            **({} if settings.node_stops == "none" else {settings.node_stops: stops}))
        sol = diffrax.diffeqsolve(
            term, solver, t0=ts[0], t1=ts[-1], dt0=None, y0=x0,
            args=(node_time_s, node_physical), saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=controller, max_steps=settings.max_steps, throw=False)
        code = sol.result._value.astype(jnp.int64)
        finite = jnp.all(jnp.isfinite(sol.ys))
        code = jnp.where((code == RESULT_SUCCESS) & ~finite, RESULT_NONFINITE, code)
        stats = sol.stats
        return (sol.ys, code, stats["num_steps"], stats["num_accepted_steps"],
                stats["num_rejected_steps"])

    return jax.jit(jax.vmap(solve_one, in_axes=(0, 0, 0, None)))


def _check_inputs(network, x0, node_time_years, node_physical, output_time_years):
    s_count = network.n_species
    if x0.ndim != 2 or x0.shape[1] != s_count:
        raise ValueError(f"initial_abundances: expected [S] or [B, S] with S={s_count} "
                         f"({network.name}), found shape {x0.shape}")
    if node_time_years.ndim != 2:
        raise ValueError(f"node_time_years: expected [B, N], found shape {node_time_years.shape}")
    b, n = node_time_years.shape
    if node_physical.shape != (b, n, len(PHYSICAL_COLUMNS)):
        raise ValueError(f"node_physical: expected [B, N, 5] = {(b, n, 5)} "
                         f"({', '.join(PHYSICAL_COLUMNS)}), found {node_physical.shape}")
    if x0.shape[0] not in (1, b):
        raise ValueError(f"initial_abundances: expected 1 or B={b} rows, found {x0.shape[0]}")
    if np.any(np.diff(node_time_years, axis=1) < 0):
        raise ValueError("node_time_years: expected non-decreasing times along each track")
    if output_time_years.ndim != 1 or np.any(np.diff(output_time_years) <= 0):
        raise ValueError("output_time_years: expected a strictly increasing 1-D array")
    if not np.all(node_physical > 0) or not np.all(np.isfinite(node_physical)):
        raise ValueError("node_physical: expected finite positive values (interpolated in log10)")


def prepare_inputs(network: Network, initial_abundances, node_time_years, node_physical,
                   output_time_years):
    """float64 arrays, validated (ValueErrors name the argument and the expected shape).

    Returns (x0 [B, S], node_time_years [B, N], node_physical [B, N, 5], output_time_years [T]).
    """
    x0 = np.atleast_2d(np.asarray(initial_abundances, dtype=np.float64))
    node_time_years = np.asarray(node_time_years, dtype=np.float64)
    node_physical = np.asarray(node_physical, dtype=np.float64)
    output_time_years = np.asarray(output_time_years, dtype=np.float64)
    _check_inputs(network, x0, node_time_years, node_physical, output_time_years)
    x0 = np.broadcast_to(x0, (node_time_years.shape[0], network.n_species))
    return x0, node_time_years, node_physical, output_time_years


def batch_plan(n_tracers: int, batch_size: int) -> list[tuple[int, int, np.ndarray]]:
    """The vmapped batches: [(start, stop, take [size])], `take` the tracer rows of a batch of
    the one compiled size, the last batch padded with copies of its last tracer."""
    size = max(1, min(batch_size, n_tracers))
    plan = []
    for start in range(0, n_tracers, size):
        stop = min(start + size, n_tracers)
        plan.append((start, stop, np.minimum(np.arange(start, start + size), stop - 1)))
    return plan


def assemble_result(network: Network, outputs: list[tuple[np.ndarray, ...]],
                    output_time_years: np.ndarray) -> SolveResult:
    """Concatenate per-batch solver outputs (already cut to their real tracers)."""
    ys, code, steps, accepted, rejected = (np.concatenate(parts)
                                           for parts in zip(*outputs, strict=True))
    return SolveResult(
        abundances=ys.astype(np.float64), result_code=code.astype(np.int64),
        n_steps=steps.astype(np.int64), n_accepted=accepted.astype(np.int64),
        n_rejected=rejected.astype(np.int64), output_time_years=output_time_years,
        species=tuple(network.species))


def solve_tracks(network: Network, initial_abundances, node_time_years, node_physical,
                 output_time_years, settings: SolverSettings = SolverSettings(),
                 progress: bool = True, solver_fn: Callable | None = None) -> SolveResult:
    """Integrate B tracers in vmapped batches of `settings.batch_size` (`batch_plan`); numpy out.

    initial_abundances [S] or [B, S]; node_time_years [B, N]; node_physical [B, N, 5];
    output_time_years [T]. Never raises for a failed tracer: see `result_code`. `solver_fn`:
    a function from `make_solver` to reuse (avoids re-tracing).
    """
    from astrochem_jax.progress import Progress

    x0, node_time_years, node_physical, output_time_years = prepare_inputs(
        network, initial_abundances, node_time_years, node_physical, output_time_years)
    fn = solver_fn if solver_fn is not None else make_solver(network, settings)
    outputs: list[tuple[np.ndarray, ...]] = []
    bar = Progress(node_time_years.shape[0], "solve", "tracers") if progress else None
    try:
        for start, stop, take in batch_plan(node_time_years.shape[0], settings.batch_size):
            out = fn(x0[take], node_time_years[take], node_physical[take], output_time_years)
            outputs.append(tuple(np.asarray(o)[: stop - start] for o in out))
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    return assemble_result(network, outputs, output_time_years)
