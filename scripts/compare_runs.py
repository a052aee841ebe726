"""Compare trained components: a table sorted by best validation loss, and learning curves.

    python scripts/compare_runs.py autoencoder_grav_large autoencoder_grav_small
    python scripts/compare_runs.py autoencoder_grav_large      # a sweep base: all its members

Reads `outputs/weights/<name>/summary.json` (best validation loss and metrics) and `metrics.json`
(per-epoch history) of each run; a name without its own summary.json but with sweep members
(`<name>/<field>=<value>/summary.json`) stands for all of them. Prints the table and writes
`outputs/comparison.png` (validation and training loss per epoch, one line per run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from astrochem_jax import paths  # noqa: E402
from astrochem_jax.atomic import atomic_path  # noqa: E402


class RunNotFoundError(FileNotFoundError):
    """A run name without summary.json (not trained, or still training)."""


def expand_names(names: list[str]) -> list[str]:
    """Names with their sweep members substituted for sweep bases (sorted, de-duplicated)."""
    out: list[str] = []
    for name in names:
        directory = paths.weights_dir(name)
        if (directory / "summary.json").exists() or not directory.is_dir():
            out.append(name)
            continue
        members = sorted(p.parent.relative_to(paths.weights_dir("")).as_posix()
                         for p in directory.glob("*/summary.json"))
        out.extend(members or [name])
    return list(dict.fromkeys(out))


def load_run(name: str) -> dict:
    """{name, summary, history} of one trained component."""
    directory = paths.weights_dir(name)
    summary_path = directory / "summary.json"
    if not summary_path.exists():
        raise RunNotFoundError(
            f"{summary_path} not found: component {name!r} has not finished training; train it "
            f"with `python -m astrochem_jax.train --config=configs/components/"
            f"{name.split('/')[0]}.py`"
        )
    summary = json.loads(summary_path.read_text())
    if "best_val_loss" not in summary:
        raise ValueError(f"{summary_path}: field best_val_loss is missing")
    metrics_path = directory / "metrics.json"
    history = json.loads(metrics_path.read_text()) if metrics_path.exists() else []
    return {"name": name, "summary": summary, "history": history}


def sort_runs(runs: list[dict]) -> list[dict]:
    """Best (lowest) validation loss first; NaN losses last."""
    def key(run):
        loss = float(run["summary"]["best_val_loss"])
        return (math.isnan(loss), loss)

    return sorted(runs, key=key)


def format_table(runs: list[dict]) -> str:
    """One line per run: rank, name, type, best val loss, val mean relative error and |dlog10|,
    best / final epoch, parameters, wall time."""
    header = ("#", "run", "type", "best val loss", "val mean rel. err", "val |dlog10|",
              "best/final epoch", "params", "wall s")
    rows = []
    for rank, run in enumerate(sort_runs(runs), start=1):
        s = run["summary"]
        m = s.get("best_val_metrics", {})
        rows.append((
            str(rank), run["name"], str(s.get("component_type", "?")),
            f"{float(s['best_val_loss']):.5g}",
            _fmt(m.get("mean_relative_error")), _fmt(m.get("mean_abs_dlog10")),
            f"{s.get('best_epoch', '?')}/{s.get('final_epoch', '?')}",
            str(s.get("parameter_count", "?")), _fmt(s.get("wall_time_s"), ".1f"),
        ))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _fmt(value, spec: str = ".4g") -> str:
    return "-" if value is None else format(float(value), spec)


def plot_learning_curves(runs: list[dict], path: Path) -> Path:
    """Validation (solid) and training (dashed) loss per epoch for every run, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for k, run in enumerate(sort_runs(runs)):
        epochs = [r["epoch"] for r in run["history"]]
        color = f"C{k % 10}"
        ax.plot(epochs, [r["val_loss"] for r in run["history"]], color=color, label=run["name"])
        ax.plot(epochs, [r["train_loss"] for r in run["history"]], color=color, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (solid: validation, dashed: training)")
    ax.set_title("learning curves")
    ax.legend(fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def compare(names: list[str], plot_path: Path | None = None) -> tuple[str, Path]:
    """Load the runs, return (table, plot path) after writing the plot."""
    if not names:
        raise ValueError("compare_runs: give at least one component name")
    runs = [load_run(n) for n in expand_names(names)]
    plot_path = plot_path or paths.outputs_dir() / "comparison.png"
    return format_table(runs), plot_learning_curves(runs, plot_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="component names under outputs/weights/")
    parser.add_argument("--plot", type=Path, default=None,
                        help="learning-curve PNG (default outputs/comparison.png)")
    args = parser.parse_args(argv)
    try:
        table, plot = compare(args.names, args.plot)
    except (RunNotFoundError, ValueError) as err:
        print(f"compare_runs: {err}", file=sys.stderr)
        return 1
    print(table)
    print(f"learning curves: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
