"""The HDF5 feature store: the only module that reads or writes feature files.

One file holds every image of a dataset encoded once by a frozen image tower:

- datasets `features` [N, D] (float16 or float32), `y`, `group`, `split` (0 train, 1 val, 2 test), `id`,
  and one integer dataset per spurious attribute under `attributes/`;
- root attributes: the provenance (`model_ref`: the model reference, its weights path relative to the store's
  folder when inside the project; embed_dim, normalized, dataset fingerprint, gcctl version, creation time)
  and `group_vocabulary`, the dataset's `gcctl.datasets.groups.GroupVocabulary` (class and attribute names,
  training counts) that numbers `group`.

Extraction writes into `<out>.partial` and records after every batch how many rows are done, so a killed run
resumes where it stopped; the finished file appears by an atomic rename. Its last write before the rename is the
root attribute `complete`, which every reader requires: a store without it (cut short, or made before gcctl
marked finished stores) is refused with the advice to extract it again. One process at a time writes an --out
(`gcctl.runtime.output_lock`).

Under torchrun every process writes its part the same way, into `<out>.rank<r>-of-<n>`, and rank 0 then joins
the parts into `<out>`: written like a single process's store (same datasets and attributes but `created` and
`world_size`, the number of processes), renamed into place once, and the parts removed.

Reading: `FeatureStore` loads every small array on open and features on demand. A split larger than the memory
budget (`memory_budget`, `--max-memory`) stays in the file as `StoredRows`, indexed like the tensor it replaces
and read through `FeatureStore.read_rows` a storage chunk at a time, so training on it gives the same numbers.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import h5py
import numpy as np

from gcctl import __version__
from gcctl.datasets.groups import GroupVocabulary
from gcctl.datasets.tar_members import archive_starts
from gcctl.errors import GcctlError
from gcctl.runtime import (atomic_path, autocast, check_output, corrupt_file_error, cpu_budget, identity_differences,
                            in_background, output_lock, partial_path, refuse_directory, refuse_inside, resolve_device)

if TYPE_CHECKING:  # the store sits above models in the layering
    from gcctl.clip.factory import ClipBundle
    from gcctl.clip.reference import ModelRef
    from gcctl.datasets.table import DatasetTable
    from gcctl.world import World

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
FEATURE_DTYPES = {"float16": np.float16, "float32": np.float32}
# Attributes that describe how the model was applied to which data; with the model's identity they make an
# extraction's identity, on which the shards of one dataset must agree.
_EXTRACTION_KEYS = ("embed_dim", "normalized", "dataset", "dataset_fingerprint", "dtype")
VOCABULARY_KEY = "group_vocabulary"
# Set last, once every row is written: a reader trusts nothing else to tell a finished store from a cut-short one.
COMPLETE_KEY = "complete"
# The names stores recorded before the vocabulary did; still read, never written.
_OLD_NAME_KEYS = ("class_names", "group_names", "attribute_values")
_JSON_KEYS = (VOCABULARY_KEY, *_OLD_NAME_KEYS, "model_ref")
_READ_BLOCK_ROWS = 65536
# Reading a gap of this many unwanted rows costs about what one more read call does (512 float16 per row).
_GAP_ROWS = 32


@dataclass(frozen=True)
class Shard:
    """Part `index` of `count` contiguous parts of a dataset's rows (0-based): written by hand with `--shard i/n`,
    or one process's part under torchrun."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """Parse `i/n` with 0 ≤ i < n."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise GcctlError(f"--shard '{text}' is not of the form i/n, e.g. 0/4") from None
        if not 0 <= index < count:
            raise GcctlError(f"--shard '{text}': need 0 <= i < n, e.g. 0/4 … 3/4")
        return cls(index, count)

    def rows(self, n_rows: int, starts: Sequence[int] | None = None) -> range:
        """This part's rows; with `starts` (the first row of each unit, e.g. of each tar shard file) whole units
        are dealt out instead of rows, so no unit is read by two parts."""
        if starts is None:
            return range(self.index * n_rows // self.count, (self.index + 1) * n_rows // self.count)
        bounds = [*starts, n_rows]
        return range(bounds[self.index * len(starts) // self.count], bounds[(self.index + 1) * len(starts) // self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _encode_attr(value):
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


def _decode_attr(key: str, value):
    if isinstance(value, bytes):
        value = value.decode()
    if key in _JSON_KEYS and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _create_layout(
    handle: h5py.File,
    n_rows: int,
    embed_dim: int,
    dtype: str,
    y: np.ndarray,
    group: np.ndarray,
    split: np.ndarray,
    ids: Sequence[str],
    attributes: dict[str, np.ndarray],
) -> None:
    """Create every dataset; all but `features` are written whole, since they are small."""
    chunk_rows = max(1, min(n_rows, max(1, (1 << 20) // (embed_dim * 2))))
    chunks = (chunk_rows, embed_dim) if n_rows else None  # a part may be empty: fewer tar shards than processes
    handle.create_dataset("features", shape=(n_rows, embed_dim), dtype=FEATURE_DTYPES[dtype], chunks=chunks)
    handle.create_dataset("y", data=np.asarray(y, dtype=np.int64))
    handle.create_dataset("group", data=np.asarray(group, dtype=np.int64))
    handle.create_dataset("split", data=np.asarray(split, dtype=np.int8))
    handle.create_dataset("id", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
    attribute_group = handle.create_group("attributes")
    for name, values in attributes.items():
        attribute_group.create_dataset(name, data=np.asarray(values, dtype=np.int64))


def _set_attrs(handle: h5py.File, attrs: dict) -> None:
    for key, value in attrs.items():
        handle.attrs[key] = _encode_attr(value)


def write_store(
    path: str | os.PathLike,
    features: np.ndarray,
    y: np.ndarray,
    split: np.ndarray,
    ids: Sequence[str],
    attributes: dict[str, np.ndarray],
    *,
    vocabulary: GroupVocabulary,
    provenance: dict,
) -> Path:
    """Write a complete store from arrays in one go (used by merge, tests and benchmarks); `vocabulary`
    numbers the groups from `y` and the attribute codes and counts the train split's."""
    path = Path(path)
    features = np.asarray(features)
    dtype = "float16" if features.dtype == np.float16 else "float32"
    group = vocabulary.encode(y, attributes)
    vocabulary = vocabulary.counted(group[np.asarray(split) == SPLIT_CODES["train"]])
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        _create_layout(handle, len(features), features.shape[1], dtype, y, group, split, ids, attributes)
        handle["features"][...] = features.astype(FEATURE_DTYPES[dtype], copy=False)
        attrs = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "gcctl_version": __version__,
            **provenance,
            "embed_dim": int(features.shape[1]),
            "dtype": dtype,
            "n_rows": len(features),
            "rows_done": len(features),
            VOCABULARY_KEY: vocabulary.to_dict(),
        }
        _set_attrs(handle, attrs)
        handle.attrs[COMPLETE_KEY] = True
    return path


def _read_codes(dataset: h5py.Dataset, count: int) -> np.ndarray:
    """A per-row code array (classes, groups, attribute values; stored as int64) read into the narrowest signed
    type that holds codes 0..count-1: HDF5 converts as it reads, so no int64 copy of a million-row store's
    columns is ever made (they are what a store larger than memory keeps in memory besides its batches)."""
    narrowest = next(dtype for dtype in (np.int8, np.int16, np.int32, np.int64) if count <= np.iinfo(dtype).max)
    return dataset.astype(narrowest)[()]


class FeatureStore:
    """Read access to a finished store. Arrays other than `features` are loaded on open (they are small);
    features are read on demand in the stored dtype, so a float16 store is never copied whole to float32."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            hint = " (an extraction was interrupted: run it again to resume)" if partial_path(self.path).exists() else ""
            raise GcctlError(f"feature store {self.path} not found{hint}; create it with `gcctl extract`")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise GcctlError(f"{self.path} is not a readable HDF5 feature store ({error}); "
                             "if `gcctl extract` wrote it, it is damaged: run the extraction again") from None
        try:
            with self._damage_is_a_user_error():
                self._read_small_arrays()
        except GcctlError:
            self._file.close()
            raise

    def _read_small_arrays(self) -> None:
        missing = [name for name in ("features", "y", "group", "split", "id") if name not in self._file]
        if missing:
            raise GcctlError(f"{self.path} is not a gcctl feature store: datasets {missing} are missing")
        attrs = {key: _decode_attr(key, value) for key, value in self._file.attrs.items()}
        if attrs.get(COMPLETE_KEY) is not True:
            raise GcctlError(f"feature store {self.path} is incomplete (its writer was cut short, or an older gcctl "
                             "wrote it); rerun `gcctl extract` with --overwrite to write it again")
        skipped = (VOCABULARY_KEY, COMPLETE_KEY, *_OLD_NAME_KEYS)
        self.provenance = {key: value for key, value in attrs.items() if key not in skipped}
        recorded = self._recorded_vocabulary(attrs)
        self.y = _read_codes(self._file["y"], recorded.num_classes)
        self.group = _read_codes(self._file["group"], recorded.n_groups)
        self.split = self._file["split"][()]
        stored = self._file.get("attributes", {})
        self.attributes = {name: _read_codes(stored[name], len(recorded.attributes.get(name, ()))) for name in stored}
        self._check_shapes()
        self.vocabulary = self._checked_vocabulary(recorded, VOCABULARY_KEY in attrs)

    def _check_shapes(self) -> None:
        """Every per-row array as long as `features`, whose width is the recorded embed_dim."""
        shape = self._file["features"].shape
        if len(shape) != 2 or self.provenance.get("embed_dim", shape[-1]) != shape[-1]:
            raise GcctlError(f"feature store {self.path} holds features of shape {shape} but records embed_dim "
                             f"{self.provenance.get('embed_dim')}; rerun `gcctl extract` to write it again")
        lengths = {"y": len(self.y), "group": len(self.group), "split": len(self.split), "id": len(self._file["id"]),
                   **{f"attributes/{name}": len(values) for name, values in self.attributes.items()}}
        uneven = {name: length for name, length in lengths.items() if length != shape[0]}
        if uneven:
            listed = ", ".join(f"{name} {length}" for name, length in uneven.items())
            raise GcctlError(f"feature store {self.path} has {shape[0]} feature rows but {listed} values; "
                             "rerun `gcctl extract` to write it again")

    @contextlib.contextmanager
    def _damage_is_a_user_error(self):
        """h5py reports a damaged file with many exception types, raised when the damaged part is read."""
        try:
            yield
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as error:
            raise corrupt_file_error(self.path, error) from None

    def _recorded_vocabulary(self, attrs: dict) -> GroupVocabulary:
        """The recorded vocabulary, or one made of an older store's names (without training counts)."""
        if VOCABULARY_KEY in attrs:
            return GroupVocabulary.from_dict(attrs[VOCABULARY_KEY], str(self.path))
        described = {"class_names": attrs.get("class_names"), "attributes": attrs.get("attribute_values", {})}
        return GroupVocabulary.from_dict(described, str(self.path))

    def _checked_vocabulary(self, vocabulary: GroupVocabulary, counted: bool) -> GroupVocabulary:
        """`vocabulary` checked against `group`, with training counts taken from it when it records none."""
        if not counted:
            vocabulary = vocabulary.counted(self.group[self.split == SPLIT_CODES["train"]])
        stray = set(vocabulary.attributes) - set(self.attributes)
        if stray or np.any(vocabulary.encode(self.y, self.attributes) != self.group):
            raise GcctlError(f"the groups of {self.path} do not follow its classes and attributes "
                             f"({vocabulary.names}); extract the store again with gcctl")
        return vocabulary

    @property
    def class_names(self) -> list[str]:
        return self.vocabulary.class_names

    @cached_property
    def ids(self) -> np.ndarray:
        """Every row's id, read on first use: millions of Python strings are the largest thing a store holds
        besides its features, and training does not need them. Still readable once the store is closed."""
        with self._damage_is_a_user_error():
            if self._file:  # an h5py file is false once closed
                return self._file["id"].asstr()[()]
            with h5py.File(self.path, "r") as handle:
                return handle["id"].asstr()[()]

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.y)

    @property
    def embed_dim(self) -> int:
        return int(self._file["features"].shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self._file["features"].dtype

    def split_index(self, name: str) -> np.ndarray:
        if name not in SPLIT_CODES:
            raise GcctlError(f"unknown split '{name}'; choose one of {', '.join(SPLIT_CODES)}")
        return np.flatnonzero(self.split == SPLIT_CODES[name])

    def load_features(self, indices: Iterable[int] | None = None) -> np.ndarray:
        """Rows `indices` (in that order; all rows when None), in the stored dtype.

        Reads in contiguous blocks and gathers in memory: h5py's point selection is slow for many rows.
        """
        with self._damage_is_a_user_error():
            return self._read_features(indices)

    def _read_features(self, indices: Iterable[int] | None) -> np.ndarray:
        dataset = self._file["features"]
        if indices is None:
            return dataset[()]
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), dataset.shape[1]), dtype=dataset.dtype)
        if len(indices) == 0:
            return out
        order = np.argsort(indices, kind="stable")
        sorted_rows = indices[order]
        for start in range(int(sorted_rows[0]), int(sorted_rows[-1]) + 1, _READ_BLOCK_ROWS):
            stop = start + _READ_BLOCK_ROWS
            lo, hi = np.searchsorted(sorted_rows, [start, stop])
            if lo == hi:
                continue
            block = dataset[start : min(stop, int(sorted_rows[hi - 1]) + 1)]
            out[order[lo:hi]] = block[sorted_rows[lo:hi] - start]
        return out

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` (increasing, no repeats) in the stored dtype. Wanted rows less than `_GAP_ROWS` apart in
        one storage chunk are read as one slice, others one by one: a dense selection costs a read per chunk, a
        sparse one (a random batch of a large split) a small read per row, never the chunks around it."""
        with self._damage_is_a_user_error():
            dataset = self._file["features"]
            out = np.empty((len(rows), dataset.shape[1]), dtype=dataset.dtype)
            if len(rows) == 0:
                return out
            chunk_rows = dataset.chunks[0] if dataset.chunks else _READ_BLOCK_ROWS
            breaks = (np.diff(rows) > _GAP_ROWS) | (np.diff(rows // chunk_rows) != 0)
            starts = np.flatnonzero(np.concatenate([[True], breaks]))
            ends = np.append(starts[1:], len(rows))
            for lo, hi, first, last in zip(starts.tolist(), ends.tolist(), rows[starts].tolist(), rows[ends - 1].tolist()):
                block = dataset[first : last + 1]
                out[lo:hi] = block if hi - lo == last - first + 1 else block[rows[lo:hi] - first]
            return out

    def model_ref(self) -> "ModelRef":
        """The model the features were extracted with, its weights path anchored at the store's folder."""
        from gcctl.clip.reference import ModelRef

        if not isinstance(self.provenance.get("model_ref"), dict):
            raise GcctlError(f"{self.path} records no model reference (made by an older gcctl); extract it again")
        return ModelRef.from_dict(self.provenance["model_ref"], anchor=self.path.resolve().parent)

    def group_counts(self) -> dict[str, dict[str, int]]:
        """{group name: {split: count}} over the whole vocabulary."""
        counts = {}
        for index, name in enumerate(self.vocabulary.names):
            in_group = self.group == index
            counts[name] = {split: int(np.sum(in_group & (self.split == code))) for split, code in SPLIT_CODES.items()}
        return counts

    def summary(self) -> dict:
        """What `gcctl info` shows: shape, provenance and group counts."""
        return {
            "path": str(self.path),
            "rows": len(self),
            "embed_dim": self.embed_dim,
            "dtype": str(self.dtype),
            "provenance": self.provenance,
            "vocabulary": self.vocabulary.to_dict(),
            "group_counts": self.group_counts(),
        }


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
        """(start, tensor of `rows` rows from start; default `_READ_BLOCK_ROWS`) over every row, in order."""
        rows = rows or _READ_BLOCK_ROWS
        for start in range(0, len(self), rows):
            yield start, self[start : start + rows]


def _table_arrays(table: "DatasetTable", rows: range) -> dict:
    frame = table.frame.iloc[rows.start : rows.stop]
    return {
        "y": frame["y"].to_numpy(),
        "group": frame["group"].to_numpy(),
        "split": frame["split"].map(SPLIT_CODES).to_numpy(),
        "ids": frame["id"].astype(str).tolist(),
        "attributes": {name: frame[name].to_numpy() for name in table.attributes},
    }


def _extraction_attrs(table: "DatasetTable", bundle: "ClipBundle", dtype: str, normalize: bool, shard: Shard, folder: Path) -> dict:
    return {
        "model_ref": bundle.reference.recorded_for(folder).to_dict(),
        "embed_dim": int(bundle.provenance["embed_dim"]),
        "normalized": bool(normalize),
        "dataset": table.dataset,
        "dataset_fingerprint": table.fingerprint(),
        "dtype": dtype,
        "shard": str(shard),
    }


def _extraction_identity(provenance: dict, keys: Sequence[str] = _EXTRACTION_KEYS) -> dict:
    """The model's identity (not where its weights lie) and the `keys` of how it was applied."""
    from gcctl.clip.reference import ModelRef

    record = provenance.get("model_ref")
    model = ModelRef.from_dict(record).identity() if isinstance(record, dict) else None
    return {"model": model, **{key: provenance.get(key) for key in keys}}


def _read_attrs(handle: h5py.File) -> dict:
    return {key: _decode_attr(key, value) for key, value in handle.attrs.items()}


def _same_extraction(stored: dict, attrs: dict) -> bool:
    """Whether a file was written by the extraction `attrs` describes, rows included (its shard)."""
    keys = (*_EXTRACTION_KEYS, "shard")
    return _extraction_identity(stored, keys) == _extraction_identity(attrs, keys)


def _open_partial(tmp: Path, attrs: dict) -> h5py.File | None:
    """Reopen an interrupted extraction if it was made with the same identity; otherwise discard it."""
    if not tmp.exists():
        return None
    try:
        handle = h5py.File(tmp, "r+")
    except OSError:  # killed in the middle of an HDF5 metadata write: start over
        tmp.unlink()
        return None
    if not _same_extraction(_read_attrs(handle), attrs):
        handle.close()
        tmp.unlink()
        return None
    return handle


def _create_partial(tmp: Path, table: "DatasetTable", rows: range, identity: dict, world_size: int = 1) -> h5py.File:
    """A fresh `.partial` store with every dataset but the features filled in and no row done; `world_size`
    records how many processes encode the rows."""
    handle = h5py.File(tmp, "w")
    _create_layout(handle, len(rows), identity["embed_dim"], identity["dtype"], **_table_arrays(table, rows))
    _set_attrs(
        handle,
        {
            **identity,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "gcctl_version": __version__,
            "n_rows": len(rows),
            "row_offset": rows.start,
            "rows_done": 0,
            "world_size": world_size,
            VOCABULARY_KEY: table.vocabulary.to_dict(),
        },
    )
    return handle


def _first_line_of_worker_error(error: Exception) -> str:
    # DataLoader re-raises a worker's GcctlError with the worker traceback folded into the message.
    return str(error).rsplit("GcctlError: ", 1)[-1]


# A store's size beyond its features: labels, split, id and attributes per row, and HDF5's own bookkeeping.
_ROW_OVERHEAD_BYTES = 128
_FILE_OVERHEAD_BYTES = 1 << 20


def extract(
    table: "DatasetTable",
    bundle: "ClipBundle",
    out: str | os.PathLike,
    *,
    batch_size: int = 256,
    workers: int | None = None,
    dtype: str = "float16",
    normalize: bool = True,
    shard: Shard = Shard(),
    device=None,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Encode every image of `table` (or of one shard of it) with the frozen image tower into an HDF5 store.

    Resumes an interrupted run with the same identity; replaces an earlier store only with `overwrite`, and
    nothing else; returns a summary with rows encoded and throughput. `workers` processes decode the next
    batches while the tower runs (None: `default_workers`); the features do not depend on it. Under torchrun
    (WORLD_SIZE > 1) the processes split the rows between them (see the module doc); only rank 0 reports
    progress and a summary.
    """
    if dtype not in FEATURE_DTYPES:
        raise GcctlError(f"--dtype '{dtype}' is not supported; choose float16 or float32")
    from gcctl.world import join_world, leave_world, process_device  # torch, imported only when extracting

    out = Path(out)
    table.require_files()
    device = resolve_device("auto") if device is None else device
    world = join_world(device)
    try:
        options = {"batch_size": batch_size, "workers": workers, "dtype": dtype, "normalize": normalize,
                   "device": process_device(device, world)}
        if world.distributed:
            return _extract_by_rank(table, bundle, out, world, shard, overwrite, on_progress, options)
        with output_lock(out):  # held until the rename: the .partial is this process's alone
            check_extract_out(table, out, overwrite)  # again under the lock: another process may have just finished
            _check_free_space(out, len(_shard_rows(table, shard)), bundle.provenance["embed_dim"], dtype)
            return _encode(table, bundle, out, shard=shard, on_progress=on_progress, **options)
    finally:
        leave_world(world)


def _shard_rows(table: "DatasetTable", shard: Shard) -> range:
    """The rows of `shard`: whole tar shard files when the images lie in archives."""
    return shard.rows(len(table.frame), archive_starts(table.frame["path"].tolist()))


def rank_part_path(out: Path, part: Shard) -> Path:
    """Where the process of rank `part.index` (of `part.count`) writes its part of `out` under torchrun."""
    return out.with_name(f"{out.name}.rank{part.index}-of-{part.count}")


def _extract_by_rank(table, bundle, out: Path, world: "World", shard: Shard, overwrite: bool, on_progress, options: dict) -> dict:
    """This process's part, then (once every part is done) rank 0 publishes `out`; a user error in any process
    stops them all with it, and every finished or partial part stays for the rerun."""
    import time

    from gcctl.world import gather_objects, raise_if_any_failed

    started = time.perf_counter()
    summary, error = {}, None
    try:
        if shard != Shard():
            raise GcctlError("--shard splits the rows by hand, but torchrun already splits them between its "
                             "processes; leave out --shard, or run without torchrun")
        check_extract_out(table, out, overwrite)
        part = Shard(world.rank, world.size)
        summary = _extract_part(table, bundle, rank_part_path(out, part), part, on_progress if world.is_main else None, options)
    except GcctlError as failure:
        error = failure
    raise_if_any_failed(world, error)
    summaries = gather_objects(world, summary)
    error = None
    if world.is_main:
        try:
            _publish(table, bundle, out, world.size, overwrite, options)
        except GcctlError as failure:
            error = failure
    raise_if_any_failed(world, error)
    if not world.is_main:
        return {}
    seconds = time.perf_counter() - started
    encoded = sum(part["rows"] - part["resumed_from"] for part in summaries)
    return {
        "out": str(out),
        "rows": len(table.frame),
        "world_size": world.size,
        "resumed_from": [part["resumed_from"] for part in summaries],
        "seconds": round(seconds, 3),
        "images_per_second": round(encoded / seconds, 1) if encoded else None,
        "device": str(options["device"]),
    }


def _extract_part(table, bundle, part_out: Path, part: Shard, on_progress, options: dict) -> dict:
    """One process's part under torchrun: kept when an earlier run finished it, else encoded (resuming its .partial)."""
    with output_lock(part_out):
        identity = _extraction_attrs(table, bundle, options["dtype"], options["normalize"], part, part_out.parent)
        if is_feature_store(part_out):
            with h5py.File(part_out, "r") as handle:
                stored = _read_attrs(handle)
            if stored.get(COMPLETE_KEY) is True and _same_extraction(stored, identity):
                return {"rows": stored["n_rows"], "resumed_from": stored["n_rows"]}
        # Anything else there is a part of another extraction (replaced when done) or not ours (refused).
        check_output(part_out, "extract", is_own=is_feature_store, replace_own=True)
        _check_free_space(part_out, len(_shard_rows(table, part)), bundle.provenance["embed_dim"], options["dtype"])
        return _encode(table, bundle, part_out, shard=part, on_progress=on_progress, **options)


def _publish(table, bundle, out: Path, world_size: int, overwrite: bool, options: dict) -> None:
    """Join the finished parts into `out`, written as one process writes it, and remove every part."""
    parts = [rank_part_path(out, Shard(rank, world_size)) for rank in range(world_size)]
    missing = [part for part in parts if not part.is_file()]
    if missing:
        raise GcctlError(f"{missing[0]} is missing although its process finished it; with processes on several "
                         "machines, --out must lie on a file system they all share")
    dtype = options["dtype"]
    with output_lock(out):
        check_extract_out(table, out, overwrite)
        _check_free_space(out, len(table.frame), bundle.provenance["embed_dim"], dtype)
        identity = _extraction_attrs(table, bundle, dtype, options["normalize"], Shard(), out.parent)
        tmp = partial_path(out)
        handle = _create_partial(tmp, table, range(len(table.frame)), identity, world_size=world_size)
        try:
            for part in parts:
                _append_part(handle, part)
            handle.attrs[COMPLETE_KEY] = True
        finally:
            handle.close()
        os.replace(tmp, out)
    # This run's parts, and those an earlier run with another number of processes left (finished or not).
    for part in out.parent.glob(f"{glob.escape(out.name)}.rank*-of-*"):
        if part.suffix != ".lock":  # a lock belongs to whoever holds it
            part.unlink(missing_ok=True)


def _append_part(handle: h5py.File, part: Path) -> None:
    """Copy a part's features into their rows, in blocks (a part may not fit in memory), and count them done."""
    with h5py.File(part, "r") as source:
        offset, rows = int(source.attrs["row_offset"]), int(source.attrs["n_rows"])
        for start in range(0, rows, _READ_BLOCK_ROWS):
            stop = min(rows, start + _READ_BLOCK_ROWS)
            handle["features"][offset + start : offset + stop] = source["features"][start:stop]
    handle.attrs["rows_done"] = offset + rows


def _check_free_space(out: Path, rows: int, embed_dim: int, dtype: str) -> None:
    """Refuse before any work when the store cannot fit: HDF5 cannot recover from a full disk mid-write (its
    cache is left broken and the process crashes when it exits), so the space is asked for up front. A
    resumed run needs only what its .partial does not hold yet."""
    needed = rows * (embed_dim * np.dtype(dtype).itemsize + _ROW_OVERHEAD_BYTES) + _FILE_OVERHEAD_BYTES
    tmp = partial_path(out)
    needed -= tmp.stat().st_size if tmp.is_file() else 0
    free = _free_bytes(out)
    if needed > free:
        raise GcctlError(f"the store needs about {needed / 2**20:.1f} MiB but {out.parent} has {free / 2**20:.1f} MiB "
                         "free; free some space or choose another --out")


def _free_bytes(path: Path) -> int:
    """Free space on the file system that holds (or will hold) `path`."""
    folder = next(folder for folder in (path.parent, *path.parent.parents) if folder.exists())
    return shutil.disk_usage(folder).free


def check_extract_out(table: "DatasetTable", out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a folder, lies among the dataset's files, or holds anything but an earlier store
    (which only `overwrite` replaces); cheap, so the CLI asks before it builds the model."""
    refuse_directory(out)
    refuse_inside(out, table.root, "the dataset root")
    check_output(out, "extract", is_own=is_feature_store, replace_own=overwrite)


def is_feature_store(path: Path) -> bool:
    """Whether `path` is an HDF5 file written by gcctl's store (finished or not)."""
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as handle:
            return "features" in handle and "gcctl_version" in handle.attrs
    except OSError:
        return False


def _encode(table, bundle, out: Path, *, batch_size, workers, dtype, normalize, shard, device, on_progress) -> dict:
    """`extract` once its --out is this process's: encode the rows not yet done, mark the file complete, publish."""
    import time

    import torch

    from gcctl.clip.factory import eval_transform_stages
    from gcctl.datasets.images import ImageDataset

    rows = _shard_rows(table, shard)
    tmp = partial_path(out)
    identity = _extraction_attrs(table, bundle, dtype, normalize, shard, out.parent)
    handle = _open_partial(tmp, identity)
    if handle is None:
        handle = _create_partial(tmp, table, rows, identity)
    done = int(handle.attrs["rows_done"])
    resumed_from = done
    model = bundle.model.to(device).eval()
    pixels, normalized = eval_transform_stages(bundle.preprocess)
    dataset = ImageDataset(table, pixels, indices=list(range(rows.start + done, rows.stop)))
    workers = default_workers(device) if workers is None else workers
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda", shuffle=False
    )
    features = handle["features"]
    started = time.perf_counter()
    try:
        with torch.inference_mode(), autocast(device):
            for images, _ in in_background(loader):
                encoded = model.encode_image(normalized(images.to(device, non_blocking=True))).float()
                if normalize:
                    encoded = torch.nn.functional.normalize(encoded, dim=-1)
                if not torch.isfinite(encoded).all():
                    raise GcctlError(f"the image tower produced NaN/inf features near row {done}; check the weights")
                block = encoded.cpu().numpy().astype(FEATURE_DTYPES[dtype])
                if _free_bytes(tmp) < block.nbytes + _FILE_OVERHEAD_BYTES:  # the disk filled since the check above
                    raise GcctlError(f"{tmp.parent} is nearly full after {done} of {len(rows)} rows; free some space and "
                                     "run the same command again: it resumes from there")
                features[done : done + len(encoded)] = block
                done += len(encoded)
                handle.attrs["rows_done"] = done
                handle.flush()
                if on_progress is not None:
                    on_progress(done, len(rows))
        handle.attrs[COMPLETE_KEY] = True
    except GcctlError as error:
        if "Original Traceback" in str(error):
            raise GcctlError(_first_line_of_worker_error(error)) from None
        raise
    finally:
        handle.close()
    seconds = time.perf_counter() - started
    os.replace(tmp, out)
    encoded_now = done - resumed_from
    return {
        "out": str(out),
        "rows": len(rows),
        "resumed_from": resumed_from,
        "seconds": round(seconds, 3),
        "images_per_second": round(encoded_now / seconds, 1) if seconds > 0 and encoded_now else None,
        "device": str(device),
        "shard": str(shard),
        "workers": workers,
    }


def default_workers(device) -> int:
    """Processes that decode the next batches while the tower encodes this one (a thread always does, too).

    On CPU the tower takes every core and decoding is a small share of the work, so the thread hides it: a
    process costs a fork and a copy through shared memory, and measured slower (extract / forward 0.89 with
    one process against 0.93 with the thread, alternating in one run on 2 cores). An accelerator needs the host to keep up, so every
    core but the main process's (at most 8, where returns flatten)."""
    if device.type == "cpu":
        return 0
    return max(0, min(8, cpu_budget() - 1))


def merge(parts: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Join the shards of one extraction (any order) into a single store; they must be complete and agree.
    One writer at a time, and an earlier store at `out` is replaced only with `overwrite`."""
    out = Path(out)
    with output_lock(out):
        check_output(out, "merge", is_own=is_feature_store, replace_own=overwrite)
        return _merge(parts, out)


def _merge(parts: Sequence[str | os.PathLike], out: Path) -> Path:
    stores = [FeatureStore(part) for part in parts]
    try:
        identities = [_extraction_identity(store.provenance) for store in stores]
        for store, identity in zip(stores, identities):
            if identity != identities[0]:
                differing = identity_differences(identities[0], identity)
                raise GcctlError(f"{store.path} was extracted differently from {stores[0].path} ({differing}); merge only shards of one extraction")
        shards = [Shard.parse(store.provenance.get("shard", "0/1")) for store in stores]
        counts = {shard.count for shard in shards}
        indices = sorted(shard.index for shard in shards)
        if len(counts) != 1 or indices != list(range(counts.pop())):
            found = ", ".join(str(shard) for shard in shards)
            raise GcctlError(f"merge needs every shard exactly once; got {found}")
        ordered = [store for _, store in sorted(zip((shard.index for shard in shards), stores), key=lambda pair: pair[0])]
        first = ordered[0]
        provenance = {key: first.provenance[key] for key in _EXTRACTION_KEYS if key in first.provenance}
        provenance["model_ref"] = first.model_ref().recorded_for(out.resolve().parent).to_dict()
        provenance["shard"] = "0/1"
        provenance["merged_from"] = len(ordered)
        return write_store(
            out,
            np.concatenate([store.load_features() for store in ordered]),
            np.concatenate([store.y for store in ordered]),
            np.concatenate([store.split for store in ordered]),
            [i for store in ordered for i in store.ids],
            {name: np.concatenate([store.attributes[name] for store in ordered]) for name in first.attributes},
            vocabulary=first.vocabulary,
            provenance=provenance,
        )
    finally:
        for store in stores:
            store.close()
