"""The command-line standard of every `python -m astrochem_jax.<program>`.

- Config flags take a file or a bare name (`--config=autoencoder_grav_large[:dataset]`,
  resolved under `configs/<kind>/`), checked before anything runs: a missing file, a config that
  fails to load and an unknown field (`--config.lr_typo=1`, with the close matches) are one
  `error:` line, exit code 2. Tuple fields also take comma-separated values
  (`--dataset.columns_to_drop=dustTemp,dstep,point`), and any field takes `None`
  (`--dataset.n_species=None`), which ml_collections' parsers refuse.
- Errors a person can act on (`PreprocessError`, `ComponentError`, `SurrogateError`, ...) are
  printed as one `error: <message>` line on stderr, exit code 2; their traceback goes to the log.
- The console keeps the program's own lines: absl / orbax INFO records go only to the log file
  `outputs/runs/<name>/<program>.log` (`--verbosity=0` shows them on the console too).
"""

from __future__ import annotations

import ast
import difflib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Exceptions whose message tells the user what to do, by module (looked up only in modules
# already imported: a module that was never imported raised nothing).
USER_ERRORS = {
    "astrochem_jax.config_utils": ("ConfigError",),
    "astrochem_jax.locks": ("LockError",),
    "astrochem_jax.preprocess.errors": ("PreprocessError",),
    "astrochem_jax.shards": ("ManifestError",),
    "astrochem_jax.rawio": ("RawFormatError",),
    "astrochem_jax.chemistry.network": ("NetworkError",),
    "astrochem_jax.chemistry.tracks": ("TrackError",),
    "astrochem_jax.chemistry.formula": ("FormulaError",),
    "astrochem_jax.training.components": ("ComponentError",),
    "astrochem_jax.training.checkpoints": ("ComponentNotFoundError", "ComponentFailedError",
                                           "CheckpointError"),
    "astrochem_jax.training.loop": ("ResumeMismatchError", "NonFiniteLossError",
                                    "TrainingFailedError"),
    "astrochem_jax.surrogates": ("SurrogateError",),
    "astrochem_jax.generate": ("GenerateError",),
    "astrochem_jax.benchmark": ("BenchmarkError",),
}
EXIT_USER_ERROR = 2
LOGGER = "astrochem_jax"
_LOG_FILES: list[Path] = []  # the log file of this process, once setup_logging ran
_NONE_OVERRIDES: list[tuple[str, list[str]]] = []  # (flag, field path) set to None after parsing


def user_error_types(extra: Sequence[type] = ()) -> tuple[type, ...]:
    out = list(extra)
    for module, names in USER_ERRORS.items():
        loaded = sys.modules.get(module)
        if loaded is not None:
            out += [getattr(loaded, n) for n in names if hasattr(loaded, n)]
    return tuple(out)


def fail(message: str) -> None:
    """Print one `error:` line and exit with code 2."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    if _LOG_FILES:  # INFO: the console already has the line
        logging.getLogger(LOGGER).info("error: %s", line)
    sys.exit(EXIT_USER_ERROR)


# --- argv: config files, bare names, overrides ---------------------------------------------------


def _flag_value(argv: list[str], i: int, flag: str) -> tuple[str, int] | None:
    """(value, index of the value) when argv[i] is `--flag=value` or `--flag value`."""
    arg = argv[i]
    if arg.startswith(f"--{flag}="):
        return arg.split("=", 1)[1], i
    if arg == f"--{flag}" and i + 1 < len(argv):
        return argv[i + 1], i + 1
    return None


def _fields(node, prefix: str) -> list[str]:
    """Every field path of a ConfigDict (nested ones and their parents)."""
    from ml_collections import ConfigDict

    out = []
    for key in node.keys():
        path = f"{prefix}.{key}"
        out.append(path)
        value = node[key]
        if isinstance(value, ConfigDict):
            out += _fields(value, path)
    return out


def _lookup(config, parts: list[str]):
    """(found, value) of a dotted field path."""
    from ml_collections import ConfigDict

    node = config
    for part in parts:
        if not isinstance(node, ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _tuple_text(value: str) -> str:
    """`a,b,c` (no brackets) -> "('a', 'b', 'c')", the tuple syntax ml_collections parses."""
    items = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            items.append(ast.literal_eval(part))
        except (ValueError, SyntaxError):
            items.append(part)
    return repr(tuple(items))


def prepare_argv(argv: Sequence[str], config_kinds: dict[str, str]) -> list[str]:
    """Resolve bare config names, check every `--<flag>.<field>` override against the loaded
    config, and rewrite comma-separated tuple values. Exits with an `error:` line (code 2) on a
    missing config, a config that does not load, or an unknown field."""
    from astrochem_jax import config_utils

    argv = list(argv)
    configs = {}
    for flag, kind in config_kinds.items():
        for i in range(1, len(argv)):
            found = _flag_value(argv, i, flag)
            if found is None:
                continue
            value, at = found
            spec, sep, extra = value.partition(":")
            try:
                path = config_utils.resolve_config_path(spec, kind)
            except FileNotFoundError as err:
                fail(f"--{flag}={value}: {err}")
            argv[at] = (f"--{flag}={path}{sep}{extra}" if at == i else f"{path}{sep}{extra}")
            try:
                configs[flag] = config_utils.load_config(f"{path}{sep}{extra}", kind)
            except Exception as err:  # noqa: BLE001 - any failure of user code: say it, stop
                fail(f"--{flag}={value}: config {path} could not be loaded "
                     f"({type(err).__name__}: {err})")
    for i in range(1, len(argv)):
        arg = argv[i]
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        flag, dot, field = name.partition(".")
        if not dot or flag not in configs:
            continue
        config = configs[flag]
        found, current = _lookup(config, field.split("."))
        if not found:
            candidates = _fields(config, flag)
            close = difflib.get_close_matches(name, candidates, n=4, cutoff=0.6)
            parent = name.rsplit(".", 1)[0]
            siblings = sorted(c.rsplit(".", 1)[1] for c in candidates
                              if c.rsplit(".", 1)[0] == parent)
            hint = (f"close matches: {', '.join('--' + c for c in close)}" if close else
                    f"fields under --{parent}: {siblings}")
            fail(f"--{name}: the config has no field {field!r} ({config_kinds[flag]} config "
                 f"{_config_arg(argv, flag)}); {hint}")
        if eq and value.strip() == "None":
            _NONE_OVERRIDES.append((flag, field.split(".")))
            argv[i] = ""
        elif isinstance(current, tuple) and eq and not value.strip().startswith(("(", "[")):
            argv[i] = f"--{name}={_tuple_text(value)}"
    return [a for a in argv if a != ""]


def apply_none_overrides() -> None:
    """Set the fields given as `--<flag>.<field>=None` (after absl parsed the flags)."""
    from absl import flags

    for flag, parts in _NONE_OVERRIDES:
        node = flags.FLAGS[flag].value
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = None


def _config_arg(argv: list[str], flag: str) -> str:
    for i in range(1, len(argv)):
        found = _flag_value(argv, i, flag)
        if found is not None:
            return found[0]
    return "?"


# --- logging -----------------------------------------------------------------------------------


def log_path(name: str, program: str) -> Path:
    from astrochem_jax import paths

    return paths.runs_dir() / name / f"{program}.log"


def setup_logging(name: str, program: str) -> Path:
    """Console: the program's own lines and warnings (absl / orbax INFO off unless --verbosity
    was given); everything at INFO and tracebacks to `outputs/runs/<name>/<program>.log`."""
    from absl import flags
    from absl import logging as absl_logging

    path = log_path(name, program)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    explicit = "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
    if not explicit:
        absl_logging.set_verbosity(absl_logging.INFO)  # records reach the file ...
        absl_logging.get_absl_handler().setLevel(logging.WARNING)  # ... not the console
    handler = logging.FileHandler(path, mode="a")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    logging.getLogger(LOGGER).info("==== %s pid %d: %s", time.strftime("%Y-%m-%d %H:%M:%S"),
                                   os.getpid(), " ".join(sys.argv))
    _LOG_FILES[:] = [path]
    return path


# --- running a main ----------------------------------------------------------------------------


def _parse_flags(argv: list[str]) -> list[str]:
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        fail(f"{err} (--helpfull lists every flag)")
    except Exception as err:  # noqa: BLE001 - config_flags raises plain errors on bad values
        fail(f"command line: {type(err).__name__}: {err}")
    raise AssertionError("unreachable")


def run(main: Callable[[list[str]], None], config_kinds: dict[str, str],
        errors: Sequence[type] = ()) -> None:
    """`absl.app.run(main)` with this module's standard: config flags `config_kinds` ({flag:
    configs kind}) checked first, user errors (USER_ERRORS + `errors`) as one `error:` line and
    exit code 2."""
    from absl import app

    from astrochem_jax import config_utils

    config_utils.ensure_configs_importable()
    argv = prepare_argv(sys.argv, config_kinds)

    def guarded(args: list[str]) -> None:
        try:
            apply_none_overrides()
            main(args)
        except Exception as exc:
            if isinstance(exc, user_error_types(errors)):
                logging.getLogger(LOGGER).info("traceback of the error below", exc_info=True)
                fail(str(exc))
            raise

    app.run(guarded, argv=argv, flags_parser=_parse_flags)
