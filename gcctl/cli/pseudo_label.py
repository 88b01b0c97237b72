"""`gcctl pseudo-label`: infer a split's groups (train by default) and report their agreement with the true groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.options import Device, MaxMemory


def pseudo_label(
    features: Annotated[Path, typer.Option("--features", help="The HDF5 feature store whose train split is labelled.")],
    out: Annotated[Path, typer.Option("--out", help="The Parquet group file to write (id, group, group_name, confidence, strategy).")],
    strategy: Annotated[str, typer.Option(
        "--strategy", help="val-probe, zeroshot-attr, kmeans, erm-error or oracle.")] = "val-probe",
    split: Annotated[str, typer.Option(
        "--split", help="The split labelled: train, or val (no validation group label read: for `gcctl train "
        "--val-groups`).")] = "train",
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="The agreement JSON (default: <out stem>.report.json); its PNG gets the same stem.")] = None,
    min_confidence: Annotated[float, typer.Option(
        "--min-confidence", help="Samples less confident than this take their class's majority group (0: none do).")] = 0.0,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="Share of each validation group whose labels are used (seeded); 0 uses none.")] = 1.0,
    val_label_noise: Annotated[float, typer.Option(
        "--val-label-noise", help="Share of the used validation group labels flipped to another group of the class (seeded).")] = 0.0,
    attribute_prompt: Annotated[Optional[list[str]], typer.Option(
        "--attribute-prompt",
        help="zeroshot-attr: ATTR=TEMPLATE with {value} and {class}, or ATTR:VALUE=TEXT; repeatable. "
             "Default: 'a photo of a {class} on {value}.' with the store's value names.")] = None,
    class_names: Annotated[Optional[str], typer.Option(
        "--class-names", help="zeroshot-attr: comma-separated words naming the classes in prompts.")] = None,
    clusters_per_group: Annotated[int, typer.Option(
        "--clusters-per-group", help="kmeans: clusters per group; above 1 each cluster takes its nearest validation group.")] = 1,
    pretrained: Annotated[Optional[str], typer.Option(
        "--pretrained", help="zeroshot-attr: the store's model weights, if they moved since extraction (checked by sha256).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the validation cut and noise, k-means and the ERM folds.")] = 0,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the group file, report and figure an earlier `gcctl pseudo-label` wrote there "
        "(nothing else is ever replaced).")] = False,
    device: Device = "auto",
    max_memory: MaxMemory = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of a table.")] = False,
) -> None:
    """Infer every training sample's group (GroupCoOp without train group labels) and compare with the truth.

    Example: gcctl pseudo-label --features pipeline/features/waterbirds.h5 --strategy val-probe --out pipeline/groups/waterbirds.parquet
    """
    from gcctl.pseudolabel import pseudo_label as run
    from gcctl.report import agreement_table, plot_confusion
    from gcctl.store import memory_budget

    summary = run(
        features, strategy, out, report=report, min_confidence=min_confidence, val_fraction=val_fraction,
        val_label_noise=val_label_noise, attribute_prompts=attribute_prompt or (),
        class_names=[name.strip() for name in class_names.split(",")] if class_names else None,
        clusters_per_group=clusters_per_group, pretrained=pretrained, seed=seed, device=device, plot=plot_confusion,
        max_memory=memory_budget(max_memory), overwrite=overwrite, split=split,
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console

    console = Console()
    console.print(agreement_table(summary))
    for key in ("group_file", "report", "figure"):
        console.print(f"wrote {summary[key]}")


def register(app: typer.Typer) -> None:
    app.command(name="pseudo-label")(pseudo_label)
