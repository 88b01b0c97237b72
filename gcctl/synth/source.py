"""The synthetic world's source task and its domain shifts, written as image folders (StarFT's protocol in miniature).

StarFT fine-tunes on a large source task (ImageNet) and reads the weights zero-shot on domain shifts of the
source and on group shifts it never trained on. Here the source task is "which of the six shapes", with
colour and background varied; like a natural source it has spurious structure: each shape is most often
seen on its home background and in its home colour. The homes are the majority pairings of the
group-shift targets, as real birds mostly sit where Waterbirds' majority groups put them: circle on grass
and square on water (the Waterbirds-like benchmark), triangle in forest and purple, star on snow and
orange (MultiCelebA-like). Fine-tuning that leans on the homes is what costs group robustness there.
The shares are strong enough for that to happen with the tiny CLIP: at a milder 0.5/0.4 the source
mostly taught shape, and FT gained worst-group accuracy on both targets (docs/finetuning.md, the source world).

The domain shifts are test-only renderings of the same task: a fresh sample of the same distribution
(ImageNet-V2), outlines only (ImageNet-Sketch), colours outside the six (ImageNet-R's other renditions),
small objects (ImageNet-A's hard cases).
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
from gcctl.synth.render import BACKGROUNDS, COLOURS, SHAPES, render

SOURCE = "source"
SOURCE_SPLIT_SIZES = (4800, 1200, 2400)  # images per split at scale 1: train as large as Waterbirds'
SHIFT_SIZE = 1200  # images per domain shift at scale 1
SOURCE_CLASSES = tuple(sorted(SHAPES))  # the image-folder reader numbers class folders in sorted order

HOME_BACKGROUND = {"circle": "grass", "square": "water", "triangle": "forest", "star": "snow", "cross": "sand", "ring": "sky"}
HOME_COLOUR = {"circle": "red", "square": "blue", "triangle": "purple", "star": "orange", "cross": "green", "ring": "yellow"}
HOME_BACKGROUND_SHARE = 0.8  # the rest spread evenly over the other five backgrounds
HOME_COLOUR_SHARE = 0.5

# Colours none of the six names: pink, teal, brown, grey, black, cyan (in COLOURS' order of replacement).
OTHER_PALETTE = np.array(
    [(245, 150, 190), (0, 140, 140), (125, 75, 35), (130, 130, 130), (25, 25, 25), (60, 220, 230)], dtype=np.float32
)
# Each shift's `render` keywords; every shift is its own test-only dataset `source-<name>`.
SHIFTS = {
    "v2": {},
    "outline": {"outline": True},
    "palette": {"palette": OTHER_PALETTE},
    "small": {"object_scale": 0.55},
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
    split_sizes = [_count(n * scale / len(SHAPES)) for n in SOURCE_SPLIT_SIZES]
    _write_folders(roots[SOURCE], dict(zip(SPLITS, split_sizes)), np.random.default_rng([seed, 0]),
                   size, overwrite, {})
    shift_size = _count(SHIFT_SIZE * scale / len(SHAPES))
    for stream, (shift, options) in enumerate(SHIFTS.items(), start=1):
        _write_folders(roots[f"{SOURCE}-{shift}"], {None: shift_size}, np.random.default_rng([seed, stream]),
                       size, overwrite, options)
    return roots


def draw_source(per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shape, colour, background) indices of `per_class` images of every shape, shuffled, with the source's
    home background and colour preferences."""
    shapes = rng.permutation(np.repeat(np.arange(len(SHAPES)), per_class))
    homes = [
        np.array([vocabulary.index(home[name]) for name in SHAPES])[shapes]
        for vocabulary, home in ((COLOURS, HOME_COLOUR), (BACKGROUNDS, HOME_BACKGROUND))
    ]
    colours, backgrounds = (
        _prefer(home, share, len(vocabulary), rng)
        for home, share, vocabulary in zip(homes, (HOME_COLOUR_SHARE, HOME_BACKGROUND_SHARE), (COLOURS, BACKGROUNDS))
    )
    return shapes, colours, backgrounds


def _prefer(home: np.ndarray, share: float, choices: int, rng: np.random.Generator) -> np.ndarray:
    """`home` with probability `share`, otherwise one of the other `choices - 1` values, evenly."""
    away = (home + rng.integers(1, choices, size=len(home))) % choices
    return np.where(rng.random(len(home)) < share, home, away)


def _write_folders(root: Path, splits: dict[str | None, int], rng: np.random.Generator, size: int,
                   overwrite: bool, render_options: dict) -> None:
    """One class folder per shape under each split folder (no split folder for the key None)."""
    with _staged_directory(root, overwrite) as staging:
        for split, per_class in splits.items():
            shapes, colours, backgrounds = draw_source(per_class, rng)
            images = render(shapes, colours, backgrounds, rng, size=size, **render_options)
            folder = staging if split is None else staging / split
            paths = [folder / SHAPES[s] / f"{SHAPES[s]}_{k:05d}.png" for s, k in zip(shapes, _number_within(shapes))]
            for name in SHAPES:
                (folder / name).mkdir(parents=True)
            _save_images(images, paths, f"{root.name} {split or 'test'}", format="PNG", compress_level=1)
        write_json(staging / NAMES_SIDECAR, {"classes": list(SOURCE_CLASSES)})
