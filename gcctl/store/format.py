"""The HDF5 feature store's file format, its writer and its reader (`FeatureStore`).

One file holds every image of a dataset encoded once by a frozen image tower:

- datasets `features` [N, D] (float16 or float32), `y`, `group`, `split` (0 train, 1 val, 2 test), `id`,
  and one integer dataset per spurious attribute under `attributes/`;
- root attributes: the provenance (`model_ref`: the model reference, its weights path relative to the store's
  folder when inside the project; embed_dim, normalized, dataset fingerprint, gcctl version; no wall-clock time, so a store is a pure function of its inputs)
  and `group_vocabulary`, the dataset's `gcctl.datasets.groups.GroupVocabulary` (class and attribute names,
  training counts) that numbers `group`.

Its last write is the root attribute `complete`, which every reader requires: a store without it (cut short,
or made before gcctl marked finished stores) is refused with the advice to extract it again.

Reading: `FeatureStore` loads every small array on open and features on demand (`load_features`,
`read_rows`, a storage chunk at a time).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import h5py
import numpy as np

from gcctl import __version__
from gcctl.datasets.groups import GroupVocabulary
from gcctl.datasets.table import SPLITS
from gcctl.errors import GcctlError
from gcctl.files import atomic_path, corrupt_file_error, partial_path

if TYPE_CHECKING:  # the store sits above models in the layering
    from gcctl.clip.reference import ModelRef


SPLIT_CODES = {split: code for code, split in enumerate(SPLITS)}  # train 0, val 1, test 2
FEATURE_DTYPES = {"float16": np.float16, "float32": np.float32}
# Attributes that describe how the model was applied to which data; with the model's identity they make an
# extraction's identity, on which the shards of one dataset must agree.
EXTRACTION_KEYS = ("embed_dim", "normalized", "dataset", "dataset_fingerprint", "dtype", "decode")
# What a store that lacks a key was made with: every store before the decoder was recorded was decoded by PIL.
_BEFORE_RECORDED = {"decode": "pil"}
VOCABULARY_KEY = "group_vocabulary"
# Set last, once every row is written: a reader trusts nothing else to tell a finished store from a cut-short one.
COMPLETE_KEY = "complete"
# The names stores recorded before the vocabulary did; still read, never written.
_OLD_NAME_KEYS = ("class_names", "group_names", "attribute_values")
_JSON_KEYS = (VOCABULARY_KEY, *_OLD_NAME_KEYS, "model_ref")
# Rows read, checked or scored at a time wherever a split is handled in blocks (the store's reads, NaN checks,
# predictions): 32 MB of float16 features at D = 256.
BLOCK_ROWS = 65536
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


def create_layout(
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
    # No creation or modification times in the file: the same rows give the same bytes (track_times=False).
    handle.create_dataset("features", shape=(n_rows, embed_dim), dtype=FEATURE_DTYPES[dtype], chunks=chunks,
                          track_times=False)
    handle.create_dataset("y", data=np.asarray(y, dtype=np.int64), track_times=False)
    handle.create_dataset("group", data=np.asarray(group, dtype=np.int64), track_times=False)
    handle.create_dataset("split", data=np.asarray(split, dtype=np.int8), track_times=False)
    handle.create_dataset("id", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype(), track_times=False)
    attribute_group = handle.create_group("attributes")
    for name, values in attributes.items():
        attribute_group.create_dataset(name, data=np.asarray(values, dtype=np.int64), track_times=False)


def set_attrs(handle: h5py.File, attrs: dict) -> None:
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
        create_layout(handle, len(features), features.shape[1], dtype, y, group, split, ids, attributes)
        handle["features"][...] = features.astype(FEATURE_DTYPES[dtype], copy=False)
        attrs = {
            "gcctl_version": __version__,
            **provenance,
            "embed_dim": int(features.shape[1]),
            "dtype": dtype,
            "n_rows": len(features),
            "rows_done": len(features),
            VOCABULARY_KEY: vocabulary.to_dict(),
        }
        set_attrs(handle, attrs)
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
        for start in range(int(sorted_rows[0]), int(sorted_rows[-1]) + 1, BLOCK_ROWS):
            stop = start + BLOCK_ROWS
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
            chunk_rows = dataset.chunks[0] if dataset.chunks else BLOCK_ROWS
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


def is_feature_store(path: Path) -> bool:
    """Whether `path` is an HDF5 file written by gcctl's store (finished or not)."""
    if not path.is_file() or not h5py.is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as handle:
            return "features" in handle and "gcctl_version" in handle.attrs
    except OSError:
        return False


def extraction_identity(provenance: dict, keys: Sequence[str] = EXTRACTION_KEYS) -> dict:
    """The model's identity (not where its weights lie) and the `keys` of how it was applied."""
    from gcctl.clip.reference import ModelRef

    record = provenance.get("model_ref")
    model = ModelRef.from_dict(record).identity() if isinstance(record, dict) else None
    return {"model": model, **{key: provenance.get(key, _BEFORE_RECORDED.get(key)) for key in keys}}


def read_attrs(handle: h5py.File) -> dict:
    return {key: _decode_attr(key, value) for key, value in handle.attrs.items()}
