"""What the feature-based methods train and evaluate on: splits of a feature store, with their group labels.

Train and validation groups come from the store (true groups) or from group files (the pseudo-labelling
output, `--groups` and `--val-groups`); test always uses the store's true groups. Both are numbered and named by the store's group vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from gcctl.datasets.groups import GROUP_FILE_METADATA_KEY, GroupVocabulary, check_val_fraction, labelled_subset
from gcctl.errors import GcctlError
from gcctl.metrics import compute_metrics
from gcctl.store import FeatureStore, StoredRows, load_rows

Features = torch.Tensor | StoredRows  # indexed alike: `features[i:j]`, `features[index]` give tensors


@dataclass
class Split:
    """One split's features in the STORED dtype (float16 stays float16) on the training device: a tensor, or
    the rows of the store read on demand when the split does not fit the memory budget."""

    features: Features
    y: torch.Tensor
    group: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> "Split":
        features = self.features.subset(index) if isinstance(self.features, StoredRows) else self.features[index]
        return Split(features, self.y[index], self.group[index])


def feature_blocks(features: Features):
    """(start, block) over every row as float32: the tensor whole in one block, stored rows a block at a time,
    so a computation written over blocks keeps the in-memory path's numbers."""
    blocks = features.blocks() if isinstance(features, StoredRows) else [(0, features)]
    for start, block in blocks:
        yield start, block.float()


def map_features(features: Features, convert) -> Features:
    """`convert` (row-wise) applied to every row: at once to a tensor, to stored rows as they are read."""
    return features.mapped(convert) if isinstance(features, StoredRows) else convert(features)


def split_metrics(pred: np.ndarray, split: Split, vocabulary: GroupVocabulary) -> dict:
    """Every metric of `gcctl.metrics` for predictions on `split`, its groups numbered by `vocabulary`."""
    return compute_metrics(pred, split.y.cpu().numpy(), split.group.cpu().numpy(), vocabulary)


@dataclass
class TrainingData:
    train: Split  # groups: true, or from the group file (in the same vocabulary)
    val: Split  # groups: true, or from the validation group file (`--val-groups`)
    vocabulary: GroupVocabulary  # the store's: numbers and names both splits' groups; true training counts
    provenance: dict
    # Whose true group labels the train groups stand for: the store's own (train), or what the group file's
    # strategy read (val for val-probe, none for zeroshot-attr; train for a file gcctl did not write).
    train_group_splits: tuple[str, ...] = ("train",)
    val_group_splits: tuple[str, ...] = ("val",)  # likewise for the validation groups
    # Whether the validation group file named some class's groups by size alone, so that a group's name does not
    # say which spurious value it shows (kmeans or erm-error without validation groups; TIE refuses them).
    val_groups_named_by_size: bool = False

    @property
    def class_names(self) -> list[str]:
        return self.vocabulary.class_names

    def with_minority_cut(self, per_group: int | None, seed: int) -> "TrainingData":
        """The same data with each minority train group cut to at most `per_group` samples (None: unchanged)."""
        if per_group is None:
            return self
        return replace(self, train=cut_minority_groups(self.train, self.vocabulary, per_group, seed))


def cut_minority_groups(split: Split, vocabulary: GroupVocabulary, per_group: int, seed: int) -> Split:
    """`split` with each minority group (`GroupVocabulary.minority`, by the split's own groups) cut to at most
    `per_group` samples; majority groups stay whole. The few-sample regime GroupCoOp's premise is about.

    The kept samples are the first of one permutation per group drawn from `seed`, so every method trained with
    that seed sees the same samples, and a smaller cut keeps a subset of a larger one's."""
    y, group = split.y.cpu().numpy(), split.group.cpu().numpy()
    class_sizes = np.bincount(y, minlength=vocabulary.num_classes)
    if per_group < 1 or per_group > class_sizes.min():
        smallest = vocabulary.class_names[int(class_sizes.argmin())]
        raise GcctlError(f"--minority-per-group {per_group} is outside 1..{class_sizes.min()} (class '{smallest}' has "
                         f"{class_sizes.min()} training images); give a count in that range")
    rng = np.random.default_rng(seed)
    keep = np.ones(len(group), dtype=bool)
    for minority in np.flatnonzero(vocabulary.minority(np.bincount(group, minlength=vocabulary.n_groups))):
        members = rng.permutation(np.flatnonzero(group == minority))
        keep[members[per_group:]] = False
    return split.subset(torch.from_numpy(np.flatnonzero(keep)).to(split.y.device))


def check_split_groups(store: FeatureStore, split: str) -> None:
    """Every group present in the store must have samples in `split`: an empty group has no accuracy."""
    in_split = store.group[store.split_index(split)]
    for index in np.unique(store.group):
        if not np.any(in_split == index):
            raise GcctlError(
                f"split '{split}' of {store.path} has no sample of group '{store.vocabulary.names[index]}'; "
                "every group needs samples in train, val and test: rebuild the store with more data"
            )


def load_split(store: FeatureStore, split: str, device: torch.device, group: np.ndarray | None = None,
               max_memory: int | None = None) -> Split:
    """Features, labels and groups (the store's, unless given) of one split; refuses NaN or infinite features.

    The features are loaded when they fit `max_memory` bytes (always when None), else read from the store on
    demand, which must then stay open while the split is used.
    """
    index = store.split_index(split)
    features = load_rows(store, index, device, what=f"split '{split}' of {store.path}", max_memory=max_memory)
    group = store.group[index] if group is None else group
    return Split(
        features,
        torch.from_numpy(store.y[index].astype(np.int64)).to(device),
        torch.from_numpy(np.array(group, dtype=np.int64)).to(device),  # a copy: pandas arrays may be read-only
    )


def _group_option(split: str) -> str:
    """The `gcctl train` option that passes a group file for `split`."""
    return "--groups" if split == "train" else f"--{split}-groups"


def _read_group_frame(path: Path, split: str):
    """The group file's rows and what it records (an empty dict for a file gcctl did not write)."""
    import pandas as pd
    import pyarrow.parquet as pq

    if not path.is_file():
        raise GcctlError(f"group file {path} not found; create it with `gcctl pseudo-label` or drop {_group_option(split)}")
    try:
        arrow = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a non-Parquet file
        raise GcctlError(f"group file {path} is not a readable Parquet file ({type(error).__name__})") from None
    described = (arrow.schema.metadata or {}).get(GROUP_FILE_METADATA_KEY)
    recorded = {} if described is None else json.loads(described)
    frame: pd.DataFrame = arrow.to_pandas()
    missing = {"id", "group"} - set(frame.columns)
    if missing:
        raise GcctlError(f"group file {path} lacks column(s) {sorted(missing)}; it needs id and group")
    if frame["group"].isna().any():
        raise GcctlError(f"group file {path} has rows without a group; label every {split} id")
    return frame, recorded


def _group_ids(values, vocabulary: GroupVocabulary, path: Path) -> np.ndarray:
    """Group ids from the `group` column: ids of `vocabulary`, or its names (`waterbird/water`)."""
    import pandas as pd

    ids = values.to_numpy(dtype=np.int64) if pd.api.types.is_integer_dtype(values) else vocabulary.ids_of(values)
    unknown = (ids < 0) | (ids >= vocabulary.n_groups)
    if unknown.any():
        raise GcctlError(f"group file {path} has group '{values[unknown].iloc[0]}', not one of the store's groups "
                         f"({', '.join(vocabulary.names)}); give their names or ids 0..{vocabulary.n_groups - 1}")
    return ids


class GroupFile(NamedTuple):
    groups: np.ndarray  # the split's group ids, in the store's vocabulary and row order
    group_splits: tuple[str, ...]  # the splits whose true group labels the file's strategy read
    named_by_size: bool  # whether some class's groups were named by size alone (see TrainingData)


def read_group_file(path: str | Path, store: FeatureStore, split: str = "train") -> GroupFile:
    """The groups of the store's `split`, in its vocabulary, from a Parquet file with columns `id` and `group`.

    `group` holds the store's group ids or names. Every id of the split needs exactly one row, in a group of its
    class; rows of the store's other ids are ignored (test always keeps its true groups). A file gcctl wrote
    records its vocabulary, which must be the store's, the splits whose true groups its strategy read and whether
    it named groups by size; a file from elsewhere counts as the split's true groups, named by what they show.
    """
    import pandas as pd

    path = Path(path)
    frame, described = _read_group_frame(path, split)
    vocabulary = store.vocabulary
    recorded = GroupVocabulary.from_dict(described["vocabulary"], str(path)) if "vocabulary" in described else None
    if recorded is not None and not recorded.same_groups(vocabulary):
        raise GcctlError(f"group file {path} numbers other groups ({', '.join(recorded.names)}) than {store.path} "
                         f"({', '.join(vocabulary.names)}); pseudo-label this store")
    ids = pd.Index(frame["id"].astype(str))
    if ids.has_duplicates:
        raise GcctlError(f"group file {path} lists id '{ids[ids.duplicated()][0]}' twice; give one group per id")
    foreign = ~ids.isin(store.ids)
    if foreign.any():
        raise GcctlError(f"group file {path} has {int(foreign.sum())} id(s) not in the feature store, e.g. '{ids[foreign][0]}'; it was made for another store")
    rows = store.split_index(split)
    split_ids = store.ids[rows]
    absent = ~pd.Index(split_ids).isin(ids)
    if absent.any():
        hint = "" if split == "train" else f" (`gcctl pseudo-label --split {split}` labels it)"
        raise GcctlError(f"group file {path} has no group for {int(absent.sum())} {split} id(s), e.g. '{split_ids[absent][0]}'; "
                         f"label the whole {split} split{hint}")
    groups = pd.Series(_group_ids(frame["group"], vocabulary, path), index=ids).loc[split_ids].to_numpy()
    wrong = np.flatnonzero(vocabulary.inconsistent(store.y[rows], groups))
    if len(wrong):
        first = wrong[0]
        raise GcctlError(f"group file {path} puts {len(wrong)} {split} sample(s) in a group of another class, e.g. "
                         f"'{split_ids[first]}' (class {vocabulary.class_names[store.y[rows][first]]}) in "
                         f"'{vocabulary.names[groups[first]]}'; give every sample a group of its class")
    return GroupFile(groups, tuple(described.get("group_splits", (split,))), bool(described.get("named_by_size", False)))


def load_training_data(store: FeatureStore, device: torch.device, groups_path: str | Path | None = None,
                       max_memory: int | None = None, val_groups_path: str | Path | None = None,
                       val_fraction: float = 1.0, val_seed: int = 0) -> TrainingData:
    """Train and validation splits, their groups the store's or those of the group files; each kept in memory
    when it fits `max_memory` bytes (None: no limit), else read from the store on demand (see `load_split`).
    A `val_fraction` below 1 is a validation-label budget: the validation split is cut to that share of each of
    its groups (`labelled_subset`, seeded by `val_seed`: the samples `gcctl pseudo-label --val-fraction` keeps
    with the same seed), and everything the run reads of validation (selection, DFR, TIE) is that cut."""
    check_val_fraction(val_fraction, budget=True)
    for split in ("train", "val"):
        check_split_groups(store, split)
    train_file = GroupFile(None, ("train",), False) if groups_path is None else read_group_file(groups_path, store)
    val_file = GroupFile(None, ("val",), False) if val_groups_path is None else read_group_file(val_groups_path, store, "val")
    val = load_split(store, "val", device, val_file.groups, max_memory)
    if val_fraction < 1.0:
        vocabulary = store.vocabulary
        kept, _ = labelled_subset(vocabulary.within(val.group.cpu().numpy()), val.y.cpu().numpy(), vocabulary.groups_per_class,
                                  val_fraction, 0.0, np.random.default_rng(val_seed))
        val = val.subset(torch.from_numpy(kept).to(val.y.device))
    return TrainingData(
        train=load_split(store, "train", device, train_file.groups, max_memory),
        val=val,
        vocabulary=store.vocabulary,
        provenance=dict(store.provenance),
        train_group_splits=train_file.group_splits,
        val_group_splits=val_file.group_splits,
        val_groups_named_by_size=val_file.named_by_size,
    )
