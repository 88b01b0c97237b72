"""Every dataset read into one canonical table (see `table.DatasetTable`).

Adapters read a source layout as it ships; `load_dataset` picks one by name. This package knows nothing
of CLIP or torch: `gcctl.datasets.images` holds the torch Dataset over a table.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Callable

from gcctl.datasets import celeba, manifest, waterbirds, webdataset
from gcctl.datasets.groups import GroupVocabulary
from gcctl.datasets.table import NAMES_SIDECAR, SPLITS, DatasetTable, read_name_overrides
from gcctl.errors import GcctlError

# name -> adapter(root, names, **options) returning a DatasetTable.
DATASETS: dict[str, Callable[..., DatasetTable]] = {
    "waterbirds": waterbirds.load,
    "celeba": celeba.load,
    "manifest": manifest.load,
    "webdataset": webdataset.load,
}


def load_dataset(name: str, root: str | os.PathLike, *, allow_outside_root: bool = False, **options) -> DatasetTable:
    """Read the dataset `name` under `root` into the canonical table.

    `class_names=[...]` (any adapter) overrides the names from `root/gcctl-names.json`, which override
    the adapter's defaults; every other option is the adapter's own (see its `load`). Image paths must
    stay inside `root` (no absolute paths, no `..` out of it) unless `allow_outside_root`.
    """
    if name not in DATASETS:
        raise GcctlError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    adapter = DATASETS[name]
    root = Path(root)
    if not root.is_dir():
        raise GcctlError(f"dataset root {root} is not a directory; pass the folder that holds the {name} files")
    _check_options(name, options)
    names = read_name_overrides(root, options.pop("class_names", None))
    table = adapter(root, names, **options)
    outside = [] if allow_outside_root else table.paths_outside_root(limit=1)
    if outside:
        raise GcctlError(f"image path '{outside[0]}' lies outside --root {root}; move the images under the root, "
                         "or pass --allow-outside-root to read them where they are")
    return table


def adapter_options(name: str) -> list[str]:
    """The options `load_dataset(name, ...)` accepts."""
    parameters = list(inspect.signature(DATASETS[name]).parameters)[2:]  # after root, names
    return [*parameters, "class_names"]


def _check_options(name: str, options: dict) -> None:
    unknown = sorted(set(options) - set(adapter_options(name)))
    if unknown:
        raise GcctlError(f"dataset '{name}' does not take {', '.join(unknown)}; "
                         f"it takes: {', '.join(adapter_options(name))}")


__all__ = ["DATASETS", "NAMES_SIDECAR", "SPLITS", "DatasetTable", "GroupVocabulary", "adapter_options", "load_dataset"]
