"""The group vocabulary: the one owner of how (class, attribute values) become group ids and names.

Groups are numbered class-major in mixed radix: the class is the most significant digit, then each attribute
in order, with as many values as it has names. A group's id is therefore `class · G + within`, where G is the
number of groups per class and `within` the mixed-radix index of the attribute values inside the class; its
name joins the class's and the values' names with "/" (`waterbird/water`). Without attributes every class is
one group, named after the class.

The vocabulary also carries the training counts (images per group in the train split, the proportions that
`acc_adj_avg` weighs by) and, where the dataset says how its attribute values read in a caption, one prompt
template per attribute (`{value}`, optionally `{class}`: "a photo of a {value} {class}." for a colour), which
text methods take as their default. It travels as a plain dict: in the table's Parquet metadata, the feature store's HDF5
attributes, group files and run configs.
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np

from gcctl.errors import GcctlError

GROUP_FILE_METADATA_KEY = b"gcctl.pseudolabel"  # where a group file (pseudo-labels) records its vocabulary


class GroupVocabulary:
    """Classes and attribute values (names in order), and optionally the train images per group."""

    def __init__(self, class_names: Sequence[str], attributes: Mapping[str, Sequence[str]] | None = None,
                 train_counts: Sequence[int] | np.ndarray | None = None, attribute_prompts: Mapping[str, str] | None = None):
        self.class_names = [str(name) for name in class_names]
        self.attributes = {str(name): [str(value) for value in values] for name, values in (attributes or {}).items()}
        if not self.class_names or any(not values for values in self.attributes.values()):
            raise ValueError(f"a group vocabulary needs at least one class and one value per attribute; got "
                             f"{self.class_names}, {self.attributes}")
        self.train_counts = None if train_counts is None else np.asarray(train_counts, dtype=np.int64)
        if self.train_counts is not None and self.train_counts.shape != (self.n_groups,):
            raise ValueError(f"{len(self.train_counts)} training counts for {self.n_groups} groups")
        self.names = ["/".join(parts) for parts in itertools.product(self.class_names, *self.attributes.values())]
        self.attribute_prompts = {str(name): str(template) for name, template in (attribute_prompts or {}).items()}
        stray = sorted(set(self.attribute_prompts) - set(self.attributes))
        if stray or any("{value}" not in template for template in self.attribute_prompts.values()):
            raise ValueError(f"attribute prompts must be templates with {{value}} for attributes of {list(self.attributes)}; "
                             f"got {self.attribute_prompts}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def groups_per_class(self) -> int:
        return math.prod(len(values) for values in self.attributes.values())

    @property
    def n_groups(self) -> int:
        return self.num_classes * self.groups_per_class

    def within_index(self, attribute_codes: Mapping[str, np.ndarray]) -> np.ndarray:
        """The within-class index of every sample from its attribute value codes (one array per attribute)."""
        missing = [name for name in self.attributes if name not in attribute_codes]
        if missing:
            raise ValueError(f"no codes for attribute(s) {missing}")
        within = np.zeros(len(next(iter(attribute_codes.values()))) if attribute_codes else 0, dtype=np.int64)
        for name, values in self.attributes.items():
            within = within * len(values) + np.asarray(attribute_codes[name], dtype=np.int64)
        return within

    def encode(self, y: np.ndarray, attribute_codes: Mapping[str, np.ndarray]) -> np.ndarray:
        """Group ids of samples with classes `y` and attribute value codes `attribute_codes`."""
        y = np.asarray(y, dtype=np.int64)
        within = self.within_index(attribute_codes) if self.attributes else np.zeros(len(y), dtype=np.int64)
        return self.group_of(y, within)

    def decode(self, group: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The classes and attribute value codes of group ids: the inverse of `encode`."""
        within = self.within(group)
        codes = {}
        for name, values in reversed(self.attributes.items()):
            within, codes[name] = np.divmod(within, len(values))
        return self.class_of(group), {name: codes[name] for name in self.attributes}

    def group_of(self, y: np.ndarray, within: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.int64) * self.groups_per_class + np.asarray(within, dtype=np.int64)

    def class_of(self, group: np.ndarray) -> np.ndarray:
        return np.asarray(group, dtype=np.int64) // self.groups_per_class

    def within(self, group: np.ndarray) -> np.ndarray:
        return np.asarray(group, dtype=np.int64) % self.groups_per_class

    def ids_of(self, names: Sequence[str]) -> np.ndarray:
        """Group ids of group names; -1 for a name outside the vocabulary."""
        index = {name: i for i, name in enumerate(self.names)}
        return np.array([index.get(str(name), -1) for name in names], dtype=np.int64)

    def inconsistent(self, y: np.ndarray, group: np.ndarray) -> np.ndarray:
        """Mask of the samples whose group id is outside the vocabulary or belongs to another class than `y`."""
        group = np.asarray(group, dtype=np.int64)
        return (group < 0) | (group >= self.n_groups) | (self.class_of(group) != np.asarray(y))

    def minority(self, counts: np.ndarray) -> np.ndarray:
        """Mask of the minority groups: those with samples but fewer than the largest group of their class
        (`counts`: samples per group id)."""
        counts = np.asarray(counts, dtype=np.int64).reshape(self.num_classes, self.groups_per_class)
        return ((counts > 0) & (counts < counts.max(axis=1, keepdims=True))).ravel()

    def counted(self, train_groups: np.ndarray) -> GroupVocabulary:
        """The same vocabulary with training counts taken from the group ids of the train split."""
        counts = np.bincount(np.asarray(train_groups, dtype=np.int64), minlength=self.n_groups)
        return GroupVocabulary(self.class_names, self.attributes, counts, self.attribute_prompts)

    def same_groups(self, other: GroupVocabulary) -> bool:
        """Whether both number the same groups the same way (training counts aside)."""
        return self.class_names == other.class_names and self.attributes == other.attributes

    def to_dict(self) -> dict:
        counts = None if self.train_counts is None else self.train_counts.tolist()
        prompts = {"attribute_prompts": self.attribute_prompts} if self.attribute_prompts else {}
        return {"class_names": self.class_names, "attributes": self.attributes, "train_counts": counts, **prompts}

    @classmethod
    def from_dict(cls, described: Mapping, source: str) -> GroupVocabulary:
        """The vocabulary `to_dict` wrote; `source` names where it was read, for the error message."""
        try:
            return cls(described["class_names"], described.get("attributes", {}), described.get("train_counts"),
                       described.get("attribute_prompts"))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise GcctlError(f"{source} records no valid group vocabulary ({error}); write it again with gcctl") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroupVocabulary):
            return NotImplemented
        counts, other_counts = self.train_counts, other.train_counts
        same_counts = (counts is None) == (other_counts is None) and (counts is None or np.array_equal(counts, other_counts))
        return self.same_groups(other) and same_counts and self.attribute_prompts == other.attribute_prompts

    def __repr__(self) -> str:
        return f"GroupVocabulary({self.class_names}, {self.attributes}, train_counts={self.to_dict()['train_counts']})"


def check_val_fraction(fraction: float, *, budget: bool = False) -> None:
    """The share of validation group labels kept: pseudo-labelling's may be 0 (none), a training run's budget
    (`budget`) not, since the run reads the groups it keeps."""
    if budget and not 0.0 < fraction <= 1.0:
        raise GcctlError(f"--val-fraction {fraction} is outside (0, 1]: the share of each validation group whose "
                         "labels the run has (1: all)")
    if not 0.0 <= fraction <= 1.0:
        raise GcctlError(f"--val-fraction {fraction} must be between 0 (no validation groups) and 1 (all)")


def labelled_subset(
    within: np.ndarray, y: np.ndarray, per_class: int, fraction: float, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the validation samples whose group labels are kept, and their (possibly flipped) within-class
    groups: the one rule of a validation-label budget (`--val-fraction` of pseudo-label and train).

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
