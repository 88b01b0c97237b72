"""The training loop shared by the trained feature-based methods (linear, dfr, coop, groupcoop).

Features stay on the device in the stored dtype and are converted to float32 one batch at a time. After every
epoch the current classifier is scored on the selection split (validation, with its true groups or the
pseudo-groups of `--val-groups`) and the best epoch by `select_by` is kept.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gcctl.datasets.groups import GroupVocabulary
from gcctl.errors import GcctlError
from gcctl.methods.base import FitResult, LoopOptions
from gcctl.methods.data import Split, split_metrics
from gcctl.metrics import selection_value
from gcctl.runtime import autocast, progress

# (prompt scores [B, P] float32, indices of the batch's samples in the train split) -> loss per sample [B]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(targets: torch.Tensor, to_logits: Callable[[torch.Tensor], torch.Tensor] | None = None) -> LossFn:
    """Cross-entropy of the prompt scores (or of `to_logits(scores)`) against `targets` of the train split."""

    def loss(scores: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        logits = scores if to_logits is None else to_logits(scores)
        return F.cross_entropy(logits, targets[batch], reduction="none")

    return loss


def group_units(group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Number each group present: the unit balanced over and, for GroupCoOp, given a prompt.

    Returns the unit of every sample [N] and the group id of every unit [U], in group-id order.
    """
    present = torch.bincount(group).nonzero().flatten()
    number = torch.zeros(int(present[-1]) + 1, dtype=torch.long, device=group.device)
    number[present] = torch.arange(len(present), device=group.device)
    return number[group], present  # a lookup, not torch.unique's sort: no copies of a million-row split


def inverse_frequency(unit: torch.Tensor) -> torch.Tensor:
    """Per-sample weight 1 / size of its unit: every unit weighs the same in total."""
    return 1.0 / torch.bincount(unit).float()[unit]


def fit_loop(
    scorer: nn.Module,
    loss_fn: LossFn,
    train: Split,
    select: Split,
    vocabulary: GroupVocabulary,
    options: LoopOptions,
    *,
    seed: int,
    label: str,
) -> FitResult:
    """Train the trainable parameters of `scorer` and return the best epoch's classifier.

    `scorer(features)` gives prompt scores; `scorer.classifier()` the current `Classifier`; `scorer.learned()`
    the trained tensors to save.
    """
    device = train.features.device
    params = [p for p in scorer.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs)
    generator = torch.Generator().manual_seed(seed)
    weights = inverse_frequency(group_units(train.group)[0].cpu())
    curve, epoch_seconds, best = [], [], None
    with _one_cpu_thread(device), progress() as bar:
        task = bar.add_task(label, total=options.epochs)
        for epoch in range(1, options.epochs + 1):
            started = time.perf_counter()
            mean_loss = _train_epoch(scorer, loss_fn, optimizer, train, weights, options, generator, device)
            if not math.isfinite(mean_loss):
                raise GcctlError(f"{label}: the loss became NaN or infinite in epoch {epoch}; lower --lr")
            scheduler.step()
            classifier = scorer.classifier()
            metrics = split_metrics(classifier.predict(select.features), select, vocabulary)
            curve.append(
                {
                    "epoch": epoch,
                    "loss": mean_loss,
                    "val_acc_avg": metrics["acc_avg"],
                    "val_acc_wg": metrics["acc_wg"],
                    f"val_{options.select_by}": selection_value(metrics, options.select_by),  # what keeps the epoch, always drawn
                }
            )
            epoch_seconds.append(round(time.perf_counter() - started, 4))
            value = selection_value(metrics, options.select_by)
            if best is None or value > best["value"]:
                best = {"epoch": epoch, "value": value, "classifier": classifier, "learned": scorer.learned(), "metrics": metrics}
            bar.advance(task)
    selection = {
        "select_by": f"val_{options.select_by}",
        "best_epoch": best["epoch"],
        "best_value": best["value"],
        "epochs": options.epochs,
        "val_metrics": best["metrics"],
    }
    return FitResult(best["classifier"], best["learned"], curve, selection, epoch_seconds)


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the loop's many tiny kernels on one CPU thread: on a shared CPU, OpenMP threads waiting for each
    other made a gcctl-tiny prompt step take 700 ms instead of 10 ms (2 cores, other jobs running)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_epoch(scorer, loss_fn, optimizer, train: Split, weights, options: LoopOptions, generator, device) -> float:
    n = len(train)
    if options.balance == "sampling":
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator)
    total, seen = 0.0, 0
    for batch in order.split(options.batch_size):
        batch_weights = weights[batch].to(device)
        batch = batch.to(device)
        with autocast(device):
            scores = scorer(train.features[batch].float())
        per_sample = loss_fn(scores.float(), batch)
        if options.balance == "weights":
            loss = (per_sample * batch_weights).sum() / batch_weights.sum()
        else:
            loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(batch)
        seen += len(batch)
    return total / seen
