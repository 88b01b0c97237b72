"""Image folders: one folder per class (`imagefolder`, `caltech101`), and PACS (one folder per domain, then class).

The folders are walked as torchvision's `ImageFolder` walks them (`make_dataset`: classes in sorted order, each
class folder's files in sorted order, its extensions), except that a directory link below a class folder is not
followed: a link back up the tree (`a/loop -> ..`) would otherwise list the same images again and again. A class
or split folder that is itself a link is read, since it is named as such.
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
# The image files ImageFolder reads: torchvision's IMG_EXTENSIONS.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
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
    samples = [(path, class_to_index[name]) for name in sorted(class_to_index)
               for path in files_under(root / folder / name, IMAGE_EXTENSIONS)]
    paths = [os.path.relpath(path, root).replace(os.sep, "/") for path, _ in samples]
    return pd.DataFrame({"id": paths, "path": paths, "y": [y for _, y in samples]}, dtype=object).astype({"y": "int64"})


def files_under(top: Path, suffixes: tuple[str, ...]) -> list[str]:
    """The files under `top` whose names end in one of `suffixes` (any case), folders and names in sorted order;
    no directory link below `top` is followed, so a link loop lists nothing twice. The one walk of a dataset tree."""
    if not top.is_dir():
        return []
    return [os.path.join(folder, name) for folder, _, names in sorted(os.walk(top)) for name in sorted(names)
            if name.lower().endswith(suffixes)]


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
