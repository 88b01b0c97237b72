"""The `gcctl` command line: thin Typer shells over library functions.

Exit codes: 0 success; 1 a user error (bad input, missing file, unknown name), printed as one line
on stderr; 2 a usage error (unknown option, missing argument); 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

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
) -> None:
    set_quiet(quiet)
    if config is not None:
        from gcctl.cli.config import option_defaults

        ctx.default_map = option_defaults(config, ctx)


def _register() -> None:
    # Imported here so `gcctl --version` stays fast and each command group lives in its own module.
    from gcctl.cli import data, extract, finetune, models, params, pretrain, pseudo_label, train, transfer

    app.add_typer(data.app, name="data")
    for module in (models, pretrain, extract, pseudo_label, train, finetune, transfer, params):
        module.register(app)


def main() -> None:
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.WARNING, stream=sys.stderr)
    _register()
    try:
        configure_cpu_threads()  # before any command imports torch
        code = app(standalone_mode=False)
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
        _fail(str(error), error.exit_code)
    except PermissionError as error:
        _fail(f"permission denied: {error.filename or error}; fix its permissions or choose another path", 1)
    if code == INTERRUPTED:  # typer turns a Ctrl-C inside a command into this exit code, silently
        typer.echo("interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, exit_code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(exit_code)
