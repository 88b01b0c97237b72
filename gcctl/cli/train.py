"""`gcctl train`: a method trained on cached features, one model per seed, into a run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.generated import method_options
from gcctl.cli.options import AsJson, Device, MaxMemory
from gcctl.errors import GcctlError
from gcctl.methods import METHODS, make_config, settings
from gcctl.runtime import check_seeds

METHOD_HELP = "; ".join(f"{name}: {spec.summary}" for name, spec in METHODS.items())


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]  # an empty item (1,,2 or 0,1,) is no integer
    except ValueError:
        raise GcctlError(f"{option} '{text}' is not a comma-separated list of integers, e.g. 0,1,2") from None


def _check_run(values: dict, options: dict) -> None:
    """What `gcctl params check` asks of a train run: its seeds and its method's config, read as `train` reads them."""
    if values.get("method") is None:
        raise GcctlError(f"names no method; add `method: NAME` ({', '.join(METHODS)})")
    if values.get("seeds") is not None:
        check_seeds(_int_list(values["seeds"], "--seeds"))
    make_config(values["method"], options)


@method_options(settings(), [spec.config for spec in METHODS.values()], check=_check_run)
def train(
    features: Annotated[Path, typer.Option("--features", help="The HDF5 feature store to train on.")],
    method: Annotated[str, typer.Option("--method", help=METHOD_HELP)],
    out: Annotated[Path, typer.Option("--out", help="The run directory to write (appears only when complete).")],
    groups: Annotated[Optional[Path], typer.Option(
        "--groups", help="Parquet group labels (id, group: the store's group ids or names, e.g. waterbird/water) for the train split; default: the store's true groups.")] = None,
    val_groups: Annotated[Optional[Path], typer.Option(
        "--val-groups", help="Parquet group labels of the validation split (`gcctl pseudo-label --split val`): they "
        "replace its true groups wherever the method reads them (--select-by acc_wg_pseudo, DFR, TIE).")] = None,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", help="A validation-label budget: keep this share of each validation group (at least one "
        "sample), the rest unused; the samples `gcctl pseudo-label --val-fraction` keeps with the same --val-seed.")] = 1.0,
    val_seed: Annotated[int, typer.Option("--val-seed", help="Seeds the --val-fraction draw.")] = 0,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds, one trained model each, e.g. 0,1,2.")] = "0",
    options: dict = None,  # one option per method setting (gcctl.cli.generated.method_options)
    pretrained: Annotated[Optional[str], typer.Option(
        "--pretrained", help="methods with the text tower (all but linear and dfr): the store's model weights, if they "
        "moved since extraction "
        "(checked against the store's sha256).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a run an earlier `gcctl train` wrote at --out (once the new one is complete).")] = False,
    minority_per_group: Annotated[Optional[int], typer.Option(
        "--minority-per-group", metavar="K", help="Keep at most K training images of each minority group (one smaller "
        "than its class's largest), drawn per seed, the same for every method: GroupCoOp's few-sample regime. "
        "Default: every image.")] = None,
    device: Device = "auto",
    max_memory: MaxMemory = None,
    as_json: AsJson = False,
) -> None:
    """Train a method on cached image features (one model per seed) and write a run directory.

    orthproj and roboshot train nothing and use no group labels. orthproj projects the spurious attribute's prompt directions out of the class prompts (--calibrate: calibrated);
    roboshot removes harmful insight directions from the image embeddings and boosts helpful ones.

    Both need the spurious attribute's value names (the store's, or --attribute-prompt); roboshot can take an --insights file instead.

    Example: gcctl train --features pipeline/features/waterbirds.h5 --method groupcoop --seeds 0,1,2 --out pipeline/runs/groupcoop
    """
    from gcctl.methods.runs import train_run
    from gcctl.report import plot_run_curve
    from gcctl.store import memory_budget

    summary = train_run(features, method, out, options=options, groups=groups, seeds=_int_list(seeds, "--seeds"),
                        device=device, pretrained=pretrained, plot=plot_run_curve, overwrite=overwrite,
                        max_memory=memory_budget(max_memory), minority_per_group=minority_per_group,
                        val_groups=val_groups, val_fraction=val_fraction, val_seed=val_seed)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{method} → {out} (validation, kept epoch)")
    for column in ("seed", "epoch", "val avg %", "val worst-group %"):
        table.add_column(column, justify="right")
    for seed, row in summary["seeds"].items():
        epoch = "-" if row["best_epoch"] is None else str(row["best_epoch"])
        table.add_row(str(seed), epoch, f"{100 * row['val_acc_avg']:.1f}", f"{100 * row['val_acc_wg']:.1f}")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command()(train)
