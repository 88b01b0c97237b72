"""Any CSV or Parquet file with one row per image: you name the columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gcctl.datasets.table import (
    DatasetTable,
    NameOverrides,
    read_csv,
    read_parquet,
    require_columns,
)
from gcctl.errors import GcctlError

LAYOUT = "a CSV or Parquet file (--manifest-file) with one row per image, its paths relative to ROOT"


def load(
    root: Path,
    names: NameOverrides,
    *,
    file: str | Path | None = None,
    path_column: str = "path",
    label_column: str = "y",
    split_column: str = "split",
    attribute_columns: tuple[str, ...] | str = (),
    id_column: str | None = None,
) -> DatasetTable:
    if file is None:
        raise GcctlError("the manifest dataset needs its file: pass --manifest-file (a CSV or Parquet, one row per image)")
    attribute_columns = [attribute_columns] if isinstance(attribute_columns, str) else list(attribute_columns)
    if not attribute_columns:
        raise GcctlError("the manifest dataset needs at least one spurious attribute: pass --attribute-column NAME")
    path = root / file  # an absolute `file` stays absolute
    frame = _read(path)
    id_columns = [id_column] if id_column else []
    require_columns(frame, [path_column, label_column, split_column, *attribute_columns, *id_columns], path)

    y, class_names = value_codes(frame[label_column], names.classes, f"label column '{label_column}'", path)
    core = {
        "id": frame[id_column] if id_column else pd.RangeIndex(len(frame)),
        "path": frame[path_column],
        "split": frame[split_column],
        "y": y,
    }
    attributes = {}
    for column in attribute_columns:
        core[column], attributes[column] = value_codes(frame[column], names.attributes.get(column),
                                                  f"attribute column '{column}'", path)
    return DatasetTable.build(pd.DataFrame(core), root=root, dataset="manifest", class_names=class_names,
                              attributes=attributes, source=str(path))


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise GcctlError(f"manifest file {path} does not exist; give --manifest-file relative to --root or absolute")
    if path.suffix.lower() == ".csv":
        return read_csv(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return read_parquet(path)
    raise GcctlError(f"manifest file {path} is neither .csv nor .parquet; convert it to one of them")


def value_codes(values: pd.Series, names: list[str] | None, what: str, path: Path) -> tuple[np.ndarray, list[str]]:
    """Integer codes and their names: integers index `names` (default their digits); strings are looked up
    in `names` (default their sorted vocabulary)."""
    if values.isna().any():
        raise GcctlError(f"{what} in {path} has {int(values.isna().sum())} empty values; fill them or drop those rows")
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
        codes = values.to_numpy(dtype=np.int64)
        if codes.min() < 0:
            raise GcctlError(f"{what} in {path} has negative values; use 0, 1, 2... or names")
        return codes, list(names) if names else [str(code) for code in range(codes.max() + 1)]
    if pd.api.types.is_numeric_dtype(values):
        raise GcctlError(f"{what} in {path} holds non-integer numbers; use integers 0, 1, 2... or names")
    text = values.astype(str)
    vocabulary = list(names) if names else sorted(text.unique())
    unknown = sorted(set(text.unique()) - set(vocabulary))
    if unknown:
        raise GcctlError(f"{what} in {path} has values {unknown[:5]} missing from the given names {vocabulary}; "
                         "add them to the names")
    return text.map({name: code for code, name in enumerate(vocabulary)}).to_numpy(dtype=np.int64), vocabulary
