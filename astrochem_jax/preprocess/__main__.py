"""`python -m astrochem_jax.preprocess --dataset=<name|path> --method=<name|path> [--force]`

Both configs are ml_collections config files (`--dataset.raw_path=...` style overrides work);
bare names resolve to `configs/datasets/<name>.py` and `configs/preprocessing/<name>.py`.
"""

from astrochem_jax import runtime

runtime.configure_threads()  # before numpy is imported

import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from astrochem_jax import config_utils  # noqa: E402

CONFIG_KINDS = {"dataset": "datasets", "method": "preprocessing"}

_DATASET = config_flags.DEFINE_config_file(
    "dataset", None, "Dataset config file or bare name (configs/datasets/<name>.py).",
    lock_config=True)
_METHOD = config_flags.DEFINE_config_file(
    "method", None, "Preprocessing config file or bare name (configs/preprocessing/<name>.py).",
    lock_config=True)
_FORCE = flags.DEFINE_bool("force", False, "Rebuild even when the cache is up to date.")
flags.mark_flags_as_required(["dataset", "method"])


def resolve_bare_names(argv: list[str]) -> list[str]:
    """Rewrite `--dataset=grav` / `--method sequential` to config file paths (a `:arg` suffix is
    kept); everything else is passed through unchanged."""
    out = list(argv)
    i = 1
    while i < len(out):
        arg = out[i]
        for flag, kind in CONFIG_KINDS.items():
            if arg.startswith(f"--{flag}="):
                value = arg.split("=", 1)[1]
                out[i] = f"--{flag}={_resolve(value, kind)}"
            elif arg == f"--{flag}" and i + 1 < len(out):
                out[i + 1] = _resolve(out[i + 1], kind)
        i += 1
    return out


def _resolve(value: str, kind: str) -> str:
    spec, sep, extra = value.partition(":")
    return str(config_utils.resolve_config_path(spec, kind)) + sep + extra


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    runtime.setup_entry_point(x64=False)
    from astrochem_jax.preprocess import PreprocessError, preprocess

    try:
        preprocess(_DATASET.value, _METHOD.value, force=_FORCE.value)
    except PreprocessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    config_utils.ensure_configs_importable()
    app.run(main, argv=resolve_bare_names(sys.argv))
