"""Zero-shot CLIP: one text prompt per class, or an ensemble of templates averaged per class."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gcctl.clip.captions import check_template
from gcctl.clip.text import class_text_features, class_words, logit_scale
from gcctl.methods.base import (
    Classifier,
    FitResult,
    class_names_setting,
    templates_setting,
)
from gcctl.methods.data import TrainingData, split_metrics
from gcctl.methods.transforms import FeatureTransform


@dataclass
class ZeroShotConfig:
    class_names: list[str] | None = class_names_setting()
    templates: list[str] = templates_setting()  # several: an ensemble

    def __post_init__(self) -> None:
        for template in self.templates:
            check_template(template, "in --template")


def text_classifier(bundle, text: torch.Tensor, transform: FeatureTransform | None = None) -> Classifier:
    """Each class scored by its normalised text feature [C, D] at the model's logit scale, as zero-shot CLIP does."""
    num_classes, device = len(text), text.device
    return Classifier(
        weight=logit_scale(bundle.model) * text,
        bias=torch.zeros(num_classes, device=device),
        prompt_class=torch.arange(num_classes, device=device),
        num_classes=num_classes,
        transform=transform,
    )


def fit(data: TrainingData, config: ZeroShotConfig, *, seed: int, bundle, device: torch.device) -> FitResult:
    words = class_words(config.class_names, data.class_names)
    classifier = text_classifier(bundle, class_text_features(bundle, words, config.templates).to(device))
    val_metrics = split_metrics(classifier.predict(data.val.features), data.val, data.vocabulary)
    return FitResult(classifier, learned={}, selection={"select_by": None, "val_metrics": val_metrics})
