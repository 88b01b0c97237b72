"""What a pseudo-labelling strategy sees: train features with class labels, and validation features with the
group labels it may use (all of them, a seeded fraction, or a seeded noisy copy, for robustness checks).

Strategies predict each sample's *within-class* group index; the store's group vocabulary
(`gcctl.datasets.groups.GroupVocabulary`) turns it into a group id and name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gcctl.datasets.groups import GroupVocabulary
from gcctl.errors import GcctlError
from gcctl.store import FeatureStore, StoredRows, load_rows


@dataclass
class LabelingData:
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


def _val_subset(
    within: np.ndarray, y: np.ndarray, per_class: int, fraction: float, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the kept validation samples and their (possibly flipped) within-class groups.

    The cut keeps `fraction` of every (class, group) (at least one sample when the fraction is positive);
    the noise moves `noise` of the kept samples to another group of the same class, uniformly.
    """
    kept = []
    for label in np.unique(y):
        for w in np.unique(within[y == label]):
            members = np.flatnonzero((y == label) & (within == w))
            if fraction > 0:
                count = max(1, int(np.floor(fraction * len(members) + 0.5)))
                kept.append(rng.permutation(members)[:count])
    kept = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    labels = within[kept].copy()
    flipped = rng.permutation(len(kept))[: int(np.floor(noise * len(kept) + 0.5))]
    for i in flipped:
        others = [w for w in range(per_class) if w != labels[i]]
        labels[i] = rng.choice(others)
    return kept, labels


def load_labeling_data(
    store: FeatureStore,
    device: torch.device,
    *,
    val_fraction: float = 1.0,
    val_label_noise: float = 0.0,
    seed: int = 0,
    max_memory: int | None = None,
) -> LabelingData:
    """What a strategy sees. Features that do not fit `max_memory` bytes (None: no limit) stay in the store,
    read as the strategy indexes them (each class, or each half for erm-error, is then held at a time); the
    store must stay open while they are used."""
    if not 0.0 <= val_fraction <= 1.0:
        raise GcctlError(f"--val-fraction {val_fraction} must be between 0 (no validation groups) and 1 (all)")
    if not 0.0 <= val_label_noise < 1.0:
        raise GcctlError(f"--val-label-noise {val_label_noise} must be at least 0 and below 1")
    _require_groups_within_classes(store)
    vocabulary = store.vocabulary
    train = store.split_index("train")
    if len(train) == 0:
        raise GcctlError(f"{store.path} has no train split to label; check the dataset's split column")
    val = store.split_index("val")
    kept, val_within = _val_subset(vocabulary.within(store.group[val]), store.y[val], vocabulary.groups_per_class,
                                   val_fraction, val_label_noise, np.random.default_rng(seed))
    return LabelingData(
        train_features=load_rows(store, train, device, what=f"split 'train' of {store.path}", max_memory=max_memory,
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
    )
