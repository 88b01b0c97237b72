"""`gcctl extract`, `gcctl info`, `gcctl merge`: the HDF5 feature store from the command line."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.data import reads_dataset
from gcctl.cli.options import AsJson, Device
from gcctl.cli.output import print_summary
from gcctl.datasets import DatasetTable
from gcctl.datasets.decoding import DECODERS
from gcctl.errors import GcctlError


def _one_error_under_torchrun(command):
    """Under torchrun, join the processes before anything can fail (the dataset options are read inside), so a
    user error any of them meets, wherever it is raised, is agreed on by all: rank 0 prints it once and every
    process exits without torchrun's report (`gcctl.distributed.raise_if_any_failed`)."""

    @functools.wraps(command)
    def run(**options):
        if os.environ.get("WORLD_SIZE", "1") == "1":
            return command(**options)
        import torch

        from gcctl.distributed import joined_world, raise_if_any_failed

        with joined_world(torch.device("cpu"), backend="gloo") as world:  # extraction's group (see its module)
            try:
                return command(**options)
            except GcctlError as error:
                if not getattr(error, "agreed", False):
                    raise_if_any_failed(world, error)  # matched by the other processes' next agreement
                raise

    return run


@_one_error_under_torchrun
@reads_dataset
def extract(
    table: DatasetTable,
    model: Annotated[str, typer.Option("--model", help="Architecture name (see `gcctl models`).")],
    out: Annotated[Path, typer.Option("--out", help="The HDF5 file to write (appears only when complete).")],
    pretrained: Annotated[str, typer.Option(
        "--pretrained", help="Weights: an open_clip tag, a checkpoint file, local-dir:PATH, hf-hub:ORG/REPO or none.")] = "none",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 256,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=0, help="Processes decoding images while the model encodes (0: a thread of this process "
        "decodes); default: 0 on a CPU, all cores but one (up to 8) with an accelerator.")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="Stored feature precision: float16 or float32.")] = "float16",
    normalize: Annotated[bool, typer.Option("--normalize/--no-normalize", help="L2-normalise the features.")] = True,
    decode: Annotated[str, typer.Option(
        "--decode", help=f"Who decodes the images: {', '.join(DECODERS)} (the last two: that library's batched JPEG "
        "decoder on --device, which then also resizes; other files fall back to PIL). The pixels differ slightly, "
        "so the store records it.")] = DECODERS[0],
    seed: Annotated[int, typer.Option(
        "--seed", help="Draws the random weights of --pretrained none (recorded in the store; same seed, same store).")] = 0,
    shard: Annotated[str, typer.Option("--shard", help="Write only part i of n (0-based), e.g. 0/4; join with `gcctl merge`.")] = "0/1",
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a store an earlier `gcctl extract` wrote at --out (nothing else is ever replaced).")] = False,
    as_json: AsJson = False,
) -> None:
    """Encode every image once with the frozen image tower into an HDF5 feature store (resumable).

    Under torchrun the processes split the rows (whole tar shards for --dataset webdataset) and rank 0 writes --out;
    a user error is printed once, by rank 0, and every process then exits 0 (so torchrun adds no report).

    Example: gcctl extract --dataset waterbirds --root data/waterbirds --model ViT-B-16 --pretrained openai --out features/waterbirds.h5
    """
    from gcctl.clip.factory import build_clip
    from gcctl.datasets.decoding import jpeg_decoder
    from gcctl.distributed import current_world, process_device
    from gcctl.runtime import progress, resolve_device
    from gcctl.store import Shard, check_extract_out
    from gcctl.store import extract as extract_features

    check_extract_out(table, out, overwrite)
    jpeg_decoder(decode)  # an unknown or missing decoder is refused before the model is built (or downloaded)
    part = Shard.parse(shard)
    torch_device = process_device(resolve_device(device), current_world())  # under torchrun: this process's GPU
    bundle = build_clip(model, pretrained, device=torch_device, seed=seed)
    with progress() as bar:
        task = bar.add_task(f"extract {table.dataset}", total=None)
        summary = extract_features(
            table, bundle, out, batch_size=batch_size, workers=workers, dtype=dtype, normalize=normalize, decode=decode, shard=part,
            device=torch_device, overwrite=overwrite, on_progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if summary:  # under torchrun only rank 0 reports
        print_summary(summary, "extracted", as_json)


def info(
    path: Annotated[Path, typer.Argument(help="An HDF5 feature store.")],
    as_json: AsJson = False,
) -> None:
    """Show a feature store's shape, provenance and group counts per split.

    Example: gcctl info pipeline/features/waterbirds.h5
    """
    from gcctl.store import FeatureStore

    with FeatureStore(path) as store:
        summary = store.summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    about = Table(title=f"{path}: {summary['rows']} × {summary['embed_dim']} {summary['dtype']}", show_header=False)
    for key, value in summary["provenance"].items():
        about.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    console.print(about)
    groups = Table(title="group counts")
    groups.add_column("group", justify="right")
    groups.add_column("name")
    for split in ("train", "val", "test"):
        groups.add_column(split, justify="right")
    for index, (name, counts) in enumerate(summary["group_counts"].items()):
        groups.add_row(str(index), name, *(str(counts[split]) for split in ("train", "val", "test")))
    console.print(groups)


def merge(
    parts: Annotated[list[Path], typer.Argument(help="The shard files written with --shard i/n, in any order.")],
    out: Annotated[Path, typer.Option("--out", help="The merged HDF5 file.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier feature store at --out.")] = False,
    as_json: AsJson = False,
) -> None:
    """Join the shards of one extraction into a single feature store.

    Example: gcctl merge features/part0.h5 features/part1.h5 --out features/waterbirds.h5
    """
    from gcctl.store import FeatureStore
    from gcctl.store import merge as merge_stores

    merged = merge_stores(parts, out, overwrite=overwrite)
    with FeatureStore(merged) as store:
        summary = {"out": str(merged), "rows": len(store), "parts": len(parts)}
    print_summary(summary, "merged", as_json)


def register(app: typer.Typer) -> None:
    app.command()(extract)
    app.command()(info)
    app.command()(merge)
