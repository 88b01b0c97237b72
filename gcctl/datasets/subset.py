"""A dataset whose classes are a subset of a larger label space, and the logits restricted to that subset.

ImageNet-R and ImageNet-A label 200 of ImageNet's 1,000 classes. As is standard for them, a classifier over
all 1,000 (a 1000-way head, or the text features of every ImageNet class name) is scored by keeping only the
200 columns of its logits, so it can never predict a class the dataset does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from gcctl.errors import GcctlError


@dataclass(frozen=True)
class ClassSubset:
    """Where each of a table's classes sits in a larger label space (`space`, of `space_size` classes)."""

    space: str
    space_size: int
    indices: tuple[int, ...]  # the space's index of the table's class 0, 1, 2, ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", tuple(int(index) for index in self.indices))
        if any(not 0 <= index < self.space_size for index in self.indices) or len(set(self.indices)) != len(self.indices):
            raise ValueError(f"subset indices must be distinct and in 0..{self.space_size - 1}")

    def restrict(self, logits):
        """(..., space_size) logits, numpy or torch, to (..., len(indices)): column i scores the table's class i."""
        if logits.shape[-1] != self.space_size:
            raise GcctlError(f"logits over {logits.shape[-1]} classes cannot be restricted to a subset of {self.space}'s "
                             f"{self.space_size}; score with a classifier over all {self.space} classes")
        return logits[..., list(self.indices)]

    def to_dict(self) -> dict:
        return {"space": self.space, "space_size": self.space_size, "indices": list(self.indices)}

    @classmethod
    def from_dict(cls, described: Mapping | None, source: str) -> ClassSubset | None:
        if described is None:
            return None
        try:
            return cls(described["space"], int(described["space_size"]), tuple(described["indices"]))
        except (KeyError, TypeError, ValueError) as error:
            raise GcctlError(f"{source} records no valid class subset ({error}); write it again with gcctl") from None
