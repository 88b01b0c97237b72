"""The synthetic world's source task and its domain shifts, written as image folders (StarFT's protocol in miniature).

StarFT fine-tunes on a large source task (ImageNet) and reads the weights zero-shot on domain shifts of the
source and on group shifts it never trained on. Here the source task is "which of the ten source kinds"
(world.SOURCE_KINDS), none of them a group benchmark's class, as ImageNet has no "waterbird" class. Like a
natural source it has spurious structure: each kind is most often seen on its home background, in its home
colour and with its home fill (world.HOME), more strongly than in the corpus (a curated dataset of typical
photos); two kinds live on the Waterbirds-like benchmark's grass and water, so a fine-tuned model that leans
on backgrounds is the one that loses group robustness there.

The domain shifts are test-only renderings of the same task: a fresh sample of the same distribution
(ImageNet-V2), outlines only (ImageNet-Sketch), colours none of the twelve names (ImageNet-R's other
renditions), small objects (ImageNet-A's hard cases), and every kind in a fill other than its home (the
texture shift StarFT's texture pool targets).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gcctl.datasets.table import NAMES_SIDECAR, SPLITS
from gcctl.files import write_json
from gcctl.synth.benchmarks import (
    _check_scale,
    _check_target,
    _count,
    _number_within,
    _save_images,
    _staged_directory,
)
from gcctl.synth.render import BACKGROUNDS, COLOURS, FILLS, SHAPES, render
from gcctl.synth.world import SOURCE_KINDS, home_indices, prefer

SOURCE = "source"
SOURCE_SPLIT_SIZES = (4800, 1200, 2400)  # images per split at scale 1: train as large as Waterbirds'
SHIFT_SIZE = 1200  # images per domain shift at scale 1
SOURCE_CLASSES = SOURCE_KINDS  # sorted: the image-folder reader numbers class folders in sorted order
HOME_SHARE = {"background": 0.8, "colour": 0.5, "fill": 0.6}  # the rest spread evenly over the other values

# Colours between the twelve names, in COLOURS' order of replacement.
OTHER_PALETTE = np.array(
    [(150, 30, 90), (130, 140, 20), (20, 30, 120), (200, 170, 110), (90, 20, 60), (180, 110, 90),
     (200, 90, 255), (60, 110, 80), (200, 230, 160), (70, 50, 90), (100, 140, 170), (0, 130, 120)], dtype=np.float32
)
# Each shift's `render` keywords, and its fill share (the texture shift never draws a kind's home fill);
# every shift is its own test-only dataset `source-<name>`.
SHIFTS = {
    "v2": {},
    "outline": {"outline": True},
    "palette": {"palette": OTHER_PALETTE},
    "small": {"object_scale": 0.55},
    "texture": {"fill_share": 0.0},
}


def source_world_roots(out: str | os.PathLike) -> dict[str, Path]:
    """Where `write_source_world(out)` puts each dataset: `out/source` and `out/source-<shift>`."""
    out = Path(out)
    return {SOURCE: out / SOURCE, **{f"{SOURCE}-{shift}": out / f"{SOURCE}-{shift}" for shift in SHIFTS}}


def write_source_world(
    out: str | os.PathLike, seed: int = 0, scale: float = 1.0, size: int = 32, overwrite: bool = False
) -> dict[str, Path]:
    """Write the source task (`out/source/{train,val,test}/<shape>/`) and its domain shifts
    (`out/source-<shift>/<shape>/`, read with the image-folder reader's default test split).

    Each dataset draws from its own stream of `seed`, so the same seed writes the same bytes.
    """
    _check_scale(scale)
    roots = source_world_roots(out)
    for root in roots.values():  # refuse before rendering anything
        _check_target(root, overwrite)
    split_sizes = [_count(n * scale / len(SOURCE_CLASSES)) for n in SOURCE_SPLIT_SIZES]
    _write_folders(roots[SOURCE], dict(zip(SPLITS, split_sizes)), np.random.default_rng([seed, 0]),
                   size, overwrite, {})
    shift_size = _count(SHIFT_SIZE * scale / len(SOURCE_CLASSES))
    for stream, (shift, options) in enumerate(SHIFTS.items(), start=1):
        _write_folders(roots[f"{SOURCE}-{shift}"], {None: shift_size}, np.random.default_rng([seed, stream]),
                       size, overwrite, options)
    return roots


def draw_source(per_class: int, rng: np.random.Generator, fill_share: float = HOME_SHARE["fill"]):
    """(shape, colour, background, fill) indices of `per_class` images of every source kind, shuffled, with the
    source's home preferences (`fill_share` for the fill)."""
    kinds = np.array([SHAPES.index(name) for name in SOURCE_CLASSES])
    shapes = rng.permutation(np.repeat(kinds, per_class))
    background, colour, fill = home_indices(shapes)
    backgrounds = prefer(background, HOME_SHARE["background"], len(BACKGROUNDS), rng)
    colours = prefer(colour, HOME_SHARE["colour"], len(COLOURS), rng)
    fills = prefer(fill, fill_share, len(FILLS), rng)
    return shapes, colours, backgrounds, fills


def _write_folders(root: Path, splits: dict[str | None, int], rng: np.random.Generator, size: int,
                   overwrite: bool, render_options: dict) -> None:
    """One class folder per shape under each split folder (no split folder for the key None)."""
    with _staged_directory(root, overwrite) as staging:
        options = dict(render_options)
        fill_share = options.pop("fill_share", HOME_SHARE["fill"])
        for split, per_class in splits.items():
            shapes, colours, backgrounds, fills = draw_source(per_class, rng, fill_share)
            images = render(shapes, colours, backgrounds, rng, size=size, fills=fills, **options)
            folder = staging if split is None else staging / split
            paths = [folder / SHAPES[s] / f"{SHAPES[s]}_{k:05d}.png" for s, k in zip(shapes, _number_within(shapes))]
            for name in SOURCE_CLASSES:
                (folder / name).mkdir(parents=True)
            _save_images(images, paths, f"{root.name} {split or 'test'}", format="PNG", compress_level=1)
        write_json(staging / NAMES_SIDECAR, {"classes": list(SOURCE_CLASSES)})
