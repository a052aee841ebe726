"""Training-step throughput of the autoencoder and the latent emulator on the available devices.

    .venv/bin/python scripts/bench_train.py [--batch_sizes=64,256,1024] [--steps=20]
        [--n_species=58] [--out=outputs/benchmarks/train/bench_train.json]

For each component and global batch size it times, per training step (after compilation; the
loop runs `--steps` steps per jitted call, one `lax.scan`):
- `step_full`: the loop's real steps, batches sliced on device from the device-resident split;
- `step_compute`: the same updates on batches already cut and on device;
- `gather`: the on-device slicing alone (all batches of a call in one dispatch).
`input_pipeline_share = (step_full - step_compute) / step_full` is the share of step time spent
getting the batch (target <= 10%); `gather_share = gather / step_full` is an upper bound of it
(a separate dispatch, not fused into the step). All timed as the best of 3 alternating trials.
Data are synthetic (values do not change the cost) with the dimensions of the default dataset
(species count from its manifest when present).
Writes JSON to --out and prints it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from astrochem_jax import runtime  # noqa: E402

if __name__ == "__main__":
    runtime.setup_entry_point()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from astrochem_jax import atomic, config_utils, paths, shards  # noqa: E402
from astrochem_jax.training import components as comp_lib  # noqa: E402
from astrochem_jax.training import data as data_lib  # noqa: E402
from astrochem_jax.training import loop as loop_lib  # noqa: E402
from astrochem_jax.training import mesh as mesh_lib  # noqa: E402
from astrochem_jax.training import state as state_lib  # noqa: E402

N_ELEMENTS = 6
N_TRACERS, N_STEPS = 64, 300


def default_n_species() -> int:
    try:
        return int(shards.read_manifest(paths.preprocessed_dir("grav", "sequential"))["n_species"])
    except (OSError, ValueError, KeyError):
        return 58


def _setup(info: dict, rng: np.random.Generator, frozen=None, static=None) -> comp_lib.Setup:
    stoich = (rng.random((info["n_species"], N_ELEMENTS)) < 0.3).astype(np.float32)
    return comp_lib.Setup(info=info, stoich=stoich, abundance_clip=(1e-20, 1.0), frozen=frozen,
                          static=static)


def _build(component, config, setup):
    return state_lib.build_split(
        lambda: component.build_model(config, setup.info, nnx.Rngs(int(config.seed))))


def _time(fn, n: int) -> float:
    """Seconds per call of fn(k) for k in 0..n-1 (fn returns something to block on)."""
    out = None
    start = time.perf_counter()
    for k in range(n):
        out = fn(k)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n


def bench_component(name, component, config, setup, host_data, batch_sizes, n_steps, mesh):
    mdef, params, batch_stats = _build(component, config, setup)
    tx = state_lib.make_optimizer(config)
    state0 = jax.device_get(state_lib.init_state(params, batch_stats, tx, int(config.seed)))
    repl = mesh_lib.replicated(mesh)
    abstract = jax.eval_shape(lambda: state0)
    put = data_lib.device_put_fn(mesh)
    if setup.frozen is not None:
        setup = comp_lib.Setup(**{**setup.__dict__, "frozen": jax.device_put(setup.frozen, repl)})
    prepared = component.prepare(setup, host_data, put)
    steps = loop_lib.make_steps(component, setup, mdef, tx, config, mesh, abstract)
    gather = jax.jit(jax.vmap(lambda arrays, idx: component.make_batch(setup, arrays, idx),
                              in_axes=(None, 0)))
    rows = []
    for batch_size in batch_sizes:
        if batch_size % mesh.devices.size or batch_size > prepared.n_items:
            continue
        perm = data_lib.epoch_batches(jax.random.key(0), prepared.n_items, batch_size, mesh)
        n = min(n_steps, perm.shape[0])  # steps per jitted call (one lax.scan)
        box = {"state": jax.device_put(state0, repl)}
        batches = gather(prepared.arrays, perm[:n])

        def full(k, box=box, perm=perm, n=n):
            box["state"], losses = steps.train(box["state"], prepared.arrays, perm, np.int32(0),
                                               setup.frozen, np.ones(n, np.float32), n)
            return losses

        def compute(k, box=box, batches=batches):
            box["state"], losses = steps.train_on_batches(box["state"], batches, setup.frozen)
            return losses

        jax.block_until_ready((full(0), compute(0)))  # compile
        # Alternate the measurements and keep the best of each (the CPU may be shared).
        t_full = t_compute = t_gather = float("inf")
        for _ in range(3):
            t_full = min(t_full, _time(full, 3) / n)
            t_compute = min(t_compute, _time(compute, 3) / n)
            t_gather = min(t_gather, _time(lambda k, p=perm, n=n: gather(prepared.arrays, p[:n]),
                                           3) / n)
        rows.append({
            "component": name,
            "batch_size": batch_size,
            "steps_per_call": n,
            "step_full_ms": 1e3 * t_full,
            "step_compute_ms": 1e3 * t_compute,
            "gather_ms": 1e3 * t_gather,
            "samples_per_s": batch_size / t_full,
            "input_pipeline_share": max(0.0, (t_full - t_compute) / t_full),
            "gather_share": t_gather / t_full,
            "parameters": state_lib.count_parameters(params),
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_sizes", default="64,256,1024")
    parser.add_argument("--steps", type=int, default=32, help="steps per jitted call")
    parser.add_argument("--n_species", type=int, default=None)
    parser.add_argument("--out", default=str(paths.benchmarks_dir("train") / "bench_train.json"))
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    n_species = args.n_species or default_n_species()
    mesh = mesh_lib.make_mesh()
    rng = np.random.default_rng(0)

    ae_config = config_utils.load_config("autoencoder_grav_large", "components")
    ae = comp_lib.COMPONENTS["autoencoder"]
    ae_setup = _setup({"n_species": n_species, "latent_dim": ae_config.model.latent_dim}, rng)
    rows_ae = rng.uniform(0.2, 0.9, (N_TRACERS * N_STEPS, n_species)).astype(np.float32)
    results = bench_component("autoencoder", ae, ae_config, ae_setup, rows_ae, batch_sizes,
                              args.steps, mesh)

    emu_config = config_utils.load_config("emulator_grav_sequential", "components")
    ae_mdef, ae_params, ae_stats = _build(ae, ae_config, ae_setup)
    latent = int(ae_config.model.latent_dim)
    n_physical = 4
    frozen = {"ae_params": ae_params, "ae_batch_stats": ae_stats,
              "latent_min": np.zeros(latent, np.float32),
              "latent_span": np.ones(latent, np.float32)}
    emu_setup = _setup({"n_species": n_species, "n_physical": n_physical, "state_dim": latent,
                        "latent_dim": latent, "horizon": int(emu_config.horizon)}, rng,
                       frozen=frozen, static=ae_mdef)
    sequential = rng.uniform(0.2, 0.9, (N_TRACERS, N_STEPS, n_physical + n_species))
    results += bench_component("emulator", comp_lib.COMPONENTS["emulator"], emu_config, emu_setup,
                               sequential.astype(np.float32), batch_sizes, args.steps, mesh)

    report = {
        "devices": {"count": len(jax.devices()), "kind": jax.devices()[0].device_kind,
                    "platform": jax.devices()[0].platform},
        "n_species": n_species,
        "horizon": int(emu_config.horizon),
        "steps_timed": args.steps,
        "results": results,
        "max_input_pipeline_share": max((r["input_pipeline_share"] for r in results), default=None),
    }
    atomic.write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
