"""What the feature-based methods train and evaluate on: splits of a feature store, with their group labels.

Train groups come from the store (true groups) or from a group file (the pseudo-labelling output); validation
and test always use the store's true groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gcctl.errors import GcctlError
from gcctl.metrics import compute_metrics
from gcctl.store import FeatureStore

_NAN_CHECK_ROWS = 65536


@dataclass
class Split:
    """One split's features in the STORED dtype (float16 stays float16) on the training device."""

    features: torch.Tensor
    y: torch.Tensor
    group: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.features[index], self.y[index], self.group[index])


@dataclass
class GroupVocabulary:
    """What the metrics need besides predictions: the true groups, the classes and the train proportions."""

    group_names: list[str]
    num_classes: int
    train_group_counts: np.ndarray

    @classmethod
    def of(cls, store: FeatureStore) -> "GroupVocabulary":
        train_groups = store.group[store.split_index("train")]
        counts = np.bincount(train_groups, minlength=len(store.group_names))
        return cls(list(store.group_names), len(store.class_names), counts)

    def metrics(self, pred: np.ndarray, split: Split) -> dict:
        return compute_metrics(
            pred,
            split.y.cpu().numpy(),
            split.group.cpu().numpy(),
            group_names=self.group_names,
            num_classes=self.num_classes,
            train_group_counts=self.train_group_counts,
        )


@dataclass
class TrainingData:
    train: Split  # groups: true, or from the group file
    val: Split  # true groups
    class_names: list[str]
    train_group_names: list[str]  # names of train.group's values
    vocabulary: GroupVocabulary  # true groups, for validation metrics
    provenance: dict


def check_split_groups(store: FeatureStore, split: str) -> None:
    """Every group present in the store must have samples in `split`: an empty group has no accuracy."""
    in_split = store.group[store.split_index(split)]
    for index in np.unique(store.group):
        if not np.any(in_split == index):
            raise GcctlError(
                f"split '{split}' of {store.path} has no sample of group '{store.group_names[index]}'; "
                "every group needs samples in train, val and test: rebuild the store with more data"
            )


def load_split(store: FeatureStore, split: str, device: torch.device, group: np.ndarray | None = None) -> Split:
    """Features, labels and groups (the store's, unless given) of one split; refuses NaN or infinite features."""
    index = store.split_index(split)
    features = store.load_features(index)
    for start in range(0, len(features), _NAN_CHECK_ROWS):
        if not np.isfinite(features[start : start + _NAN_CHECK_ROWS]).all():
            raise GcctlError(f"split '{split}' of {store.path} has NaN or infinite features; extract the store again")
    group = store.group[index] if group is None else group
    return Split(
        torch.from_numpy(features).to(device),
        torch.from_numpy(store.y[index].astype(np.int64)).to(device),
        torch.from_numpy(np.array(group, dtype=np.int64)).to(device),  # a copy: pandas arrays may be read-only
    )


def read_group_file(path: str | Path, train_ids: np.ndarray, store_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Group indices aligned with `train_ids` and the group names, from a Parquet file with columns `id` and `group`.

    Every train id needs exactly one row; rows of the store's other ids (val/test) are ignored, since
    evaluation uses true groups. Group values may be integers or names; they are numbered in sorted order.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise GcctlError(f"group file {path} not found; create it with `gcctl pseudo-label` or drop --groups")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a non-Parquet file
        raise GcctlError(f"group file {path} is not a readable Parquet file ({type(error).__name__})") from None
    missing = {"id", "group"} - set(frame.columns)
    if missing:
        raise GcctlError(f"group file {path} lacks column(s) {sorted(missing)}; it needs id and group")
    if frame["group"].isna().any():
        raise GcctlError(f"group file {path} has rows without a group; label every train id")
    ids = pd.Index(frame["id"].astype(str))
    if ids.has_duplicates:
        raise GcctlError(f"group file {path} lists id '{ids[ids.duplicated()][0]}' twice; give one group per id")
    foreign = ~ids.isin(store_ids)
    if foreign.any():
        raise GcctlError(f"group file {path} has {int(foreign.sum())} id(s) not in the feature store, e.g. '{ids[foreign][0]}'; it was made for another store")
    absent = ~pd.Index(train_ids).isin(ids)
    if absent.any():
        raise GcctlError(f"group file {path} has no group for {int(absent.sum())} train id(s), e.g. '{train_ids[absent][0]}'; label the whole train split")
    codes, values = pd.factorize(frame["group"], sort=True)
    return pd.Series(codes, index=ids).loc[train_ids].to_numpy(), [str(value) for value in values]


def load_training_data(store: FeatureStore, device: torch.device, groups_path: str | Path | None = None) -> TrainingData:
    for split in ("train", "val"):
        check_split_groups(store, split)
    train_groups, train_group_names = None, list(store.group_names)
    if groups_path is not None:
        train_groups, train_group_names = read_group_file(groups_path, store.ids[store.split_index("train")], store.ids)
    return TrainingData(
        train=load_split(store, "train", device, train_groups),
        val=load_split(store, "val", device),
        class_names=list(store.class_names),
        train_group_names=train_group_names,
        vocabulary=GroupVocabulary.of(store),
        provenance=dict(store.provenance),
    )
