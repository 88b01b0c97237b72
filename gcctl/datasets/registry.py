"""The dataset registry: every source layout by name, and `load_dataset`, which reads one into the canonical table."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Callable

from gcctl.datasets import (
    celeba,
    folders,
    imagenet,
    manifest,
    packed,
    waterbirds,
    webdataset,
)
from gcctl.datasets.table import NAMES_SIDECAR, DatasetTable, read_name_overrides
from gcctl.errors import GcctlError

# name -> adapter(root, names, **options) returning a DatasetTable.
DATASETS: dict[str, Callable[..., DatasetTable]] = {
    "waterbirds": waterbirds.load,
    "celeba": celeba.load,
    "multiceleba": celeba.load_multiceleba,
    "manifest": manifest.load,
    "imagefolder": folders.load_imagefolder,
    "imagenet": imagenet.load_imagenet,
    "imagenet-v2": imagenet.load_imagenet_v2,
    "imagenet-sketch": imagenet.load_imagenet_sketch,
    "imagenet-r": imagenet.load_imagenet_r,
    "imagenet-a": imagenet.load_imagenet_a,
    "cifar10": packed.load_cifar10,
    "cifar100": packed.load_cifar100,
    "stl10": packed.load_stl10,
    "caltech101": folders.load_caltech101,
    "pacs": folders.load_pacs,
    "webdataset": webdataset.load,
}
# name -> the on-disk layout it expects, for the message when the root is missing.
LAYOUTS: dict[str, str] = {
    "waterbirds": waterbirds.LAYOUT,
    "celeba": celeba.LAYOUT,
    "multiceleba": celeba.LAYOUT,
    "manifest": manifest.LAYOUT,
    "imagefolder": folders.IMAGEFOLDER_LAYOUT,
    "imagenet": imagenet.IMAGENET_LAYOUT,
    "imagenet-v2": imagenet.V2_LAYOUT,
    "imagenet-sketch": imagenet.SKETCH_LAYOUT,
    "imagenet-r": imagenet.R_LAYOUT,
    "imagenet-a": imagenet.A_LAYOUT,
    "cifar10": packed.CIFAR10_LAYOUT,
    "cifar100": packed.CIFAR100_LAYOUT,
    "stl10": packed.STL10_LAYOUT,
    "caltech101": folders.CALTECH101_LAYOUT,
    "pacs": folders.PACS_LAYOUT,
    "webdataset": webdataset.LAYOUT,
}


def _set_attribute_prompts(table: DatasetTable, prompts: dict[str, str], root: Path) -> None:
    """The sidecar's caption template for each attribute this table has (a sidecar may describe more)."""
    kept = {name: template for name, template in prompts.items() if name in table.attributes}
    for name, template in kept.items():
        if "{value}" not in template:
            raise GcctlError(f"{root / NAMES_SIDECAR}: attribute_prompts['{name}'] is '{template}', which has no "
                             "{value}; write it like 'a photo of a {value} {class}.'")
    table.attribute_prompts = kept


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
        expected = LAYOUTS.get(name, f"the folder that holds the {name} files")
        raise GcctlError(f"dataset root {root} is not a directory; {name} expects {expected}")
    _check_options(name, options)
    names = read_name_overrides(root, options.pop("class_names", None))
    table = adapter(root, names, **options)
    _set_attribute_prompts(table, names.attribute_prompts, root)
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
