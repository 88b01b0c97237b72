"""The canonical dataset table every source layout is read into, and its Parquet file."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gcctl.datasets.groups import GroupVocabulary
from gcctl.datasets.subset import ClassSubset
from gcctl.datasets.tar_members import archive_of
from gcctl.errors import GcctlError
from gcctl.files import (
    atomic_path,
    check_output,
    parquet_metadata,
    refuse_directory,
    refuse_input,
    refuse_inside,
    sha256_file,
)

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train", "0": "train",
    "val": "val", "valid": "val", "validation": "val", "1": "val",
    "test": "test", "2": "test",
}
NAMES_SIDECAR = "gcctl-names.json"
RESERVED_COLUMNS = {"id", "path", "split", "y", "class_name", "group", "group_name"}
PARQUET_METADATA_KEY = b"gcctl"


@dataclass(eq=False)
class DatasetTable:
    """One row per image: where it is, its split, its class and its spurious attribute values."""

    frame: pd.DataFrame
    root: Path
    dataset: str
    class_names: list[str]
    attributes: dict[str, list[str]]
    class_subset: ClassSubset | None = None  # ImageNet-R/A: the classes' places among ImageNet's 1,000
    attribute_prompts: dict[str, str] = field(default_factory=dict)  # how values read in a caption (gcctl-names.json)
    source_file: Path | None = None  # the table file it was loaded from (`load`), which `write` never replaces

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @classmethod
    def build(
        cls,
        core: pd.DataFrame,
        *,
        root: str | os.PathLike,
        dataset: str,
        class_names: list[str],
        attributes: dict[str, list[str]],
        source: str,
        class_subset: ClassSubset | None = None,
    ) -> DatasetTable:
        """Validate `core` (columns id, path, split, y and one per attribute) and derive names and groups.

        `source` names the file the rows came from, so errors point at what to fix.
        """
        if core.empty:
            raise GcctlError(f"{source} has no rows; point --root at a dataset with images")
        for column in attributes:
            if column in RESERVED_COLUMNS:
                raise GcctlError(f"attribute column '{column}' clashes with a canonical column; rename it in {source}")
        for column in ("id", "path"):
            if core[column].isna().any():
                raise GcctlError(f"{source} has {int(core[column].isna().sum())} rows without {column}; fill or drop them")
        frame = pd.DataFrame({
            "id": core["id"].astype(str).to_numpy(),
            "path": core["path"].astype(str).to_numpy(),
            "split": normalize_splits(core["split"], source).to_numpy(),
            "y": _checked_codes(core["y"], len(class_names), "y", source),
        })
        duplicated = frame["id"][frame["id"].duplicated()]
        if len(duplicated):
            raise GcctlError(f"{source} has {len(duplicated)} duplicate ids (first: {duplicated.iloc[0]}); ids must be unique")
        frame["class_name"] = _names_of(frame["y"], class_names)
        for column, names in attributes.items():
            frame[column] = _checked_codes(core[column], len(names), column, source)
        table = cls(frame=frame, root=Path(root), dataset=dataset, class_names=list(class_names),
                    attributes={column: list(names) for column, names in attributes.items()}, class_subset=class_subset)
        groups = GroupVocabulary(table.class_names, table.attributes)
        frame["group"] = groups.encode(frame["y"].to_numpy(), {column: frame[column].to_numpy() for column in attributes})
        frame["group_name"] = _names_of(frame["group"], groups.names)
        return table

    @cached_property
    def vocabulary(self) -> GroupVocabulary:
        """The groups of the classes and attributes, with the train split's counts."""
        train = self.frame["split"].to_numpy() == "train"
        vocabulary = GroupVocabulary(self.class_names, self.attributes, attribute_prompts=self.attribute_prompts)
        return vocabulary.counted(self.frame["group"].to_numpy()[train])

    def fingerprint(self) -> str:
        """sha256 over the canonical columns and the names: equal for the same data wherever its root is."""
        digest = hashlib.sha256()
        header = {"class_names": self.class_names, "attributes": self.attributes, "rows": len(self.frame)}
        if self.class_subset is not None:  # only then, so tables without a subset keep their fingerprints
            header["class_subset"] = self.class_subset.to_dict()
        digest.update(json.dumps(header).encode())
        for column in ("id", "path", "split"):
            digest.update(json.dumps(self.frame[column].tolist()).encode())
        for column in ("y", *self.attributes):
            digest.update(self.frame[column].to_numpy(dtype="<i8").tobytes())
        return digest.hexdigest()

    def content_digest(self, split: str | None = None) -> str:
        """sha256 over the bytes of every file the images (of `split`; None: all) are read from (a tar shard once),
        in path order. The fingerprint covers names, labels and splits but no pixel, so a re-rendered benchmark
        keeps it; a result reused on resume must match this too. Costs one read of those images."""
        paths = self.frame["path"] if split is None else self.frame.loc[self.frame["split"] == split, "path"]
        digest = hashlib.sha256()
        for relative in dict.fromkeys(archive_of(path) for path in paths):
            digest.update(relative.encode() + b"\0" + bytes.fromhex(sha256_file(self.root / relative)))
        return digest.hexdigest()

    def group_counts(self) -> pd.DataFrame:
        """Images per group (rows, every group even when empty) and split (columns train, val, test)."""
        names = self.vocabulary.names
        counts = np.zeros((len(names), len(SPLITS)), dtype=np.int64)
        split_index = self.frame["split"].map({split: i for i, split in enumerate(SPLITS)}).to_numpy()
        np.add.at(counts, (self.frame["group"].to_numpy(), split_index), 1)
        return pd.DataFrame(counts, index=pd.Index(names, name="group_name"), columns=list(SPLITS))

    def missing_files(self, limit: int = 5) -> list[str]:
        """Up to `limit` relative paths with no file under root, so a run can stop before any work."""
        root = str(self.root)
        missing = []
        for relative in self.frame["path"]:
            if not os.path.isfile(os.path.join(root, archive_of(relative))):  # a tar shard's members were read with it
                missing.append(relative)
                if len(missing) == limit:
                    break
        return missing

    def paths_outside_root(self, limit: int = 5) -> list[str]:
        """Up to `limit` paths that joining to the root would not keep under it: absolute (anchored) ones,
        and ones whose `..` climb out. Judged on the text, so a symlink placed inside the root counts as inside."""
        paths = self.frame["path"]
        # Only these can be anchored or climb; the exact test below is slow for CelebA's 200k rows.
        suspects = paths[paths.str.startswith(("/", "\\")) | (paths.str[1:2] == ":") | paths.str.contains("..", regex=False)]
        outside = []
        for path in suspects:
            if Path(path).anchor or os.path.normpath(path).split(os.sep)[0] == os.pardir:
                outside.append(path)
                if len(outside) == limit:
                    break
        return outside

    def require_files(self) -> None:
        """Stop before any work when images the metadata lists are not under the root."""
        missing = self.missing_files(limit=5)
        if missing:
            raise GcctlError(f"image {self.root / missing[0]} not found (of {len(missing)} missing images checked); "
                             "point --root at the complete dataset")

    def write(self, out: str | os.PathLike, *, overwrite: bool = False) -> None:
        """`gcctl data table`: `save` into `out` once every image is found, refusing first an `out` among the
        dataset's own files, the table file this one was loaded from, and any file but an earlier table (which only
        `overwrite` replaces)."""
        refuse_directory(out)
        refuse_inside(out, self.root, "the dataset root")
        refuse_input(out, {"--table": self.source_file})
        check_output(out, "data table", is_own=lambda path: parquet_metadata(path, PARQUET_METADATA_KEY) is not None,
                     replace_own=overwrite)
        self.require_files()
        self.save(out)

    def save(self, path: str | os.PathLike) -> None:
        """Write Parquet atomically; the group vocabulary, the fingerprint and the root travel in the schema
        metadata. The root is recorded relative to the table's folder, so a pipeline folder moved as a whole
        still finds its images."""
        path = Path(path)
        arrow = pa.Table.from_pandas(self.frame, preserve_index=False)
        described = {"dataset": self.dataset, "root": os.path.relpath(self.root.resolve(), path.parent.resolve()),
                     "vocabulary": self.vocabulary.to_dict(), "fingerprint": self.fingerprint()}
        if self.class_subset is not None:
            described["class_subset"] = self.class_subset.to_dict()
        metadata = {**(arrow.schema.metadata or {}), PARQUET_METADATA_KEY: json.dumps(described).encode()}
        with atomic_path(path) as tmp:
            pq.write_table(arrow.replace_schema_metadata(metadata), tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DatasetTable:
        path = Path(path)
        if not path.is_file():
            raise GcctlError(f"dataset table {path} does not exist; write it first with `gcctl data table`")
        try:
            arrow = pq.read_table(path)
        except (pa.ArrowException, OSError):
            raise GcctlError(f"{path} is not a readable Parquet file; rerun `gcctl data table` to write it") from None
        described = (arrow.schema.metadata or {}).get(PARQUET_METADATA_KEY)
        if described is None:
            raise GcctlError(f"{path} is a Parquet file but not a gcctl dataset table; pass a table written by gcctl")
        described = json.loads(described)
        # Tables written before the vocabulary was recorded name their classes and attributes directly.
        vocabulary = GroupVocabulary.from_dict(described.get("vocabulary", described), str(path))
        return cls(frame=arrow.to_pandas(), root=Path(os.path.normpath(path.parent / described["root"])),
                   dataset=described["dataset"], class_names=vocabulary.class_names, attributes=vocabulary.attributes,
                   class_subset=ClassSubset.from_dict(described.get("class_subset"), str(path)),
                   attribute_prompts=vocabulary.attribute_prompts, source_file=path)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DatasetTable):
            return NotImplemented
        return (self.dataset == other.dataset and self.root == other.root and self.class_names == other.class_names
                and self.attributes == other.attributes and self.class_subset == other.class_subset
                and self.attribute_prompts == other.attribute_prompts
                and self.frame.equals(other.frame))


def _names_of(codes: pd.Series, names: list[str]) -> np.ndarray:
    return np.asarray(names, dtype=object)[codes.to_numpy()].astype(str)


def normalize_splits(values: pd.Series, source: str) -> pd.Series:
    """Map train/val/test, valid/validation and 0/1/2 (any case) onto train/val/test."""
    keys = values.astype(str).str.strip().str.lower()
    splits = keys.map(SPLIT_ALIASES)
    unknown = keys[splits.isna()].unique()
    if len(unknown):
        raise GcctlError(f"unknown split values {list(unknown[:5])} in {source}; use train/val/test, valid/validation or 0/1/2")
    return splits.astype(str)


def _checked_codes(values: pd.Series, size: int, column: str, source: str) -> np.ndarray:
    """Integer codes in 0..size-1, or a user error saying which values fall outside."""
    if values.isna().any() or not pd.api.types.is_numeric_dtype(values):
        raise GcctlError(f"column '{column}' in {source} must hold integers 0..{size - 1} without gaps")
    codes = values.to_numpy(dtype=np.float64)
    outside = values[(codes < 0) | (codes >= size) | (codes != np.floor(codes))]
    if len(outside):
        raise GcctlError(f"column '{column}' in {source} has values {sorted(outside.unique().tolist())[:5]} outside "
                         f"0..{size - 1}; fix the data or give one name per value")
    return codes.astype(np.int64)


def read_csv(path: str | os.PathLike, **options) -> pd.DataFrame:
    """`pd.read_csv` of a metadata file; an empty, binary or malformed file is a one-line user error."""
    try:
        return pd.read_csv(path, **options)
    except pd.errors.EmptyDataError:
        raise GcctlError(f"{path} is empty; it needs a header line and one row per image") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        reason = str(error).strip().splitlines()[-1][:120]
        raise GcctlError(f"{path} is not a readable text table ({type(error).__name__}: {reason}); "
                         "give the dataset's CSV/text metadata file") from None


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """`pd.read_parquet` of a metadata file; a file that is not Parquet is a one-line user error."""
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as error:  # ArrowInvalid for a file that is not Parquet
        raise GcctlError(f"{path} is not a readable Parquet file ({type(error).__name__}); "
                         "write it with pandas.DataFrame.to_parquet or give a CSV") from None


def require_columns(frame: pd.DataFrame, columns: list[str], source: str | os.PathLike) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise GcctlError(f"{source} has no column {', '.join(repr(c) for c in missing)}; "
                         f"its columns are: {', '.join(map(str, frame.columns))}")


@dataclass(frozen=True)
class NameOverrides:
    """Names that replace an adapter's defaults: from `gcctl-names.json` under the root, or `class_names=`."""

    classes: list[str] | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    attribute_prompts: dict[str, str] = field(default_factory=dict)  # attribute -> template with {value}


def read_name_overrides(root: Path, class_names: list[str] | None = None) -> NameOverrides:
    """The sidecar's names, with an explicit `class_names` taking precedence over its `classes`."""
    sidecar = root / NAMES_SIDECAR
    described: dict = {}
    if sidecar.is_file():
        try:
            described = json.loads(sidecar.read_text())
        except json.JSONDecodeError as error:
            raise GcctlError(f"{sidecar} is not valid JSON ({error}); fix or delete it") from None
        if not _is_names_sidecar(described):
            raise GcctlError(f"{sidecar} must look like "
                             '{"classes": [names...], "attributes": {"<column>": [names...]}, '
                             '"attribute_prompts": {"<column>": "a photo of a {value} {class}."}}; fix or delete it')
    classes = list(class_names) if class_names else described.get("classes")
    return NameOverrides(classes=classes, attributes=described.get("attributes", {}),
                         attribute_prompts=described.get("attribute_prompts", {}))


def _is_names_sidecar(described: object) -> bool:
    def is_names(value: object) -> bool:
        return isinstance(value, list) and all(isinstance(name, str) for name in value)

    if not isinstance(described, dict) or set(described) - {"classes", "attributes", "attribute_prompts"}:
        return False
    attributes, prompts = described.get("attributes", {}), described.get("attribute_prompts", {})
    return (is_names(described.get("classes", [])) and isinstance(attributes, dict)
            and all(is_names(names) for names in attributes.values())
            and isinstance(prompts, dict) and all(isinstance(text, str) for text in prompts.values()))


def pick_names(override: list[str] | None, default: list[str], what: str) -> list[str]:
    """`override` when given (it must name every value), else `default`."""
    if override is None:
        return list(default)
    if len(override) != len(default):
        shown = ", ".join(default[:5]) + (", ..." if len(default) > 5 else "")
        raise GcctlError(f"{len(override)} names given for {what} but it has {len(default)} values "
                         f"({shown}); fix {NAMES_SIDECAR} or the class names option")
    return list(override)
