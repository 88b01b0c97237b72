"""`gcctl finetune` (FT, StarFT) and `gcctl wise` (WiSE-FT): methods that train the image tower itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.data import reads_dataset
from gcctl.cli.output import print_summary
from gcctl.clip.captions import DEFAULT_CAPTION
from gcctl.datasets import DatasetTable

AsJson = Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")]


@reads_dataset
def finetune(
    table: DatasetTable,
    model: Annotated[str, typer.Option("--model", help="Architecture name (see `gcctl models`).")],
    out: Annotated[Path, typer.Option(
        "--out", help="Run directory: state.pt and the curve dvclive/ after every epoch, then model.pt, summary.json.")],
    pretrained: Annotated[str, typer.Option(
        "--pretrained", help="The zero-shot weights to start from: an open_clip tag, a checkpoint file, local-dir:PATH...")] = "none",
    method: Annotated[str, typer.Option("--method", help="ft (the base loss) or starft (plus spuriosity alignment).")] = "starft",
    loss: Annotated[str, typer.Option(
        "--loss", help="contrastive (FLYP: image vs class caption) or ce (cross-entropy via a zero-shot head).")] = "contrastive",
    towers: Annotated[str, typer.Option("--towers", help="Which towers train: both, image or text.")] = "both",
    reg_lambda: Annotated[float, typer.Option("--lambda", help="Weight of the StarFT regulariser.")] = 0.5,
    lambda_schedule: Annotated[str, typer.Option(
        "--lambda-schedule", help="The weight over epochs e = 0..E-1: linear λ(1-e/E), paper λ(1-(e+1)/E) (the authors' "
        "code: 0 in the last epoch, so a 1-epoch run is FT), or constant λ.")] = "linear",
    pool: Annotated[Optional[list[str]], typer.Option(
        "--pool", help="Spurious templates: a shipped pool (background, texture, resolution, synthetic) or a file, "
        "one template with {} per line; repeat to join pools. Default: background.")] = None,
    caption: Annotated[str, typer.Option("--caption", help="Each image's class caption; {} is the class name.")] = DEFAULT_CAPTION,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the train split.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Global batch (split over torchrun processes).")] = 256,
    lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate.")] = 1e-5,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 0.1,
    warmup: Annotated[float, typer.Option("--warmup", help="Fraction of steps of linear warm-up before the cosine decay.")] = 0.1,
    augment: Annotated[bool, typer.Option(
        "--augment/--no-augment", help="Train on open_clip's random resized crops (what the StarFT authors train with) "
        "instead of the eval transform; StarFT's teacher then encodes every batch.")] = False,
    teacher_cache: Annotated[bool, typer.Option(
        "--teacher-cache/--no-teacher-cache", help="StarFT: encode each training image with the frozen model once, not "
        "every step (4·N·D bytes of memory; off with --augment).")] = True,
    teacher_features: Annotated[Optional[Path], typer.Option(
        "--teacher-features", help="StarFT: read the frozen model's training image features from this feature store "
        "(`gcctl extract` of the same --model, --pretrained and dataset) instead of computing them.")] = None,
    select_by: Annotated[str, typer.Option("--select-by", help="Validation metric that picks the kept epoch: acc_wg or acc_avg.")] = "acc_wg",
    seed: Annotated[int, typer.Option("--seed", help="Seeds batch order, template draws and the random weights of --pretrained none.")] = 0,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Discard the state in --out instead of resuming from it.")] = False,
    restart_if_changed: Annotated[bool, typer.Option(
        "--restart-if-changed", help="Resume a run of the same config, discard one of another config instead of "
        "refusing it (for pipeline stages that keep --out between runs).")] = False,
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes decoding images.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
    as_json: AsJson = False,
) -> None:
    """Fine-tune a whole CLIP on a dataset's train split (FT, or StarFT), keep the best validation epoch.

    The same command run again resumes after the last finished epoch. Under torchrun each process takes a share of every batch: torchrun --nproc-per-node 2 $(which gcctl) finetune ...

    Example: gcctl finetune --method starft --dataset waterbirds --root pipeline/data/waterbirds --model gcctl-tiny --pretrained pipeline/models/tiny/model.pt --pool synthetic --out pipeline/runs/starft
    """
    from gcctl.methods.finetune import FinetuneConfig, finetune as run_finetune

    config = FinetuneConfig(
        method=method, loss=loss, towers=towers, reg_lambda=reg_lambda, lambda_schedule=lambda_schedule,
        pools=tuple(pool or ("background",)), caption=caption, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, warmup=warmup, augment=augment, select_by=select_by, seed=seed,
    )
    summary = run_finetune(table, out, model_name=model, pretrained=pretrained, config=config, device=device,
                           workers=workers, restart=restart, restart_if_changed=restart_if_changed,
                           teacher_cache=teacher_cache, teacher_features=teacher_features)
    if summary:  # only the main process of a data-parallel run reports
        print_summary(summary, f"{method} → {out / 'model.pt'}", as_json)


def wise(
    zeroshot: Annotated[str, typer.Option("--zeroshot", help="The zero-shot weights (a checkpoint file or an open_clip tag).")],
    finetuned: Annotated[str, typer.Option("--finetuned", help="The fine-tuned checkpoint of the same architecture.")],
    out: Annotated[Path, typer.Option("--out", help="The interpolated checkpoint to write.")],
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the fine-tuned model: 0 zero-shot, 1 fine-tuned.")] = 0.5,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Architecture; default: the one the fine-tuned checkpoint records.")] = None,
    as_json: AsJson = False,
) -> None:
    """WiSE-FT: interpolate the weights of a zero-shot and a fine-tuned model into a new checkpoint.

    Example: gcctl wise --zeroshot pipeline/models/tiny/model.pt --finetuned pipeline/runs/starft/model.pt --alpha 0.5 --out pipeline/runs/wise/model.pt
    """
    from gcctl.methods.finetune import wise_ft

    summary = wise_ft(zeroshot, finetuned, alpha, out, model_name=model)
    print_summary(summary, f"WiSE-FT α={alpha} → {out}", as_json)


def register(app: typer.Typer) -> None:
    app.command()(finetune)
    app.command()(wise)
