"""Zero-shot CLIP: one text prompt per class, or an ensemble of templates averaged per class."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gcctl.clip.captions import DEFAULT_CAPTION, check_template
from gcctl.clip.prompts import class_words, encode_texts, logit_scale
from gcctl.methods.base import Classifier, FitResult
from gcctl.methods.data import TrainingData, split_metrics
from gcctl.methods.transforms import FeatureTransform


@dataclass
class ZeroShotConfig:
    class_names: list[str] | None = None  # prompt words per class; default: the store's class names
    templates: list[str] = field(default_factory=lambda: [DEFAULT_CAPTION])  # several = an ensemble

    def __post_init__(self) -> None:
        for template in self.templates:
            check_template(template, "in --template")


def class_text_features(bundle, words: list[str], templates: list[str]) -> torch.Tensor:
    """One normalised text feature per class: the renormalised mean of its templates' features (checked
    where they enter: ZeroShotConfig, evaluate's --caption, FinetuneConfig)."""
    per_template = torch.stack([encode_texts(bundle.model, bundle.tokenizer, [t.format(w) for w in words]) for t in templates])
    return F.normalize(per_template.mean(dim=0), dim=-1)


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
