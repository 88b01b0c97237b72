"""ImageNet and its shift sets: V2, Sketch, and the 200-class subsets ImageNet-R and ImageNet-A.

Class names come from `imagenet_classes.tsv`, shipped with gcctl: one row per class in ImageNet's index
order (WordNet ids sorted, n01440764 = 0), with
- `name`: the readable names of CLIP's zero-shot ImageNet evaluation (openai/CLIP,
  notebooks/Prompt_Engineering_for_ImageNet.ipynb; the same list as open_clip's IMAGENET_CLASSNAMES);
  CLIP's list names two pairs of classes alike (missile: 657 and 744; sunglasses: 836 and 837);
- `imagenet_r`, `imagenet_a`: 1 for the 200 classes of ImageNet-R and of ImageNet-A (the subsets of
  Hendrycks et al.'s releases, as listed in timm's imagenet_r_synsets.txt and imagenet_a_synsets.txt).

Every shift set is read as the test split; ImageNet's own val/ (the held-out set everyone reports) is its test split.
Model selection (fine-tuning keeps its best validation epoch) then needs a validation split of its own: a fixed
holdout of VAL_PER_CLASS train images per class (at most half of a class), the ones with the lowest sha1 of
their path, so it does not depend on the order the file system lists them.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path

import pandas as pd

from gcctl.datasets.folders import subfolders, walk
from gcctl.datasets.subset import ClassSubset
from gcctl.datasets.table import DatasetTable, NameOverrides, pick_names
from gcctl.errors import GcctlError

CLASS_LIST = "imagenet_classes.tsv"
IMAGENET_LAYOUT = "ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG (val sorted into synset folders, e.g. n01440764)"
V2_LAYOUT = "ROOT/<class index 0..999>/*.jpeg, as the official release unpacks (ROOT may hold imagenetv2-*/ instead)"
SKETCH_LAYOUT = "ROOT/<wnid>/*.JPEG for the 1,000 ImageNet synsets (or ROOT/sketch/<wnid>/...)"
R_LAYOUT = "ROOT/<wnid>/*.jpg for ImageNet-R's 200 synsets (or ROOT/imagenet-r/<wnid>/...)"
A_LAYOUT = "ROOT/<wnid>/*.jpg for ImageNet-A's 200 synsets (or ROOT/imagenet-a/<wnid>/...)"
VAL_PER_CLASS = 10  # 10,000 validation images from ImageNet's 1.28M train images


@functools.cache
def imagenet_classes() -> pd.DataFrame:
    """The shipped class list: wnid, name, imagenet_r, imagenet_a; row i is ImageNet class i."""
    with resources.files("gcctl.datasets").joinpath(CLASS_LIST).open() as handle:
        return pd.read_csv(handle, sep="\t", dtype={"wnid": str, "name": str})


def load_imagenet(root: Path, names: NameOverrides) -> DatasetTable:
    splits = {folder: split for folder, split in (("train", "train"), ("val", "test")) if (root / folder).is_dir()}
    if not splits:
        raise GcctlError(f"no ImageNet train/ or val/ folder under {root}: expected {IMAGENET_LAYOUT}")
    wnids = imagenet_classes()["wnid"].tolist()
    core = pd.concat([_synset_rows(root, folder, wnids, "ImageNet", IMAGENET_LAYOUT).assign(split=split)
                      for folder, split in splits.items()], ignore_index=True)
    return _table(_hold_out_val(core), root, names, "imagenet")


def _hold_out_val(core: pd.DataFrame) -> pd.DataFrame:
    """The train images with the lowest path sha1 of each class, VAL_PER_CLASS at most and half of it at most,
    become the validation split (see the module notes)."""
    train = core[core["split"] == "train"]
    digest = train["path"].map(lambda path: hashlib.sha1(path.encode()).hexdigest())
    rank = digest.groupby(train["y"]).rank(method="first")
    size = train.groupby("y")["y"].transform("size")
    held = rank.index[(rank <= VAL_PER_CLASS) & (rank <= size // 2)]
    return core.assign(split=core["split"].where(~core.index.isin(held), "val"))


def load_imagenet_v2(root: Path, names: NameOverrides) -> DatasetTable:
    nested = [folder for folder in subfolders(root) if folder.startswith("imagenetv2-")]
    if len(nested) > 1:
        raise GcctlError(f"{root} holds several ImageNet-V2 variants ({', '.join(nested)}); pass one of them as --root")
    root = root / nested[0] if nested else root
    folders = subfolders(root)
    unknown = [folder for folder in folders if not (folder.isdigit() and int(folder) < 1000)]
    if unknown or not folders:
        found = f"folders that are not class indices ({', '.join(unknown[:5])})" if unknown else "no class folders"
        raise GcctlError(f"ImageNet-V2 root {root} has {found}; expected {V2_LAYOUT}")
    core = walk(root, ".", {folder: int(folder) for folder in folders}).assign(split="test")
    return _table(core, root, names, "imagenet-v2")


def load_imagenet_sketch(root: Path, names: NameOverrides) -> DatasetTable:
    root = root / "sketch" if (root / "sketch").is_dir() else root
    core = _synset_rows(root, ".", imagenet_classes()["wnid"].tolist(), "ImageNet-Sketch", SKETCH_LAYOUT)
    return _table(core.assign(split="test"), root, names, "imagenet-sketch")


def load_imagenet_r(root: Path, names: NameOverrides) -> DatasetTable:
    return _subset_table(root, names, "imagenet-r", "ImageNet-R", R_LAYOUT)


def load_imagenet_a(root: Path, names: NameOverrides) -> DatasetTable:
    return _subset_table(root, names, "imagenet-a", "ImageNet-A", A_LAYOUT)


def _subset_table(root: Path, names: NameOverrides, dataset: str, title: str, layout: str) -> DatasetTable:
    """The subset's classes in ImageNet's order, y indexing them, and their ImageNet indices in the table."""
    root = root / dataset if (root / dataset).is_dir() else root
    classes = imagenet_classes()
    members = classes[classes[dataset.replace("-", "_")] == 1]
    core = _synset_rows(root, ".", members["wnid"].tolist(), title, layout).assign(split="test")
    subset = ClassSubset("imagenet", len(classes), tuple(members.index))
    return DatasetTable.build(core, root=root, dataset=dataset, attributes={}, source=f"{title} under {root}",
                              class_names=pick_names(names.classes, members["name"].tolist(), f"the {title} classes"),
                              class_subset=subset)


def _table(core: pd.DataFrame, root: Path, names: NameOverrides, dataset: str) -> DatasetTable:
    return DatasetTable.build(core, root=root, dataset=dataset, attributes={}, source=f"{dataset} under {root}",
                              class_names=pick_names(names.classes, imagenet_classes()["name"].tolist(),
                                                     f"the {dataset} classes"))


def _synset_rows(root: Path, folder: str, wnids: list[str], title: str, layout: str) -> pd.DataFrame:
    """Images of `root/folder/<wnid>/`, y the wnid's position in `wnids`; a folder outside `wnids` is an error."""
    present = subfolders(root / folder)
    known = set(wnids)
    unknown = [name for name in present if name not in known]
    if unknown:
        raise GcctlError(f"{title} folder {root / folder} has {len(unknown)} class folders that are not among its "
                         f"{len(wnids)} synsets (first: {', '.join(unknown[:3])}); expected {layout}")
    if not present:
        raise GcctlError(f"no synset folders in {root / folder}: expected {layout}")
    wanted = set(present)
    return walk(root, folder, {wnid: index for index, wnid in enumerate(wnids) if wnid in wanted})
