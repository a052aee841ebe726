"""Train state pytree, model <-> (graphdef, state) plumbing and the optimizer.

Models are Flax NNX modules; training works on pure functions of their split state:

    graphdef, params (nnx.Param), batch_stats (nnx.BatchStat), rng_keys (nnx.RngKey), rest

`TrainState` holds only what changes during training (step, params, batch_stats, opt_state, rng,
and with `config.ema_epochs` > 0 an exponential moving average of the parameters); the model's
own random streams are re-keyed every step, so a run is a pure function of (config, seed) and
resumes exactly from a checkpoint.

Random keys: ONE root key per seed, `jax.random.key(seed)`, folded with a generation number
(0, then +1 per rollback) and split into independent streams (`STREAMS`): `init` (parameter
initialisation), `data` (epoch orders and batch permutations, drawn on the host with numpy from
the key's data), `dropout` and `noise` (the models' dropout masks and Gaussian noise, re-keyed
every step as `fold_in(stream, step)`). `TrainState.rng` holds the raw data of the current
generation's root key: a rollback restores an earlier step but gets a new generation, so it draws
fresh dropout / noise keys instead of replaying the ones that led to the divergence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """step: int32 []; params / batch_stats: nnx.State of float32 arrays; opt_state: optax state
    (its `hyperparams["learning_rate"]` is the current LR); rng: uint32 [2] raw PRNG key data;
    ema_params: None, or the exponential moving average of `params` (same tree) that is
    evaluated, chosen as best checkpoint and exported instead of them (`eval_params`). None adds
    no leaf: a state without it saves and restores exactly as before the field existed."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """The static half of a split model: graph definitions for training and evaluation mode and
    the non-trained variables (random-stream keys and counters)."""

    train_graphdef: Any
    eval_graphdef: Any
    rng_keys: Any
    rest: Any


def split_model(model: nnx.Module) -> tuple[ModelDef, Any, Any]:
    """model -> (ModelDef, params, batch_stats). Leaves `model` in training mode."""
    model.eval()
    eval_graphdef, *_ = nnx.split(model, nnx.Param, nnx.BatchStat, nnx.RngKey, ...)
    model.train()
    graphdef, params, batch_stats, rng_keys, rest = nnx.split(
        model, nnx.Param, nnx.BatchStat, nnx.RngKey, ...
    )
    return ModelDef(graphdef, eval_graphdef, rng_keys, rest), params, batch_stats


def build_split(build: Callable[[], nnx.Module]) -> tuple[ModelDef, Any, Any]:
    """`split_model(build())` with the initialisation traced as ONE jitted computation (eager
    initialisation compiles every initializer op separately: seconds on CPU)."""
    static: dict[str, ModelDef] = {}

    def init():
        mdef, params, batch_stats = split_model(build())
        static["mdef"] = mdef
        return params, batch_stats, mdef.rng_keys, mdef.rest

    params, batch_stats, rng_keys, rest = jax.jit(init)()
    m = static["mdef"]
    return ModelDef(m.train_graphdef, m.eval_graphdef, rng_keys, rest), params, batch_stats


STREAMS = ("init", "data", "dropout", "noise")
# Streams of the model's random keys (nnx.RngKey tags) re-keyed every training step.
MODEL_STREAMS = ("dropout", "noise")


# Ensemble member m > 0 folds MEMBER_FOLD + m into its generation key (member 0 uses the plain
# key, so an ensemble of one IS the plain component; MEMBER_FOLD keeps members apart from
# generations, which fold small integers).
MEMBER_FOLD = 1 << 30


def generation_key(seed: int, generation: int = 0, member: int = 0) -> jax.Array:
    """The root key of `seed` for a generation (0, then one more per rollback) and an ensemble
    member (0 for a plain component)."""
    key = jax.random.fold_in(jax.random.key(int(seed)), int(generation))
    return key if int(member) == 0 else jax.random.fold_in(key, MEMBER_FOLD + int(member))


def split_streams(root: jax.Array) -> dict[str, jax.Array]:
    """A root key -> {stream: key} for every name of `STREAMS` (independent keys)."""
    return dict(zip(STREAMS, jax.random.split(root, len(STREAMS)), strict=True))


def stream_keys(seed: int, generation: int = 0, member: int = 0) -> dict[str, jax.Array]:
    return split_streams(generation_key(seed, generation, member))


def model_rngs(seed: int, member: int = 0) -> nnx.Rngs:
    """The `nnx.Rngs` models are built with: parameters from the `init` stream; the module's
    `dropout` / `noise` keys (replaced every training step, see `step_keys`) tagged by stream."""
    keys = stream_keys(seed, 0, member)
    return nnx.Rngs(keys["init"], dropout=keys["dropout"], noise=keys["noise"])


def data_rng(seed: int, *path: int, member: int = 0) -> np.random.Generator:
    """A numpy generator of the `data` stream, for (epoch, part, ...) `path`: the same on every
    process and for every device count (each ensemble member has its own)."""
    key = stream_keys(seed, 0, member)["data"]
    for p in path:
        key = jax.random.fold_in(key, int(p))
    return np.random.default_rng(np.asarray(jax.random.key_data(key), np.uint32).tolist())


def fresh_rng_keys(rng_keys: Any, keys: dict[str, jax.Array]) -> Any:
    """Replace every random-stream key of the model by an independent key of its own stream:
    leaf i tagged t gets fold_in(keys[t], i) (untagged or unknown tags use `dropout`)."""
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    count = [0]

    def fresh(leaf):
        tag = getattr(leaf, "tag", None) if is_var(leaf) else None
        k = jax.random.fold_in(keys.get(tag, keys["dropout"]), count[0])
        count[0] += 1
        value = leaf[...] if is_var(leaf) else leaf
        typed = jnp.issubdtype(value.dtype, jax.dtypes.prng_key)
        k = jnp.reshape(k if typed else jax.random.key_data(k), value.shape)
        return leaf.replace(k) if is_var(leaf) else k

    return jax.tree.map(fresh, rng_keys, is_leaf=is_var)


def merge_model(mdef: ModelDef, params: Any, batch_stats: Any, *, train: bool,
                key: dict[str, jax.Array] | None = None) -> nnx.Module:
    """Rebuild the module in training (random streams keyed by `key`, {stream: key} as from
    `step_keys`) or evaluation mode."""
    if train:
        rng_keys = mdef.rng_keys if key is None else fresh_rng_keys(mdef.rng_keys, key)
        return nnx.merge(mdef.train_graphdef, params, batch_stats, rng_keys, mdef.rest, copy=True)
    return nnx.merge(mdef.eval_graphdef, params, batch_stats, mdef.rng_keys, mdef.rest, copy=True)


def step_keys(state: TrainState) -> dict[str, jax.Array]:
    """{dropout, noise} keys of the current step: fold_in(stream, step) of the state's
    generation; independent of the device count."""
    streams = split_streams(jax.random.wrap_key_data(state.rng))
    return {name: jax.random.fold_in(streams[name], state.step) for name in MODEL_STREAMS}


def with_generation(state: TrainState, seed: int, generation: int) -> TrainState:
    """The same state with the random streams of another generation (after a rollback); an
    ensemble state (rng [M, 2]) gets every member's own key of that generation."""
    members = state.rng.shape[0] if np.ndim(state.rng) == 2 else None
    keys = ([generation_key(seed, generation, m) for m in range(members)] if members
            else generation_key(seed, generation))
    new = np.asarray(jax.random.key_data(jnp.stack(keys) if members else keys)).astype(
        state.rng.dtype)
    rng = (jax.device_put(new, state.rng.sharding) if isinstance(state.rng, jax.Array)
           else jnp.asarray(new))
    return dataclasses.replace(state, rng=rng)


def make_optimizer(config) -> optax.GradientTransformation:
    """AdamW (betas, eps, weight decay) after global-norm clipping; the learning rate is an
    injected hyperparameter so reduce-on-plateau can change it and it is checkpointed.

    `config.trainable_params` (a tuple of name prefixes of the model's top-level attributes,
    e.g. ("decoder_",); absent or empty = every parameter): only those parameters are updated
    (clipped by their own global norm, decayed, moved); every other update is exactly zero."""
    prefixes = tuple(str(p) for p in (config.get("trainable_params") or ()))

    def chain(learning_rate):
        tx = optax.chain(
            optax.clip_by_global_norm(float(config.grad_clip_norm)),
            optax.adamw(
                learning_rate,
                b1=float(config.betas[0]),
                b2=float(config.betas[1]),
                eps=float(config.adam_eps),
                weight_decay=float(config.weight_decay),
            ),
        )
        if not prefixes:
            return tx
        return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()},
                                     lambda params: trainable_labels(params, prefixes))

    return optax.inject_hyperparams(chain)(learning_rate=jnp.asarray(config.lr, jnp.float32))


def _top_name(path) -> str:
    entry = path[0]
    for field in ("key", "name", "idx"):
        if hasattr(entry, field):
            return str(getattr(entry, field))
    return str(entry)


def trainable_labels(params: Any, prefixes: tuple[str, ...]) -> Any:
    """params -> the same tree of "trained" / "frozen": "trained" where the leaf's top-level
    attribute name starts with one of `prefixes`. A prefix that matches no parameter is an
    error (a typo would otherwise freeze the whole model)."""
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "trained" if _top_name(path).startswith(prefixes) else "frozen", params)
    if "trained" not in jax.tree.leaves(labels):
        names = sorted({_top_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]})
        raise ValueError(f"config.trainable_params = {list(prefixes)} matches no parameter of "
                         f"the model; its parameters are {names}")
    return labels


LR_SCHEDULES = ("constant", "warmup_cosine")


def lr_schedule_factor(config, progress_epochs) -> np.ndarray:
    """Learning-rate multiplier at fractional epochs `progress_epochs` [n] (float64 numpy).

    "constant": 1. "warmup_cosine": linear from 0 to 1 over `config.warmup_epochs`, then a cosine
    from 1 down to `config.lr_final_factor` at `config.epochs`. The learning rate that reaches the
    optimizer is config.lr x (plateau / rollback reductions) x this factor.
    """
    kind = str(config.get("lr_schedule") or "constant")
    progress = np.asarray(progress_epochs, np.float64)
    if kind == "constant":
        return np.ones_like(progress)
    if kind != "warmup_cosine":
        raise ValueError(f"config.lr_schedule = {kind!r}; expected one of {list(LR_SCHEDULES)}")
    warmup = float(config.get("warmup_epochs") or 0.0)
    total = float(config.epochs)
    final = float(config.get("lr_final_factor") or 0.0)
    ramp = np.minimum(1.0, (progress + 1e-12) / warmup) if warmup > 0 else np.ones_like(progress)
    decay_span = max(total - warmup, 1e-12)
    frac = np.clip((progress - warmup) / decay_span, 0.0, 1.0)
    cosine = final + (1.0 - final) * 0.5 * (1.0 + np.cos(np.pi * frac))
    return ramp * cosine


def epochs_within_budget(config, examples_per_epoch: int) -> int:
    """The epochs a run trains: `config.epochs`, or fewer where `config.max_train_examples` (the
    most training examples, rows or windows or trajectories, a run may see; None = no cap) is
    reached first: floor(max_train_examples / examples_per_epoch), at least 1.

    With the cap, a dataset with more train tracers than the one a config was written for trains
    the same number of optimizer steps (each example is seen fewer times), while a smaller one
    keeps its configured epochs. The epoch-valued settings (warmup_epochs, ema_epochs, patience)
    stay in epochs.
    """
    epochs = int(config.epochs)
    cap = config.get("max_train_examples")
    if cap is None:
        return epochs
    if int(examples_per_epoch) < 1:
        raise ValueError(f"examples_per_epoch = {examples_per_epoch}; expected >= 1")
    return max(1, min(epochs, int(cap) // int(examples_per_epoch)))


def init_state(params: Any, batch_stats: Any, tx: optax.GradientTransformation,
               seed: int, member: int = 0, *, ema: bool = False) -> TrainState:
    """The state before the first step; with `ema` its moving average starts at `params`."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        rng=jax.random.key_data(generation_key(int(seed), 0, member)),
        ema_params=jax.tree.map(jnp.array, params) if ema else None,
    )


def _ema_epochs(config) -> float:
    epochs = float(config.get("ema_epochs") or 0.0)
    if not epochs >= 0:
        raise ValueError(f"config.ema_epochs = {epochs}; expected >= 0 (0 = no averaging)")
    return epochs


def uses_ema(config) -> bool:
    """Whether `config` averages its parameters (`config.ema_epochs` > 0; negative raises)."""
    return _ema_epochs(config) > 0.0


def ema_decay(config, steps_per_epoch: int) -> float:
    """Per-step decay of the parameter average: 1 - 1 / (ema_epochs x steps_per_epoch), so the
    average spans `config.ema_epochs` epochs whatever the dataset size (0.0 when off)."""
    epochs = _ema_epochs(config)
    if epochs == 0:
        return 0.0
    return 1.0 - 1.0 / max(1.0, epochs * int(steps_per_epoch))


def updated_ema(ema_params: Any, params: Any, step: jax.Array, decay: float) -> Any:
    """One step of the moving average after the update to `params` at step `step` (0-based).

    The decay is min(decay, (1 + step) / (10 + step)): early averages forget the random
    initialisation within a few steps instead of carrying it for the whole horizon."""
    step = step.astype(jnp.float32)
    rate = 1.0 - jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: e + rate.astype(e.dtype) * (p - e), ema_params, params)


def as_saved(state: Any) -> Any:
    """The checkpointed form of a `TrainState` (or of its abstract twin): a dict of its fields
    without `ema_params` when that is None, so runs without an average keep their on-disk
    layout. Any other pytree is saved as it is."""
    if not isinstance(state, TrainState):
        return state
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if fields["ema_params"] is None:
        del fields["ema_params"]
    return fields


def from_saved(saved: Any) -> Any:
    """Inverse of `as_saved`."""
    required = {f.name for f in dataclasses.fields(TrainState) if f.name != "ema_params"}
    if isinstance(saved, dict) and required <= set(saved):
        return TrainState(**saved)
    return saved


def eval_params(state: TrainState) -> Any:
    """The parameters that are evaluated and exported: the moving average when kept."""
    return state.params if state.ema_params is None else state.ema_params


def stack_members(trees: list) -> Any:
    """Pytrees of the ensemble members -> one pytree with a leading member axis [M, ...]."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member_of(tree: Any, member: int) -> Any:
    """Member `member` of a pytree stacked by `stack_members`."""
    return jax.tree.map(lambda leaf: leaf[member], tree)


def build_members(build: Callable[[int], nnx.Module], tx: optax.GradientTransformation,
                  seed: int, members: int, *, ema: bool = False) -> tuple[ModelDef, TrainState]:
    """(ModelDef, TrainState) of `members` models built by `build(member)`: for 1 member the
    plain state, else every leaf stacked on a leading member axis (the step counter too: every
    member steps together). Member 0 is the plain component of `seed`."""
    states, mdef = [], None
    for m in range(int(members)):
        mdef_m, params, batch_stats = build_split(lambda m=m: build(m))
        mdef = mdef or mdef_m
        states.append(init_state(params, batch_stats, tx, seed, m, ema=ema))
    return mdef, (states[0] if members == 1 else stack_members(states))


def step_count(state: TrainState) -> int:
    """Training steps taken (an ensemble's members step together)."""
    return int(np.ravel(np.asarray(state.step))[0])


def learning_rate(state: TrainState) -> float:
    return float(np.ravel(np.asarray(state.opt_state.hyperparams["learning_rate"]))[0])


def with_learning_rate(state: TrainState, lr: float) -> TrainState:
    """The same state with a new learning rate (same dtype, shape and sharding as the old one;
    every ensemble member gets it)."""
    old = state.opt_state.hyperparams["learning_rate"]
    new = jax.device_put(np.full(old.shape, lr, dtype=old.dtype), old.sharding)
    hyper = dict(state.opt_state.hyperparams, learning_rate=new)
    return dataclasses.replace(state, opt_state=state.opt_state._replace(hyperparams=hyper))


def count_parameters(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
