"""`gcctl finetune` (FT, StarFT) and `gcctl wise` (WiSE-FT): methods that train the image tower itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.data import reads_dataset
from gcctl.cli.generated import config_options
from gcctl.cli.options import AsJson, Device
from gcctl.cli.output import print_summary
from gcctl.datasets import DatasetTable
from gcctl.finetune.config import FinetuneConfig


@reads_dataset
@config_options(FinetuneConfig)
def finetune(
    table: DatasetTable,
    model: Annotated[str, typer.Option("--model", help="Architecture name (see `gcctl models`).")],
    out: Annotated[Path, typer.Option(
        "--out", help="Run directory: state.pt and the curve dvclive/ after every epoch, then model.pt, summary.json.")],
    pretrained: Annotated[str, typer.Option(
        "--pretrained", help="The zero-shot weights to start from: an open_clip tag, a checkpoint file, local-dir:PATH...")] = "none",
    config: FinetuneConfig = None,  # one option per field (gcctl.cli.generated.config_options)
    teacher_cache: Annotated[bool, typer.Option(
        "--teacher-cache/--no-teacher-cache", help="StarFT: encode each training image with the frozen model once, not "
        "every step (4·N·D bytes of memory; off with --augment).")] = True,
    teacher_features: Annotated[Optional[Path], typer.Option(
        "--teacher-features", help="StarFT: read the frozen model's training image features from this feature store "
        "(`gcctl extract` of the same --model, --pretrained and dataset) instead of computing them.")] = None,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Discard the state in --out instead of resuming from it.")] = False,
    restart_if_changed: Annotated[bool, typer.Option(
        "--restart-if-changed", help="Resume a run of the same config, discard one of another config instead of "
        "refusing it (for pipeline stages that keep --out between runs).")] = False,
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes decoding images.")] = 0,
    device: Device = "auto",
    as_json: AsJson = False,
) -> None:
    """Fine-tune a whole CLIP on a dataset's train split (FT, or StarFT), keep the best validation epoch.

    The same command run again resumes after the last finished epoch. Under torchrun each process takes a share of every batch: torchrun --nproc-per-node 2 $(which gcctl) finetune ...

    Example: gcctl finetune --method starft --dataset waterbirds --root pipeline/data/waterbirds --model gcctl-tiny --pretrained pipeline/models/tiny/model.pt --pool synthetic --out pipeline/runs/starft
    """
    from gcctl.finetune import finetune as run_finetune

    summary = run_finetune(table, out, model_name=model, pretrained=pretrained, config=config, device=device,
                           workers=workers, restart=restart, restart_if_changed=restart_if_changed,
                           teacher_cache=teacher_cache, teacher_features=teacher_features)
    if summary:  # only the main process of a data-parallel run reports
        print_summary(summary, f"{config.method} → {out / 'model.pt'}", as_json)


def wise(
    zeroshot: Annotated[str, typer.Option("--zeroshot", help="The zero-shot weights (a checkpoint file or an open_clip tag).")],
    finetuned: Annotated[str, typer.Option("--finetuned", help="The fine-tuned checkpoint of the same architecture.")],
    out: Annotated[Path, typer.Option(
        "--out", help="The interpolated checkpoint to write; never one of the inputs, nor a file other than an earlier "
        "`gcctl wise` (or `gcctl models fetch`) checkpoint, which --overwrite replaces.")],
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the fine-tuned model: 0 zero-shot, 1 fine-tuned.")] = 0.5,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Architecture; default: the one the fine-tuned checkpoint records.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a checkpoint an earlier `gcctl wise` wrote at --out (nothing else is ever replaced).")] = False,
    as_json: AsJson = False,
) -> None:
    """WiSE-FT: interpolate the weights of a zero-shot and a fine-tuned model into a new checkpoint.

    Example: gcctl wise --zeroshot pipeline/models/tiny/model.pt --finetuned pipeline/runs/starft/model.pt --alpha 0.5 --out pipeline/runs/wise/model.pt
    """
    from gcctl.finetune import wise_ft

    summary = wise_ft(zeroshot, finetuned, alpha, out, model_name=model, overwrite=overwrite)
    print_summary(summary, f"WiSE-FT α={alpha} → {out}", as_json)


def register(app: typer.Typer) -> None:
    app.command()(finetune)
    app.command()(wise)
