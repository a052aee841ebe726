"""Robustness of the shipped recipe: train the default pipeline for several seeds and datasets and
report closed-loop accuracy on each dataset's TEST tracers, per seed and as min / median / max.

    .venv/bin/python scripts/bench_robustness.py                      # grav, seeds 0-4
    .venv/bin/python scripts/bench_robustness.py --datasets grav,grav_seed7,uclchem_gas_grav \
        --seeds 0,1,2,3,4
    .venv/bin/python scripts/bench_robustness.py --datasets uclchem_grav_train --seeds 0,1,2
    .venv/bin/python scripts/bench_robustness.py --datasets uclchem_grav_train-train32 --seeds 0
        # the same recipe on 32 of the train tracers (data scaling; same val / test tracers;
        # --same-steps: as many optimizer steps per component as on the full train split)

For every (dataset, seed) the exact user commands run, each in its own process:
`astrochem_jax.generate` (only when the raw file is missing and the dataset is generated),
`astrochem_jax.train` for the autoencoder, the latent emulator, its closed-loop fine-tune and the
closed-loop decoder (`--config.seed=<k>` for all four, components named
`robustness/<dataset>/s<k>/{autoencoder,emulator,emulator_closed_loop,decoder_closed_loop}`),
and `astrochem_jax.benchmark --config.benchmark.measure_speed=False` (accuracy on the test
split; the benchmark refuses tracers a component saw) of the shipped surrogate (the fine-tuned
emulator read by the closed-loop decoder), and of two earlier stages of it: `ae_decoder`
(`robustness/<dataset>/ae_decoder/s<k>`: the fine-tuned emulator read by the autoencoder's
decoder; its reconstruction floor is the autoencoder's) and `base_emulator`
(`robustness/<dataset>/base/s<k>`: the emulator before fine-tuning, the autoencoder's
decoder). A run that fails (training that does not converge exits non-zero) is reported as
failed with the end of its log, never skipped.

After the seeds of a dataset, their shipped surrogates are scored once more as ONE ensemble
(`seed_ensemble`: comma-separated components, `robustness/<dataset>/seed_ensemble`): the mean
in log space, and how well the members' spread ranks and covers the error (spread factor
fitted on the validation tracers). `--ensemble-only` scores just that, from the components of
an earlier run (train nothing; `<datasets>_seed_ensemble.json`).

Prints one JSON object and writes it to outputs/benchmarks/robustness/<datasets>.json:
per run the closed-loop test mean / median / p99 |dlog10| (dex), AstroChemNet's mean relative
error, worst species, non-finite count, element conservation, autoencoder floor (decode(encode)
on the test rows), distance to training (each test row's mean |dlog10| to the nearest train
tracer at the same step, and its rank correlation with the tracers' closed-loop error), the
autoencoder's largest validation loss relative to its running best (`val_spike_ratio`), the
shipped emulator's pinned states on validation (`pinned_state_fraction`), epochs
and wall time; per dataset the min / median / max of each over seeds.

Components of an earlier run are reused when their config is unchanged (training resumes and
stops at once; the numbers are the same, training is deterministic). After a recipe change the
trainer refuses to resume them (a run "failed at emulator": "holds checkpoints of a different
run"): pass `--retrain` to delete this script's components and reports for the chosen datasets
and seeds first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AE_CONFIG = "configs/components/autoencoder_grav_large.py"
EMULATOR_CONFIG = "configs/components/emulator_grav_sequential.py"
CLOSED_LOOP_CONFIG = "configs/components/emulator_grav_closed_loop.py"
DECODER_CONFIG = "configs/components/decoder_grav_closed_loop.py"
SURROGATE_CONFIG = "configs/surrogates/ae_emulator_grav.py"
# Datasets whose raw file needs ../shared (generated from its network, or read from it).
NEEDS_SHARED = ("uclchem_grav_train", "uclchem_gas_grav")
LOG_TAIL_CHARS = 2000


def run(cmd: list[str], log_path: Path) -> tuple[int, float, str]:
    """Run `cmd` in the repository root; (exit code, seconds, tail of its output)."""
    start = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    seconds = time.perf_counter() - start
    return proc.returncode, seconds, log_path.read_text()[-LOG_TAIL_CHARS:]


def dataset_config(name: str):
    sys.path.insert(0, str(REPO_ROOT))
    from configs import datasets

    return datasets.by_name(name)


def subset_base(name: str) -> tuple[str, int | None]:
    """`uclchem_grav_train-train16` -> ("uclchem_grav_train", 16) (a train-tracer subset)."""
    sys.path.insert(0, str(REPO_ROOT))
    from configs import datasets

    return datasets.split_subset_name(name)


def ensure_raw(name: str, logs: Path) -> dict:
    """Generate the dataset's raw file if it is missing and can be generated."""
    config = dataset_config(name)
    base, _ = subset_base(name)
    raw = REPO_ROOT / config.raw_path
    if raw.exists():
        return {"raw_path": str(config.raw_path), "generated": False}
    if config.format != "astrochem_jax":
        raise SystemExit(f"dataset {name}: raw file {raw} is missing and format "
                         f"{config.format!r} is not generated here")
    code, seconds, tail = run([sys.executable, "-m", "astrochem_jax.generate",
                               f"--config=configs/datasets/{base}.py"], logs / "generate.log")
    if code != 0:
        raise SystemExit(f"dataset {name}: generate failed (exit {code}):\n{tail}")
    return {"raw_path": str(config.raw_path), "generated": True, "generate_s": seconds}


def history_facts(component: str, outputs: Path) -> dict:
    directory = outputs / "weights" / component
    out: dict = {}
    summary_path = directory / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        out.update(status=summary.get("status"), best_epoch=summary.get("best_epoch"),
                   final_epoch=summary.get("final_epoch"), rollbacks=summary.get("rollbacks"),
                   stop_reason=summary.get("stop_reason"),
                   kept_warm_start=summary.get("kept_warm_start"),
                   training_time_s=summary.get("training_time_s"),
                   # emulators: closed-loop validation states held on a bound at the chosen
                   # epoch while their truth is inside (config.max_pinned_state_fraction)
                   pinned_state_fraction=(summary.get("best_val_metrics") or {}).get(
                       "pinned_state_fraction"))
    metrics_path = directory / "metrics.json"
    if metrics_path.exists():
        history = json.loads(metrics_path.read_text())
        out["non_finite_steps"] = sum(int((r.get("train") or {}).get("non_finite_steps") or 0)
                                      for r in history)
        out["val_spike_ratio"] = val_spike_ratio([r.get("val_loss") for r in history])
    return out


def val_spike_ratio(val_losses: list) -> float | None:
    """The largest validation loss relative to the best one of the epochs before it (<= 1: no
    epoch was worse than an earlier best; 3.7: one epoch's loss was 3.7x the running best).
    Non-finite or missing losses are skipped; None with fewer than two finite epochs."""
    best, worst = math.inf, None
    for value in val_losses:
        if value is None or not math.isfinite(value):
            continue
        if math.isfinite(best) and best > 0:
            worst = max(worst or 0.0, value / best)
        best = min(best, value)
    return worst


def steps_factor(name: str) -> float:
    """For a train-tracer subset `<dataset>-train<n>`: (the full train split's tracers) / n, the
    epoch multiplier that keeps every component's optimizer-step count that of the full dataset
    (preprocesses the subset to read it); 1 for a plain dataset."""
    if subset_base(name)[1] is None:
        return 1.0
    from astrochem_jax.preprocess import preprocess
    from astrochem_jax.shards import read_manifest

    subset = read_manifest(preprocess(dataset_config(name), "sequential", verbose=False))
    return subset["train_subset"]["of"] / subset["train_subset"]["n"]


def epochs_override(config_path: str, name: str, factor: float) -> list[str]:
    """["--config.epochs=<the config's epochs x factor>"], or [] for factor 1."""
    if factor == 1.0:
        return []
    from astrochem_jax import config_utils

    epochs = config_utils.load_config(f"{config_path}:{name}", "components").epochs
    return [f"--config.epochs={max(1, round(epochs * factor))}"]


def run_seed(name: str, seed: int, outputs: Path, logs: Path, retrain: bool = False,
             same_steps: bool = False) -> dict:
    prefix = f"robustness/{name}/s{seed}"
    base_prefix = f"robustness/{name}/base/s{seed}"
    ae_decoder_prefix = f"robustness/{name}/ae_decoder/s{seed}"
    if retrain:
        for directory in (outputs / "weights" / prefix, outputs / "benchmarks" / prefix,
                          outputs / "benchmarks" / base_prefix,
                          outputs / "benchmarks" / ae_decoder_prefix):
            shutil.rmtree(directory, ignore_errors=True)
    ae, emulator = f"{prefix}/autoencoder", f"{prefix}/emulator"
    tuned = f"{prefix}/emulator_closed_loop"
    decoder = f"{prefix}/decoder_closed_loop"
    py = sys.executable

    def benchmark(surrogate: str, emulator_component: str, decoder_component: str = ae
                  ) -> list[str]:
        return [py, "-m", "astrochem_jax.benchmark", f"--config={SURROGATE_CONFIG}:{name}",
                f"--config.name={surrogate}", f"--config.components.encoder={ae}",
                f"--config.components.decoder={decoder_component}",
                f"--config.components.emulator={emulator_component}",
                "--config.benchmark.measure_speed=False"]

    factor = steps_factor(name) if same_steps else 1.0
    steps = [
        ("autoencoder", [py, "-m", "astrochem_jax.train", f"--config={AE_CONFIG}:{name}",
                         f"--config.seed={seed}", f"--config.name={ae}",
                         *epochs_override(AE_CONFIG, name, factor)]),
        ("emulator", [py, "-m", "astrochem_jax.train", f"--config={EMULATOR_CONFIG}:{name}",
                      f"--config.seed={seed}", f"--config.name={emulator}",
                      f"--config.autoencoder_component={ae}",
                      *epochs_override(EMULATOR_CONFIG, name, factor)]),
        ("closed_loop", [py, "-m", "astrochem_jax.train", f"--config={CLOSED_LOOP_CONFIG}:{name}",
                         f"--config.seed={seed}", f"--config.name={tuned}",
                         f"--config.autoencoder_component={ae}",
                         f"--config.init_from={emulator}",
                         *epochs_override(CLOSED_LOOP_CONFIG, name, factor)]),
        ("decoder", [py, "-m", "astrochem_jax.train", f"--config={DECODER_CONFIG}:{name}",
                     f"--config.seed={seed}", f"--config.name={decoder}",
                     f"--config.emulator_component={tuned}", f"--config.init_from={ae}",
                     *epochs_override(DECODER_CONFIG, name, factor)]),
        ("benchmark_base", benchmark(base_prefix, emulator)),
        ("benchmark_ae_decoder", benchmark(ae_decoder_prefix, tuned)),
        ("benchmark", benchmark(prefix, tuned, decoder)),
    ]
    result: dict = {"dataset": name, "seed": seed, "status": "ok", "seconds": {},
                    "epochs_factor": factor}
    for stage, cmd in steps:
        code, seconds, tail = run(cmd, logs / f"s{seed}_{stage}.log")
        result["seconds"][stage] = seconds
        if code != 0:
            result.update(status=f"failed at {stage}", exit_code=code, log_tail=tail)
            break
    result["wall_time_s"] = sum(result["seconds"].values())
    result["autoencoder"] = history_facts(ae, outputs)
    # acceptance: no autoencoder validation spike above 3x the running best
    result["autoencoder_val_spike_ratio"] = result["autoencoder"].get("val_spike_ratio")
    result["emulator"] = history_facts(emulator, outputs)
    result["emulator_closed_loop"] = history_facts(tuned, outputs)
    result["pinned_state_fraction"] = result["emulator_closed_loop"].get("pinned_state_fraction")
    result["closed_loop_decoder"] = history_facts(decoder, outputs)
    # The components' own training time (summary.json), also where this run reused them and
    # its wall time is only the benchmarks'.
    trained = [result[k].get("training_time_s") for k in
               ("autoencoder", "emulator", "emulator_closed_loop", "closed_loop_decoder")]
    if all(t is not None for t in trained):
        result["components_training_time_s"] = float(sum(trained))
    # The same surrogate before the fine-tune, and after it but with the autoencoder's decoder.
    for key, variant in (("base_emulator", base_prefix), ("ae_decoder", ae_decoder_prefix)):
        path = outputs / "benchmarks" / variant / "report.json"
        if path.exists():
            acc = json.loads(path.read_text())["accuracy"]
            result[key] = {"mean_abs_dlog10": acc["abs_dlog10"]["mean"],
                           "median_abs_dlog10": acc["abs_dlog10"]["median"],
                           "p99_abs_dlog10": acc["abs_dlog10"]["p99"],
                           "mean_relative_error": acc["relative_error"]["mean"]}
    report_path = outputs / "benchmarks" / prefix / "report.json"
    if result["status"] == "ok":
        report = json.loads(report_path.read_text())
        acc = report["accuracy"]
        # The autoencoder's floor is decode(encode(x)) with ITS decoder (the surrogate with the
        # autoencoder's decoder); the shipped surrogate's decoder reads the emulator's states.
        floor = json.loads((outputs / "benchmarks" / ae_decoder_prefix / "report.json")
                           .read_text())["reconstruction_floor"]
        result["surrogate_reconstruction_abs_dlog10"] = \
            report["reconstruction_floor"]["abs_dlog10"]["mean"]
        conservation = acc.get("element_conservation") or {}
        worst_element = max(conservation.items(), key=lambda kv: kv[1]["mean"],
                            default=(None, {"mean": None}))
        result.update(
            scored_split=report.get("scored_split"),
            n_test_tracers=len(report.get("scored_tracers", [])),
            mean_abs_dlog10=acc["abs_dlog10"]["mean"],
            median_abs_dlog10=acc["abs_dlog10"]["median"],
            p99_abs_dlog10=acc["abs_dlog10"]["p99"],
            mean_relative_error=acc["relative_error"]["mean"],
            worst_species=acc["relative_error"]["worst_species"],
            worst_species_relative_error=acc["relative_error"]["worst_value"],
            non_finite=acc["non_finite_predictions"]["count"],
            element_conservation_worst={"element": worst_element[0],
                                        "mean": worst_element[1]["mean"]},
            autoencoder_floor_abs_dlog10=floor["abs_dlog10"]["mean"],
            autoencoder_floor_relative_error=floor["relative_error"]["mean"],
            **observable_means(acc, floor),
        )
        timing = acc.get("transition_timing")
        if timing:
            lag = timing["lag_steps"] or {}
            result.update(transition_events=timing["n_events"],
                          transition_missed=timing["n_missed"],
                          transition_lag_median_steps=lag.get("median"),
                          transition_abs_lag_p90_steps=lag.get("p90_abs"),
                          relative_error_share_near_transitions=timing[
                              "relative_error_share_near_transitions"])
            for kind, entry in (timing.get("by_conditions") or {}).items():
                result[f"transition_abs_lag_median_{kind}_conditions_steps"] = \
                    (entry["lag_steps"] or {}).get("median_abs")
        novelty = report.get("distance_to_training")
        if novelty:
            result.update(train_distance_abs_dlog10=novelty["abs_dlog10"]["mean"],
                          train_distance_spearman=novelty["spearman_tracers"])
    return result


# Truth above this abundance (relative to H nuclei): the species observations detect; the mean
# over all species is dominated by trace species (report.json `abs_dlog10_by_abundance`).
OBSERVABLE_LOG10 = -12.0


def observable_means(accuracy: dict, floor: dict | None = None) -> dict:
    """Mean |dlog10| over the entries whose truth is above 1e-12, closed loop (and the
    autoencoder's floor), from a report's bands; {} for reports written before the bands."""
    from astrochem_jax.surrogates import evaluation as ev

    out = {}
    for key, section in (("mean_abs_dlog10_above_1e-12", accuracy),
                         ("autoencoder_floor_abs_dlog10_above_1e-12", floor)):
        bands = (section or {}).get("abs_dlog10_by_abundance")
        if bands:
            out[key] = ev.mean_over_bands_above(bands, OBSERVABLE_LOG10)
    return out


ENSEMBLE_ROLES = (("encoder", "autoencoder"), ("emulator", "emulator_closed_loop"),
                  ("decoder", "decoder_closed_loop"))


def run_seed_ensemble(name: str, seeds: list[int], outputs: Path, logs: Path) -> dict:
    """The seeds' shipped surrogates (trained apart) combined as ONE ensemble (comma-separated
    components: `surrogates.member_components`), scored on the same test tracers: the mean in
    log space, the members' spread against the error, and the spread factor fitted on the
    validation tracers (`astrochem_jax.benchmark`'s uncertainty section)."""
    prefix = f"robustness/{name}/seed_ensemble"
    shutil.rmtree(outputs / "benchmarks" / prefix, ignore_errors=True)  # no stale report
    lists = [f"--config.components.{role}="
             + ",".join(f"robustness/{name}/s{k}/{component}" for k in seeds)
             for role, component in ENSEMBLE_ROLES]
    code, seconds, tail = run([sys.executable, "-m", "astrochem_jax.benchmark",
                               f"--config={SURROGATE_CONFIG}:{name}", f"--config.name={prefix}",
                               *lists, "--config.benchmark.measure_speed=False"],
                              logs / "seed_ensemble.log")
    out: dict = {"seeds": seeds, "seconds": seconds}
    if code != 0:
        return {**out, "status": "failed", "exit_code": code, "log_tail": tail}
    report = json.loads((outputs / "benchmarks" / prefix / "report.json").read_text())
    acc, spread = report["accuracy"], report["uncertainty"]
    calibration = spread["calibration"]
    return {**out, "status": "ok", "scored_split": report.get("scored_split"),
            "mean_abs_dlog10": acc["abs_dlog10"]["mean"],
            "median_abs_dlog10": acc["abs_dlog10"]["median"],
            "p99_abs_dlog10": acc["abs_dlog10"]["p99"],
            "mean_relative_error": acc["relative_error"]["mean"],
            "worst_species": acc["relative_error"]["worst_species"],
            "non_finite": acc["non_finite_predictions"]["count"],
            **observable_means(acc),
            "members": spread["member_summary"],
            "spread_error_spearman": spread["spearman"],
            "raw_coverage": spread["coverage"],
            "spread_scale": calibration["spread_scale"],
            "calibrated_coverage": calibration["coverage"]}


def ensemble_only(names: list[str], seeds: list[int], outputs: Path) -> dict:
    """`--ensemble-only`: score the seed ensemble of components an earlier run trained."""
    report: dict = {"datasets": {}}
    for name in names:
        missing = [f"robustness/{name}/s{k}/{component}" for k in seeds
                   for _, component in ENSEMBLE_ROLES
                   if not (outputs / "weights" / f"robustness/{name}/s{k}/{component}"
                           / "summary.json").exists()]
        if missing:
            raise SystemExit(f"dataset {name}: components {missing} are missing; run "
                             f"`scripts/bench_robustness.py --datasets {name} --seeds "
                             f"{','.join(map(str, seeds))}` first")
        logs = outputs / "benchmarks" / "robustness" / name / "logs"
        report["datasets"][name] = {"seed_ensemble": run_seed_ensemble(name, seeds, outputs,
                                                                       logs)}
    return report


SUMMARISED = ("mean_abs_dlog10", "median_abs_dlog10", "p99_abs_dlog10", "mean_relative_error",
              "worst_species_relative_error", "non_finite", "autoencoder_floor_abs_dlog10",
              "autoencoder_floor_relative_error", "train_distance_abs_dlog10",
              "mean_abs_dlog10_above_1e-12", "autoencoder_floor_abs_dlog10_above_1e-12",
              "autoencoder_val_spike_ratio", "pinned_state_fraction",
              "transition_lag_median_steps", "transition_abs_lag_p90_steps",
              "relative_error_share_near_transitions",
              "transition_abs_lag_median_changing_conditions_steps",
              "transition_abs_lag_median_constant_conditions_steps",
              "components_training_time_s", "wall_time_s")


def summarise(runs: list[dict]) -> dict:
    """min / median / max over the seeds that finished, and how many did not."""
    import numpy as np

    done = [r for r in runs if r["status"] == "ok"]
    out: dict = {"seeds": [r["seed"] for r in runs], "finished": len(done),
                 "failed": [r["seed"] for r in runs if r["status"] != "ok"]}
    for key in SUMMARISED:
        values = np.asarray([r[key] for r in done if r.get(key) is not None], np.float64)
        if values.size:
            out[key] = {"min": float(values.min()), "median": float(np.median(values)),
                        "max": float(values.max())}
    return out


def _min_median_max(values: dict, fmt: str) -> str:
    return "/".join(format(values[k], fmt) for k in ("min", "median", "max"))


def _optional(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown_table(report: dict) -> str:
    """README's robustness table: one row per (dataset, seed), then min / median / max."""
    head = ("| dataset | seed | test mean / median / p99 \\|dlog10\\| (dex) | MRE (worst species) "
            "| non-finite | AE floor (dex) | autoencoder's decoder: mean / median / p99 (dex) | "
            "before fine-tune: mean / p99 (dex) | truth above 1e-12: mean (dex) | "
            "training / this run (s) |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for name, entry in report["datasets"].items():
        for r in entry.get("runs", []):
            if r["status"] != "ok":
                rows.append(f"| {name} | {r['seed']} | {r['status']} | | | | | | | "
                            f"{r['wall_time_s']:.0f} |")
                continue
            base = r.get("base_emulator")
            before = (f"{base['mean_abs_dlog10']:.3f} / {base['p99_abs_dlog10']:.2f}" if base
                      else "")
            own = r.get("ae_decoder")
            ae_decoder = (f"{own['mean_abs_dlog10']:.3f} / {own['median_abs_dlog10']:.3f} / "
                          f"{own['p99_abs_dlog10']:.2f}" if own else "")
            rows.append(
                f"| {name} | {r['seed']} | {r['mean_abs_dlog10']:.3f} / "
                f"{r['median_abs_dlog10']:.3f} / {r['p99_abs_dlog10']:.2f} | "
                f"{r['mean_relative_error']:.3g} ({r['worst_species']}) | {r['non_finite']} | "
                f"{r['autoencoder_floor_abs_dlog10']:.4f} | {ae_decoder} | {before} | "
                f"{_optional(r.get('mean_abs_dlog10_above_1e-12'), '.3f')} | "
                f"{_optional(r.get('components_training_time_s'), '.0f')} / "
                f"{r['wall_time_s']:.0f} |")
        summary = entry.get("summary") or {}
        if "mean_abs_dlog10" in summary:
            cells = [_min_median_max(summary[k], f) if k in summary else "" for k, f in (
                ("mean_abs_dlog10", ".3f"), ("p99_abs_dlog10", ".2f"),
                ("mean_relative_error", ".3g"), ("non_finite", ".0f"),
                ("autoencoder_floor_abs_dlog10", ".4f"), ("mean_abs_dlog10_above_1e-12", ".3f"),
                ("components_training_time_s", ".0f"), ("wall_time_s", ".0f"))]
            rows.append(f"| {name} | min/median/max | {cells[0]} mean, {cells[1]} p99 | "
                        f"{cells[2]} | {cells[3]} | {cells[4]} | | | {cells[5]} | "
                        f"{cells[6]} / {cells[7]} |")
        ens = entry.get("seed_ensemble") or {}
        if ens.get("status") == "ok":
            rows.append(
                f"| {name} | ensemble of seeds {','.join(map(str, ens['seeds']))} | "
                f"{ens['mean_abs_dlog10']:.3f} / {ens['median_abs_dlog10']:.3f} / "
                f"{ens['p99_abs_dlog10']:.2f} | {ens['mean_relative_error']:.3g} "
                f"({ens['worst_species']}) | {ens['non_finite']} | | | | "
                f"{_optional(ens.get('mean_abs_dlog10_above_1e-12'), '.3f')} | "
                f"/ {ens['seconds']:.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="grav",
                        help="comma-separated configs/datasets names (default: grav)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--retrain", action="store_true",
                        help="delete this script's earlier components of these datasets and "
                             "seeds first (needed after a recipe change)")
    parser.add_argument("--same-steps", action="store_true",
                        help="for train-tracer subsets (<dataset>-train<n>), scale every "
                             "component's epochs by (full train tracers) / n so that each takes "
                             "the optimizer steps it takes on the full dataset")
    parser.add_argument("--ensemble-only", action="store_true",
                        help="train nothing: score the seed ensemble of the components an "
                             "earlier run trained for these datasets and seeds (written to "
                             "<datasets>_seed_ensemble.json)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from astrochem_jax import atomic, paths, runtime

    outputs = paths.outputs_dir()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.ensemble_only:
        report = ensemble_only(names, seeds, outputs)
        report["package_versions"] = runtime.package_versions()
        out_path = (outputs / "benchmarks" / "robustness"
                    / f"{'_'.join(names)}_seed_ensemble.json")
        atomic.write_json(out_path, report)
        print(json.dumps(report, indent=1))
        print(f"written: {out_path}", file=sys.stderr)
        return
    report: dict = {"datasets": {}, "package_versions": runtime.package_versions(),
                    "recipe": {"autoencoder": AE_CONFIG, "emulator": EMULATOR_CONFIG,
                               "emulator_closed_loop": CLOSED_LOOP_CONFIG,
                               "decoder_closed_loop": DECODER_CONFIG,
                               "surrogate": SURROGATE_CONFIG}}
    for name in names:
        if subset_base(name)[0] in NEEDS_SHARED and not (REPO_ROOT.parent / "shared").is_dir():
            report["datasets"][name] = {"skipped": "needs ../shared (not present)"}
            continue
        logs = outputs / "benchmarks" / "robustness" / name / "logs"
        raw = ensure_raw(name, logs)
        runs = []
        for seed in seeds:
            runs.append(run_seed(name, seed, outputs, logs, args.retrain, args.same_steps))
            print(json.dumps({k: runs[-1].get(k) for k in (
                "dataset", "seed", "status", "mean_abs_dlog10", "p99_abs_dlog10",
                "mean_relative_error", "autoencoder_floor_abs_dlog10", "wall_time_s")}),
                file=sys.stderr, flush=True)
        done = [r["seed"] for r in runs if r["status"] == "ok"]
        report["datasets"][name] = {
            "raw": raw, "runs": runs, "summary": summarise(runs),
            "seed_ensemble": (run_seed_ensemble(name, done, outputs, logs) if len(done) > 1
                              else None)}
    out_path = outputs / "benchmarks" / "robustness" / f"{'_'.join(names)}.json"
    atomic.write_json(out_path, report)
    print(json.dumps(report, indent=1))
    print(markdown_table(report), file=sys.stderr)
    print(f"written: {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
