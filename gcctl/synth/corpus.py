"""The image-caption corpus a tiny CLIP is pretrained on: the synthetic world's stand-in for web alt-text.

Like a web corpus it names many more concepts than any downstream task uses, in varied and incomplete words,
with a long tail (world.py says why the world is built so):
- scenes: one object (big, or small at one of five positions), two or three of a kind, or two kinds side by
  side or one above the other, the partner most often the kind's companion (some pairs co-occur more);
- kinds drawn from a long-tailed frequency (weight 1/sqrt(rank); ranks a permutation drawn from the seed);
  every object is on its kind's home background, in its home colour and fill with CORPUS_HOME_SHARE, else
  in another, evenly;
- captions: one of TEMPLATES around a description that names each attribute only some of the time
  (MENTION), with paraphrased words for sizes, fills, backgrounds, positions and relations.
The corpus records, per image, the first object's kind, colour, background and fill and the scene's kind, for
the model card's concept check (`gcctl.clip.card`).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gcctl.errors import GcctlError
from gcctl.files import atomic_path
from gcctl.synth.render import BACKGROUNDS, BIG_RADIUS, COLOURS, FILLS, SHAPES, SMALL_RADIUS, render_scene
from gcctl.synth.world import home_indices, prefer

CORPUS_FILE = "corpus.npz"
# How one factor's value reads in a caption like the corpus's when the kind is the class and the other factors
# are left out: what benchmarks record as their attributes' prompts (gcctl-names.json's attribute_prompts).
FACTOR_PROMPTS = {"colour": "a photo of a {value} {class}.", "background": "a photo of a {class} on {value}."}
SCENES = ("single", "several", "pair")
SCENE_SHARES = (0.7, 0.15, 0.15)
SMALL_SHARE = 0.25  # single objects drawn small, at one of POSITIONS
CORPUS_HOME_SHARE = {"background": 0.6, "colour": 0.5, "fill": 0.6}
COMPANION_SHARE = 0.5  # a pair's second kind is the first's companion this often
MENTION = {"colour": 0.6, "fill": 0.5, "small": 0.6, "big": 0.15, "background": 0.5, "position": 0.6,
           "pair_colour": 0.5, "pair_background": 0.3}

TEMPLATES = (
    "a photo of {}.", "a picture of {}.", "an image of {}.", "{}.", "there is {}.", "this is {}.",
    "a close-up photo of {}.", "a good photo of {}.", "a rendering of {}.", "a cropped photo of {}.",
    "a bright photo of {}.", "my picture of {}.",
)
BACKGROUND_PHRASES = {
    "water": ("on water", "in the water", "on a lake"),
    "grass": ("on grass", "on the grass", "in a field"),
    "sand": ("on sand", "on the beach", "in the desert"),
    "snow": ("on snow", "in the snow", "on ice"),
    "forest": ("on forest", "in a forest", "among trees"),
    "sky": ("on sky", "in the sky", "against the sky"),
    "brick": ("on brick", "on a brick wall", "against bricks"),
    "road": ("on road", "on the road", "on asphalt"),
    "wood": ("on wood", "on a wooden table", "on the floor"),
    "night": ("on night", "at night", "in the dark"),
}
FILL_WORDS = {"solid": (), "striped": ("striped",), "dotted": ("dotted", "spotted"), "checkered": ("checkered",)}
SIZE_WORDS = {"small": ("small", "tiny"), "big": ("big", "large")}
POSITIONS = {  # centre (x, y) at 32 px, and how a caption says it
    "centre": ((16, 16), ("in the middle",)),
    "left": ((9, 16), ("on the left",)),
    "right": ((23, 16), ("on the right",)),
    "top": ((16, 9), ("at the top",)),
    "bottom": ((16, 23), ("at the bottom",)),
}
RELATIONS = {"beside": ("left of", "to the left of", "next to"), "above": ("above", "over")}
COUNT_WORDS = {2: "two", 3: "three"}
_QUADRANTS = np.array([(8.5, 8.5), (23.5, 8.5), (8.5, 23.5), (23.5, 23.5)])
_ARRAYS = ("images", "captions", "kind", "colour", "background", "fill", "scene",
           "kinds", "colours", "backgrounds", "fills", "scenes")


@dataclass(frozen=True)
class Corpus:
    images: np.ndarray  # uint8 [N, S, S, 3]
    captions: np.ndarray  # unicode [N]
    kind: np.ndarray  # int [N]: the first object's index into kinds
    colour: np.ndarray
    background: np.ndarray
    fill: np.ndarray
    scene: np.ndarray  # index into scenes
    kinds: tuple[str, ...]
    colours: tuple[str, ...]
    backgrounds: tuple[str, ...]
    fills: tuple[str, ...]
    scenes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)


def plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


def with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def caption_words() -> set[str]:
    """Every word (and punctuation mark) a corpus caption can hold: what a tokenizer for it must know."""
    texts = [*TEMPLATES, *SHAPES, *map(plural, SHAPES), *COLOURS, *COUNT_WORDS.values(), "a an"]
    for table in (BACKGROUND_PHRASES, FILL_WORDS, SIZE_WORDS, RELATIONS):
        texts += [phrase for phrases in table.values() for phrase in phrases]
    texts += [phrase for _, phrases in POSITIONS.values() for phrase in phrases]
    return {word for text in texts for word in text.replace("{}", " ").replace(".", " . ").split()}


def write_corpus(out_dir: str | os.PathLike, n: int = 50000, seed: int = 0, size: int = 32) -> Path:
    """Render `n` captioned scenes to `out_dir/corpus.npz`; returns that path. The same seed writes the same bytes."""
    if n < 1:
        raise GcctlError(f"corpus size {n} must be at least 1; pass a positive --corpus-size")
    rng = np.random.default_rng(seed)
    frequency = 1 / np.sqrt(1 + rng.permutation(len(SHAPES)))  # kind i's weight 1/sqrt(rank)
    frequency /= frequency.sum()
    companion = rng.permutation(len(SHAPES))
    companion = np.where(companion == np.arange(len(SHAPES)), (companion + 1) % len(SHAPES), companion)
    scene = rng.choice(len(SCENES), size=n, p=SCENE_SHARES)
    first = _objects(rng.choice(len(SHAPES), size=n, p=frequency), rng)
    partner = np.where(rng.random(n) < COMPANION_SHARE, companion[first["kind"]], rng.choice(len(SHAPES), size=n, p=frequency))
    partner = np.where(partner == first["kind"], companion[first["kind"]], partner)
    second = _objects(partner, rng)
    layers, mentions = _layout(scene, first, second, rng)
    images = render_scene(first["background"], layers, rng, size=size)
    captions = np.array([_caption(i, scene[i], first, second, mentions, rng) for i in range(n)])
    arrays = {"images": images, "captions": captions, "kind": first["kind"], "colour": first["colour"],
              "background": first["background"], "fill": first["fill"], "scene": scene,
              "kinds": np.array(SHAPES), "colours": np.array(COLOURS), "backgrounds": np.array(BACKGROUNDS),
              "fills": np.array(FILLS), "scenes": np.array(SCENES)}
    path = Path(out_dir) / CORPUS_FILE
    with atomic_path(path) as tmp:
        _save_npz(tmp, arrays)
    return path


def _objects(kinds: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each object's background, colour and fill, from its kind's home (the background matters for the first only)."""
    homes = dict(zip(("background", "colour", "fill"), home_indices(kinds)))
    choices = {"background": len(BACKGROUNDS), "colour": len(COLOURS), "fill": len(FILLS)}
    drawn = {name: prefer(homes[name], CORPUS_HOME_SHARE[name], choices[name], rng) for name in choices}
    return {"kind": kinds, **drawn}


def _layout(scene: np.ndarray, first: dict, second: dict, rng: np.random.Generator) -> tuple[list[dict], dict]:
    """Where each scene's objects go (four layers: the first object, two copies of it, the pair's partner),
    and the geometry-dependent words: size, position, count, relation."""
    n = len(scene)
    single, several, pair = (scene == index for index in range(len(SCENES)))
    small = single & (rng.random(n) < SMALL_SHARE)
    position = rng.integers(len(POSITIONS), size=n)
    position_xy = np.array([xy for xy, _ in POSITIONS.values()], dtype=np.float64)[position]
    count = rng.integers(2, 4, size=n)
    quadrants = np.argsort(rng.random((n, len(_QUADRANTS))), axis=1)[:, :3]
    above = rng.random(n) < 0.5
    nudge = rng.uniform(-1.5, 1.5, size=(3, n, 2))
    centre = np.full((n, 2), 16.0) + rng.uniform(-3, 3, size=(n, 2))
    radius = rng.uniform(*BIG_RADIUS, size=n)
    small_radius = rng.uniform(*SMALL_RADIUS, size=(3, n))
    # Pairs: the first object left of (or above) the second.
    offset = np.where(above[:, None], [[0.0, -7.0]], [[-7.0, 0.0]])
    big = single & ~small
    first_xy = np.where(big[:, None], centre, 16 + offset + nudge[0])
    first_xy = np.where((single & small)[:, None], position_xy + nudge[0], first_xy)
    first_xy = np.where(several[:, None], _QUADRANTS[quadrants[:, 0]] + nudge[0], first_xy)
    copy_radius = np.minimum(small_radius, 5.0)  # copies fit their quadrant
    layers = [
        {**_pick(first), "centre": first_xy, "radius": np.where(big, radius, np.where(several, copy_radius[0], small_radius[0])),
         "present": np.ones(n, dtype=bool)},
        {**_pick(first), "centre": _QUADRANTS[quadrants[:, 1]] + nudge[1], "radius": copy_radius[1], "present": several},
        {**_pick(first), "centre": _QUADRANTS[quadrants[:, 2]] + nudge[2], "radius": copy_radius[2],
         "present": several & (count == 3)},
    ]
    layers.append({**_pick(second), "centre": 16 - offset + nudge[1], "radius": small_radius[1], "present": pair})
    return layers, {"small": small, "position": position, "count": count, "above": above}


def _pick(objects: dict) -> dict:
    return {"shape": objects["kind"], "colour": objects["colour"], "fill": objects["fill"]}


def _caption(i: int, scene: int, first: dict, second: dict, geometry: dict, rng: np.random.Generator) -> str:
    """Image i's caption: a template around a description that names some of what is there."""
    said = rng.random(len(MENTION)) < np.array(list(MENTION.values()))
    say = {name: int(flag) for name, flag in zip(MENTION, said)}
    choose = (lambda options: options[rng.integers(len(options))])
    kind, colour, fill = SHAPES[first["kind"][i]], COLOURS[first["colour"][i]], FILLS[first["fill"][i]]
    surface = [colour] * say["colour"] + ([choose(FILL_WORDS[fill])] if say["fill"] and FILL_WORDS[fill] else [])
    background = [choose(BACKGROUND_PHRASES[BACKGROUNDS[first["background"][i]]])]
    if SCENES[scene] == "single":
        size = "small" if geometry["small"][i] else "big"
        words = [choose(SIZE_WORDS[size])] * say[size] + surface + [kind]
        text = with_article(" ".join(words + background * say["background"]))
        name, (_, phrases) = list(POSITIONS.items())[geometry["position"][i]]
        if size == "small" and name != "centre" and say["position"]:
            text += " " + choose(phrases)
    elif SCENES[scene] == "several":
        words = [COUNT_WORDS[int(geometry["count"][i])], *surface, plural(kind)]
        text = " ".join(words + background * say["background"])
    else:
        other = SHAPES[second["kind"][i]]
        partner_colour = [COLOURS[second["colour"][i]]] * say["pair_colour"]
        relation = choose(RELATIONS["above" if geometry["above"][i] else "beside"])
        words = [with_article(" ".join([colour] * say["pair_colour"] + [kind])), relation,
                 with_article(" ".join(partner_colour + [other]))]
        text = " ".join(words + background * say["pair_background"])
    return choose(TEMPLATES).format(text)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` with fixed member timestamps: the same corpus is the same bytes, so DVC sees an unchanged
    dependency when the synth stage reruns, and pretraining is not repeated (np.savez stamps the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)


def load_corpus(path: str | os.PathLike) -> Corpus:
    path = Path(path)
    if path.is_dir():
        path = path / CORPUS_FILE
    if not path.is_file():
        raise GcctlError(f"corpus file {path} not found; check the path or write the corpus first")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in _ARRAYS if name not in data.files]
            if missing:
                raise GcctlError(f"{path} is not a gcctl corpus: missing {', '.join(missing)}; write it again")
            arrays = {name: data[name] for name in _ARRAYS}
    except (OSError, ValueError) as error:
        raise GcctlError(f"cannot read corpus {path} ({error}); write it again") from error
    vocabularies = {name: tuple(arrays.pop(name).tolist()) for name in ("kinds", "colours", "backgrounds", "fills", "scenes")}
    return Corpus(**arrays, **vocabularies)
