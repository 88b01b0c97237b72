"""The synthetic world's structure: which kinds of object exist, who asks about them, and what goes with what.

Built from the real setting, not from any result (docs/synthetic-world.md):
- CLIP is pretrained on web captions that name far more concepts than any downstream task. The world has
  16 kinds of object, 12 colours, 10 backgrounds, 4 surface fills, two sizes, five positions, counts and
  spatial relations (render.py draws them, corpus.py names them).
- StarFT fine-tunes on ImageNet, whose 1000 classes are not the classes of its group-shift targets (ImageNet has
  no "waterbird"). Ten kinds are the source task's classes (SOURCE_KINDS); the other six are only asked about,
  zero-shot or with a few labels, by the three group benchmarks (TARGET_KINDS, two each).
- Web photos and ImageNet alike show things where, in the colour and with the surface they usually have:
  waterbirds on water, frogs green, zebras striped. Every kind has a HOME background, colour and fill; the
  corpus and the source task prefer them (with different strengths, in corpus.py and source.py). The target
  kinds' homes are their benchmark's majority groups, as Waterbirds' majority groups are where real birds live.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gcctl.synth.render import BACKGROUNDS, COLOURS, FILLS, SHAPES


class Home(NamedTuple):
    background: str
    colour: str
    fill: str


SOURCE_KINDS = ("arrow", "chevron", "circle", "crescent", "cross", "hexagon", "pentagon", "square", "star", "triangle")
# The group benchmarks' pairs are kinds the tiny CLIP can tell apart at 32 px. The two most alike pairs of
# silhouettes (hexagon/pentagon, ellipse/semicircle: intersection over union 0.86 and 0.79), tried first as the
# stand-in for CUB's fine-grained species, were not: zero-shot at chance on average (docs/synthetic-world.md).
WATERBIRDS_KINDS = ("heart", "ellipse")  # "landbird", "waterbird"
MULTICELEBA_KINDS = ("bar", "ring")  # High_Cheekbones absent, present
SCATTERED_KINDS = ("diamond", "semicircle")  # a class made of two colour clusters
TARGET_KINDS = WATERBIRDS_KINDS + MULTICELEBA_KINDS + SCATTERED_KINDS

HOME = {
    # The source task's classes: two of them live where the Waterbirds-like kinds do (grass, water), as
    # ImageNet holds land and water animals; the rest spread over the other backgrounds.
    "circle": Home("grass", "red", "solid"),
    "square": Home("water", "blue", "solid"),
    "triangle": Home("forest", "green", "striped"),
    "cross": Home("sand", "yellow", "dotted"),
    "star": Home("snow", "orange", "solid"),
    "hexagon": Home("brick", "grey", "checkered"),
    "crescent": Home("night", "yellow", "solid"),
    "arrow": Home("road", "white", "striped"),
    "pentagon": Home("sky", "pink", "dotted"),
    "chevron": Home("wood", "brown", "checkered"),
    # Waterbirds-like: the "landbird" lives on grass, the "waterbird" on water.
    "heart": Home("grass", "red", "solid"),
    "ellipse": Home("water", "blue", "solid"),
    # MultiCelebA-like: its majority groups are (present, woman, young) and (absent, man, old), drawn as
    # (ring, snow, orange) and (bar, forest, purple) (benchmarks.MULTICELEBA_FACTORS).
    "bar": Home("forest", "purple", "solid"),
    "ring": Home("snow", "orange", "solid"),
    # Scattered: its spurious cue is a corner patch no photo has; its kinds' homes are elsewhere.
    "diamond": Home("road", "cyan", "striped"),
    "semicircle": Home("wood", "black", "dotted"),
}


def home_indices(kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(background, colour, fill) indices of the homes of SHAPES indices `kinds`."""
    table = np.array([[BACKGROUNDS.index(HOME[name].background), COLOURS.index(HOME[name].colour),
                       FILLS.index(HOME[name].fill)] for name in SHAPES])
    rows = table[np.asarray(kinds, dtype=np.int64)]
    return rows[:, 0], rows[:, 1], rows[:, 2]


def prefer(home: np.ndarray, share: float, choices: int, rng: np.random.Generator) -> np.ndarray:
    """`home` with probability `share`, otherwise one of the other `choices - 1` values, evenly."""
    away = (home + rng.integers(1, choices, size=len(home))) % choices
    return np.where(rng.random(len(home)) < share, home, away)
