"""Checkpoints: the one module that talks to orbax, and `load_component` for later stages.

Layout of `outputs/weights/<component>/`:
- `checkpoints/<epoch>/{state, loop, metrics}`: orbax `CheckpointManager` keeping the latest and
  the best (lowest validation loss) epoch. `state` is the `TrainState` pytree, `loop` the JSON
  bookkeeping of the loop (epoch, best, plateau / early-stopping counters, dropout, history) so a
  resumed run continues exactly where it stopped.
- `config.json`: the run's config (incl. the nested dataset config) plus `data_info` (dims,
  species, scaling, ...), enough to rebuild the model without the preprocessed data.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from ml_collections import ConfigDict

from astrochem_jax import atomic, config_utils, paths
from astrochem_jax.training import state as state_lib

CHECKPOINT_DIR = "checkpoints"
CONFIG_JSON = "config.json"
DATA_INFO_KEY = "data_info"
_ITEMS = ("state", "loop")
_METRIC = "val_loss"


class ComponentNotFoundError(FileNotFoundError):
    """A component directory without a finished training run."""


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
        options = ocp.CheckpointManagerOptions(
            best_fn=_val_loss,
            best_mode="min",
            preservation_policy=None if read_only else policy,
            enable_async_checkpointing=bool(async_save),
            read_only=read_only,
            create=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def best_epoch(self) -> int | None:
        return self.manager.best_step()

    def save(self, epoch: int, state: state_lib.TrainState, loop: dict, val_loss: float) -> None:
        self.manager.save(
            int(epoch),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    loop=ocp.args.JsonSave(loop)),
            metrics={_METRIC: float(val_loss)},
        )

    def restore(self, epoch: int, abstract_state: Any) -> tuple[state_lib.TrainState, dict]:
        """abstract_state: `jax.ShapeDtypeStruct` pytree (with shardings) of a `TrainState`."""
        restored = self.manager.restore(
            int(epoch),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                    loop=ocp.args.JsonRestore()),
        )
        return restored.state, dict(restored.loop)

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

    def model(self, train: bool = False) -> nnx.Module:
        """The NNX module with the best weights (evaluation mode by default)."""
        return state_lib.merge_model(self.mdef, self.params, self.batch_stats, train=train)


def training_command(name: str) -> str:
    """The command that trains component `name` (sweep members `<base>/<key>=<value>`)."""
    base, _, sweep = name.partition("/")
    command = f"python -m astrochem_jax.train --config=configs/components/{base}.py"
    if sweep:
        command += f' --sweep="{sweep}"'
    return command


class ComponentFailedError(ValueError):
    """The component's training ended without converging (summary.json status "failed")."""


def load_component(name: str, *, sharding=None, allow_failed: bool = False) -> LoadedComponent:
    """Rebuild component `name` from `outputs/weights/<name>/config.json` and restore its best
    parameters and batch statistics (on `sharding`, default the first local device).

    A component whose summary.json says status "failed" is refused unless `allow_failed`."""
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
    config, info = read_config_json(directory)
    component = get_component(config.type)
    mdef, params, batch_stats = state_lib.build_split(
        lambda: component.build_model(config, info, nnx.Rngs(int(config.seed))))
    tx = state_lib.make_optimizer(config)
    template = state_lib.init_state(params, batch_stats, tx, int(config.seed))
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    checkpointer = Checkpointer(directory, read_only=True)
    try:
        epoch = checkpointer.best_epoch()
        if epoch is None:
            raise ComponentNotFoundError(
                f"component {name!r}: {checkpoint_dir} holds no checkpoint. Train it with: "
                f"{training_command(name)}"
            )
        restored, _ = checkpointer.restore(epoch, abstract_with_sharding(template, sharding))
    finally:
        checkpointer.close()
    minmax_path = directory / "latents_minmax.npy"
    minmax = np.load(minmax_path, allow_pickle=False) if minmax_path.exists() else None
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return LoadedComponent(
        name=name, directory=directory, type=str(config.type), config=config, info=info,
        mdef=mdef, params=restored.params, batch_stats=restored.batch_stats, epoch=int(epoch),
        latents_minmax=minmax, summary=summary,
    )
