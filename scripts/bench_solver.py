"""Benchmark the stiff solver on 300-step free-fall collapse tracks; prints one JSON object.

    .venv/bin/python scripts/bench_solver.py [--networks default,uclchem_small,uclchem_gas]
        [--workers 1,all] [--n_tracers N] [--batch_size 16] [--n_steps 300]
        [--time_end_years 1.5e6]

Networks: "default" (shipped demonstration network), "uclchem_small" (the 34 species of
../shared/networks/uclchem_small_chemistry_species.csv with their reactions selected from
umist22.rates, UCLCHEM's MakeRates idea) and "uclchem_gas" (the gas-phase subset of UCLCHEM's
default network, ~163 species). The last two are skipped with a note when ../shared is absent.

Tracks: per-tracer collapse parameters drawn by Latin hypercube over the ranges of
configs/datasets/grav.py; node times = the 300 output times, so the solver steps at least once
per output interval.

Workers: each entry of --workers ("all" = every usable core) is timed on the same tracers.
1 worker = "per_core": in this process, one warm-up call (compile) on other tracers, then the
timed call. n > 1 = "all_cores" (or "workers_<n>"): a `chemistry.parallel.SolverPool` is started
and every worker warmed up (compile + one tiny solve) first; only the warm solve is timed.
trajectories/s = n_tracers / wall time of the timed call. The default n_tracers,
2 x max(workers) x batch_size, gives every worker >= 2 batches.
"""

from __future__ import annotations

import sys
from pathlib import Path

from astrochem_jax import runtime

runtime.setup_entry_point(x64=True)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from astrochem_jax import config_utils  # noqa: E402
from astrochem_jax.chemistry import network as network_mod  # noqa: E402
from astrochem_jax.chemistry import parallel, solver  # noqa: E402
from astrochem_jax.chemistry.initial_abundances import default_initial_abundances  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"
NETWORKS = ("default", "uclchem_small", "uclchem_gas")
# Collapse parameter ranges of the default dataset (configs/datasets/grav.py).
TRACK_RANGES = {
    name: tuple(bounds)
    for name, bounds in config_utils.load_config("grav", "datasets")
    .generator.track_ranges.to_dict().items()
}


def load_network(name: str, shared: Path):
    """(network, note); network None when its files are absent."""
    if name == "default":
        return network_mod.load_default_network(), "shipped demonstration network"
    nets = shared / "networks"
    if not nets.is_dir():
        return None, f"skipped: {nets} is absent"
    if name == "uclchem_small":
        source = network_mod.read_umist_rates(nets / "umist22.rates", on_unbalanced="drop")
        species = network_mod.read_species_list(nets / "uclchem_small_chemistry_species.csv")
        net = network_mod.select_reactions(source, species, name="uclchem_small")
        return net, "UCLCHEM small species list, reactions selected from umist22.rates"
    if name == "uclchem_gas":
        full = network_mod.read_uclchem_network(nets / "uclchem_reactions.csv",
                                                nets / "uclchem_species.csv")
        return network_mod.gas_phase_subset(full, "uclchem_gas"), "UCLCHEM gas-phase subset"
    raise ValueError(f"--networks: expected names from {NETWORKS}, found {name!r}")


def collapse_inputs(n_tracers: int, n_steps: int, time_end_years: float, seed: int):
    """(node_time_years [B, N], node_physical [B, N, 5], output_time_years [N])."""
    output_time = np.linspace(0.0, time_end_years, n_steps)
    try:
        from astrochem_jax.chemistry import tracks

        params = tracks.sample_track_parameters(n_tracers, TRACK_RANGES, seed)
        physical = tracks.collapse_tracks(params, output_time)
    except ImportError:
        physical = _inline_collapse(n_tracers, output_time, seed)
    node_time = np.broadcast_to(output_time, (n_tracers, n_steps)).copy()
    return node_time, physical, output_time


def _inline_collapse(n_tracers: int, time_years: np.ndarray, seed: int) -> np.ndarray:
    """Closed-form free fall n = n0 / cos^6(theta), theta + sin(2 theta)/2 = a t (fallback)."""
    rng = np.random.default_rng(seed)

    def draw(lo, hi):
        return 10 ** rng.uniform(np.log10(lo), np.log10(hi), n_tracers)[:, None]

    p = {k: draw(*v) for k, v in TRACK_RANGES.items()}
    a = p["freefall_factor"] * np.sqrt(8 * np.pi * 6.674e-8 * 1.6736e-24
                                       * p["initial_density_cm3"] / 3)
    at = np.minimum(a * time_years[None, :] * 3.15576e7, np.pi / 2)
    lo, hi = np.zeros_like(at), np.full_like(at, np.pi / 2)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        below = mid + np.sin(2 * mid) / 2 < at
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    density = np.minimum(p["initial_density_cm3"] / np.maximum(np.cos(lo) ** 6, 1e-300),
                         p["final_density_cm3"])
    column = p["initial_density_cm3"] * p["cloud_radius_pc"] * 3.0857e18 * (
        density / p["initial_density_cm3"]) ** (2 / 3)
    av = p["base_av_mag"] + column / 1.6e21
    ones = np.ones_like(density)
    return np.stack([density, p["gas_temperature_K"] * ones, av, p["radfield_habing"] * ones,
                     p["zeta"] * ones], axis=-1)


def parse_workers(spec: str) -> list[int]:
    """"1,all" -> [1, runtime.usable_cores()] (deduplicated, in order)."""
    counts: list[int] = []
    for item in (w.strip() for w in spec.split(",") if w.strip()):
        n = runtime.usable_cores() if item == "all" else int(item)
        if n < 1:
            raise ValueError(f"--workers: expected 'all' or integers >= 1, found {item!r}")
        if n not in counts:
            counts.append(n)
    return counts


def run_label(n_workers: int) -> str:
    if n_workers == 1:
        return "per_core"
    return "all_cores" if n_workers == runtime.usable_cores() else f"workers_{n_workers}"


def result_summary(res: solver.SolveResult) -> dict:
    return {
        "n_failed": int(np.sum(res.result_code != 0)),
        "steps_median": float(np.median(res.n_steps)),
        "steps_max": int(np.max(res.n_steps)),
        "rejected_median": float(np.median(res.n_rejected)),
    }


def bench_in_process(net, settings, x0, warm, timed) -> tuple[dict, solver.SolveResult]:
    """One worker in this process: warm-up call (compile) on `warm`, then the timed call."""
    fn = solver.make_solver(net, settings)
    start = time.perf_counter()
    solver.solve_tracks(net, x0, *warm, settings, progress=False, solver_fn=fn)
    first_call_s = time.perf_counter() - start
    n_tracers = timed[0].shape[0]
    start = time.perf_counter()
    res = solver.solve_tracks(net, x0, *timed, settings, progress=False, solver_fn=fn)
    wall_s = time.perf_counter() - start
    per_batch_s = wall_s / max(1, -(-n_tracers // settings.batch_size))
    return {
        "workers": 1,
        "trajectories_per_s": n_tracers / wall_s,
        "wall_s": wall_s,
        "first_call_s": first_call_s,
        "compile_s_estimate": max(0.0, first_call_s - per_batch_s),
        **result_summary(res),
    }, res


def bench_pool(net, settings, x0, timed, n_workers: int) -> tuple[dict, solver.SolveResult]:
    """n_workers processes: start + warm every worker (untimed), then time the warm solve."""
    node_time, node_phys, out_time = timed
    with parallel.SolverPool(net, settings, n_workers, initial_abundances=x0,
                             physical=node_phys[0, 0], n_nodes=node_time.shape[1],
                             n_outputs=out_time.size) as pool:
        start = time.perf_counter()
        res = pool.solve(x0, *timed, progress=False)
        wall_s = time.perf_counter() - start
        stats = pool.stats
    return {
        "workers": n_workers,
        "trajectories_per_s": node_time.shape[0] / wall_s,
        "wall_s": wall_s,
        "pool_start_s": stats.start_s,
        "worker_warmup_s": stats.warmup_s,
        **result_summary(res),
    }, res


def bench_network(net, n_tracers: int, batch_size: int, n_steps: int, time_end_years: float,
                  settings_kw: dict, worker_counts: list[int]) -> dict:
    settings = solver.SolverSettings(batch_size=batch_size, **settings_kw)
    x0 = default_initial_abundances(net)
    warm_time, warm_phys, out_time = collapse_inputs(batch_size, n_steps, time_end_years, seed=1)
    timed = collapse_inputs(n_tracers, n_steps, time_end_years, seed=2)
    report: dict = {"n_species": net.n_species, "n_reactions": net.n_reactions}
    results: dict[int, solver.SolveResult] = {}
    for n_workers in worker_counts:
        if n_workers == 1:
            run, results[1] = bench_in_process(net, settings, x0, (warm_time, warm_phys, out_time),
                                               timed)
        else:
            run, results[n_workers] = bench_pool(net, settings, x0, timed, n_workers)
        report[run_label(n_workers)] = run
    if 1 in results:
        reference = results[1]
        for n_workers, res in results.items():
            if n_workers != 1:
                report[run_label(n_workers)]["identical_to_per_core"] = all(
                    np.array_equal(getattr(res, f), getattr(reference, f))
                    for f in ("abundances", "result_code", "n_steps", "n_accepted", "n_rejected"))
    if "per_core" in report and "all_cores" in report:
        report["all_cores_speedup"] = (report["all_cores"]["trajectories_per_s"]
                                       / report["per_core"]["trajectories_per_s"])
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", default=",".join(NETWORKS))
    ap.add_argument("--workers", default="1,all",
                    help="worker counts to time, comma-separated; 'all' = every usable core")
    ap.add_argument("--n_tracers", type=int, default=None,
                    help="timed tracers (default 2 x max(workers) x batch_size)")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--n_steps", type=int, default=300)
    ap.add_argument("--time_end_years", type=float, default=1.5e6)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--atol", type=float, default=1e-20)
    ap.add_argument("--shared", default=str(SHARED_DIR))
    args = ap.parse_args(argv)
    worker_counts = parse_workers(args.workers)
    n_tracers = args.n_tracers or 2 * max(worker_counts) * args.batch_size
    import jax

    report = {
        "load_average_before": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "jax_devices": len(jax.devices()),
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "usable_cores": runtime.usable_cores(),
        "workers": worker_counts,
        "n_tracers": n_tracers,
        "batch_size": args.batch_size,
        "n_steps": args.n_steps,
        "time_end_years": args.time_end_years,
        "rtol": args.rtol,
        "atol": args.atol,
        "networks": {},
    }
    for name in [n.strip() for n in args.networks.split(",") if n.strip()]:
        net, note = load_network(name, Path(args.shared))
        if net is None:
            report["networks"][name] = {"note": note}
            continue
        result = bench_network(net, n_tracers, args.batch_size, args.n_steps,
                               args.time_end_years, {"rtol": args.rtol, "atol": args.atol},
                               worker_counts)
        report["networks"][name] = {"note": note, **result}
        rates = ", ".join(f"{run_label(n)} ({n} worker{'s' if n > 1 else ''}) "
                          f"{result[run_label(n)]['trajectories_per_s']:.3g}"
                          for n in worker_counts)
        print(f"{name}: trajectories/s: {rates}", file=sys.stderr)
    report["load_average_after"] = list(os.getloadavg())
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
