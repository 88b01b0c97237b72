"""WebDataset shards as img2dataset writes them: `*.tar` files under the root, each sample `<key>.jpg|png|webp`
with `<key>.json` and/or `<key>.cls` beside it.

The shards are read in place (see `tar_members`): the table's paths are `<shard>::<member>`. Rows follow the
shards in sorted path order and the samples in archive order. The class is the `.cls` file unless
`label_column` names a json field; the split is the json field `split_column`, else the shard's top folder
when it is named like a split (`train/`, `val/`, `test/`...), else train; attributes are json fields.

Why not the `webdataset` package: it streams samples in order, while the canonical table needs every row's
labels up front and the extractor opens rows by index (resume at row k, DataLoader workers, shares per
process); an indexed tar gives both with the standard library.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from gcctl.datasets.folders import files_under
from gcctl.datasets.manifest import value_codes
from gcctl.datasets.table import SPLIT_ALIASES, DatasetTable, NameOverrides
from gcctl.datasets.tar_members import index_archive, member_path, read_member
from gcctl.errors import GcctlError

LAYOUT = "*.tar shards (img2dataset's output: <key>.jpg|png|webp with <key>.json and/or <key>.cls) under ROOT"
# img2dataset writes jpg by default, png or webp with --output_format … / --encode_format.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_SPLIT_FOLDERS = {name: split for name, split in SPLIT_ALIASES.items() if not name.isdigit()}


def load(
    root: Path,
    names: NameOverrides,
    *,
    label_column: str | None = None,
    split_column: str | None = None,
    attribute_columns: tuple[str, ...] | str = (),
    id_column: str | None = None,
) -> DatasetTable:
    shards = sorted(map(Path, files_under(root, (".tar",))))
    if not shards:
        raise GcctlError(f"no .tar shards under {root}; pass the folder img2dataset wrote (--output_format webdataset)")
    fields = {"label": label_column, "split": split_column, "id": id_column,
              "attributes": [attribute_columns] if isinstance(attribute_columns, str) else list(attribute_columns)}
    records = [record for shard in shards for record in _shard_records(root, shard, fields)]
    if not records:
        raise GcctlError(f"the {len(shards)} .tar shard(s) under {root} hold no samples; write them again "
                         "(img2dataset --output_format webdataset) or pass the folder that has them")
    frame = pd.DataFrame(records)
    source = f"the shards under {root}"
    label_what = f"json field '{label_column}'" if label_column else ".cls labels"
    y, class_names = value_codes(frame["label"], names.classes, label_what, source)
    core = {"id": frame["id"], "path": frame["path"], "split": frame["split"], "y": y}
    attributes = {}
    for field in fields["attributes"]:
        core[field], attributes[field] = value_codes(frame[field], names.attributes.get(field), f"json field '{field}'", source)
    return DatasetTable.build(pd.DataFrame(core), root=root, dataset="webdataset", class_names=class_names,
                              attributes=attributes, source=source)


def _shard_records(root: Path, shard: Path, fields: dict) -> list[dict]:
    """One record per sample of `shard`: id, path, split, label and the attribute fields."""
    index = index_archive(shard)
    relative = shard.relative_to(root)
    folder_split = _split_of_folder(relative)
    records = []
    for key, members in _samples(index).items():
        image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
        if image is None:
            raise GcctlError(f"sample '{key}' in {shard} has no image ({', '.join('.' + ext for ext in IMAGE_EXTENSIONS)}); "
                             "write the shard again or remove that sample's files from it")
        described = _json(shard, key, members, index) if "json" in members else {}

        def field(name: str):
            return _field(described, name, shard, key)

        records.append({
            "id": str(field(fields["id"])) if fields["id"] else f"{relative.with_suffix('').as_posix()}/{key}",
            "path": member_path(relative.as_posix(), image),
            "split": field(fields["split"]) if fields["split"] else folder_split,
            "label": field(fields["label"]) if fields["label"] else _cls(shard, key, members, index),
            **{name: field(name) for name in fields["attributes"]},
        })
    return records


def _split_of_folder(relative: Path) -> str:
    """The split a shard's top folder is named after (train/, val/, test/...), else train."""
    top = relative.parts[0].lower() if len(relative.parts) > 1 else ""
    return _SPLIT_FOLDERS.get(top, "train")


def _samples(index: dict[str, tuple[int, int]]) -> dict[str, dict[str, str]]:
    """{key: {extension: member name}} in archive order; as WebDataset splits names, the key is everything up to
    the first dot of the file name and the extension the rest (lower-cased)."""
    samples: dict[str, dict[str, str]] = {}
    for name in index:
        folder, _, base = name.rpartition("/")
        stem, dot, extension = base.partition(".")
        if dot:
            samples.setdefault(f"{folder}/{stem}" if folder else stem, {})[extension.lower()] = name
    return samples


def _json(shard: Path, key: str, members: dict[str, str], index: dict) -> dict:
    text = read_member(member_path(str(shard), members["json"]), index)
    try:
        described = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GcctlError(f"sample '{key}' in {shard} has a .json that is not valid JSON ({error}); write the shard again") from None
    if not isinstance(described, dict):
        raise GcctlError(f"sample '{key}' in {shard} has a .json that is not an object; write the shard again")
    return described


def _field(described: dict, field: str, shard: Path, key: str):
    if described.get(field) is None:
        raise GcctlError(f"sample '{key}' in {shard} has no json field '{field}'; "
                         "name a field every sample has, or fill it in when writing the shards")
    return described[field]


def _cls(shard: Path, key: str, members: dict[str, str], index: dict) -> int:
    if "cls" not in members:
        raise GcctlError(f"sample '{key}' in {shard} has no .cls label; pass --label-column FIELD to take the class "
                         "from a field of its .json")
    text = read_member(member_path(str(shard), members["cls"]), index).decode(errors="replace").strip()
    if not text.lstrip("-").isdigit():
        raise GcctlError(f"sample '{key}' in {shard} has .cls '{text[:20]}', not an integer class; write the shard again")
    return int(text)
