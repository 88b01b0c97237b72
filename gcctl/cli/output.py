"""How commands print a summary: a two-column rich table, or JSON with --json."""

from __future__ import annotations

import json

import typer


def print_summary(summary: dict, title: str, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    view = Table(title=title, show_header=False)
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        view.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(view)
