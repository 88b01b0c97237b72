"""`gcctl models card`: the concept check of a model's card (in its own module: `models fetch` needs none of it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gcctl.cli.options import AsJson, Device


def card(
    model: Annotated[str, typer.Option("--model", help="Architecture name (see `gcctl models`).")] = "gcctl-tiny",
    pretrained: Annotated[str, typer.Option("--pretrained", help="Weights: a checkpoint file, a tag, local-dir:PATH...")] = "none",
    out: Annotated[Path | None, typer.Option("--out", help="Also write the card as this JSON file.")] = None,
    per_value: Annotated[int, typer.Option("--per-value", help="Images per kind (and, on average, more per other value).")] = 40,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the probe images.")] = 0,
    device: Device = "auto",
    as_json: AsJson = False,
) -> None:
    """The concept check of a model's card: which of the synthetic world's kinds, colours, backgrounds and fills it
    names correctly, zero-shot, on fresh images whose factors are drawn independently.

    Example: gcctl models card --pretrained pipeline/models/tiny/model.pt --out pipeline/models/tiny/card.json
    """
    from gcctl.clip import build_clip
    from gcctl.evaluation.concepts import check_probe, concept_check
    from gcctl.files import refuse_directory, write_json
    from gcctl.runtime import check_seeds

    check_seeds([seed], "--seed")
    check_probe(per_value)
    if out is not None:
        refuse_directory(out)
    bundle = build_clip(model, pretrained, device=device)
    # A weights path inside the project or beside the card is recorded relative to the card: no machine path
    # inside a cached artifact (the same card wherever the project is cloned).
    reference = bundle.reference.recorded_for(out.parent if out is not None else Path.cwd())
    card = {"model_ref": reference.to_dict(), "seed": seed, **concept_check(bundle, per_value=per_value, seed=seed)}
    if out is not None:
        write_json(out, card)
    if as_json:
        typer.echo(json.dumps(card, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"concepts {model} names zero-shot: {card['named']} of {card['concepts']}")
    for column in ("factor", "accuracy", "named", "weakest"):
        table.add_column(column, justify="left" if column in ("factor", "weakest") else "right")
    for factor in ("kind", "colour", "background", "fill"):
        entry = card[factor]
        weakest = sorted(entry["per_value"].items(), key=lambda item: item[1])[:3]
        table.add_row(factor, f"{100 * entry['accuracy']:.1f}", f"{entry['named']}/{entry['values']}",
                      ", ".join(f"{name} {100 * accuracy:.0f}" for name, accuracy in weakest))
    Console().print(table)


def register(root: typer.Typer) -> None:
    from gcctl.cli import models  # the `gcctl models` group

    models.app.command()(card)
    models.register(root)
