"""The `gcctl` command line: thin Typer shells over library functions.

Exit codes: 0 success; 1 a user error (bad input, missing file, unknown name), printed as one line
on stderr; 2 a usage error (unknown option, missing argument); 130 interrupted. Under torchrun a user error
the processes agreed on is printed by rank 0 alone, and every process exits 1
(`gcctl.distributed.AGREED_ERROR_EXIT_CODE`); torchrun adds its own report after that line.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Optional, Sequence

import typer

from gcctl import __version__
from gcctl.errors import GcctlError
from gcctl.runtime import configure_cpu_threads, set_quiet

try:  # typer >= 0.25 carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException

INTERRUPTED = 130

app = typer.Typer(
    name="gcctl",
    help="Make CLIP classifiers robust to spurious correlations (GroupCoOp, StarFT and baselines).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gcctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (they are also off when stderr is not a terminal)."),
    config: Optional[str] = typer.Option(
        None, "--config", metavar="FILE:KEY",
        help="Take the command's option values from a YAML mapping, e.g. params.yaml:train.runs.groupcoop "
        "(how the DVC stages pass a named run); options given on the command line still win."),
    each: bool = typer.Option(
        False, "--each", help="With --config FILE:KEY naming a mapping of named runs: run the command once per run, "
        "in one process, with '{name}' in its arguments replaced by the run's name (how the stage fit@ fits every "
        "training-free run of a dataset)."),
) -> None:
    if each:  # main() expands --each before the command line reaches here
        raise GcctlError("--each needs --config FILE:KEY, KEY naming a mapping of named runs")
    set_quiet(quiet)
    if config is not None:
        from gcctl.cli.config import option_defaults

        ctx.default_map = option_defaults(config, ctx)


data_app = typer.Typer(
    help="Inspect datasets as gcctl reads them: Waterbirds, CelebA, ImageNet and its shifts, CIFAR, STL10, "
    "image folders, or any CSV/Parquet manifest; write the synthetic world.\n\n"
    "Example: gcctl data show --dataset waterbirds --root data/waterbirds",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

# The module that defines each command, by the words that invoke it. A process imports the module of the
# command it runs and no other: a command module may import heavy libraries at its top, to generate its
# options from the configs they fill (`gcctl.cli.generated`).
COMMAND_MODULES = {
    "models": "models",
    "models card": "card",
    "pretrain": "pretrain",
    "extract": "extract",
    "info": "extract",
    "merge": "extract",
    "pseudo-label": "pseudo_label",
    "train": "train",
    "evaluate": "evaluate",
    "report": "report",
    "discover": "discover",
    "finetune": "finetune",
    "wise": "finetune",
    "transfer": "transfer",
    "params": "params",
    "code": "code",
    "data show": "data",
    "data table": "data",
    "data synth": "synth",
}


def _command_words(argv: Sequence[str]) -> list[str]:
    """The words of `argv` that name commands: what precedes the first option of the command itself."""
    words, given = [], iter(argv)
    for word in given:
        if word == "--config":
            next(given, None)
        elif word.startswith("-"):
            if words:
                break
        else:
            words.append(word)
    return words


_registered: set[str] = set()  # command modules already on `app`: main() may run many times in one process


def _register_module(module: str) -> None:
    if module not in _registered:
        importlib.import_module(f"gcctl.cli.{module}").register(app)
        _registered.add(module)


def register_all() -> None:
    for module in sorted(set(COMMAND_MODULES.values())):
        _register_module(module)


def command_key(argv: Sequence[str]) -> str | None:
    """The COMMAND_MODULES key of the command `argv` (gcctl's arguments) invokes, None when it names none."""
    words = _command_words(argv)
    return next((key for key in (" ".join(words[:2]), " ".join(words[:1])) if key in COMMAND_MODULES), None)


def _register(argv: Sequence[str] | None = None) -> None:
    """Register the command `argv` (default: this process's arguments) invokes; every command when it names
    none of them (`gcctl --help`, a typo, a group's help)."""
    key = command_key(sys.argv[1:] if argv is None else argv)
    if key is None:
        register_all()
        return
    # A group's own word (`models`) brings every module of the group, so its help lists all its commands.
    modules = {COMMAND_MODULES[key]} | {module for words_key, module in COMMAND_MODULES.items()
                                        if " " not in key and words_key.startswith(key + " ")}
    for module in sorted(modules):
        _register_module(module)


EACH_NAME = "{name}"


def each_run(argv: Sequence[str]) -> list[list[str]]:
    """`argv` once per named run when it asks for `--each` (one command line per run: `--config FILE:KEY.NAME`,
    EACH_NAME replaced by NAME in the command's arguments), else `[argv]`. Only the words before the command are
    gcctl's own options."""
    argv = list(argv)
    tail = _after_root_options(argv)
    head = argv[:len(argv) - len(tail)]
    if "--each" not in head or "--config" not in head:
        return [argv]
    from gcctl.cli.config import read_mapping

    head.remove("--each")
    position = head.index("--config") + 1
    spec = head[position]
    key, runs = read_mapping(spec)
    if not runs or not all(isinstance(run, dict) for run in runs.values()):
        raise GcctlError(f"--each: {key} is not a mapping of named runs (name: options) or names none; point --config at one")
    return [[*head[:position], f"{spec}.{name}", *head[position + 1:], *(word.replace(EACH_NAME, str(name)) for word in tail)]
            for name in runs]


def _after_root_options(argv: list[str]) -> list[str]:
    """`argv` from the command's first word on."""
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        index += 2 if argv[index] == "--config" else 1
    return argv[index:]


def main(warm: bool = True) -> None:
    """The `gcctl` command; under `dvc repro` a later stage's command runs in the warm server's copy
    (`gcctl.cli.warm`), which calls this with `warm=False`."""
    if warm:
        from gcctl.cli import warm as warm_server

        if warm_server.applies():
            status = warm_server.run_warm(sys.argv[1:])
            if status is not None:
                sys.exit(status)
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING, stream=sys.stderr)
    _register()
    try:
        configure_cpu_threads()  # before any command imports torch
        for argv in each_run(sys.argv[1:]):
            code = app(argv, standalone_mode=False)
            if code:
                break
    except ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except typer.Abort as error:
        if isinstance(error.__cause__, EOFError):
            raise error.__cause__  # click's name for an EOFError is Abort: a bug of a reader, not a Ctrl-C
        code = INTERRUPTED
    except KeyboardInterrupt:
        code = INTERRUPTED
    except GcctlError as error:
        _fail(str(error), error.exit_code, quiet=getattr(error, "quiet", False))
    except PermissionError as error:
        _fail(f"permission denied: {error.filename or error}; fix its permissions or choose another path", 1)
    if code == INTERRUPTED:  # typer turns a Ctrl-C inside a command into this exit code, silently
        typer.echo("interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, exit_code: int, quiet: bool = False) -> None:
    """Print the one `error:` line (unless `quiet`: another torchrun process prints it) and exit."""
    if not quiet:
        typer.echo(f"error: {message}", err=True)
    sys.exit(exit_code)
