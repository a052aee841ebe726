"""`python -m astrochem_jax.preprocess --dataset=<name|path> --method=<name|path> [--force]`

Both configs are ml_collections config files (`--dataset.raw_path=...` style overrides work);
bare names resolve to `configs/datasets/<name>.py` and `configs/preprocessing/<name>.py`.
Errors are one `error:` line (exit code 2); details in `outputs/runs/<dataset>/preprocess.log`.
"""

from astrochem_jax import runtime

runtime.configure_threads()  # before numpy is imported

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from astrochem_jax import cli  # noqa: E402

CONFIG_KINDS = {"dataset": "datasets", "method": "preprocessing"}

_DATASET = config_flags.DEFINE_config_file(
    "dataset", None, "Dataset config file or bare name (configs/datasets/<name>.py).",
    lock_config=True)
_METHOD = config_flags.DEFINE_config_file(
    "method", None, "Preprocessing config file or bare name (configs/preprocessing/<name>.py).",
    lock_config=True)
_FORCE = flags.DEFINE_bool("force", False, "Rebuild even when the cache is up to date.")
flags.mark_flags_as_required(["dataset", "method"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    runtime.setup_entry_point(x64=False)
    cli.setup_logging(str(_DATASET.value.name), "preprocess")
    from astrochem_jax.preprocess import preprocess

    preprocess(_DATASET.value, _METHOD.value, force=_FORCE.value)


if __name__ == "__main__":
    cli.run(main, CONFIG_KINDS)
