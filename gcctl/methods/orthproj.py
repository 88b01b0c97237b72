"""Orthogonal projection of spurious directions (Chuang et al. 2023, "Debiasing vision-language models via
biased prompts", arXiv 2302.00070): Orth-Proj, and Orth-Cali with `calibrate`. Training-free; only the class
text embeddings change, z_c -> normalise(P z_c), the image embeddings are untouched.

- Orth-Proj: P0 = I - (projector onto the span of the spurious prompts' embeddings).
- Orth-Cali: P minimises ||P - P0||² + λ/|S| Σ_(i,j)∈S ||P z_i - P z_j||² over the pairs S of prompts that
  differ only in the spurious value (same class, two values of one attribute); its closed form is
  P = P0 (I + λ M)⁻¹ with M = 1/|S| Σ (z_i - z_j)(z_i - z_j)ᵀ. P's range stays inside P0's, so the class
  embeddings keep no component on the spurious span either way.

The spurious prompts come from the store's value names through `--attribute-prompt` (gcctl.clip.captions).
The paper's spurious prompts name the value alone ("This is a water background."); ours name a class too
("a photo of a circle on water."), and projecting those out would remove the classes with them. A value's
spurious embedding is therefore the mean of its prompts over the classes, which is class-neutral.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gcctl.clip.text import class_text_features, class_words
from gcctl.errors import GcctlError
from gcctl.methods.base import FitResult, attribute_prompts_setting
from gcctl.methods.data import TrainingData, split_metrics
from gcctl.methods.spurious import attribute_texts, prompt_embeddings, span_projector
from gcctl.methods.zeroshot import ZeroShotConfig, text_classifier
from gcctl.settings import setting


@dataclass
class OrthProjConfig(ZeroShotConfig):
    attribute_prompts: list[str] = attribute_prompts_setting()
    calibrate: bool = setting(False, flag="--calibrate/--no-calibrate", help="Orth-Cali: the projection calibrated "
                              "(closed form) so that prompts differing only in the spurious value agree; default: the "
                              "plain orthogonal projection.")
    # The paper names no default; its code's --lam is 1000.
    calibration_lambda: float = setting(1000.0, positive=True, help="--calibrate: λ, the calibration loss's weight.")


def orthogonal_projection(embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    """P0 [D, D]: the projection onto the complement of the span of every value's class-mean embedding."""
    spurious = torch.cat([per_value.mean(dim=1) for per_value in embeddings.values()])
    return torch.eye(spurious.shape[1], dtype=torch.float64) - span_projector(spurious)


def matched_pair_differences(embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    """z_i - z_j [|S|, D] for the positive pairs S: the same class, two values of one attribute."""
    rows = []
    for per_value in embeddings.values():
        for i in range(len(per_value)):
            for j in range(i + 1, len(per_value)):
                rows.append(per_value[i] - per_value[j])  # [classes, D]
    if not rows:
        raise GcctlError("--calibrate pairs prompts of two values of an attribute, but every attribute of the store "
                         "has one value; drop --calibrate")
    return torch.cat(rows)


def calibrated_projection(p0: torch.Tensor, differences: torch.Tensor, lam: float) -> torch.Tensor:
    """Orth-Cali's closed form P0 (I + λ M)⁻¹, M the mean outer product of the pair differences."""
    m = differences.T @ differences / len(differences)
    g = torch.eye(len(m), dtype=m.dtype) + lam * m
    return torch.linalg.solve(g, p0.T).T  # g is symmetric: P0 g⁻¹ = (g⁻¹ P0ᵀ)ᵀ


def fit(data: TrainingData, config: OrthProjConfig, *, seed: int, bundle, device: torch.device) -> FitResult:
    words = class_words(config.class_names, data.class_names)
    texts = attribute_texts(data.vocabulary, words, config.attribute_prompts, "orthproj")
    embeddings = prompt_embeddings(bundle, texts)
    projection = orthogonal_projection(embeddings)
    if config.calibrate:
        projection = calibrated_projection(projection, matched_pair_differences(embeddings), config.calibration_lambda)
    classes = class_text_features(bundle, words, config.templates).double().cpu()
    text = F.normalize(classes @ projection.T, dim=-1).float().to(device)
    classifier = text_classifier(bundle, text)
    val_metrics = split_metrics(classifier.predict(data.val.features), data.val, data.vocabulary)
    return FitResult(classifier, learned={"projection": projection.float()},
                     selection={"select_by": None, "val_metrics": val_metrics, "spurious_prompts": texts})
