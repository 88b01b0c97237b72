"""Options several commands share, declared once: --json, --device, --max-memory."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")]
MaxMemory = Annotated[Optional[str], typer.Option(
    "--max-memory", help="Keep a split's features in memory up to this size (e.g. 512M, 2G); a larger split is read "
                         "from the store in chunks, with the same results. Default: half the memory available.")]
