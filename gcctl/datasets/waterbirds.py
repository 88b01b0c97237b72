"""Waterbirds: the original release or WILDS' `waterbirds_v1.0` folder, and SubpopBench's metadata csv.

The root may be that folder, or the folder that holds it (WILDS' `root_dir`, the original release's parent).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gcctl.datasets.table import (
    DatasetTable,
    NameOverrides,
    pick_names,
    read_csv,
    require_columns,
)
from gcctl.errors import GcctlError

# Original release and WILDS share this file, next to the images: img_id,img_filename,y,split,place,place_filename.
ORIGINAL_METADATA = "metadata.csv"
ORIGINAL_COLUMNS = {"img_id": "id", "img_filename": "path", "split": "split", "y": "y", "place": "place"}
# SubpopBench writes this one level above the image folder: id,filename,split,y,a (a = place).
SUBPOPBENCH_METADATA = "metadata_waterbirds.csv"
SUBPOPBENCH_COLUMNS = {"id": "id", "filename": "path", "split": "split", "y": "y", "a": "place"}
SUBPOPBENCH_IMAGES = "waterbird_complete95_forest2water2"
WILDS_FOLDER = "waterbirds_v1.0"
LAYOUT = (f"ROOT/{ORIGINAL_METADATA} beside the species folders (original release, WILDS' {WILDS_FOLDER}/), "
          f"ROOT/{WILDS_FOLDER}/ or ROOT/{SUBPOPBENCH_IMAGES}/ holding them, or ROOT/{SUBPOPBENCH_METADATA} (SubpopBench)")

CLASS_NAMES = ["landbird", "waterbird"]
PLACE_NAMES = ["land", "water"]


def load(root: Path, names: NameOverrides) -> DatasetTable:
    if not (root / ORIGINAL_METADATA).is_file() and not (root / SUBPOPBENCH_METADATA).is_file():
        # The folder that holds the dataset's folder: read that folder, so the table is the same either way.
        root = next((root / inner for inner in (WILDS_FOLDER, SUBPOPBENCH_IMAGES)
                     if (root / inner / ORIGINAL_METADATA).is_file()), root)
    if (root / ORIGINAL_METADATA).is_file():
        source = root / ORIGINAL_METADATA
        core = _read(source, ORIGINAL_COLUMNS)
    elif (root / SUBPOPBENCH_METADATA).is_file():
        source = root / SUBPOPBENCH_METADATA
        core = _read(source, SUBPOPBENCH_COLUMNS)
        core["path"] = _image_folder(root, next(iter(core["path"]), "")) + core["path"]
    else:
        raise GcctlError(f"no Waterbirds metadata under {root}: expected {LAYOUT}")
    return DatasetTable.build(
        core,
        root=root,
        dataset="waterbirds",
        class_names=pick_names(names.classes, CLASS_NAMES, "the Waterbirds classes"),
        attributes={"place": pick_names(names.attributes.get("place"), PLACE_NAMES, "the Waterbirds place")},
        source=str(source),
    )


def _read(path: Path, columns: dict[str, str]) -> pd.DataFrame:
    frame = read_csv(path)
    require_columns(frame, list(columns), path)
    return frame[list(columns)].rename(columns=columns)


def _image_folder(root: Path, first_filename: str) -> str:
    """The prefix, relative to root, under which SubpopBench's filenames exist (its own folder name if none)."""
    if (root / first_filename).is_file():
        return ""
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        if (folder / first_filename).is_file():
            return f"{folder.name}/"
    return f"{SUBPOPBENCH_IMAGES}/"
