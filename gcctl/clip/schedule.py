"""The learning-rate schedule pretraining and fine-tuning share, and its `--warmup` option (no torch: the CLI
reads the option's help without loading it)."""

from __future__ import annotations

import math

from gcctl.errors import GcctlError

WARMUP_HELP = ("Linear warm-up before the cosine decay: below 1 a fraction of the steps, from 1 a number of steps "
               "(the StarFT authors: 500).")


def check_warmup(warmup: float) -> None:
    """`--warmup` is a fraction of the steps in [0, 1) or a whole number of steps."""
    if not (0 <= warmup < 1 or (warmup >= 1 and float(warmup).is_integer())):
        raise GcctlError(f"--warmup is a fraction of the steps in [0, 1) or a whole number of steps, got {warmup}")


def warmup_cosine(step: int, total_steps: int, warmup: float) -> float:
    """The learning-rate factor at `step`: linear warm-up to 1 over `warmup` (a fraction of the steps below 1, a
    step count from 1: the StarFT authors' `cosine_lr`, which never shortens a warm-up longer than the run), then
    cosine decay to 0."""
    warmup_steps = max(1, round(warmup * total_steps) if warmup < 1 else int(warmup))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress_fraction = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_fraction)))
