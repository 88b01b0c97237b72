"""Spurious template pools: the captions StarFT injects spuriosity with.

A pool is a text file, one template per line, each with one `{}` where a class caption goes
("{} in the snow." + "a photo of a dog" → "a photo of a dog in the snow."). Blank lines and lines
starting with '#' are skipped. The shipped pools live in `gcctl/finetune/pools/` and are named by stem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from gcctl.clip.captions import check_template
from gcctl.errors import GcctlError

POOL_DIR = Path(__file__).resolve().parent
SHIPPED_POOLS = tuple(sorted(path.stem for path in POOL_DIR.glob("*.txt")))


def pool_path(spec: str | os.PathLike) -> Path:
    """A shipped pool's file by name (`background`), or any file by path."""
    if str(spec) in SHIPPED_POOLS:
        return POOL_DIR / f"{spec}.txt"
    path = Path(spec).expanduser()
    if not path.is_file():
        raise GcctlError(f"pool '{spec}' is neither a shipped pool ({', '.join(SHIPPED_POOLS)}) nor an existing file")
    return path


def read_pool(spec: str | os.PathLike) -> list[str]:
    """The templates of one pool, validated: each has exactly one `{}` and no other braces."""
    path = pool_path(spec)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise GcctlError(f"cannot read pool file {path} ({error}); it must be UTF-8 text, one template per line") from None
    templates = []
    for number, line in enumerate(lines, start=1):
        template = line.strip()
        if not template or template.startswith("#"):
            continue
        check_template(template, f"at {path}:{number}", "the caption")
        templates.append(template)
    if not templates:
        raise GcctlError(f"pool file {path} has no templates; write one per line, each with {{}} for the caption")
    return templates


def read_pools(specs: Sequence[str | os.PathLike]) -> list[str]:
    """The templates of several pools, joined, each template once, in first-seen order."""
    if not specs:
        raise GcctlError("no spurious pool given; pass --pool with a shipped name or a file")
    return list(dict.fromkeys(template for spec in specs for template in read_pool(spec)))


def fill(template: str, caption: str) -> str:
    """The spuriosity-injected caption: the class caption without its final period, put in the template."""
    return template.format(caption.rstrip().removesuffix("."))


def draw_templates(n: int, pool_size: int, seed: int) -> torch.Tensor:
    """One template index per sample, from `seed` alone: the same draw whatever the batch split."""
    return torch.randint(pool_size, (n,), generator=torch.Generator().manual_seed(seed))
