"""`gcctl discover`: words that tell a class's errors (or minority cluster) from the rest, by the model's text tower."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.options import AsJson, Device
from gcctl.clip.captions import DEFAULT_ATTRIBUTE_PROMPT


def discover(
    features: Annotated[Path, typer.Option("--features", help="The HDF5 feature store whose images are ranked on.")],
    out: Annotated[Path, typer.Option(
        "--out", help="Folder to write discovery.json, insights.tsv (RoboShot's --insights) and options.yaml "
        "(a `gcctl --config` mapping of --attribute-prompt) into, as a whole.")],
    predictions: Annotated[Optional[Path], typer.Option(
        "--predictions", help="A run's predictions on this store (`gcctl evaluate` writes X.predictions.parquet): "
        "its errors are what each class's words must explain. Default: each class's smaller k-means cluster.")] = None,
    split: Annotated[str, typer.Option(
        "--split", help="Without --predictions: the split whose images are clustered.")] = "train",
    vocabulary: Annotated[str, typer.Option(
        "--vocabulary", help="The candidate words: synthetic (the synthetic world's), general (a shipped list for "
        "photos), names (the store's attribute values), or a text file of one word or phrase per line.")] = "synthetic",
    prompt: Annotated[str, typer.Option(
        "--prompt", help="How a candidate of a file or of `general` is read: {class} and {value} filled in.")] = DEFAULT_ATTRIBUTE_PROMPT,
    top: Annotated[int, typer.Option("--top", help="Candidates listed per class.")] = 10,
    clusters_if_no_errors: Annotated[bool, typer.Option(
        "--clusters-if-no-errors", help="With --predictions: where no class has both errors and right answers, "
        "flag the k-means clusters instead of refusing (what the pipeline's discover stage does).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the k-means clustering.")] = 0,
    pretrained: Annotated[Optional[str], typer.Option(
        "--pretrained", help="The store's model weights, if they moved since extraction (checked by sha256).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the folder an earlier `gcctl discover` wrote at --out (nothing else is ever replaced).")] = False,
    device: Device = "auto",
    as_json: AsJson = False,
) -> None:
    """Rank candidate attribute words per class by how much closer they are to the class's errors (or minority
    cluster) than to its other images (Bias-to-Text's score), with no attribute label; write them as
    RoboShot insights and attribute prompts.

    Example: gcctl discover --features pipeline/features/waterbirds.h5 --out pipeline/discovery/waterbirds

    Example: gcctl discover --features pipeline/features/waterbirds.h5 --predictions pipeline/metrics/waterbirds/linear.predictions.parquet --out discovered
    """
    from gcctl.discovery import discover as run

    result = run(features, out, predictions=predictions, split=split, vocabulary=vocabulary, prompt=prompt, top=top,
                 clusters_without_errors=clusters_if_no_errors, seed=seed, pretrained=pretrained, device=device, overwrite=overwrite)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"discovered: {', '.join(result['discovered'])} (score: similarity to the flagged images minus to the rest)")
    for column in ("class", "flagged", "top words (score)"):
        table.add_column(column)
    for name, entry in result["classes"].items():
        words = ", ".join(f"{item['word']} ({item['score']:+.3f})" for item in entry["ranked"][:5])
        table.add_row(name, f"{entry['flagged']} of {entry['flagged'] + entry['rest']}", words)
    console = Console()
    console.print(table)
    console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command()(discover)
