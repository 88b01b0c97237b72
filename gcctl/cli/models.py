"""`gcctl models`: the architectures gcctl can build, and `gcctl models fetch` to pin weights in a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gcctl.cli.options import AsJson
from gcctl.cli.output import print_summary

app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


@app.callback()
def models(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List model architectures: gcctl's tiny ones first (marked ★, with sizes), then open_clip's with their weight tags.

    Example: gcctl models --json
    """
    if ctx.invoked_subcommand is not None:
        return
    from open_clip import list_pretrained_tags_by_model

    from gcctl.clip import PACKAGED_MODELS, describe_model, list_models

    rows = [describe_model(name) for name in PACKAGED_MODELS]
    rows += [
        {"name": name, "source": "open_clip", "pretrained_tags": list_pretrained_tags_by_model(name)}
        for name in list_models()
        if name not in PACKAGED_MODELS
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="models (★ gcctl's own; build any with --model NAME --pretrained TAG|FILE|local-dir:PATH|none)")
    table.add_column("name")
    for column in ("embed dim", "image size", "parameters"):
        table.add_column(column, justify="right")
    table.add_column("pretrained tags")
    for row in rows:
        ours = row["source"] == "gcctl"
        table.add_row(
            f"★ {row['name']}" if ours else row["name"],
            str(row["embed_dim"]) if ours else "",
            str(row["image_size"]) if ours else "",
            f"{row['parameters'] / 1e6:.1f}M" if ours else "",
            ", ".join(row["pretrained_tags"]) or "-",
        )
    Console().print(table)


@app.command()
def fetch(
    model: Annotated[str, typer.Option("--model", help="Architecture name (see `gcctl models`).")],
    pretrained: Annotated[str, typer.Option(
        "--pretrained", help="Weights: an open_clip tag, a checkpoint file, local-dir:PATH or hf-hub:ORG/REPO.")],
    out: Annotated[Path, typer.Option("--out", help="The checkpoint file to write (appears only when complete).")],
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a checkpoint an earlier `gcctl models fetch` (or `gcctl wise`) wrote at --out "
        "(nothing else is ever replaced).")] = False,
    as_json: AsJson = False,
) -> None:
    """Download (or copy) weights once into one checkpoint file that later stages load offline.

    Example: gcctl models fetch --model ViT-B-16 --pretrained openai --out pipeline/models/vitb16/model.pt
    """
    from gcctl.clip import fetch_checkpoint

    print_summary(fetch_checkpoint(model, pretrained, out, overwrite=overwrite), "fetched", as_json)


def register(root: typer.Typer) -> None:
    if not any(group.typer_instance is app for group in root.registered_groups):
        root.add_typer(app, name="models")
