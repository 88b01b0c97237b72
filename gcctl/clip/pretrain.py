"""Contrastive pretraining of a CLIP from scratch on an image-caption corpus (symmetric InfoNCE)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from gcctl.clip.factory import fresh_clip, preprocess_uint8, write_checkpoint
from gcctl.curves import CurveLog
from gcctl.errors import GcctlError
from gcctl.runtime import (atomic_path, autocast, check_output, output_lock, progress, resolve_device, seed_everything,
                            sha256_file, write_json)

OUTPUTS = ("model.pt", "summary.json")
CURVE = "dvclive"  # the loss and learning rate per step, as DVCLive logs (gcctl.curves)
MAX_LOGIT_SCALE = math.log(100)  # CLIP's cap: a larger temperature makes the loss unstable


def pretrain(
    corpus: Path,
    out: Path,
    model_name: str = "gcctl-tiny",
    epochs: int = 3,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 0.1,
    warmup: float = 0.1,
    seed: int = 0,
    device: str = "auto",
    plot: Callable[[list[dict], Path, str], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Train `model_name` from random weights on `corpus` (an .npz with uint8 `images` [N,S,S,3] and
    `captions` [N]); write model.pt, summary.json, the curve `dvclive/` and, drawn by
    `plot(history, path, model_name)` (e.g. `gcctl.report.plot_pretraining_loss`), loss.png to `out`; return the summary.

    Batches are full (the last partial batch of an epoch is dropped): InfoNCE depends on batch size.
    The learning rate warms up linearly over the first `warmup` fraction of steps, then decays on a cosine.
    The curve grows after every epoch, so an unfinished run shows its progress (model.pt marks a finished one).
    A finished run in `out` is replaced only with `overwrite`; a folder holding anything else never.
    """
    _check_settings(epochs, batch_size, lr, weight_decay, warmup)
    corpus, out = Path(corpus), Path(out)
    with output_lock(out):
        check_output(out, "pretrain", is_own=_is_pretrain_run, replace_own=overwrite or not (out / "model.pt").exists())
        return _train(corpus, out, model_name, epochs, batch_size, lr, weight_decay, warmup, seed, device, plot)


def _is_pretrain_run(out: Path) -> bool:
    """A folder a pretraining run wrote, finished (model.pt) or not (its curve)."""
    return out.is_dir() and any((out / name).exists() for name in (*OUTPUTS, CURVE, "loss.png"))


def _train(corpus: Path, out: Path, model_name, epochs, batch_size, lr, weight_decay, warmup, seed, device, plot) -> dict:
    """`pretrain` once its --out is this process's."""
    images, captions = _load_pairs(corpus)
    batch = min(batch_size, len(images))
    steps_per_epoch = len(images) // batch
    total_steps = epochs * steps_per_epoch
    torch_device = resolve_device(device)
    seed_everything(seed)
    bundle = fresh_clip(model_name, torch_device)
    model = bundle.model
    for name in OUTPUTS:  # an interrupted run must not leave a previous run's model behind
        (out / name).unlink(missing_ok=True)
    curve = CurveLog(out / CURVE)

    tokens = _tokenize(bundle.tokenizer, captions).to(torch_device)
    pixels = torch.from_numpy(images).to(torch_device)
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total_steps, warmup))
    scaler = torch.amp.GradScaler(torch_device.type, enabled=torch_device.type == "cuda")
    shuffler = torch.Generator().manual_seed(seed)

    history = []
    model.train()
    started = time.perf_counter()
    with progress() as bar:
        task = bar.add_task(f"pretrain {model_name}", total=total_steps)
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=shuffler)[: steps_per_epoch * batch]
            for rows in order.view(steps_per_epoch, batch).to(torch_device):
                step_lr = schedule.get_last_lr()[0]
                loss = _contrastive_step(model, preprocess_uint8(pixels[rows], model), tokens[rows], optimizer, scaler, torch_device)
                schedule.step()
                history.append({"step": len(history) + 1, "loss": loss, "lr": step_lr})
                bar.update(task, advance=1, description=f"pretrain {model_name} loss {loss:.3f}")
            curve.log_records(history[-steps_per_epoch:], step_key="step")
    seconds = time.perf_counter() - started
    model.eval()

    tail = [record["loss"] for record in history[-10:]]
    summary = {
        "model": model_name,
        "corpus": str(corpus),
        "corpus_sha256": sha256_file(corpus),
        "images": len(images),
        "epochs": epochs,
        "batch_size": batch,
        "steps": total_steps,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "seed": seed,
        "device": str(torch_device),
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / total_steps, 4),
        "first_loss": history[0]["loss"],
        "final_loss": float(np.mean(tail)),  # mean of the last 10 steps: one batch is noisy
        "logit_scale": round(model.logit_scale.detach().exp().item(), 3),
    }
    # model.pt is renamed into place last, so its presence means every other output is complete.
    with atomic_path(out / "model.pt") as model_tmp:
        write_checkpoint(model, model_tmp, model_name)
        summary["model_sha256"] = sha256_file(model_tmp)
        if plot is not None:
            plot(history, out / "loss.png", model_name)
        write_json(out / "summary.json", summary)
    return summary


def warmup_cosine(step: int, total_steps: int, warmup: float) -> float:
    """The learning-rate factor at `step`: linear warm-up to 1, then cosine decay to 0."""
    warmup_steps = max(1, round(warmup * total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress_fraction = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_fraction)))


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of images over texts and texts over images; pair i matches pair i."""
    targets = torch.arange(len(logits), device=logits.device)
    logits = logits.float()
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def _contrastive_step(model, images, tokens, optimizer, scaler, device) -> float:
    with autocast(device):
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(tokens, normalize=True)
        loss = symmetric_infonce(model.logit_scale.exp() * image_features @ text_features.T)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss.item()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, norms' gains, the class embedding and the logit scale stay free."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return [
        {"params": [parameter for parameter in parameters if parameter.ndim >= 2], "weight_decay": weight_decay},
        {"params": [parameter for parameter in parameters if parameter.ndim < 2], "weight_decay": 0.0},
    ]


def _tokenize(tokenizer, captions: np.ndarray) -> torch.Tensor:
    """Each distinct caption once: a procedural corpus repeats few captions many times."""
    distinct, index = np.unique(captions, return_inverse=True)
    return tokenizer(distinct.tolist())[torch.from_numpy(index.reshape(-1))]


def _load_pairs(corpus: Path) -> tuple[np.ndarray, np.ndarray]:
    if not corpus.is_file():
        raise GcctlError(f"corpus file {corpus} not found; write it with `gcctl data synth` or check the path")
    try:
        with np.load(corpus, allow_pickle=False) as data:
            missing = [name for name in ("images", "captions") if name not in data.files]
            if missing:
                raise GcctlError(f"corpus {corpus} has no {' or '.join(missing)} array; it needs images [N,S,S,3] uint8 and captions [N]")
            images, captions = data["images"], data["captions"]
    except (OSError, ValueError) as error:
        raise GcctlError(f"cannot read corpus {corpus} ({error}); it must be an .npz with images and captions") from error
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise GcctlError(f"corpus images must be uint8 [N, S, S, 3], got {images.dtype} {list(images.shape)}; write the corpus again")
    if len(captions) != len(images) or len(images) < 2:
        raise GcctlError(f"corpus needs at least 2 images and one caption each, got {len(images)} images and {len(captions)} captions")
    return images, captions.astype(str)


def _check_settings(epochs: int, batch_size: int, lr: float, weight_decay: float, warmup: float) -> None:
    if epochs < 1:
        raise GcctlError(f"--epochs must be at least 1, got {epochs}")
    if batch_size < 2:
        raise GcctlError(f"--batch-size must be at least 2 (contrastive pairs need negatives), got {batch_size}")
    if lr <= 0 or weight_decay < 0:
        raise GcctlError(f"--lr must be > 0 and --weight-decay >= 0, got {lr} and {weight_decay}")
    if not 0 <= warmup < 1:
        raise GcctlError(f"--warmup is a fraction of the steps in [0, 1), got {warmup}")
