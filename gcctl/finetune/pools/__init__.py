"""Spurious template pools: the captions StarFT injects spuriosity with.

A pool is a text file, one template per line, each with one `{}` where a class caption goes
("{} in the snow." + "a photo of a dog" → "a photo of a dog in the snow."). Blank lines and lines
starting with '#' are skipped. The shipped pools live in `gcctl/finetune/pools/` and are named by stem; they are
gcctl's own. A `.pt` file holding a list of such strings (how the StarFT authors ship theirs) is read too.
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
TORCH_POOL_SUFFIXES = (".pt", ".pth")  # read as torch files of a list of strings, every other file as text


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
    entries = _torch_pool_entries(path) if path.suffix in TORCH_POOL_SUFFIXES else _text_pool_entries(path)
    templates = []
    for where, template in entries:
        check_template(template, f"at {path}:{where}", "the caption")
        templates.append(template)
    if not templates:
        raise GcctlError(f"pool file {path} has no templates; write one per line, each with {{}} for the caption")
    return templates


def _text_pool_entries(path: Path) -> list[tuple[int, str]]:
    """(line number, template) of a text pool: blank lines and '#' comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise GcctlError(f"cannot read pool file {path} ({error}); it must be UTF-8 text, one template per line") from None
    return [(number, line.strip()) for number, line in enumerate(lines, start=1)
            if line.strip() and not line.strip().startswith("#")]


def _torch_pool_entries(path: Path) -> list[tuple[int, str]]:
    """(index, template) of a pool saved with torch.save as a list of strings, the form of the StarFT authors'
    `keywords/*.pt`. Loaded with `weights_only`: a pickle that would run code or build other objects is refused."""
    import pickle

    try:
        templates = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GcctlError(f"cannot read pool file {path} as a torch file of a list of strings ({reason})") from None
    if not isinstance(templates, (list, tuple)) or not all(isinstance(template, str) for template in templates):
        raise GcctlError(f"pool file {path} holds a {type(templates).__name__}, not a list of template strings; "
                         "save one with torch.save([\"{} in the snow.\", ...], FILE)")
    return [(index, template.strip()) for index, template in enumerate(templates) if template.strip()]


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
