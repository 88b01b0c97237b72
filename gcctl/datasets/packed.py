"""CIFAR-10, CIFAR-100 and STL10: images packed in binary files, read by torchvision's dataset classes.

The canonical table is one row per image *file*, so these images are written once as PNGs (lossless: the
pixels are torchvision's) under `ROOT/gcctl-images/<dataset>/<split>/<index>.png`, and the table points at
them. Everything downstream (the torch Dataset, the missing-image check, extraction) then reads them like any
other image, and a DataLoader worker opens one small file instead of unpickling a whole batch file. The copy
appears whole or not at all (written beside, then renamed) and is reused while it exists; torchvision checks the
binaries' md5 sums on every read, so a copy made from them cannot go stale. It costs disk (about 0.2 GB for
CIFAR, 0.3 GB for STL10's labelled images) and a writable root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from gcctl.datasets.folders import readable
from gcctl.datasets.table import DatasetTable, NameOverrides, pick_names
from gcctl.errors import GcctlError
from gcctl.files import atomic_directory
from gcctl.runtime import progress

CACHE = "gcctl-images"
CIFAR10_LAYOUT = "ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (the python version, unpacked)"
CIFAR100_LAYOUT = "ROOT/cifar-100-python/{train,test,meta} (the python version, unpacked)"
STL10_LAYOUT = "ROOT/stl10_binary/{train_X,train_y,test_X,test_y,unlabeled_X}.bin and class_names.txt (unpacked)"


def load_cifar10(root: Path, names: NameOverrides) -> DatasetTable:
    from torchvision.datasets import CIFAR10

    return _packed_table(root, names, "cifar10", CIFAR10_LAYOUT, lambda split: CIFAR10(root, train=split == "train"))


def load_cifar100(root: Path, names: NameOverrides) -> DatasetTable:
    from torchvision.datasets import CIFAR100

    return _packed_table(root, names, "cifar100", CIFAR100_LAYOUT, lambda split: CIFAR100(root, train=split == "train"))


def load_stl10(root: Path, names: NameOverrides) -> DatasetTable:
    """The 5,000 labelled train and 8,000 test images; the unlabelled ones have no class to score."""
    from torchvision.datasets import STL10

    return _packed_table(root, names, "stl10", STL10_LAYOUT, lambda split: STL10(root, split=split))


def _packed_table(root: Path, names: NameOverrides, dataset: str, layout: str, read: Callable) -> DatasetTable:
    parts, classes = [], None
    for split in ("train", "test"):
        try:
            images = read(split)  # torchvision's class, never downloading
        except RuntimeError:  # torchvision: "Dataset not found or corrupted"
            raise GcctlError(f"no complete {dataset} under {root} (a file is missing or fails torchvision's md5 "
                             f"check); expected {layout}") from None
        classes = getattr(images, "classes", None)
        if not classes:
            raise GcctlError(f"{dataset} under {root} names no classes; expected {layout}")
        folder = _materialise(root, f"{CACHE}/{dataset}/{split}", images)
        labels = [int(label) for label in (images.targets if hasattr(images, "targets") else images.labels)]
        paths = [f"{folder}/{index:05d}.png" for index in range(len(labels))]
        parts.append(pd.DataFrame({"id": [f"{split}/{index}" for index in range(len(labels))], "path": paths,
                                   "split": split, "y": labels}))
    return DatasetTable.build(pd.concat(parts, ignore_index=True), root=root, dataset=dataset, attributes={},
                              source=f"{dataset} under {root}",
                              class_names=pick_names(names.classes, readable(classes), f"the {dataset} classes"))


def _materialise(root: Path, folder: str, images) -> str:
    """`folder` (relative to root) holding every image of `images` as <index>.png, written once."""
    target = root / folder
    if target.is_dir():
        return folder
    try:
        with atomic_directory(target) as partial, progress() as bar:
            task = bar.add_task(f"PNG copy of {folder}", total=len(images))
            for index in range(len(images)):
                images[index][0].save(partial / f"{index:05d}.png")
                bar.advance(task)
    except OSError as error:
        if target.is_dir():  # another process finished the same copy first
            return folder
        raise GcctlError(f"cannot write the PNG copy of the images to {target} ({error.strerror or error}); "
                         "pass a writable copy of the dataset as --root") from None
    return folder
