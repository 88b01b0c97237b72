"""The concept check of a zero-shot model's card: how many of the synthetic world's concepts it names correctly.

Fresh images of one big object each, every factor drawn independently and evenly (no home preferences, so a
shortcut through a co-occurring factor does not help), classified zero-shot over each factor's vocabulary with
the corpus's own words: the kind among the 16 ("a photo of a {kind}."), and, with the true kind named, the colour,
the background and the patterned fill. A value is named correctly when at least half of its images are.
"""

from __future__ import annotations

import numpy as np
import torch

from gcctl.clip.preprocess import preprocess_uint8
from gcctl.clip.text import encode_texts
from gcctl.errors import GcctlError
from gcctl.synth.corpus import BACKGROUND_PHRASES, with_article
from gcctl.synth.render import BACKGROUNDS, COLOURS, FILLS, SHAPES, render

NAMED = 0.5  # a value's accuracy from which it counts as named
_BATCH = 512


def _prompts(factor: str, kind: str, values: tuple[str, ...]) -> list[str]:
    if factor == "kind":
        return [f"a photo of {with_article(value)}." for value in values]
    if factor == "background":
        return [f"a photo of {with_article(kind)} {BACKGROUND_PHRASES[value][0]}." for value in values]
    return [f"a photo of {with_article(value + ' ' + kind)}." for value in values]  # colour, fill


def check_probe(per_value: int) -> None:
    if per_value < 1:
        raise GcctlError(f"--per-value must be at least 1, got {per_value}")


def concept_check(bundle, per_value: int = 40, seed: int = 0, size: int = 32) -> dict:
    """Per factor: accuracy, each value's accuracy, and how many values are named; with the total over factors."""
    check_probe(per_value)
    rng = np.random.default_rng(seed)
    factors = {"kind": SHAPES, "colour": COLOURS, "background": BACKGROUNDS, "fill": FILLS[1:]}
    n = per_value * len(SHAPES) * 3  # every kind and, on average, every value of every factor per_value times or more
    drawn = {"kind": rng.permutation(np.arange(n) % len(SHAPES)), "colour": rng.integers(len(COLOURS), size=n),
             "background": rng.integers(len(BACKGROUNDS), size=n), "fill": rng.integers(1, len(FILLS), size=n)}
    images = render(drawn["kind"], drawn["colour"], drawn["background"], rng, size=size, fills=drawn["fill"])
    features = _image_features(bundle, images)
    truth = {**drawn, "fill": drawn["fill"] - 1}
    result = {}
    for factor, values in factors.items():
        predicted = _classify(bundle, features, drawn["kind"], factor, values)
        correct = predicted == truth[factor]
        per = {value: float(correct[truth[factor] == index].mean()) for index, value in enumerate(values)}
        result[factor] = {"accuracy": float(correct.mean()), "per_value": per,
                          "named": sum(accuracy >= NAMED for accuracy in per.values()), "values": len(values)}
    result["named"] = sum(entry["named"] for entry in result.values())
    result["concepts"] = sum(len(values) for values in factors.values())
    result["images"] = n
    return result


def _image_features(bundle, images: np.ndarray) -> torch.Tensor:
    model = bundle.model
    device = next(model.parameters()).device
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), _BATCH):
            pixels = preprocess_uint8(torch.from_numpy(images[start:start + _BATCH]), model, device)
            parts.append(model.encode_image(pixels, normalize=True).float().cpu())
    return torch.cat(parts)


def _classify(bundle, features: torch.Tensor, kinds: np.ndarray, factor: str, values: tuple[str, ...]) -> np.ndarray:
    """Each image's predicted value index; prompts other than the kind's name the image's true kind."""
    predicted = np.empty(len(features), dtype=np.int64)
    for kind in ([None] if factor == "kind" else range(len(SHAPES))):
        rows = np.arange(len(features)) if kind is None else np.flatnonzero(kinds == kind)
        texts = encode_texts(bundle.model, bundle.tokenizer, _prompts(factor, SHAPES[kind or 0], values)).cpu()
        predicted[rows] = (features[rows] @ texts.T).argmax(dim=1).numpy()
    return predicted
