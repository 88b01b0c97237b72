"""`gcctl data ...`: look at a dataset as gcctl reads it; and the dataset options every command shares.

A command that reads a dataset takes a `table: DatasetTable` parameter and is decorated with
`@reads_dataset`: the decorator puts the shared options (`--dataset`, `--root`, `--target`, ...) into the
command's signature in its place and hands the command the table they describe.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.generated import replace_parameter
from gcctl.cli.options import AsJson
from gcctl.datasets import DATASETS, DatasetTable, load_dataset
from gcctl.errors import GcctlError

DatasetLayout = Annotated[str, typer.Option("--dataset", "--layout", help=f"Source layout: {', '.join(DATASETS)}.")]
TableFile = Annotated[Optional[Path], typer.Option(
    "--table", help="Instead of --dataset/--root and their options: a dataset table written by `gcctl data table`.")]
DatasetRoot = Annotated[Path, typer.Option("--root", help="Folder that holds the dataset's metadata and images.")]
Target = Annotated[Optional[str], typer.Option("--target", help="celeba: attribute to classify (default Blond_Hair).")]
Bias = Annotated[Optional[list[str]], typer.Option(
    "--bias", help="celeba: spurious attribute (default Male); repeat for several, e.g. --bias Young --bias Male.")]
ManifestFile = Annotated[Optional[Path], typer.Option(
    "--manifest-file", help="manifest: CSV or Parquet, one row per image (relative to --root or absolute).")]
PathColumn = Annotated[Optional[str], typer.Option("--path-column", help="manifest: image path column (default path).")]
LabelColumn = Annotated[Optional[str], typer.Option(
    "--label-column", help="manifest: class column (default y). webdataset: json field of the class (default: the .cls file).")]
SplitColumn = Annotated[Optional[str], typer.Option(
    "--split-column", help="manifest: split column (train/val/test or 0/1/2) (default split). "
    "webdataset: json field of the split (default: the shard's folder train/, val/, test/; else train).")]
AttributeColumn = Annotated[Optional[list[str]], typer.Option(
    "--attribute-column", help="manifest: spurious attribute column; webdataset: json field; repeat for several.")]
IdColumn = Annotated[Optional[str], typer.Option(
    "--id-column", help="manifest: id column (default: row number). webdataset: json field (default: shard/key).")]
AllowOutsideRoot = Annotated[bool, typer.Option(
    "--allow-outside-root", help="Read image paths that are absolute or lead out of --root with '..' (refused otherwise).")]
FolderSplit = Annotated[Optional[str], typer.Option(
    "--folder-split", help="imagefolder, caltech101, pacs without split folders: every image's split (default test).")]
ClassName = Annotated[Optional[list[str]], typer.Option(
    "--class-name", help="Class names in label order, one per class; overrides gcctl-names.json and defaults.")]


_DATASET_OPTIONS = {  # parameter name: (annotation, default)
    "table_file": (TableFile, None),
    "layout": (DatasetLayout, None),
    "root": (DatasetRoot, None),
    "target": (Target, None),
    "bias": (Bias, None),
    "manifest_file": (ManifestFile, None),
    "path_column": (PathColumn, None),
    "label_column": (LabelColumn, None),
    "split_column": (SplitColumn, None),
    "attribute_column": (AttributeColumn, None),
    "id_column": (IdColumn, None),
    "folder_split": (FolderSplit, None),
    "class_name": (ClassName, None),
    "allow_outside_root": (AllowOutsideRoot, False),
}


def reads_dataset(command=None, *, optional: bool = False):
    """Give `command` the shared dataset options in place of its `table` parameter, and call it with the
    `DatasetTable` they describe. With `optional=True`, --dataset and --root may be left out (table None)."""
    if command is None:
        return functools.partial(reads_dataset, optional=optional)
    dataset_parameters = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        for name, (annotation, default) in _DATASET_OPTIONS.items()
    ]
    return replace_parameter(command, dataset_parameters, "table",
                             lambda options: _load_table(**options, optional=optional))


def _load_table(table_file, layout, root, *, optional: bool, **options) -> DatasetTable | None:
    given = [f"--{name.replace('_', '-')}" for name, value in options.items() if value]
    if table_file is not None:
        if layout is not None or root is not None or given:
            raise GcctlError("--table already describes the dataset; leave out --dataset, --root and their options")
        return DatasetTable.load(table_file)
    if optional and layout is None and root is None:
        if given:
            raise GcctlError(f"{given[0]} needs --dataset and --root")
        return None
    if layout is None or root is None:
        raise GcctlError("give --dataset and --root together, or --table")
    return load_dataset(layout, root, **dataset_options(**options))


def dataset_options(
    *,
    target: Optional[str] = None,
    bias: Optional[list[str]] = None,
    manifest_file: Optional[Path] = None,
    path_column: Optional[str] = None,
    label_column: Optional[str] = None,
    split_column: Optional[str] = None,
    attribute_column: Optional[list[str]] = None,
    id_column: Optional[str] = None,
    folder_split: Optional[str] = None,
    class_name: Optional[list[str]] = None,
    allow_outside_root: bool = False,
) -> dict:
    """`load_dataset` keyword arguments from the CLI options; unset ones are left out so adapters keep
    their defaults, and an option that does not fit the dataset is reported by `load_dataset`."""
    given = {
        "target": target,
        "bias": tuple(bias) if bias else None,
        "file": manifest_file,
        "path_column": path_column,
        "label_column": label_column,
        "split_column": split_column,
        "attribute_columns": tuple(attribute_column) if attribute_column else None,
        "id_column": id_column,
        "split": folder_split,
        "class_names": list(class_name) if class_name else None,
        "allow_outside_root": allow_outside_root or None,
    }
    return {option: value for option, value in given.items() if value is not None}


@reads_dataset
def show(
    table: DatasetTable,
    as_json: AsJson = False,
) -> None:
    """Print how many images each group has in each split, and the dataset's fingerprint.

    Example: gcctl data show --dataset celeba --root data/celeba --target Blond_Hair --bias Male
    """
    if as_json:
        typer.echo(json.dumps(_summary(table), indent=2))
    else:
        _print_table(table)


@reads_dataset
def write_table(
    table: DatasetTable,
    out: Annotated[Path, typer.Option(
        "--out", help="The Parquet file to write (appears only when complete), outside the dataset's root.")],
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a table an earlier `gcctl data table` wrote at --out (nothing else is ever replaced).")] = False,
    as_json: AsJson = False,
) -> None:
    """Read a dataset once into gcctl's canonical table (Parquet: one row per image, names, fingerprint).

    Later stages take `--table FILE` instead of re-reading the source layout.

    Example: gcctl data table --dataset waterbirds --root pipeline/data/waterbirds --out pipeline/tables/waterbirds.parquet
    """
    table.write(out, overwrite=overwrite)
    if as_json:
        typer.echo(json.dumps({"out": str(out), **_summary(table)}, indent=2))
    else:
        _print_table(table)


def _summary(table: DatasetTable) -> dict:
    counts = table.group_counts()
    return {
        "dataset": table.dataset,
        "root": str(table.root),
        "rows": len(table.frame),
        "fingerprint": table.fingerprint(),
        "class_names": table.class_names,
        "attributes": table.attributes,
        "groups": [{"group": group, "name": name, **{split: int(n) for split, n in row.items()}}
                   for group, (name, row) in enumerate(counts.iterrows())],
    }


def _print_table(table: DatasetTable) -> None:
    from rich.console import Console
    from rich.table import Table

    counts = table.group_counts()
    view = Table(title=f"{table.dataset}: {table.root}", show_footer=True)
    view.add_column("group", footer="total", justify="right")
    view.add_column("name")
    for split in counts.columns:
        view.add_column(split, footer=str(int(counts[split].sum())), justify="right")
    for group, (name, row) in enumerate(counts.iterrows()):
        view.add_row(str(group), name, *(str(int(n)) for n in row))
    console = Console()
    console.print(view)
    console.print(f"fingerprint {table.fingerprint()}", soft_wrap=True)


def register(root: typer.Typer) -> None:
    from gcctl.cli import (
        data_app,  # the `gcctl data` group, which `gcctl.cli.synth` adds to as well
    )

    data_app.command()(show)
    data_app.command("table")(write_table)
