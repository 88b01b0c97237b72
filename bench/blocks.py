"""The command line of the scripts that turn what `dvc repro` wrote into a results block of the docs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def block_main(description: str, section: str, markdown_of: Callable[[Path], str]) -> None:
    """`--pipeline` (the folder `dvc repro` wrote) in, the block `markdown_of(pipeline)` out: printed, or put
    between the `results:SECTION` markers of `--readme`."""
    from gcctl.report import update_readme

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--pipeline", type=Path, default=Path("pipeline"), help="The folder `dvc repro` wrote.")
    parser.add_argument("--readme", type=Path, help="Write the block into this file instead of printing it.")
    args = parser.parse_args()
    markdown = markdown_of(args.pipeline)
    if args.readme:
        update_readme(args.readme, section, markdown)
    else:
        print(markdown, end="")
