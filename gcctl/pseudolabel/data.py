"""What a pseudo-labelling strategy sees: train features with class labels, and validation features with the
group labels it may use (all of them, a seeded fraction, or a seeded noisy copy, for robustness checks).

Strategies predict each sample's *within-class* group index; the store's group vocabulary
(`gcctl.datasets.groups.GroupVocabulary`) turns it into a group id and name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gcctl.datasets.groups import GroupVocabulary, check_val_fraction, labelled_subset
from gcctl.errors import GcctlError
from gcctl.store import FeatureStore, StoredRows, load_rows


@dataclass
class LabelingData:
    # train_*: the split being labelled (train, or val under `--split val`, when no validation group is read)
    train_features: torch.Tensor | StoredRows  # float32 [N, D] on the device, or read from the store as indexed
    train_y: np.ndarray  # [N]
    train_ids: np.ndarray  # [N] str
    train_truth: np.ndarray  # [N] the store's train groups, used only by `oracle` and the agreement report
    val_features: torch.Tensor | StoredRows  # float32 [M, D]: the validation samples whose group labels are used
    val_y: np.ndarray  # [M]
    val_within: np.ndarray  # [M] their within-class group index (after the cut and the label noise)
    vocabulary: GroupVocabulary  # the store's
    provenance: dict
    device: torch.device
    seed: int
    # Under --split val: the train split's features and class labels, on which erm-error fits its ERM (the
    # shortcut it must learn lives in train; a group-balanced validation split has none).
    erm_features: torch.Tensor | StoredRows | None = None
    erm_y: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return self.vocabulary.num_classes

    @property
    def groups_per_class(self) -> int:
        return self.vocabulary.groups_per_class

    @property
    def class_names(self) -> list[str]:
        return self.vocabulary.class_names

    def has_val_groups(self, label: int) -> bool:
        """Whether the validation labels show at least two groups of class `label`."""
        return len(np.unique(self.val_within[self.val_y == label])) >= 2


def _require_groups_within_classes(store: FeatureStore) -> None:
    """A store with one group per class has nothing to infer."""
    if store.vocabulary.groups_per_class < 2:
        raise GcctlError(
            f"{store.path} has a single group per class (no spurious attribute): nothing to infer; "
            "extract a dataset with attributes (e.g. --bias or --attribute-column)"
        )


def load_labeling_data(
    store: FeatureStore,
    device: torch.device,
    *,
    val_fraction: float = 1.0,
    val_label_noise: float = 0.0,
    seed: int = 0,
    max_memory: int | None = None,
    split: str = "train",
    train_reference: bool = False,
) -> LabelingData:
    """What a strategy sees when it labels `split` (train, or val: then no validation group label is read).
    Features that do not fit `max_memory` bytes (None: no limit) stay in the store, read as the strategy indexes
    them (each class, or each half for erm-error, is then held at a time); the store must stay open while they
    are used. `train_reference` adds the train split's features and classes under `--split val` (erm-error's ERM).
    Under `--split val` the caller passes `val_fraction` 0: no validation group label is read."""
    check_val_fraction(val_fraction)
    if not 0.0 <= val_label_noise < 1.0:
        raise GcctlError(f"--val-label-noise {val_label_noise} must be at least 0 and below 1")
    _require_groups_within_classes(store)
    vocabulary = store.vocabulary
    train = store.split_index(split)
    if len(train) == 0:
        raise GcctlError(f"{store.path} has no {split} split to label; check the dataset's split column")
    val = store.split_index("val")
    kept, val_within = labelled_subset(vocabulary.within(store.group[val]), store.y[val], vocabulary.groups_per_class,
                                   val_fraction, val_label_noise, np.random.default_rng(seed))
    return LabelingData(
        train_features=load_rows(store, train, device, what=f"split '{split}' of {store.path}", max_memory=max_memory,
                                 float32=True),
        train_y=store.y[train].astype(np.int64),
        train_ids=np.asarray(store.ids[train]),
        train_truth=store.group[train].astype(np.int64),
        val_features=load_rows(store, val[kept], device, what=f"split 'val' of {store.path}", max_memory=max_memory,
                               float32=True),
        val_y=store.y[val[kept]].astype(np.int64),
        val_within=val_within.astype(np.int64),
        vocabulary=vocabulary,
        provenance=dict(store.provenance),
        device=device,
        seed=seed,
        **(_erm_split(store, device, max_memory) if split == "val" and train_reference else {}),
    )


def _erm_split(store: FeatureStore, device: torch.device, max_memory: int | None) -> dict:
    train = store.split_index("train")
    return {"erm_features": load_rows(store, train, device, what=f"split 'train' of {store.path}", max_memory=max_memory,
                                      float32=True),
            "erm_y": store.y[train].astype(np.int64)}
