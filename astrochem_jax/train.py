"""Train one component (or a sweep of them) from its config.

    python -m astrochem_jax.train --config=configs/components/autoencoder_grav_large.py
    python -m astrochem_jax.train --config=configs/components/emulator_grav_sequential.py \
        --config.lr=5e-4 --config.batch_size=512
    python -m astrochem_jax.train --config=configs/components/emulator_grav_closed_loop.py
        # warm-started from emulator_grav_sequential (config.init_from), whole trajectories
    python -m astrochem_jax.train --config=configs/components/autoencoder_grav_large.py \
        --sweep="lr=1e-3,5e-4,1e-4"          # one run per value: <name>/lr=1e-3, ...

The preprocessed data the component needs are built (or their cache validated) first. Rerunning
the same command resumes from the latest checkpoint in `outputs/weights/<name>/`. Several
`key=v1,v2` groups separated by `;` sweep their Cartesian product. `--config` also takes a bare
name (`--config=autoencoder_grav_large:uclchem_grav_train`). Errors are one `error:` line (exit
code 2); details in `outputs/runs/<name>/train.log`.
"""

from __future__ import annotations

from astrochem_jax import runtime

if __name__ == "__main__":
    # Before numpy/jax load anywhere: one BLAS thread, persistent compile cache (float32: only
    # the solver needs float64, and it turns it on for itself).
    runtime.setup_entry_point()

import ast  # noqa: E402
import copy  # noqa: E402
import itertools  # noqa: E402
import sys  # noqa: E402

from ml_collections import ConfigDict  # noqa: E402


class SweepError(ValueError):
    """A malformed --sweep specification."""


def parse_sweep(spec: str) -> list[tuple[str, list[str]]]:
    """`"lr=1e-3,5e-4;batch_size=64,128"` -> [("lr", ["1e-3", "5e-4"]), ("batch_size", [...])]."""
    groups = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        key, sep, values = part.partition("=")
        values = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not values:
            raise SweepError(f"--sweep: expected 'field=v1,v2,...' (groups separated by ';'), "
                             f"found {part!r}")
        groups.append((key.strip(), values))
    if not groups:
        raise SweepError(f"--sweep: no 'field=values' group in {spec!r}")
    return groups


def _convert(raw: str, current, field: str):
    """Parse `raw` like the config field's current type (int, float, bool, str, tuple)."""
    if isinstance(current, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise SweepError(f"--sweep: field {field!r} is a bool; cannot use {raw!r}")
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(current, float) and isinstance(value, int | float):
        return float(value)
    if isinstance(current, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if current is not None and not isinstance(value, type(current)):
        raise SweepError(f"--sweep: field {field!r} holds a {type(current).__name__}; "
                         f"cannot use {raw!r}")
    return value


def _set_field(config: ConfigDict, field: str, raw: str) -> None:
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
        if p not in node:
            raise SweepError(f"--sweep: config has no field {field!r}")
        node = node[p]
    if leaf not in node:
        raise SweepError(f"--sweep: config has no field {field!r}; available: {sorted(node)}")
    node[leaf] = _convert(raw, node[leaf], field)


def sweep_configs(config: ConfigDict, spec: str | None) -> list[ConfigDict]:
    """One config per sweep point, named `<name>/<field>=<value>[,<field>=<value>...]`."""
    if not spec:
        return [config]
    groups = parse_sweep(spec)
    out = []
    for point in itertools.product(*[[(k, v) for v in values] for k, values in groups]):
        c = copy.deepcopy(config)
        with c.unlocked():
            for field, raw in point:
                _set_field(c, field, raw)
            c.name = f"{config.name}/" + ",".join(f"{field}={raw}" for field, raw in point)
        out.append(c)
    return out


def main(argv) -> None:
    from absl import app, logging

    from astrochem_jax import cli
    from astrochem_jax.training.loop import train_component
    from astrochem_jax.training.preemption import TrainingInterrupted

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.setup_logging(str(_CONFIG.value.name), "train")  # orbax logs every save at INFO
    configs = sweep_configs(_CONFIG.value, _SWEEP.value)
    for config in configs:
        try:
            summary = train_component(config)
        except TrainingInterrupted as stop:  # SIGTERM / SIGINT: checkpoint saved, rerun resumes
            print(f"interrupted: {stop}", file=sys.stderr, flush=True)
            sys.exit(stop.exit_code)
        logging.info("%s: done, best val loss %.4e (epoch %d)", config.name,
                     summary["best_val_loss"], summary["best_epoch"])


if __name__ == "__main__":
    from absl import flags
    from ml_collections import config_flags

    from astrochem_jax import cli

    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "component config, e.g. configs/components/autoencoder_grav_large.py",
        lock_config=True,
    )
    _SWEEP = flags.DEFINE_string(
        "sweep", None, 'one run per value, e.g. "lr=1e-3,5e-4,1e-4" (groups separated by ";")'
    )
    cli.run(main, {"config": "components"}, errors=(SweepError,))
