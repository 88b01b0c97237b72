"""What of a store is held in memory: the memory budget (`--max-memory`) and `StoredRows`, a split larger than
the budget left in the file, indexed like the tensor it replaces and read a storage chunk at a time, so
training on it gives the same numbers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import gcctl.store.format as store_format
from gcctl.errors import GcctlError
from gcctl.store.format import FeatureStore

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# Without --max-memory a split is kept in memory when it fits this fraction of the memory available at start.
DEFAULT_MEMORY_FRACTION = 0.5


def memory_budget(text: str | None) -> int:
    """Bytes from a size such as `2G`, `512M`, `1.5G` or `1000000`; None: half the memory available now."""
    if text is None:
        return int(DEFAULT_MEMORY_FRACTION * _available_memory())
    number, unit = text.strip().upper().removesuffix("B").removesuffix("I"), ""
    if number[-1:] in ("K", "M", "G", "T"):
        number, unit = number[:-1], number[-1]
    try:
        size = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        size = -1
    if not size > 0:
        raise GcctlError(f"--max-memory '{text}' is not a size; give bytes or a size like 512M or 2G")
    return int(size)


def _available_memory() -> int:
    """MemAvailable of /proc/meminfo (free plus reclaimable cache); free pages where it is missing."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory_budget(budget: int, batch_rows: int, embed_dim: int) -> None:
    """A budget must hold one batch: its rows as read and as float32 (8 bytes per value at most)."""
    needed = batch_rows * embed_dim * 8
    if budget < needed:
        raise GcctlError(f"--max-memory {budget} bytes is too small for one batch of {batch_rows} rows x {embed_dim} "
                         f"features ({needed} bytes); raise --max-memory to at least {_size_text(needed)}"
                         " or lower --batch-size")


def _size_text(size: int) -> str:
    return f"{-(-size // (1 << 20))}M"


def fits_in_memory(store: FeatureStore, index: np.ndarray, budget: int | None, itemsize: int | None = None) -> bool:
    """Whether rows `index` of the store's features, `itemsize` bytes a value (default: the stored dtype's),
    fit `budget` bytes (None: no limit)."""
    return budget is None or len(index) * store.embed_dim * (itemsize or store.dtype.itemsize) <= budget


class StoredRows:
    """Rows `index` of a store's features, read from the file when asked for: a split kept out of memory.

    Indexed like the tensor it stands for (`rows[i:j]`, `rows[positions]`, `rows[mask]`), each answer a tensor
    on `device` holding exactly the values the in-memory tensor would (in the stored dtype, then passed through
    `convert` when given: what the in-memory path applies to the whole tensor, applied row-wise), so code
    written for the tensor runs unchanged on it. The store must stay open while it is used.
    """

    def __init__(self, store: FeatureStore, index: np.ndarray, device, convert: Callable | None = None):
        self.store, self.index, self.device, self.convert = store, np.asarray(index, dtype=np.int64), device, convert
        self.shape = (len(self.index), store.embed_dim)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        import torch

        if isinstance(key, slice):
            wanted = self.index[key]
        else:
            positions = key.cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
            wanted = self.index[np.flatnonzero(positions) if positions.dtype == bool else positions]
        rows, inverse = np.unique(wanted, return_inverse=True)  # h5py reads increasing rows; repeats once
        tensor = torch.from_numpy(self.store.read_rows(rows)[inverse.reshape(-1)]).to(self.device)
        return tensor if self.convert is None else self.convert(tensor)

    def subset(self, positions) -> "StoredRows":
        positions = positions.cpu().numpy() if hasattr(positions, "cpu") else np.asarray(positions)
        return StoredRows(self.store, self.index[positions], self.device, self.convert)

    def mapped(self, convert: Callable) -> "StoredRows":
        """The same rows, each answer passed through `convert` after this one's own conversion."""
        inner = self.convert
        return StoredRows(self.store, self.index, self.device, convert if inner is None else lambda t: convert(inner(t)))

    def blocks(self, rows: int | None = None):
        """(start, tensor of `rows` rows from start; default `BLOCK_ROWS`) over every row, in order."""
        rows = rows or store_format.BLOCK_ROWS
        for start in range(0, len(self), rows):
            yield start, self[start : start + rows]


def load_rows(store: FeatureStore, index: np.ndarray, device, *, what: str, max_memory: int | None = None,
              float32: bool = False) -> "torch.Tensor | StoredRows":
    """Rows `index` of the store's features on `device`, refused if any is NaN or infinite (`what` names them in
    the message, e.g. "split 'val' of PATH"). Held in memory when they fit `max_memory` bytes (None: always), else
    left in the store as `StoredRows`. In the stored dtype, or converted to float32 a block at a time (`float32`),
    so a float16 store is never doubled whole."""
    convert = (lambda features: features.float()) if float32 else None
    if not fits_in_memory(store, index, max_memory, itemsize=4 if float32 else None):
        rows = StoredRows(store, index, device, convert=convert)
        for _, block in rows.blocks():
            _check_finite(block, what)
        return rows
    dtype = torch.float32 if float32 else torch.from_numpy(np.zeros(0, store.dtype)).dtype
    out = torch.empty(len(index), store.embed_dim, dtype=dtype, device=device)
    for start in range(0, len(index), store_format.BLOCK_ROWS):
        block = torch.from_numpy(store.load_features(index[start : start + store_format.BLOCK_ROWS])).to(device)
        out[start : start + len(block)] = _check_finite(block if convert is None else convert(block), what)
    return out


def _check_finite(block: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(block).all():
        raise GcctlError(f"{what} has NaN or infinite features; extract the store again")
    return block
