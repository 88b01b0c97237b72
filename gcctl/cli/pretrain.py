"""`gcctl pretrain`: contrastive pretraining of a tiny CLIP on an image-caption corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gcctl.cli.generated import config_options
from gcctl.cli.options import Device
from gcctl.clip.pretrain import PretrainConfig


@config_options(PretrainConfig)
def pretrain(
    corpus: Annotated[Path, typer.Option(
        "--corpus", help="An .npz with uint8 images [N,S,S,3] and captions [N] (see `gcctl data synth`).")],
    out: Annotated[Path, typer.Option(
        "--out", help="Folder for model.pt, summary.json, the loss curve dvclive/ (DVCLive logs) and, while training, state.pt.")],
    config: PretrainConfig = None,  # one option per field (gcctl.cli.generated.config_options)
    checkpoint_every: Annotated[int, typer.Option(
        "--checkpoint-every", min=1, help="Save the resumable state.pt every this many steps (and after every epoch).")] = 100,
    restart: Annotated[bool, typer.Option("--restart", help="Discard the state in --out instead of resuming from it.")] = False,
    restart_if_changed: Annotated[bool, typer.Option(
        "--restart-if-changed", help="Resume a run of the same settings, discard one of other settings instead of "
        "refusing it (for pipeline stages that keep --out between runs).")] = False,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a finished run an earlier `gcctl pretrain` wrote at --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")] = False,
) -> None:
    """Pretrain a CLIP from scratch with a symmetric InfoNCE loss (AdamW, warm-up + cosine schedule).

    The same command run again after an interruption resumes from the last saved state (--out/state.pt).

    Example: gcctl pretrain --corpus pipeline/data/corpus.npz --out pipeline/models/tiny --model gcctl-tiny --epochs 3
    """
    from gcctl.clip.pretrain import pretrain as run_pretraining
    from gcctl.report import plot_pretraining_loss

    summary = run_pretraining(corpus, out, config, device=device, plot=plot_pretraining_loss, overwrite=overwrite,
                              checkpoint_every=checkpoint_every, restart=restart, restart_if_changed=restart_if_changed)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    view = Table(title=f"pretrained {config.model} → {out / 'model.pt'}", show_header=False)
    for key, value in summary.items():
        view.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(view)


def register(app: typer.Typer) -> None:
    app.command()(pretrain)
