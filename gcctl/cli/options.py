"""Options several commands share, declared once: --json, --device, --max-memory."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from gcctl.errors import GcctlError

AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")]


def _size_a_machine_has(text: Optional[str]) -> Optional[str]:
    """--max-memory as given, once its number is below 2^64: beyond every machine's memory (inf, 1e400) it would
    overflow the byte count. `gcctl.store.memory_budget` reads the size itself (units, the default) when used."""
    if text is not None:
        try:
            number = float(text.strip().rstrip("KkMmGgTtBbIi"))
        except ValueError:
            return text  # not a number at all: memory_budget names the problem
        if number >= 2**64:  # nan passes on, for memory_budget to refuse
            raise GcctlError(f"--max-memory '{text}' is larger than any memory; give bytes or a size like 512M or 2G")
    return text


MaxMemory = Annotated[Optional[str], typer.Option(
    "--max-memory", callback=_size_a_machine_has,
    help="Keep a split's features in memory up to this size (e.g. 512M, 2G); a larger split is read "
         "from the store in chunks, with the same results. Default: half the memory available.")]
