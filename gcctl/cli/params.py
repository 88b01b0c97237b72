"""`gcctl params check`: the pipeline's params.yaml checked before `dvc repro`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gcctl.cli.config import check_params
from gcctl.cli.output import print_summary

app = typer.Typer(help="Check the pipeline's params.yaml before `dvc repro`.", no_args_is_help=True)


@app.command()
def check(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="The params file dvc.yaml reads.")] = Path("params.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")] = False,
) -> None:
    """Check what DVC or a stage's command would refuse: a key repeated in a mapping, a run's option its command
    does not have or a value its parser or checks refuse (e.g. epochs: abc), two runs writing one output (a name in
    both train.runs and train.pseudo_runs), and a dataset a stage names that `datasets:` does not declare; the
    first problem is one line naming it and the fix.

    Example: gcctl params check params.yaml
    """
    from gcctl import cli

    cli.register_all()  # every command whose options a run may name
    print_summary(check_params(path, typer.main.get_command(cli.app), ctx.find_root()), "params", as_json)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="params")
