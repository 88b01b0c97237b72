"""`gcctl evaluate`: a feature run's metrics on a split, or checkpoints scored zero-shot on a dataset's images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.data import reads_dataset
from gcctl.cli.options import AsJson, Device
from gcctl.clip.captions import DEFAULT_CAPTION
from gcctl.datasets import DatasetTable
from gcctl.errors import GcctlError


@reads_dataset(optional=True)
def evaluate(
    out: Annotated[Path, typer.Option(
        "--out", help="The metrics JSON to write; X.json gets its per-sample predictions in X.predictions.parquet. "
        "With several runs: the folder to write OUT/<run>.json into.")],
    run: Annotated[Optional[list[Path]], typer.Option(
        "--run", help="A run directory written by `gcctl train`, or a folder of them standing for every run in it; "
        "repeat for more. Several runs are evaluated in one process, each on its own store.")] = None,
    checkpoint: Annotated[Optional[list[Path]], typer.Option(
        "--checkpoint", help="Instead of --run: weights to evaluate zero-shot on --dataset's images; a folder stands for "
        "every model.pt in it (e.g. a `gcctl finetune` run). Repeat for seeds: the metrics are their mean and std; "
        "each checkpoint's seed is read from its run's summary.json, else from a seed-N folder.")] = None,
    table: DatasetTable = None,
    split: Annotated[str, typer.Option("--split", help="train, val or test.")] = "test",
    features: Annotated[Optional[Path], typer.Option(
        "--features", help="--run: evaluate on this store instead of the one the run was trained on (same model and weights).")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="--checkpoint: the architecture (default: the one the checkpoint records).")] = None,
    caption: Annotated[str, typer.Option("--caption", help="--checkpoint: each class's prompt; {} is the class name.")] = DEFAULT_CAPTION,
    name: Annotated[Optional[str], typer.Option(
        "--name", help="--checkpoint: the label in reports (default: the folder the checkpoints share).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the metrics and predictions an earlier `gcctl evaluate` wrote at --out "
        "(nothing else is ever replaced).")] = False,
    temperature_scale: Annotated[bool, typer.Option(
        "--temperature-scale", help="--run: divide each seed's scores by a temperature fitted on the store's "
        "validation split (class labels only) before the calibration figures; predictions are unchanged.")] = False,
    device: Device = "auto",
    as_json: AsJson = False,
) -> None:
    """Evaluate every seed of a run on a split, or fine-tuned checkpoints zero-shot on a dataset's images:
    per-group table, a metrics JSON (mean and std over seeds) and the per-sample predictions (Parquet).

    Example: gcctl evaluate --run pipeline/runs/groupcoop --split test --out pipeline/metrics/groupcoop.json

    Example: gcctl evaluate --run pipeline/runs/waterbirds --run pipeline/fits/waterbirds --out pipeline/metrics/waterbirds

    Example: gcctl evaluate --checkpoint pipeline/runs/starft --dataset waterbirds --root pipeline/data/waterbirds --out starft.json
    """
    if (run is None) == (not checkpoint):
        raise GcctlError("give either --run (a `gcctl train` run) or --checkpoint (weights to evaluate on --dataset)")
    if temperature_scale and not run:
        raise GcctlError("--temperature-scale applies to --run (a feature run), not to --checkpoint; drop it")
    if run:
        if table is not None:
            raise GcctlError("--run evaluates on its feature store; --dataset and --root go with --checkpoint")
        if len(run) > 1 or not (run[0] / "config.json").is_file():
            _evaluate_several(run, split, features, out, overwrite, device, as_json, temperature_scale)
            return
        from gcctl.methods.runs import evaluate_run

        metrics = evaluate_run(run[0], split, features=features, device=device, out=out, overwrite=overwrite,
                               temperature_scale=temperature_scale)
    else:
        metrics = _evaluate_checkpoints(checkpoint, table, split, model=model, caption=caption, name=name, device=device,
                                        out=out, overwrite=overwrite)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    from rich.console import Console

    from gcctl.report import group_table

    Console().print(group_table(metrics))


def _evaluate_checkpoints(checkpoints: list[Path], table: DatasetTable | None, split: str, **options) -> dict:
    from gcctl.evaluation.checkpoints import evaluate_checkpoints

    if table is None:
        raise GcctlError("--checkpoint needs the images to evaluate on: --dataset and --root")
    return evaluate_checkpoints(checkpoints, table, split, model_name=options.pop("model"), **options)


def _evaluate_several(runs: list[Path], split: str, features, out: Path, overwrite: bool, device: str, as_json: bool,
                      temperature_scale: bool) -> None:
    from gcctl.methods.runs import evaluate_runs

    if features is not None:
        raise GcctlError("--features replaces the store of one run; evaluate several runs on their own stores")
    results = evaluate_runs(runs, split, out, device=device, overwrite=overwrite, temperature_scale=temperature_scale)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    from rich.console import Console

    from gcctl.report import comparison_table

    Console().print(comparison_table(list(results.values())))


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
