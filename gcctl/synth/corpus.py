"""The image-caption corpus a tiny CLIP is pretrained on: every (shape, colour, background) equally often."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gcctl.errors import GcctlError
from gcctl.files import atomic_path
from gcctl.synth.render import BACKGROUNDS, COLOURS, SHAPES, render

CORPUS_FILE = "corpus.npz"
CAPTION_TEMPLATE = "a photo of a {colour} {shape} on {background}."
# How one factor's value reads in a caption like the corpus's when the shape is the class and the other factors
# are left out: what benchmarks record as their attributes' prompts (gcctl-names.json's attribute_prompts).
FACTOR_PROMPTS = {"colour": "a photo of a {value} {class}.", "background": "a photo of a {class} on {value}."}
_ARRAYS = ("images", "captions", "shape", "colour", "background", "shapes", "colours", "backgrounds")


@dataclass(frozen=True)
class Corpus:
    images: np.ndarray  # uint8 [N, S, S, 3]
    captions: np.ndarray  # unicode [N]
    shape: np.ndarray  # int [N], index into shapes
    colour: np.ndarray
    background: np.ndarray
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    backgrounds: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)


def caption(shape: str, colour: str, background: str) -> str:
    return CAPTION_TEMPLATE.format(shape=shape, colour=colour, background=background)


def write_corpus(out_dir: str | os.PathLike, n: int = 35000, seed: int = 0, size: int = 32) -> Path:
    """Render `n` captioned images to `out_dir/corpus.npz`; returns that path.

    Combinations are dealt round-robin then shuffled, so each of the 216 appears n // 216 or
    n // 216 + 1 times.
    """
    if n < 1:
        raise GcctlError(f"corpus size {n} must be at least 1; pass a positive --n")
    rng = np.random.default_rng(seed)
    n_combos = len(SHAPES) * len(COLOURS) * len(BACKGROUNDS)
    combo = rng.permutation(np.arange(n) % n_combos)
    shape, rest = np.divmod(combo, len(COLOURS) * len(BACKGROUNDS))
    colour, background = np.divmod(rest, len(BACKGROUNDS))
    images = render(shape, colour, background, rng, size=size)
    captions = np.array([caption(SHAPES[s], COLOURS[c], BACKGROUNDS[b]) for s, c, b in zip(shape, colour, background)])

    arrays = {"images": images, "captions": captions, "shape": shape, "colour": colour, "background": background,
              "shapes": np.array(SHAPES), "colours": np.array(COLOURS), "backgrounds": np.array(BACKGROUNDS)}
    path = Path(out_dir) / CORPUS_FILE
    with atomic_path(path) as tmp:
        _save_npz(tmp, arrays)
    return path


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
    return Corpus(
        images=arrays["images"],
        captions=arrays["captions"],
        shape=arrays["shape"],
        colour=arrays["colour"],
        background=arrays["background"],
        shapes=tuple(arrays["shapes"].tolist()),
        colours=tuple(arrays["colours"].tolist()),
        backgrounds=tuple(arrays["backgrounds"].tolist()),
    )
