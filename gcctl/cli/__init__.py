"""The `gcctl` command line: thin Typer shells over library functions.

Exit codes: 0 success; 1 a user error (bad input, missing file, unknown name), printed as one line
on stderr; 2 a usage error (unknown option, missing argument); 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import Optional

import click
import typer

from gcctl import __version__
from gcctl.errors import GcctlError
from gcctl.runtime import set_quiet

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
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (they are also off when stderr is not a terminal)."),
) -> None:
    set_quiet(quiet)


def _register() -> None:
    # Imported here so `gcctl --version` stays fast and each command group lives in its own module.
    from gcctl.cli import data, extract

    app.add_typer(data.app, name="data")
    for module in (extract,):
        module.register(app)


def main() -> None:
    _register()
    try:
        code = app(standalone_mode=False)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except GcctlError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
