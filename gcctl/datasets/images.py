"""The torch Dataset over a canonical table: images in, row indices alongside so outputs map back to rows."""

from __future__ import annotations

from typing import Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset

from gcctl.datasets.table import DatasetTable
from gcctl.errors import GcctlError


class ImageDataset(Dataset):
    """`(transform(RGB image), row index)` for the table's rows, or for `indices` of them in that order."""

    def __init__(self, table: DatasetTable, transform: Callable, indices: Sequence[int] | None = None):
        self.paths = [str(table.root / relative) for relative in table.frame["path"]]
        self.indices = list(range(len(self.paths))) if indices is None else [int(i) for i in indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        row = self.indices[position]
        path = self.paths[row]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise GcctlError(f"cannot read image {path}: {error}") from None
        return self.transform(rgb), row
