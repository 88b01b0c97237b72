"""Cross-cutting run-time helpers: device choice, autocast, seeding, atomic writes, progress."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from gcctl.errors import GcctlError

# Set by the CLI's --quiet flag; library code asks `progress_enabled()` instead of reading it.
_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def progress_enabled() -> bool:
    """Progress bars only for a person at a terminal: CI logs stay clean."""
    return not _QUIET and sys.stderr.isatty()


def progress():
    """A rich progress bar on stderr, disabled when not at a terminal or with --quiet."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress_enabled(),
        transient=False,
    )


def resolve_device(requested: str = "auto"):
    """`auto` picks CUDA, then MPS, then CPU; an explicit device that is absent is a user error."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GcctlError(f"device '{requested}' requested but CUDA is not available; use --device auto or cpu")
    return device


def autocast(device) -> contextlib.AbstractContextManager:
    """Mixed precision on accelerators; full precision on CPU, where bf16 autocast is slower for small models."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def partial_path(path: str | os.PathLike) -> Path:
    """Where an artifact is written before it is complete; the rename makes it appear atomically."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    On failure the temporary file is removed, so no half-written artifact is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
