"""Training-config values that cannot work, refused before anything is read or written.

Each error names the field, what was expected and what was found (`config_utils.ConfigError`).
"""

from __future__ import annotations

import math

from astrochem_jax.config_utils import ConfigError


def _number(config, field: str):
    value = config.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"config.{field} = {value!r}; expected a number")
    return value


def check_training_config(config) -> None:
    """Positive batch sizes and epoch count, a positive example budget (or none); a finite,
    positive learning rate."""
    for field in ("batch_size", "eval_batch_size"):
        if field == "eval_batch_size" and config.get(field) is None:
            continue
        value = _number(config, field)
        if int(value) != value or value < 1:
            raise ConfigError(
                f"config.{field} = {value!r}; expected a positive whole number of samples per "
                f"step (a multiple of the device count), e.g. --config.{field}=64")
    epochs = _number(config, "epochs")
    if int(epochs) != epochs or epochs < 1:
        raise ConfigError(f"config.epochs = {epochs!r}; expected a whole number >= 1")
    cap = config.get("max_train_examples")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ConfigError(
            f"config.max_train_examples = {cap!r}; expected a whole number >= 1 of training "
            "examples (rows / windows / trajectories) a run may see, or None for no cap")
    recal = config.get("batchnorm_recalibration_items")
    if recal is not None and (isinstance(recal, bool) or not isinstance(recal, int) or recal < 0):
        raise ConfigError(
            f"config.batchnorm_recalibration_items = {recal!r}; expected a whole number >= 0 of "
            "train rows that recompute the BatchNorm statistics after each epoch (0 = off)")
    pinned = config.get("max_pinned_state_fraction")
    if pinned is not None and (isinstance(pinned, bool) or not isinstance(pinned, int | float)
                               or not 0.0 <= pinned <= 1.0):
        raise ConfigError(
            f"config.max_pinned_state_fraction = {pinned!r}; expected a fraction in [0, 1] of "
            "closed-loop validation states allowed on a state bound, or None for no check")
    lr = _number(config, "lr")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(
            f"config.lr = {lr!r}; expected a finite learning rate > 0")
    min_lr = config.get("min_lr")
    if min_lr is not None and not (math.isfinite(float(min_lr)) and float(min_lr) >= 0):
        raise ConfigError(f"config.min_lr = {min_lr!r}; expected a finite value >= 0")
