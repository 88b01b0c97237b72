"""RoboShot (Adila et al., ICLR 2024, "Zero-shot robustification of zero-shot models", arXiv 2309.04344).
Training-free; the image embeddings change, the class prompts are zeroshot's.

An insight is a pair of texts (a, b); its concept direction is e(a) - e(b). Harmful insights contrast the
spurious attribute's values, helpful ones the classes' defining features. The paper orthonormalises each
kind (QR) and updates a normalised image embedding x, renormalising after every step:
  for each harmful basis vector v: x <- x - <x, v> v        (remove the harmful component)
  for each helpful basis vector u: x <- x + <x, u> u        (boost the helpful component)
With orthonormal bases these steps compose to x -> normalise((I + U)(I - H) x), H and U the projectors onto
the harmful and helpful spans: a `Projection` transform. (A helpful direction that overlaps the harmful span
brings part of its component back, as in the paper.)

The paper asks a language model for insights; here they come, without one, from the store's names:
harmful pairs = one class's prompts for two values of an attribute ("a photo of a circle on grass." vs
"... on water."), helpful pairs = two classes' prompts for one value ("a photo of a circle on grass." vs
"a photo of a square on grass."), from the `--attribute-prompt` templates; or from a file (`read_insights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gcctl.clip.text import class_text_features, class_words, encode_texts
from gcctl.errors import GcctlError
from gcctl.files import read_lines
from gcctl.methods.base import FitResult, attribute_prompts_setting
from gcctl.methods.data import TrainingData, split_metrics
from gcctl.methods.spurious import attribute_texts, span_projector
from gcctl.methods.transforms import Projection
from gcctl.methods.zeroshot import ZeroShotConfig, text_classifier
from gcctl.settings import setting

INSIGHT_KINDS = ("harmful", "helpful")
INSIGHT_LINE = "harmful|helpful<TAB>text a<TAB>text b"


@dataclass
class RoboShotConfig(ZeroShotConfig):
    attribute_prompts: list[str] = attribute_prompts_setting()  # for the default insights
    insights: str | None = setting(None, help="A text file of insight pairs, one 'harmful|helpful<TAB>text a<TAB>text b' "
                                   "per line (# comments); default: harmful = a class's prompts for two values of an "
                                   "attribute, helpful = two classes' prompts for one value.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.insights is not None:
            if self.attribute_prompts:
                raise GcctlError("--insights replaces the insights built from --attribute-prompt; give one of them")
            read_insights(self.insights)  # a bad file is refused before any work


def read_insights(path: str | Path) -> dict[str, list[tuple[str, str]]]:
    """Insight pairs by kind from a UTF-8 text file: one `harmful|helpful<TAB>text a<TAB>text b` per line;
    blank lines and lines starting with # are skipped."""
    lines = read_lines(path, "insight file", missing=f"give a text file of '{INSIGHT_LINE}' lines",
                       content=f"its '{INSIGHT_LINE}' lines")
    pairs: dict[str, list[tuple[str, str]]] = {kind: [] for kind in INSIGHT_KINDS}
    for number, line in lines:
        parts = [part.strip() for part in line.split("\t")]
        if len(parts) != 3 or parts[0] not in INSIGHT_KINDS or not all(parts[1:]):
            raise GcctlError(f"insight file {path} line {number} is not '{INSIGHT_LINE}' (tab-separated): {line[:80]!r}")
        if parts[1] == parts[2]:
            raise GcctlError(f"insight file {path} line {number} pairs '{parts[1]}' with itself; "
                             "an insight's direction is the difference of two different texts")
        pairs[parts[0]].append((parts[1], parts[2]))
    if not any(pairs.values()):
        raise GcctlError(f"insight file {path} has no insight pairs; add '{INSIGHT_LINE}' lines")
    return pairs


def default_insights(texts: dict[str, list[list[str]]]) -> dict[str, list[tuple[str, str]]]:
    """Insights from attribute prompts `texts[attribute][value][class]`: harmful pairs differ only in the
    value, helpful pairs only in the class."""
    pairs: dict[str, list[tuple[str, str]]] = {kind: [] for kind in INSIGHT_KINDS}
    for per_value in texts.values():
        values, classes = len(per_value), len(per_value[0])
        for c in range(classes):
            pairs["harmful"] += [(per_value[i][c], per_value[j][c]) for i in range(values) for j in range(i + 1, values)]
        for v in range(values):
            pairs["helpful"] += [(per_value[v][a], per_value[v][b]) for a in range(classes) for b in range(a + 1, classes)]
    return pairs


def insight_directions(bundle, pairs: list[tuple[str, str]], dim: int) -> torch.Tensor:
    """Concept directions e(a) - e(b) [len(pairs), dim] of normalised text embeddings (float64, on the CPU)."""
    if not pairs:
        return torch.zeros((0, dim), dtype=torch.float64)
    first, second = (encode_texts(bundle.model, bundle.tokenizer, [pair[k] for pair in pairs]).double().cpu() for k in (0, 1))
    return first - second


def roboshot_matrix(harmful: torch.Tensor, helpful: torch.Tensor) -> torch.Tensor:
    """(I + U)(I - H) [D, D]: the paper's rejection of the harmful directions [k, D], then acceptance of the
    helpful ones [m, D], as one linear map (the renormalisations only scale)."""
    eye = torch.eye(harmful.shape[1], dtype=torch.float64)
    return (eye + span_projector(helpful)) @ (eye - span_projector(harmful))


def fit(data: TrainingData, config: RoboShotConfig, *, seed: int, bundle, device: torch.device) -> FitResult:
    words = class_words(config.class_names, data.class_names)
    if config.insights is not None:
        insights = read_insights(config.insights)
    else:
        needed_by = "roboshot (without --insights)"
        insights = default_insights(attribute_texts(data.vocabulary, words, config.attribute_prompts, needed_by))
    text = class_text_features(bundle, words, config.templates).to(device)
    harmful, helpful = (insight_directions(bundle, insights[kind], text.shape[1]) for kind in INSIGHT_KINDS)
    classifier = text_classifier(bundle, text, Projection(roboshot_matrix(harmful, helpful)).to(device))
    val_metrics = split_metrics(classifier.predict(data.val.features), data.val, data.vocabulary)
    recorded = {kind: [list(pair) for pair in insights[kind]] for kind in INSIGHT_KINDS}
    return FitResult(classifier, learned={}, selection={"select_by": None, "val_metrics": val_metrics, "insights": recorded})
