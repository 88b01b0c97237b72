"""Benchmarks drawn from the synthetic world, written in the real datasets' on-disk layouts.

The real dataset adapters read them unchanged, so the whole pipeline runs end to end on a laptop.
A benchmark is built in a `<root>.partial` sibling directory and renamed into place at the end:
an interrupted run leaves no half-written benchmark behind.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from gcctl.datasets.table import NAMES_SIDECAR
from gcctl.errors import GcctlError
from gcctl.files import atomic_directory, write_json
from gcctl.runtime import progress
from gcctl.synth.corpus import FACTOR_PROMPTS
from gcctl.synth.render import BACKGROUNDS, COLOURS, SHAPES, SMALL_RADIUS, render
from gcctl.synth.world import HOME, MULTICELEBA_KINDS, SCATTERED_KINDS, WATERBIRDS_KINDS

# --- Waterbirds (Sagawa et al. 2020) -------------------------------------------------------------
WATERBIRDS_SPLIT_SIZES = (4795, 1199, 5794)  # train, val, test
WATERBIRDS_CLASSES = WATERBIRDS_KINDS  # y: 0 "landbird", 1 "waterbird"
WATERBIRDS_PLACES = tuple(HOME[name].background for name in WATERBIRDS_CLASSES)  # place: 0 land, 1 water
_WATERBIRDS_FOLDERS = tuple(f"{index:03d}.{name.capitalize()}" for index, name in enumerate(WATERBIRDS_CLASSES, start=1))

# --- MultiCelebA (Kim et al., ICML 2024, arXiv 2409.03303) ---------------------------------------
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
MULTICELEBA_TARGET = "High_Cheekbones"
# Each of the three attributes is one visual factor the pretraining captions name; value index 0 is the
# attribute's -1. The majority groups (present, woman, young) and (absent, man, old) are the two kinds' homes.
_ABSENT, _PRESENT = (HOME[name] for name in MULTICELEBA_KINDS)
MULTICELEBA_FACTORS = {
    "Male": ("background", (_PRESENT.background, _ABSENT.background)),
    "Young": ("colour", (_ABSENT.colour, _PRESENT.colour)),
    "High_Cheekbones": ("shape", MULTICELEBA_KINDS),
}
MULTICELEBA_GROUP_KEY = ("High_Cheekbones", "Male", "Young")  # the order of MULTICELEBA_TRAIN_GROUPS' keys
# Training images per (High_Cheekbones, Male, Young) group, 1 = attribute present: the subset of the
# CelebA training split MultiCelebA trains on (the selection in the authors' released code,
# github.com/Nayeong-V-Kim/multiple_spurious_correlation_by_MOO, data/multi_celebA_dataset.py).
# High cheekbones go with young women, their absence with old men; the doubly conflicting groups are tiny.
MULTICELEBA_TRAIN_GROUPS = {
    (1, 0, 1): 44528,
    (1, 1, 1): 2200,
    (1, 0, 0): 2200,
    (1, 1, 0): 110,
    (0, 0, 1): 40,
    (0, 1, 1): 800,
    (0, 0, 0): 800,
    (0, 1, 0): 16220,
}
MULTICELEBA_SPLIT_SIZES = (10000, 2000, 4000)  # train, val, test at scale 1; val/test have 8 equal groups

# --- Scattered: a class whose groups look different, and a small spurious cue ---------------------------
SCATTERED_CLASSES = SCATTERED_KINDS
SCATTERED_ATTRIBUTE = "patch"  # an 8 px corner patch of one of these textures on a random other background
SCATTERED_PATCHES = ("water", "grass")
SCATTERED_PATCH_SIZE = 8.0  # px at 32 px: 6% of the image, against Waterbirds-like's whole background
# The object's colour per (class, patch): a class's two groups differ in colour, and colour says nothing
# about the class (each colour is in both), so a class is two clusters in embedding space, not one.
SCATTERED_COLOURS = {(0, 0): "red", (0, 1): "blue", (1, 0): "blue", (1, 1): "red"}
SCATTERED_SPLIT_SIZES = (4000, 1000, 4000)  # train, val, test at scale 1; val/test have 4 equal groups
SCATTERED_MANIFEST = "manifest.csv"


def write_waterbirds(
    root: str | os.PathLike,
    seed: int = 0,
    scale: float = 1.0,
    size: int = 32,
    minority_fraction: float = 0.05,
    overwrite: bool = False,
) -> Path:
    """Write a Waterbirds-like benchmark (hearts on grass vs ellipses on water) in Waterbirds' layout.

    As Waterbirds pastes a bird into a Places landscape, each object is drawn small (SMALL_RADIUS) on its
    background. Classes are balanced in every split. In train, `minority_fraction` of each class sits on the other
    class's background; in val and test, background is independent of class (four equal groups).
    """
    root = Path(root)
    rng, y, split, place = _two_by_two_draw(root, WATERBIRDS_SPLIT_SIZES, seed, scale, minority_fraction, overwrite)
    shapes = np.array([SHAPES.index(name) for name in WATERBIRDS_CLASSES])[y]
    backgrounds = np.array([BACKGROUNDS.index(name) for name in WATERBIRDS_PLACES])[place]
    images = render(shapes, rng.integers(len(COLOURS), size=len(y)), backgrounds, rng, size=size, radius=SMALL_RADIUS)

    image_number = _number_within(y)
    place_number = _number_within(place)
    metadata = pd.DataFrame(
        {
            "img_id": np.arange(1, len(y) + 1),
            "img_filename": [
                f"{_WATERBIRDS_FOLDERS[c]}/{WATERBIRDS_CLASSES[c]}_{k:05d}.png" for c, k in zip(y, image_number)
            ],
            "y": y,
            "split": split,
            "place": place,
            # Waterbirds points at the Places image each bird was pasted on; ours names the texture.
            "place_filename": [
                f"/{WATERBIRDS_PLACES[p][0]}/{WATERBIRDS_PLACES[p]}/{k:08d}.jpg" for p, k in zip(place, place_number)
            ],
        }
    )
    with _staged_directory(root, overwrite) as staging:
        for folder in _WATERBIRDS_FOLDERS:
            (staging / folder).mkdir()
        paths = [staging / name for name in metadata["img_filename"]]
        _save_images(images, paths, "waterbirds", format="PNG", compress_level=1)
        metadata.to_csv(staging / "metadata.csv", index=False)
        names = {"classes": list(WATERBIRDS_CLASSES), "attributes": {"place": list(WATERBIRDS_PLACES)},
                 "attribute_prompts": {"place": FACTOR_PROMPTS["background"]}}
        write_json(staging / NAMES_SIDECAR, names)
    return root


def write_multiceleba(
    root: str | os.PathLike, seed: int = 0, scale: float = 1.0, size: int = 32, overwrite: bool = False
) -> Path:
    """Write a MultiCelebA-like benchmark in CelebA's official txt layout.

    Target High_Cheekbones and biases Male and Young are drawn as shape, background and colour; the
    other 37 attributes are random. Training groups follow MultiCelebA's proportions; val and test
    have all eight (High_Cheekbones, Male, Young) groups equal.
    """
    _check_scale(scale)
    root = Path(root)
    _check_target(root, overwrite)
    rng = np.random.default_rng(seed)

    groups, split = _multiceleba_groups(scale, rng)
    n = len(split)
    attributes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, len(CELEBA_ATTRIBUTES)))
    vocabularies = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS}
    drawn = {}
    for column, name in enumerate(MULTICELEBA_GROUP_KEY):
        attributes[:, CELEBA_ATTRIBUTES.index(name)] = 2 * groups[:, column] - 1
        factor, values = MULTICELEBA_FACTORS[name]
        drawn[factor] = np.array([vocabularies[factor].index(value) for value in values])[groups[:, column]]
    images = render(drawn["shape"], drawn["colour"], drawn["background"], rng, size=size)

    filenames = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    signs = np.where(attributes > 0, " 1", "-1")
    attribute_lines = [f"{name} {' '.join(row)}" for name, row in zip(filenames, signs)]
    with _staged_directory(root, overwrite) as staging:
        (staging / "img_align_celeba").mkdir()
        # No chroma subsampling: at 32 px it would bleed the object's colour (the Young factor) into the background.
        paths = [staging / "img_align_celeba" / name for name in filenames]
        _save_images(images, paths, "multiceleba", format="JPEG", quality=95, subsampling=0)
        _write_lines(staging / "list_attr_celeba.txt", [str(n), " ".join(CELEBA_ATTRIBUTES), *attribute_lines])
        _write_lines(staging / "list_eval_partition.txt", [f"{name} {s}" for name, s in zip(filenames, split)])
        value_names = {name: list(values) for name, (_, values) in MULTICELEBA_FACTORS.items()}
        biases = [name for name in MULTICELEBA_FACTORS if name != MULTICELEBA_TARGET]
        prompts = {name: FACTOR_PROMPTS[MULTICELEBA_FACTORS[name][0]] for name in biases}
        write_json(staging / NAMES_SIDECAR, {"classes": value_names[MULTICELEBA_TARGET], "attributes": value_names,
                                          "attribute_prompts": prompts})
    return root


def write_scattered(
    root: str | os.PathLike,
    seed: int = 0,
    scale: float = 1.0,
    size: int = 32,
    minority_fraction: float = 0.05,
    overwrite: bool = False,
) -> Path:
    """Write the scattered benchmark (diamond vs semicircle, spurious corner patch) as a generic manifest.

    Class k's train images mostly carry patch k (water for diamonds, grass for semicircles), `minority_fraction`
    the other; val and test have four equal groups. The minority groups are also the other colour
    (SCATTERED_COLOURS). Read it with `--dataset manifest --manifest-file manifest.csv --attribute-column patch`.
    """
    root = Path(root)
    rng, y, split, patch = _two_by_two_draw(root, SCATTERED_SPLIT_SIZES, seed, scale, minority_fraction, overwrite)
    shapes = np.array([SHAPES.index(name) for name in SCATTERED_CLASSES])[y]
    colour_of = np.array([[COLOURS.index(SCATTERED_COLOURS[label, p]) for p in (0, 1)] for label in (0, 1)])
    patches = np.array([BACKGROUNDS.index(name) for name in SCATTERED_PATCHES])
    # The background is any texture that no patch uses, so the patch is the only spurious signal.
    backgrounds = np.array([i for i, name in enumerate(BACKGROUNDS) if name not in SCATTERED_PATCHES])
    images = render(shapes, colour_of[y, patch], backgrounds[rng.integers(len(backgrounds), size=len(y))], rng,
                    size=size, cues=patches[patch], cue_size=SCATTERED_PATCH_SIZE)

    paths = [f"images/{i:06d}.png" for i in range(1, len(y) + 1)]
    manifest = pd.DataFrame({
        "path": paths,
        "y": np.array(SCATTERED_CLASSES)[y],
        "split": np.array(["train", "val", "test"])[split],
        SCATTERED_ATTRIBUTE: np.array(SCATTERED_PATCHES)[patch],
    })
    with _staged_directory(root, overwrite) as staging:
        (staging / "images").mkdir()
        _save_images(images, [staging / path for path in paths], "scattered", format="PNG", compress_level=1)
        manifest.to_csv(staging / SCATTERED_MANIFEST, index=False)
        names = {"classes": list(SCATTERED_CLASSES), "attributes": {SCATTERED_ATTRIBUTE: list(SCATTERED_PATCHES)}}
        write_json(staging / NAMES_SIDECAR, names)
    return root


def _check_scale(scale: float) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise GcctlError(f"scale {scale} must be a positive number (1.0 = the default size)")


def _count(expected: float) -> int:
    """Round half up, but keep every group present: an empty group would make its metrics undefined."""
    return max(1, math.floor(expected + 0.5))


def _two_by_two_draw(root: Path, split_sizes, seed: int, scale: float, minority_fraction: float, overwrite: bool):
    """Check the options and the target (before any rendering), then draw a two-class, two-value benchmark's rows
    in a shuffled order: the generator (for the rendering that follows), y, split and the attribute."""
    _check_scale(scale)
    if not 0 <= minority_fraction <= 0.5:
        raise GcctlError(f"minority fraction {minority_fraction} must be between 0 and 0.5")
    _check_target(root, overwrite)
    rng = np.random.default_rng(seed)
    y, split, attribute = _two_by_two_groups(split_sizes, scale, minority_fraction)
    order = rng.permutation(len(y))
    return rng, y[order], split[order], attribute[order]


def _two_by_two_groups(
    split_sizes: Sequence[int], scale: float, minority_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes by a two-valued attribute: class, split and attribute per image, train then val then test.

    Train: classes balanced, `minority_fraction` of class k with attribute 1 - k. Val, test: four equal groups.
    """
    y, split, place = [], [], []
    for split_index, split_size in enumerate(split_sizes):
        for label in (0, 1):
            if split_index == 0:
                per_class = _count(split_size * scale / 2)
                minority = _count(per_class * minority_fraction) if minority_fraction > 0 else 0
                places = [label] * (per_class - minority) + [1 - label] * minority
            else:
                per_group = _count(split_size * scale / 4)
                places = [0] * per_group + [1] * per_group
            y += [label] * len(places)
            split += [split_index] * len(places)
            place += places
    return np.array(y), np.array(split), np.array(place)


def _multiceleba_groups(scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(High_Cheekbones, Male, Young) as 0/1 columns and the CelebA partition, train then val then test."""
    total = sum(MULTICELEBA_TRAIN_GROUPS.values())
    train_size, val_size, test_size = (size * scale for size in MULTICELEBA_SPLIT_SIZES)
    per_split = [
        {group: _count(count / total * train_size) for group, count in MULTICELEBA_TRAIN_GROUPS.items()},
        {group: _count(val_size / 8) for group in MULTICELEBA_TRAIN_GROUPS},
        {group: _count(test_size / 8) for group in MULTICELEBA_TRAIN_GROUPS},
    ]
    groups, split = [], []
    for split_index, counts in enumerate(per_split):
        rows = np.array([group for group, count in counts.items() for _ in range(count)])
        groups.append(rows[rng.permutation(len(rows))])
        split += [split_index] * len(rows)
    return np.concatenate(groups), np.array(split)


def _number_within(labels: np.ndarray) -> np.ndarray:
    """1-based running number of each item among the items with the same label."""
    numbers = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        chosen = labels == label
        numbers[chosen] = np.arange(1, chosen.sum() + 1)
    return numbers


def _save_images(images: np.ndarray, paths: Sequence[Path], description: str, **save_options) -> None:
    with progress() as bar:
        task = bar.add_task(description, total=len(paths))
        for image, path in zip(images, paths):
            Image.fromarray(image).save(path, **save_options)
            bar.advance(task)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def _check_target(root: Path, overwrite: bool) -> None:
    """Refuse before any rendering, so a refused run costs nothing."""
    if root.exists() and not root.is_dir():
        raise GcctlError(f"{root} is a file; give a directory for the benchmark")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise GcctlError(f"{root} exists and is not empty; choose an empty directory or overwrite it (--overwrite)")


@contextlib.contextmanager
def _staged_directory(root: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty `<root>.partial` directory; on success it replaces `root`, on failure it is removed."""
    _check_target(root, overwrite)
    with atomic_directory(root) as staging:
        yield staging
