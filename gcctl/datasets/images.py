"""The torch Dataset over a canonical table: images in, row indices alongside so outputs map back to rows."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from gcctl.datasets.table import DatasetTable
from gcctl.datasets.tar_members import open_image_source
from gcctl.errors import GcctlError
from gcctl.runtime import worker_context

# Integer grey levels beyond 8 bits: Pillow opens 16-bit PNG/TIFF/PNM as I;16* (older versions: I).
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("LA", "PA", "RGBA", "RGBa")
_BACKGROUND = (255, 255, 255)  # what transparent pixels are flattened onto, as a page or viewer shows them


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB that looks like `image`, whatever its mode.

    Pillow's own `convert("RGB")` clips wider values to 0..255, so a 16-bit image turns almost all white;
    here 16-bit levels are scaled down instead (I is read as 16-bit, what older Pillow opened 16-bit PNGs as),
    float (F) images in [0, 1] are scaled up (otherwise read as 0..255, like Pillow), and transparency is
    flattened onto white rather than dropped (dropping it reveals whatever colour transparent pixels hold).
    """
    if image.mode in _WIDE_INTEGER_MODES:
        levels = np.asarray(image).astype(np.float64) / 257  # 65535 / 257 = 255 exactly
        image = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.size and values.min() >= 0 and values.max() <= 1:
            values = values * 255
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        flat = Image.new("RGBA", image.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(flat, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


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
        return self.transform(read_rgb(self.paths[row])), row


class EncodedImageDataset(ImageDataset):
    """`(the image file's bytes as a uint8 tensor, row index)`: what a loader's workers hand over when the batch
    is decoded where it lands (`decode_batch`); nothing but CPU memory crosses the process boundary."""

    def __init__(self, table: DatasetTable, indices: Sequence[int] | None = None):
        super().__init__(table, transform=None, indices=indices)

    def __getitem__(self, position: int):
        row = self.indices[position]
        path = self.paths[row]
        try:
            source = open_image_source(path)
            data = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
        except OSError as error:
            raise unreadable_image(path, error.strerror or str(error)) from None
        if not data:  # torch.frombuffer refuses an empty buffer; PIL names the empty file when it is decoded
            return torch.empty(0, dtype=torch.uint8), row
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), row


def encoded_batch(items: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """EncodedImageDataset's batches: the files' bytes stay a list (every file has its own length)."""
    return [data for data, _ in items], torch.tensor([row for _, row in items])


def read_rgb(path: str, data: bytes | None = None) -> Image.Image:
    """The image at `path` (a file or an archive member; `data`: its bytes, when already read) as 8-bit RGB
    (`to_rgb`), or one line naming the file."""
    source = path
    try:
        source = io.BytesIO(data) if data is not None else open_image_source(path)
        with Image.open(source) as image:
            return to_rgb(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        reason = str(error).replace(f" {source!r}", "")  # Pillow names an in-memory file by its repr
        raise unreadable_image(path, reason) from None


def unreadable_image(path: str, reason: str) -> GcctlError:
    return GcctlError(f"cannot read image {path}: {reason}")


def image_loader(dataset: ImageDataset, *, workers: int, device=None, **batching) -> DataLoader:
    """The one way gcctl batches images: `workers` decoding processes started CUDA-safely (`worker_context`),
    pinned host memory when decoded batches go to a CUDA device; `batching` is DataLoader's batch_size or
    batch_sampler. An EncodedImageDataset's batches are lists of files' bytes, which its decoder reads on the CPU."""
    encoded = isinstance(dataset, EncodedImageDataset)
    return DataLoader(dataset, num_workers=workers, multiprocessing_context=worker_context(workers),
                      pin_memory=not encoded and device is not None and device.type == "cuda",
                      collate_fn=encoded_batch if encoded else None, **batching)
