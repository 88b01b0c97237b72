"""`gcctl data synth`: the synthetic world (in its own module: the datasets' readers need none of it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gcctl.cli.options import AsJson


def synth(
    out: Annotated[Path, typer.Option(
        "--out", help="Folder to write corpus.npz, waterbirds/, multiceleba/, scattered/, source/ and source-<shift>/ into.")],
    seed: Annotated[int, typer.Option("--seed", help="Everything written follows from this seed.")] = 0,
    corpus_size: Annotated[int, typer.Option("--corpus-size", min=1, help="Captioned scenes for pretraining.")] = 50000,
    image_size: Annotated[int, typer.Option("--image-size", min=16, help="Image side in pixels.")] = 32,
    scale: Annotated[float, typer.Option(
        "--scale", help="Benchmark sizes relative to the defaults (Waterbirds' 4795/1199/5794, the source's 4800/1200/2400).")] = 1.0,
    minority_fraction: Annotated[float, typer.Option(
        "--minority-fraction", help="Waterbirds-like and scattered train: share of each class with the other "
        "class's background or patch.")] = 0.05,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace benchmarks that already exist.")] = False,
    as_json: AsJson = False,
) -> None:
    """Write the synthetic world: a pretraining corpus, three benchmarks in layouts gcctl reads, and a source
    task with its domain shifts as image folders.

    The Waterbirds-like benchmark is written in Waterbirds' layout (metadata.csv + images), the
    MultiCelebA-like one in CelebA's official txt layout, so `--dataset waterbirds` and `--dataset celeba`
    read them like the real ones. The scattered one (each class's groups differ in colour; the spurious
    cue is a small corner patch) is a manifest: `--dataset manifest --manifest-file manifest.csv
    --attribute-column patch`. The source task (ten kinds no benchmark asks about, source/{train,val,test}/<kind>/) and its
    test-only domain shifts (source-v2, source-outline, source-palette, source-small, source-texture) are read with
    `--dataset imagefolder`: fine-tune on the source, then score zero-shot with `gcctl transfer`.

    Example: gcctl data synth --out pipeline/data --seed 0 --scale 0.1
    """
    from gcctl.runtime import check_seeds
    from gcctl.synth.benchmarks import (
        write_multiceleba,
        write_scattered,
        write_waterbirds,
    )
    from gcctl.synth.corpus import write_corpus
    from gcctl.synth.source import write_source_world

    check_seeds([seed], "--seed")
    written = {
        "corpus": write_corpus(out, n=corpus_size, seed=seed, size=image_size),
        "waterbirds": write_waterbirds(out / "waterbirds", seed=seed, scale=scale, size=image_size,
                                       minority_fraction=minority_fraction, overwrite=overwrite),
        "multiceleba": write_multiceleba(out / "multiceleba", seed=seed, scale=scale, size=image_size,
                                         overwrite=overwrite),
        "scattered": write_scattered(out / "scattered", seed=seed, scale=scale, size=image_size,
                                     minority_fraction=minority_fraction, overwrite=overwrite),
        **write_source_world(out, seed=seed, scale=scale, size=image_size, overwrite=overwrite),
    }
    summary = {name: str(path) for name, path in written.items()}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    view = Table(title="synthetic world", show_header=False)
    for name, path in summary.items():
        view.add_row(name, path)
    Console().print(view)


def register(root: typer.Typer) -> None:
    from gcctl.cli import data_app  # the `gcctl data` group

    data_app.command()(synth)
