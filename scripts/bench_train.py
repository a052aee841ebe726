"""Training throughput: per-step costs, and streaming versus device-resident data.

    .venv/bin/python scripts/bench_train.py [--sections=steps,stream] [--batch_sizes=64,256,1024]
        [--steps=32] [--n_species=58] [--resident_max_mb=32] [--data_factor=8] [--epochs=2]
        [--out=outputs/benchmarks/train/bench_train.json]

Section `steps`: for each component (autoencoder, latent emulator) and global batch size, per
training step (after compilation; `--steps` steps per jitted call, one `lax.scan`):
- `step_full`: the loop's real steps, batches cut on device from the chunk's global arrays;
- `step_compute`: the same updates on batches already cut and on device;
- `gather`: the on-device batch cutting alone (all batches of a call in one dispatch).
`input_pipeline_share = (step_full - step_compute) / step_full` is the share of step time spent
getting the batch (target <= 10%); `gather_share = gather / step_full` bounds it from above. All
timed as the best of 3 alternating trials, on synthetic data with the default dataset's sizes.

Section `stream`: `train_component` on a synthetic timeless dataset `--data_factor` times larger
than `--resident_max_mb` (the autoencoder config, `--epochs` epochs; validation split 1/4 of
that), streamed (chunks of at most half the budget) and device-resident, plus a streamed run on a
dataset 4x smaller, each in a fresh subprocess so that peak memory is its own. Reported per run:
samples/s of the best epoch after the first (from metrics.json; streamed and resident run
`--repeats` times alternately, best kept: the machine may be shared), the peak bytes held by
live JAX arrays (sampled every 10 ms and after every chunk load; `memory_stats()` peak too where
the backend has it: GPU / TPU) against the bound `2 chunks x (1 + latent / species) + the
validation split if it is resident + 2 train states` (the current and the prefetched chunk with
their encoded latents when the latents min/max are computed, the train state and the best state
restored at the end; a train state = params + Adam's 2 moments), and the process's peak RSS
(ru_maxrss: it includes the XLA runtime and compilation, a constant: the two streamed runs show
that it does not grow with the dataset).
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
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from astrochem_jax import atomic, config_utils, paths, shards  # noqa: E402
from astrochem_jax.scaling import Scaler  # noqa: E402
from astrochem_jax.training import components as comp_lib  # noqa: E402
from astrochem_jax.training import data as data_lib  # noqa: E402
from astrochem_jax.training import loop as loop_lib  # noqa: E402
from astrochem_jax.training import mesh as mesh_lib  # noqa: E402
from astrochem_jax.training import state as state_lib  # noqa: E402

N_ELEMENTS = 6
N_TRACERS, N_STEPS = 64, 300
STREAM_DATASET = "bench_stream"


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
        lambda: component.build_model(config, setup.info, state_lib.model_rngs(int(config.seed))))


def _time(fn, n: int) -> float:
    """Seconds per call of fn(k) for k in 0..n-1 (fn returns something to block on)."""
    out = None
    start = time.perf_counter()
    for k in range(n):
        out = fn(k)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n


# --- section "steps" ----------------------------------------------------------------------------


def bench_component(name, component, config, setup, host_data, batch_sizes, n_steps, mesh):
    mdef, params, batch_stats = _build(component, config, setup)
    tx = state_lib.make_optimizer(config)
    state0 = jax.device_get(state_lib.init_state(params, batch_stats, tx, int(config.seed)))
    abstract = jax.eval_shape(lambda: state0)
    if setup.frozen is not None:
        setup = comp_lib.Setup(**{**setup.__dict__,
                                  "frozen": mesh_lib.put_replicated(setup.frozen, mesh)})
    prepared = component.prepare(setup, data_lib.host_chunk(host_data, mesh), "train")
    steps = loop_lib.make_steps(component, setup, mdef, tx, config, mesh, abstract)
    gather = jax.jit(lambda arrays, idx: jax.lax.map(
        lambda i: component.make_batch(setup, arrays, i, mesh), idx))
    rows = []
    for batch_size in batch_sizes:
        if batch_size % mesh.devices.size or batch_size > prepared.n_items:
            continue
        perm = data_lib.epoch_batches(np.random.default_rng(0), prepared.n_items, batch_size)
        n = min(n_steps, perm.shape[0])  # steps per jitted call (one lax.scan)
        idx = perm[:n]
        box = {"state": mesh_lib.put_replicated(state0, mesh)}
        batches = gather(prepared.arrays, idx)

        def full(k, box=box, idx=idx, n=n):
            box["state"], losses = steps.train(box["state"], prepared.arrays, idx, setup.frozen,
                                               np.ones(n, np.float32))
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
            t_gather = min(t_gather, _time(lambda k, i=idx: gather(prepared.arrays, i), 3) / n)
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


def steps_section(args, n_species: int) -> dict:
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
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
    return {
        "horizon": int(emu_config.horizon),
        "steps_timed": args.steps,
        "results": results,
        "max_input_pipeline_share": max((r["input_pipeline_share"] for r in results),
                                        default=None),
    }


# --- section "stream" ---------------------------------------------------------------------------


def write_stream_dataset(n_species: int, train_mb: float, shard_mb: float,
                         name: str = STREAM_DATASET) -> Path:
    """Synthetic timeless shards of `train_mb` MiB (train) + 1/4 of that (val: streamed too at
    the default factor 8) under the current outputs dir; returns the preprocessed directory."""
    rng = np.random.default_rng(0)
    directory = paths.preprocessed_dir(name, "timeless")
    directory.mkdir(parents=True, exist_ok=True)
    item_bytes = n_species * 4
    species = [f"S{k}" for k in range(n_species)]
    splits = {}
    for split, mb in (("train", train_mb), ("val", train_mb / 4)):
        rows = int(mb * 2**20 // item_bytes)
        array = rng.uniform(0.2, 0.9, (rows, n_species)).astype(np.float32)
        splits[split] = shards.write_split(directory, split, array,
                                           max_shard_bytes=int(shard_mb * 2**20))
        del array
    scaler = Scaler((1e-20, 1.0), ("Density",), (0.0,), (6.0,))
    atomic.write_json(directory / shards.MANIFEST_NAME, {
        "format_version": shards.FORMAT_VERSION, "method": "timeless",
        "dataset": name, "species": species, "elements": ["H"],
        "physical_parameters": ["Density"], "n_species": n_species, "n_physical": 1,
        "scaling": scaler.to_dict(), "splits": splits,
        "split_tracers": {"train": [0], "val": [1]}, "cache_key": "bench"})
    utils = paths.utils_dir(name)
    utils.mkdir(parents=True, exist_ok=True)
    np.save(utils / "stoichiometric_matrix.npy", np.ones((n_species, 1), np.float32))
    return directory


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class LiveBytes:
    """Peak bytes of live JAX arrays: a 10 ms sampler thread plus explicit samples."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        self.peak = max(self.peak, sum(a.nbytes for a in jax.live_arrays() if not a.is_deleted()))

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.sample()

    def __enter__(self) -> LiveBytes:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def stream_child(mode: str, pre_dir: Path, limit_mb: float, epochs: int) -> dict:
    """One training run (in this fresh process) -> its throughput and memory numbers."""
    from astrochem_jax.training import train_component

    rss_start = _rss_mb()
    manifest = shards.read_manifest(pre_dir)
    config = config_utils.load_config("autoencoder_grav_large", "components")
    config.name = f"bench_{mode}_{manifest['dataset']}_{os.getpid()}"  # a fresh run each time
    config.dataset.name = manifest["dataset"]
    config.epochs = epochs
    config.converged_loss_ratio = None  # random data: nothing to converge to
    config.checkpoint.every_epochs = 1000
    config.device_resident_max_mb = limit_mb if mode == "streamed" else 1e6
    source = data_lib.split_source(pre_dir, manifest, "train", config.device_resident_max_mb)
    val = data_lib.split_source(pre_dir, manifest, "val", config.device_resident_max_mb)
    val_resident_bytes = val.nbytes if val.resident else 0
    chunk_bytes = max(int(np.prod(s)) * 4 for s in source.chunk_shapes)
    live = LiveBytes()
    real_get = data_lib.ChunkLoader.get

    def get(self, k):
        out = real_get(self, k)
        jax.block_until_ready(out.arrays)
        live.sample()
        return out

    data_lib.ChunkLoader.get = get
    with live:
        summary = train_component(config, preprocessed_dir=pre_dir)
    history = json.loads((paths.weights_dir(config.name) / "metrics.json").read_text())
    params = summary["parameter_count"]
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "mode": mode,
        "device_resident_max_mb": config.device_resident_max_mb,
        "train_split_mb": source.nbytes / 2**20,
        "chunks": source.n_chunks,
        "chunk_mb": chunk_bytes / 2**20,
        "samples_per_s_by_epoch": [r["samples_per_s"] for r in history],
        # The best epoch after the first (which compiles).
        "samples_per_s": max(r["samples_per_s"] for r in history[1:] or history),
        "peak_live_arrays_mb": live.peak / 2**20,
        "peak_device_memory_mb": (stats["peak_bytes_in_use"] / 2**20
                                  if "peak_bytes_in_use" in stats else None),
        "train_state_mb": 3 * params * 4 / 2**20,  # params + Adam's two moments (float32)
        "val_resident_mb": val_resident_bytes / 2**20,
        "bound_mb": (2 * chunk_bytes * (1 + int(config.model.latent_dim) / len(
            manifest["species"])) + val_resident_bytes + 2 * 3 * params * 4) / 2**20,
        "rss_start_mb": rss_start,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
        "devices": len(jax.devices()),
    }


def stream_section(args, n_species: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_stream_") as tmp:
        env = dict(os.environ, ASTROCHEM_JAX_OUTPUTS=tmp)
        os.environ["ASTROCHEM_JAX_OUTPUTS"] = tmp
        runs: dict[str, dict] = {}
        # Streamed and resident alternate, twice each, and keep their best samples/s: the
        # machine may be shared, and its load moves between runs.
        plan = [("streamed", "streamed", args.data_factor),
                ("resident", "resident", args.data_factor),
                ("streamed_quarter_data", "streamed", args.data_factor / 4)]
        plan += plan[:2] * (max(1, int(args.repeats)) - 1)
        written: dict[float, Path] = {}
        for label, mode, factor in plan:
            train_mb = factor * args.resident_max_mb
            if train_mb not in written:
                written[train_mb] = write_stream_dataset(
                    n_species, train_mb, shard_mb=max(train_mb / 4, 1.0),
                    name=f"{STREAM_DATASET}_{train_mb:g}mb")
            pre_dir = written[train_mb]
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--child_dir", str(pre_dir),
                 "--resident_max_mb", str(args.resident_max_mb), "--epochs", str(args.epochs)],
                env=env, capture_output=True, text=True, check=False)
            if out.returncode:
                raise RuntimeError(f"stream bench ({label}) failed:\n{out.stderr[-4000:]}")
            run = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(run), file=sys.stderr, flush=True)
            if label in runs:
                best = runs[label]
                best["samples_per_s_repeats"].append(run["samples_per_s"])
                best["samples_per_s"] = max(best["samples_per_s_repeats"])
            else:
                run["samples_per_s_repeats"] = [run["samples_per_s"]]
                runs[label] = run
    streamed, quarter, resident = (runs["streamed"], runs["streamed_quarter_data"],
                                   runs["resident"])
    return {
        "runs": runs,
        "data_factor": args.data_factor,
        "streamed_over_resident_samples_per_s":
            streamed["samples_per_s"] / resident["samples_per_s"],
        "streamed_device_memory_bounded": all(
            r["peak_live_arrays_mb"] <= r["bound_mb"] for r in (streamed, quarter)),
        "streamed_rss_growth_from_4x_more_data_mb":
            streamed["rss_peak_mb"] - quarter["rss_peak_mb"],
        "resident_minus_streamed_rss_mb": resident["rss_peak_mb"] - streamed["rss_peak_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="steps,stream")
    parser.add_argument("--batch_sizes", default="64,256,1024")
    parser.add_argument("--steps", type=int, default=32, help="steps per jitted call")
    parser.add_argument("--n_species", type=int, default=None)
    parser.add_argument("--resident_max_mb", type=float, default=32.0)
    parser.add_argument("--data_factor", type=float, default=8.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2,
                        help="streamed and resident runs each (best samples/s kept)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child_dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(stream_child(args.child, Path(args.child_dir), args.resident_max_mb,
                                      args.epochs)))
        return
    out_path = args.out or str(paths.benchmarks_dir("train") / "bench_train.json")
    n_species = args.n_species or default_n_species()
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    report: dict = {
        "devices": {"count": len(jax.devices()), "kind": jax.devices()[0].device_kind,
                    "platform": jax.devices()[0].platform},
        "n_species": n_species,
    }
    if "steps" in sections:
        report["steps"] = steps_section(args, n_species)
    if "stream" in sections:
        report["stream"] = stream_section(args, n_species)
    atomic.write_json(out_path, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
