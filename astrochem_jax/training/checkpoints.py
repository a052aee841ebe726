"""Checkpoints: the one module that talks to orbax, and `load_component` for later stages.

Layout of `outputs/weights/<component>/`:
- `checkpoints/<epoch>/{state, loop, metrics}`: orbax `CheckpointManager` keeping the latest and
  the best (lowest validation loss) epoch. `state` is the `TrainState` pytree, `loop` the JSON
  bookkeeping of the loop (epoch, best, plateau / early-stopping counters, dropout, history) so a
  resumed run continues exactly where it stopped.
- `config.json`: the run's config (incl. the nested dataset config) plus `data_info` (dims,
  species, scaling, ...), enough to rebuild the model without the preprocessed data.

A checkpoint that does not restore is never replaced silently by another one: resuming falls back
to the newest intact epoch and says so (the unreadable step is moved to `corrupt_checkpoints/`),
and `load_component` refuses a component whose best epoch (named by summary.json) is missing or
unreadable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from ml_collections import ConfigDict

from astrochem_jax import atomic, config_utils, paths
from astrochem_jax.training import state as state_lib
from astrochem_jax.training.preemption import LoopSyncedCheckpointManager

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
CONFIG_JSON = "config.json"
DATA_INFO_KEY = "data_info"
_ITEMS = ("state", "loop")
_METRIC = "val_loss"


class ComponentNotFoundError(FileNotFoundError):
    """A component directory without a finished training run."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or does not restore (the message names the step directory
    and what to do)."""


class _DropReadOnlyNotes(logging.Filter):
    """orbax warns on every read-only manager ("Given directory is read only", ...): not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("read only" in message or "read_only=True" in message)


@contextlib.contextmanager
def _quiet_read_only():
    logger = logging.getLogger("absl")
    note = _DropReadOnlyNotes()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def _val_loss(metrics: dict) -> float:
    return float(metrics[_METRIC])


class Checkpointer:
    """orbax `CheckpointManager` over `<directory>/checkpoints`: latest + best epoch kept."""

    def __init__(self, directory: str | Path, *, async_save: bool = False,
                 read_only: bool = False):
        self.directory = Path(directory).resolve() / CHECKPOINT_DIR
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=1),
            # BestN sorts ascending and keeps the tail; reverse=True keeps the lowest loss.
            ocp.checkpoint_managers.BestN(get_metric_fn=_val_loss, reverse=True, n=1),
        ])
        with _quiet_read_only() if read_only else contextlib.nullcontext():
            options = ocp.CheckpointManagerOptions(
                best_fn=_val_loss,
                best_mode="min",
                preservation_policy=None if read_only else policy,
                enable_async_checkpointing=bool(async_save),
                read_only=read_only,
                create=not read_only,
            )
            self.manager = LoopSyncedCheckpointManager(self.directory, options=options,
                                                       item_names=_ITEMS)

    def step_directory(self, epoch: int) -> Path:
        return self.directory / str(int(epoch))

    def epochs(self) -> list[int]:
        """Every saved epoch, ascending."""
        return sorted(int(e) for e in self.manager.all_steps())

    def restore_latest_intact(self, abstract_state: Any, say: Callable[[str], None]
                              ) -> tuple[int, state_lib.TrainState, dict] | None:
        """(epoch, state, loop) of the newest epoch that restores, None when there is none.

        An unreadable newer step is moved to `<component>/corrupt_checkpoints/<epoch>` (so the
        resumed run can save that epoch again) and `say` tells which one and where it went. When
        no step restores, `CheckpointError` names them and what to delete."""
        failures = []
        for epoch in reversed(self.epochs()):
            try:
                state, loop = self.restore(epoch, abstract_state)
            except Exception as err:  # noqa: BLE001 - orbax / tensorstore / json errors alike
                failures.append((epoch, err))
                continue
            for bad, err in failures:
                moved = self._set_aside(bad)
                say(f"checkpoint {self.step_directory(bad)} is unreadable ({_brief(err)}); "
                    f"resuming from epoch {epoch}, the newest intact one. The unreadable step was "
                    f"moved to {moved}: delete it when you no longer need it")
            if failures:
                self.manager.reload()
            return epoch, state, loop
        if failures:
            listed = "; ".join(f"{self.step_directory(e)}: {_brief(err)}" for e, err in failures)
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores ({listed}). Delete "
                f"{self.directory} to restart this run from scratch (or restore the files)")
        return None

    def _set_aside(self, epoch: int) -> Path:
        target = self.directory.parent / CORRUPT_DIR / str(int(epoch))
        k = 1
        while target.exists():
            target = self.directory.parent / CORRUPT_DIR / f"{int(epoch)}.{k}"
            k += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.step_directory(epoch)), str(target))
        return target

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def best_epoch(self) -> int | None:
        return self.manager.best_step()

    def save(self, epoch: int, state: state_lib.TrainState, loop: dict, val_loss: float) -> None:
        self.manager.save(
            int(epoch),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state_lib.as_saved(state)),
                                    loop=ocp.args.JsonSave(loop)),
            metrics={_METRIC: float(val_loss)},
        )

    def restore(self, epoch: int, abstract_state: Any) -> tuple[state_lib.TrainState, dict]:
        """abstract_state: `jax.ShapeDtypeStruct` pytree (with shardings) of a `TrainState`."""
        target = state_lib.as_saved(abstract_state)
        restored = self.manager.restore(
            int(epoch),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                    loop=ocp.args.JsonRestore()),
        )
        return state_lib.from_saved(restored.state), dict(restored.loop)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_sharding(tree: Any, sharding) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or structs) all placed with `sharding`."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        jax.eval_shape(lambda: tree))


# --- config.json ---------------------------------------------------------------------------------


def write_config_json(directory: Path, config: ConfigDict, info: dict) -> None:
    data = config_utils.to_dict(config)
    data[DATA_INFO_KEY] = info
    atomic.write_json(Path(directory) / CONFIG_JSON, data)


def read_config_json(directory: Path) -> tuple[ConfigDict, dict]:
    path = Path(directory) / CONFIG_JSON
    data = json.loads(path.read_text())
    if DATA_INFO_KEY not in data or "type" not in data:
        raise ValueError(f"{path}: fields {DATA_INFO_KEY!r} and 'type' are required")
    info = data.pop(DATA_INFO_KEY)
    return ConfigDict(data), info


# --- loading trained components ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadedComponent:
    """A trained component with its best weights.

    mdef / params / batch_stats: the split model (`state.merge_model` rebuilds it);
    info: `config.json["data_info"]` (n_species, n_physical, state_dim / latent_dim, species,
    scaling, ...); latents_minmax [2, L] for autoencoders (None otherwise).
    """

    name: str
    directory: Path
    type: str
    config: ConfigDict
    info: dict
    mdef: state_lib.ModelDef
    params: Any
    batch_stats: Any
    epoch: int
    latents_minmax: np.ndarray | None
    summary: dict | None
    fingerprint: str = ""  # `fingerprint(params, batch_stats, latents_minmax)`
    # Ensembles (config.ensemble_size > 1): params, batch_stats and latents_minmax carry a
    # leading member axis; `member(k)` is member k as a plain component.
    ensemble_size: int = 1

    def model(self, train: bool = False) -> nnx.Module:
        """The NNX module with the best weights (evaluation mode by default)."""
        if self.ensemble_size > 1:
            raise ValueError(f"component {self.name!r} is an ensemble of {self.ensemble_size}: "
                             "take one member first (`.member(k)`) or use `.members()`")
        return state_lib.merge_model(self.mdef, self.params, self.batch_stats, train=train)

    def member(self, k: int) -> LoadedComponent:
        """Ensemble member k as a plain component (itself for a plain component, k = 0)."""
        if self.ensemble_size == 1:
            if int(k) != 0:
                raise IndexError(f"component {self.name!r} is not an ensemble; member {k}")
            return self
        minmax = None if self.latents_minmax is None else self.latents_minmax[int(k)]
        params, stats = state_lib.member_of((self.params, self.batch_stats), int(k))
        return dataclasses.replace(self, params=params, batch_stats=stats,
                                   latents_minmax=minmax, ensemble_size=1)

    def members(self) -> list[LoadedComponent]:
        """Every member that was not excluded during training (summary.json)."""
        excluded = {int(e["member"]) for e in (self.summary or {}).get("excluded_members", [])}
        return [self.member(k) for k in range(self.ensemble_size) if k not in excluded]


def training_command(name: str) -> str:
    """The command that trains component `name` (sweep members `<base>/<key>=<value>`; names
    `<kind>_<dataset>` of a component trained on a named dataset: `<config>.py:<dataset>`)."""
    base, _, sweep = name.partition("/")
    command = f"python -m astrochem_jax.train --config={_config_spec(base)}"
    if sweep:
        command += f' --sweep="{sweep}"'
    return command


def _config_spec(base: str) -> str:
    components = paths.configs_dir() / "components"
    if (components / f"{base}.py").exists():
        return f"configs/components/{base}.py"
    datasets = sorted(p.stem for p in (paths.configs_dir() / "datasets").glob("*.py")
                      if not p.stem.startswith("_"))
    # `<kind>[_<variant>]_<dataset>` (configs.datasets.component_name): the config whose
    # get_config(dataset).name is `base`.
    for config in sorted(components.glob("*.py")):
        kind = config.stem.split("_grav")[0]
        for dataset in datasets:
            if not (base.startswith(f"{kind}_") and base.endswith(f"_{dataset}")):
                continue
            try:
                name = config_utils.load_config(f"{config}:{dataset}", "components").name
            except Exception:  # noqa: BLE001 - a config that cannot build for it is not the one
                continue
            if name == base:
                return f"configs/components/{config.name}:{dataset}"
    return f"configs/components/{base}.py"


def _brief(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def fingerprint(params: Any, batch_stats: Any, latents_minmax: np.ndarray | None) -> str:
    """sha256 of a component's trained numbers: every parameter and batch statistic (path,
    dtype, shape, bytes) and the latent min/max. Equal fingerprints = the same model, whatever
    the files look like; any retraining that changes a weight changes it."""
    digest = hashlib.sha256()
    for tree in (params, batch_stats):
        leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
        for path, leaf in leaves:
            array = np.ascontiguousarray(np.asarray(leaf))
            digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}".encode())
            digest.update(array.tobytes())
    if latents_minmax is not None:
        array = np.ascontiguousarray(np.asarray(latents_minmax))
        digest.update(f"latents_minmax|{array.dtype}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class ComponentFailedError(ValueError):
    """The component's training ended without converging (summary.json status "failed")."""


class ComponentUnfinishedError(RuntimeError):
    """The component's training has not finished (no summary.json): it is still running, was
    interrupted, or crashed; its best-so-far weights are not a trained component."""


def load_component(name: str, *, sharding=None, allow_failed: bool = False,
                   allow_unfinished: bool = False) -> LoadedComponent:
    """Rebuild component `name` from `outputs/weights/<name>/config.json` and restore its best
    parameters and batch statistics (on `sharding`, default the first local device).

    Refused: a component whose summary.json says status "failed" (unless `allow_failed`); one
    without summary.json, i.e. whose training has not finished (unless `allow_unfinished`: its
    best epoch so far); one whose weights on disk are not those summary.json's fingerprint
    names (a checkpoint or latents_minmax.npy replaced after training)."""
    from astrochem_jax.training.components import get_component

    directory = paths.weights_dir(name)
    summary_path = directory / "summary.json"
    if not allow_failed and summary_path.exists():
        status = json.loads(summary_path.read_text()).get("status")
        if status == "failed":
            reason = json.loads(summary_path.read_text()).get("failure")
            raise ComponentFailedError(
                f"component {name!r}: {summary_path} says its training failed to converge "
                f"({reason}); it is not used. Retrain it: {training_command(name)}")
    checkpoint_dir = directory / CHECKPOINT_DIR
    if not (directory / CONFIG_JSON).exists() or not checkpoint_dir.is_dir():
        raise ComponentNotFoundError(
            f"component {name!r} not found: {directory / CONFIG_JSON} or {checkpoint_dir} is "
            f"missing. Train it first with: {training_command(name)}"
        )
    if not allow_unfinished and not summary_path.exists():
        raise ComponentUnfinishedError(
            f"component {name!r}: its training has not finished ({summary_path} is missing: "
            "still running, interrupted or crashed), so its best-so-far weights are not used. "
            f"Resume it with: {training_command(name)}")
    config, info = read_config_json(directory)
    component = get_component(config.type)
    mdef, params, batch_stats = state_lib.build_split(
        lambda: component.build_model(config, info, nnx.Rngs(int(config.seed))))
    tx = state_lib.make_optimizer(config)
    template = state_lib.init_state(params, batch_stats, tx, int(config.seed),
                                    ema=state_lib.uses_ema(config))
    members = int(config.get("ensemble_size") or 1)
    if members > 1:  # only the shapes matter: the restore fills every member
        template = state_lib.stack_members([template] * members)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    retrain = f"delete {directory} and retrain: {training_command(name)}"
    checkpointer = Checkpointer(directory, read_only=True)
    try:
        epoch = checkpointer.best_epoch()
        named = None if summary is None else summary.get("best_epoch")
        if named is not None and (epoch != int(named)
                                  or not checkpointer.step_directory(named).is_dir()):
            # orbax would pick the best of what is left: weights that summary.json,
            # latents_minmax.npy and any emulator trained on this component do not describe.
            raise CheckpointError(
                f"component {name!r}: its best checkpoint, epoch {named} (named by "
                f"{summary_path}), is missing: {checkpointer.step_directory(named)} "
                f"(epochs found: {checkpointer.epochs()}). No other epoch is used in its place. "
                f"Restore that directory, or {retrain}")
        if epoch is None:
            raise ComponentNotFoundError(
                f"component {name!r}: {checkpoint_dir} holds no checkpoint. Train it with: "
                f"{training_command(name)}"
            )
        try:
            restored, _ = checkpointer.restore(epoch, abstract_with_sharding(template, sharding))
        except Exception as err:  # noqa: BLE001 - orbax / tensorstore / json errors alike
            raise CheckpointError(
                f"component {name!r}: checkpoint {checkpointer.step_directory(epoch)} (its best "
                f"epoch) is unreadable ({_brief(err)}). Restore that directory, or {retrain}"
            ) from err
    finally:
        checkpointer.close()
    minmax_path = directory / "latents_minmax.npy"
    minmax = np.load(minmax_path, allow_pickle=False) if minmax_path.exists() else None
    params = state_lib.eval_params(restored)  # the moving average, when the run kept one
    found = fingerprint(params, restored.batch_stats, minmax)
    recorded = None if summary is None else summary.get("fingerprint")
    if recorded is not None and recorded != found:
        raise CheckpointError(
            f"component {name!r}: the weights on disk (checkpoint epoch {epoch} and "
            f"{minmax_path.name}; fingerprint {found[:16]}) are not the ones its training ended "
            f"with ({summary_path}: {recorded[:16]}): a file was replaced after training. "
            f"Restore the original files, or {retrain}")
    return LoadedComponent(
        name=name, directory=directory, type=str(config.type), config=config, info=info,
        mdef=mdef, params=params, batch_stats=restored.batch_stats, epoch=int(epoch),
        latents_minmax=minmax, summary=summary, fingerprint=found, ensemble_size=members,
    )
