"""CelebA: the official text files or Kaggle's CSV pair, one target attribute and one or more biases."""

from __future__ import annotations

import difflib
from pathlib import Path

import pandas as pd

from gcctl.datasets.table import (
    DatasetTable,
    NameOverrides,
    pick_names,
    read_csv,
    require_columns,
)
from gcctl.errors import GcctlError

# Official release: line 1 the row count, line 2 the 40 names, then `file v1 ... v40` in -1/1, space-aligned.
ATTRIBUTES_TXT = "list_attr_celeba.txt"
PARTITION_TXT = "list_eval_partition.txt"
# Kaggle: the same data as CSV with headers `image_id,<40 names>` and `image_id,partition`.
ATTRIBUTES_CSV = "list_attr_celeba.csv"
PARTITION_CSV = "list_eval_partition.csv"
IMAGES = "img_align_celeba"
LAYOUT = (f"ROOT/{ATTRIBUTES_TXT}, ROOT/{PARTITION_TXT} and ROOT/{IMAGES}/ (official release), "
          f"or the .csv pair with ROOT/{IMAGES}/{IMAGES}/ (Kaggle)")


# MultiCelebA (the GroupCoOp first author's benchmark of two biases): CelebA's High_Cheekbones against Young and
# Male, trained on a fixed subsample of the official train split, validated and tested on the official splits.
# Per (Young, Male, High_Cheekbones) cell, the first N of its official-train images in file order (None: all);
# 66,898 images in all. Counts and rule from Nayeong-V-Kim/multiple_spurious_correlation_by_MOO,
# data/multi_celebA_dataset.py, which takes them from the first 162,770 rows: the official train split.
MULTICELEBA_TARGET, MULTICELEBA_BIASES = "High_Cheekbones", ("Young", "Male")
MULTICELEBA_TRAIN_COUNTS = {
    (1, 0, 1): None, (1, 1, 1): 2200, (0, 0, 1): 2200, (0, 1, 1): 110,
    (1, 0, 0): 40, (1, 1, 0): 800, (0, 0, 0): 800, (0, 1, 0): 16220,
}


def load(root: Path, names: NameOverrides, *, target: str = "Blond_Hair", bias: tuple[str, ...] | str = ("Male",)) -> DatasetTable:
    biases = [bias] if isinstance(bias, str) else list(bias)
    if not biases:
        raise GcctlError("CelebA needs at least one bias attribute; pass --bias NAME (e.g. Male)")
    if target in biases:
        raise GcctlError(f"'{target}' is both the target and a bias; choose a different --bias")
    return _table(root, names, _core(root, target, biases), target, biases, "celeba", f"CelebA under {root}")


def load_multiceleba(root: Path, names: NameOverrides) -> DatasetTable:
    """MultiCelebA: CelebA with its train split cut to the fixed subsample of `MULTICELEBA_TRAIN_COUNTS`."""
    biases = list(MULTICELEBA_BIASES)
    core = _core(root, MULTICELEBA_TARGET, biases)
    train = core.index[core["split"] == 0]
    cells = core.loc[train, ["Young", "Male", "y"]].itertuples(index=False, name=None)
    taken = {cell: 0 for cell in MULTICELEBA_TRAIN_COUNTS}
    keep = []
    for row, cell in zip(train, cells):  # file order
        limit = MULTICELEBA_TRAIN_COUNTS[cell]
        if limit is None or taken[cell] < limit:
            taken[cell] += 1
            keep.append(row)
    core = core.drop(index=train.difference(keep)).reset_index(drop=True)
    return _table(root, names, core, MULTICELEBA_TARGET, biases, "multiceleba",
                  f"MultiCelebA (CelebA's fixed train subsample) under {root}")


def _core(root: Path, target: str, biases: list[str]) -> pd.DataFrame:
    """id, path, split (0/1/2), y and one 0/1 column per bias, in the attribute file's row order."""
    attributes = _read_attributes(root, [target, *biases])
    partition = _read_partition(root)
    frame = attributes.merge(partition, on="image_id", how="left", validate="one_to_one")
    unsplit = frame["image_id"][frame["split"].isna()]
    if len(unsplit):
        raise GcctlError(f"{len(unsplit)} CelebA images have no split in the partition file (first: {unsplit.iloc[0]}); "
                         "use the partition file that comes with the attribute file")
    return pd.DataFrame({
        "id": frame["image_id"],
        "path": _image_prefix(root) + frame["image_id"],
        "split": frame["split"].astype("int64"),
        # CelebA marks presence with 1 and absence with -1.
        "y": (frame[target] > 0).astype("int64"),
        **{name: (frame[name] > 0).astype("int64") for name in biases},
    })


def _table(root: Path, names: NameOverrides, core: pd.DataFrame, target: str, biases: list[str], dataset: str,
           source: str) -> DatasetTable:
    return DatasetTable.build(
        core,
        root=root,
        dataset=dataset,
        class_names=pick_names(names.classes or names.attributes.get(target), _binary_names(target), f"target {target}"),
        attributes={name: pick_names(names.attributes.get(name), _binary_names(name), f"bias {name}") for name in biases},
        source=source,
    )


def _binary_names(attribute: str) -> list[str]:
    return [f"not_{attribute}", attribute]


def _read_attributes(root: Path, wanted: list[str]) -> pd.DataFrame:
    """image_id and the `wanted` attribute columns, in the file's row order."""
    if (root / ATTRIBUTES_TXT).is_file():
        path = root / ATTRIBUTES_TXT
        with path.open(errors="replace") as handle:  # a binary file fails in read_csv with its name
            handle.readline()
            available = handle.readline().split()
        _check_names(wanted, available, path)
        # sep=r"\s+" runs pandas' fast C parser and absorbs the runs of spaces that align the columns.
        return read_csv(path, sep=r"\s+", skiprows=2, header=None, names=["image_id", *available],
                        usecols=["image_id", *wanted], dtype={"image_id": str})
    if (root / ATTRIBUTES_CSV).is_file():
        path = root / ATTRIBUTES_CSV
        header = read_csv(path, nrows=0)
        require_columns(header, ["image_id"], path)
        _check_names(wanted, [c for c in header.columns if c != "image_id"], path)
        return read_csv(path, usecols=["image_id", *wanted], dtype={"image_id": str})
    raise GcctlError(f"no CelebA attributes under {root}: expected {ATTRIBUTES_TXT} (official release) or "
                     f"{ATTRIBUTES_CSV} (Kaggle); pass the folder that holds one")


def _read_partition(root: Path) -> pd.DataFrame:
    """image_id and split (0/1/2)."""
    if (root / PARTITION_TXT).is_file():
        return read_csv(root / PARTITION_TXT, sep=r"\s+", header=None, names=["image_id", "split"],
                        dtype={"image_id": str})
    if (root / PARTITION_CSV).is_file():
        frame = read_csv(root / PARTITION_CSV, dtype={"image_id": str})
        require_columns(frame, ["image_id", "partition"], root / PARTITION_CSV)
        return frame.rename(columns={"partition": "split"})[["image_id", "split"]]
    raise GcctlError(f"no CelebA split file under {root}: expected {PARTITION_TXT} (official release) or "
                     f"{PARTITION_CSV} (Kaggle)")


def _check_names(wanted: list[str], available: list[str], path: Path) -> None:
    for name in wanted:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(available)}"
            raise GcctlError(f"unknown CelebA attribute '{name}' in {path.name}; {hint}")


def _image_prefix(root: Path) -> str:
    """Kaggle's archive nests the image folder in a folder of the same name."""
    nested = root / IMAGES / IMAGES
    return f"{IMAGES}/{IMAGES}/" if nested.is_dir() else f"{IMAGES}/"
