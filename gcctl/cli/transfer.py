"""`gcctl transfer`: fine-tuned checkpoints scored zero-shot on a suite of target datasets (StarFT's protocol)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.options import Device
from gcctl.clip.captions import DEFAULT_CAPTION


def transfer(
    checkpoint: Annotated[list[Path], typer.Option(
        "--checkpoint", help="Weights to score; a folder stands for every model.pt in it (a run, one per seed). Repeat for seeds.")],
    target: Annotated[list[str], typer.Option(
        "--target", help="ROLE=TABLE[@SPLIT], repeated: a `gcctl data table` Parquet and its role in the suite: source "
        "(the fine-tuning task), domain (its domain shifts), group (group shifts: worst-group too) or other. "
        "Split (train, val or test after the last @): test.")],
    out: Annotated[Path, typer.Option(
        "--out", help="Folder for one metrics JSON (+ predictions) per target, each written when done, and summary.json "
        "last; a target finished earlier with the same inputs is reused.")],
    template: Annotated[Optional[list[str]], typer.Option(
        "--template", help="Class prompt template with {} for the class name, or a named set (openai-imagenet: "
        "OpenAI's 80 ImageNet prompts); repeat for an ensemble. For every target without --target-template.")] = None,
    target_template: Annotated[Optional[list[str]], typer.Option(
        "--target-template", help="TARGET=TEMPLATE: the templates of one target (its table's file stem), as "
        "--template takes them; repeat for an ensemble or for other targets.")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="The architecture (default: the one the checkpoints record; they must agree).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="The run's label in the summary (default: the --out folder's name).")] = None,
    device: Device = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Score every target again, replacing the results an earlier `gcctl transfer` wrote at --out "
        "(nothing else is ever replaced).")] = False,
) -> None:
    """Score fine-tuned checkpoints zero-shot on every target: per-target metrics, and the suite summary (source
    accuracy, mean over domain shifts, worst-group and average over group shifts) per seed and as mean ± std.
    Each target is written as soon as it is scored, so an interrupted suite resumes from the targets it finished.

    Example: gcctl transfer --checkpoint pipeline/finetuned/shapes/starft --target source=pipeline/tables/shapes.parquet
    --target domain=pipeline/tables/shapes-outline.parquet --target group=pipeline/tables/waterbirds.parquet --out pipeline/transfer/starft
    """
    from gcctl.datasets import DatasetTable
    from gcctl.evaluation.transfer import Target, evaluate_suite, parse_target, with_target_templates

    targets = []
    for spec in target:
        role, table_path, split = parse_target(spec)
        table = DatasetTable.load(table_path)
        table.require_files()
        targets.append(Target(table_path.stem, role, table, split))
    targets = with_target_templates(targets, target_template or [])
    summary = evaluate_suite(checkpoint, targets, out, templates=template or [DEFAULT_CAPTION], model_name=model,
                             name=name, device=device, overwrite=overwrite)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console

    from gcctl.report import suite_table

    Console().print(suite_table(summary))


def register(app: typer.Typer) -> None:
    app.command()(transfer)
