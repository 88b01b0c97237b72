"""Image folders: one folder per class (`imagefolder`, `caltech101`), and PACS (one folder per domain, then class).

The folders are walked by torchvision's `make_dataset`, the walk behind its `ImageFolder`; torchvision is
imported only when a folder is read, so importing gcctl.datasets stays free of torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from gcctl.datasets.table import (
    SPLITS,
    DatasetTable,
    NameOverrides,
    normalize_splits,
    pick_names,
)
from gcctl.errors import GcctlError

IMAGEFOLDER_LAYOUT = "ROOT/<class>/<image> (every image in --folder-split, default test) or ROOT/{train,val,test}/<class>/<image>"
CALTECH101_LAYOUT = "ROOT/101_ObjectCategories/<class>/image_*.jpg (or ROOT/caltech101/101_ObjectCategories, torchvision's)"
PACS_LAYOUT = "ROOT/<domain>/<class>/<image> with domains art_painting, cartoon, photo, sketch (or ROOT/kfold/<domain>/...)"

# Split folder names (the canonical table's split aliases, less the digits: a class may be named 0).
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
CALTECH101_BACKGROUND = "BACKGROUND_Google"  # clutter, not a class: torchvision and CLIP leave it out


def load_imagefolder(root: Path, names: NameOverrides, *, split: str | None = None) -> DatasetTable:
    return _read_class_folders(root, names, split, dataset="imagefolder", layout=IMAGEFOLDER_LAYOUT)


def load_caltech101(root: Path, names: NameOverrides, *, split: str | None = None) -> DatasetTable:
    for folder in (root / "101_ObjectCategories", root / "caltech101" / "101_ObjectCategories"):
        if folder.is_dir():
            return _read_class_folders(folder, names, split, dataset="caltech101", layout=CALTECH101_LAYOUT,
                                       exclude={CALTECH101_BACKGROUND})
    raise GcctlError(f"no Caltech101 images under {root}: expected {CALTECH101_LAYOUT}")


def load_pacs(root: Path, names: NameOverrides, *, split: str | None = None) -> DatasetTable:
    """Every (class, domain) a group: the domain is the attribute a zero-shot classifier should ignore."""
    if (root / "kfold").is_dir():
        root = root / "kfold"
    domains = subfolders(root)
    if not domains:
        raise GcctlError(f"no PACS domain folders under {root}: expected {PACS_LAYOUT}")
    classes = sorted({name for domain in domains for name in subfolders(root / domain)})
    class_to_index = {name: index for index, name in enumerate(classes)}
    parts = []
    for code, domain in enumerate(domains):
        rows = walk(root, domain, class_to_index)
        rows["domain"] = code
        parts.append(rows)
    core = pd.concat(parts, ignore_index=True)
    core["split"] = _one_split(split)
    return DatasetTable.build(
        core, root=root, dataset="pacs", source=f"PACS under {root}",
        class_names=pick_names(names.classes, readable(classes), "the PACS classes"),
        attributes={"domain": pick_names(names.attributes.get("domain"), domains, "the PACS domains")},
    )


def subfolders(folder: Path) -> list[str]:
    """The folder's visible subfolders, sorted (hidden ones such as .ipynb_checkpoints are not classes)."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))


def walk(root: Path, folder: str, class_to_index: dict[str, int]) -> pd.DataFrame:
    """id, path (relative to root) and y of every image in `root/folder/<class>/` for the classes given."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    samples = make_dataset(root / folder, class_to_index, extensions=IMG_EXTENSIONS, allow_empty=True)
    paths = [os.path.relpath(path, root).replace(os.sep, "/") for path, _ in samples]
    return pd.DataFrame({"id": paths, "path": paths, "y": [y for _, y in samples]}, dtype=object).astype({"y": "int64"})


def readable(folders: list[str]) -> list[str]:
    """Class names a text encoder reads from folder names: `car_side` becomes `car side`."""
    return [folder.replace("_", " ") for folder in folders]


def _read_class_folders(root: Path, names: NameOverrides, split: str | None, *, dataset: str, layout: str,
                        exclude: frozenset[str] | set[str] = frozenset()) -> DatasetTable:
    top = [folder for folder in subfolders(root) if folder not in exclude]
    split_folders = sorted((folder for folder in top if folder.lower() in SPLIT_FOLDERS),
                           key=lambda folder: SPLITS.index(SPLIT_FOLDERS[folder.lower()]))
    if split_folders and split is not None:
        raise GcctlError(f"{root} has split folders ({', '.join(split_folders)}); leave out --folder-split")
    if split_folders and len(split_folders) != len(top):
        others = [folder for folder in top if folder not in split_folders]
        raise GcctlError(f"{root} mixes split folders ({', '.join(split_folders)}) with class folders "
                         f"({', '.join(others[:3])}); expected {layout}")
    if split_folders:
        classes = sorted({name for folder in split_folders for name in subfolders(root / folder)} - set(exclude))
        class_to_index = {name: index for index, name in enumerate(classes)}
        parts = [walk(root, folder, class_to_index).assign(split=SPLIT_FOLDERS[folder.lower()]) for folder in split_folders]
        core = pd.concat(parts, ignore_index=True)
    else:
        classes = top
        core = walk(root, ".", {name: index for index, name in enumerate(classes)})
        core["split"] = _one_split(split)
    if core.empty:
        raise GcctlError(f"no images under {root}: expected {layout}")
    return DatasetTable.build(core, root=root, dataset=dataset, attributes={}, source=f"{dataset} folders under {root}",
                              class_names=pick_names(names.classes, readable(classes), f"the {dataset} classes"))


def _one_split(split: str | None) -> str:
    """The split of every image of a dataset without split folders: the test split unless told otherwise."""
    return normalize_splits(pd.Series([split or "test"]), "--folder-split").iloc[0]
