"""TIE and TIE* (Lu, Chai & Wang, ICLR 2025, "Mitigating spurious correlations in zero-shot multimodal models").

Training-free: every image embedding is translated against the text direction t_a of the spurious value a it
shows, z' = normalise(z - λ_a t_a), with λ_a the mean of <z, t_a> over images showing a, so that those images
have, on average, no component left along t_a. The class prompts then score z' as in zero-shot CLIP.

The authors' code estimates λ_a on the training split (true spurious labels for TIE, zero-shot ones for TIE*)
and, in TIE, translates each test image by its TRUE spurious label. gcctl classifies from features alone, so:
- `tie` uses the labelled validation split (its true groups): λ_a from its images of value a, and the value of
  each image from a linear probe fitted there (the authors' code has this variant too: a classifier trained on
  spurious labels in place of the test labels). Supervision: val groups.
- `tie-star` uses no labels: the value of an image is the nearest value text (zero-shot), λ_a the mean over the
  training images inferred to show a. Supervision: none.
A store with several attributes is translated along each of them (the paper has one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gcctl.clip.captions import check_template
from gcctl.clip.text import class_text_features, class_words, logit_scale
from gcctl.errors import GcctlError
from gcctl.methods.base import (
    Classifier,
    FitResult,
    attribute_prompts_setting,
    class_names_setting,
    templates_setting,
)
from gcctl.methods.data import TrainingData, feature_blocks, split_metrics
from gcctl.methods.spurious import attribute_texts, prompt_embeddings
from gcctl.methods.transforms import SpuriousTranslation
from gcctl.pseudolabel.probe import fit_probe


@dataclass
class TIEConfig:
    class_names: list[str] | None = class_names_setting()  # also the words for {class} in attribute prompts
    templates: list[str] = templates_setting()
    attribute_prompts: list[str] = attribute_prompts_setting()

    def __post_init__(self) -> None:
        for template in self.templates:
            check_template(template, "in --template")


def value_directions(embeddings: torch.Tensor) -> torch.Tensor:
    """One unit text direction per value [V, D] from its prompt embeddings [V, classes, D]: averaged over the
    classes filling {class}, so the direction names the value, not a class (a template without {class} is the
    authors' class-free text)."""
    return F.normalize(embeddings.mean(dim=1), dim=-1).float()


def mean_projections(projections: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """λ_v = mean of <z, t_v> over the images of value v [V], from the projections <z, t_v> [N, V]; a value no
    image shows gets the mean over all (it is then chosen for few test images, and an average shift is the
    least assumption)."""
    scales = projections.mean(dim=0)
    for v in range(projections.shape[1]):
        if (values == v).any():
            scales[v] = projections[values == v, v].mean()
    return scales


def _labelled_translation(data: TrainingData, directions: dict[str, torch.Tensor]):
    """TIE: per attribute, λ from the validation images' true values and a probe predicting the value. The probe
    is fitted on the whole validation split at once (L-BFGS), in memory even when the split is read from the store."""
    features = F.normalize(data.val.features[:].float(), dim=-1)
    _, codes = data.vocabulary.decode(data.val.group.cpu().numpy())
    weights, biases, scales = [], [], []
    for attribute, texts in directions.items():
        values = torch.from_numpy(codes[attribute]).to(features.device)
        probe = fit_probe(features, values, len(texts), balanced=True)
        # The probe standardises its input; folded into one linear scorer of the raw features.
        weights.append((probe.weight / probe.scale.unsqueeze(1)).T)
        biases.append(probe.bias - (probe.mean / probe.scale) @ probe.weight)
        scales.append(mean_projections(features @ texts.T, values))
    return torch.cat(weights), torch.cat(biases), torch.cat(scales)


def _zeroshot_translation(data: TrainingData, directions: dict[str, torch.Tensor]):
    """TIE*: per attribute, the value texts score the image; λ from the training images' inferred values. The
    train split is read block by block: only its projections [N, V] are kept."""
    projections = {attribute: [] for attribute in directions}
    for _, block in feature_blocks(data.train.features):
        block = F.normalize(block, dim=-1)
        for attribute, texts in directions.items():
            projections[attribute].append(block @ texts.T)
    scales = [mean_projections(own, own.argmax(dim=1)) for own in (torch.cat(parts) for parts in projections.values())]
    weight = torch.cat(list(directions.values()))
    return weight, torch.zeros(len(weight), device=weight.device), torch.cat(scales)


def _fit(data: TrainingData, config: TIEConfig, bundle, device: torch.device, labelled: bool) -> FitResult:
    vocabulary = data.vocabulary
    words = class_words(config.class_names, data.class_names)
    texts = attribute_texts(vocabulary, words, config.attribute_prompts, "tie" if labelled else "tie-star")
    directions = {attribute: value_directions(embeddings).to(device) for attribute, embeddings in prompt_embeddings(bundle, texts).items()}
    weight, bias, scales = (_labelled_translation if labelled else _zeroshot_translation)(data, directions)
    attribute = torch.cat([torch.full((len(texts),), k, device=device) for k, texts in enumerate(directions.values())])
    transform = SpuriousTranslation(weight, bias, torch.cat(list(directions.values())), scales, attribute).to(device)
    text = class_text_features(bundle, words, config.templates).to(device)
    classifier = Classifier(weight=logit_scale(bundle.model) * text, bias=torch.zeros(len(words), device=device),
                            prompt_class=torch.arange(len(words), device=device), num_classes=len(words), transform=transform)
    val_metrics = split_metrics(classifier.predict(data.val.features), data.val, vocabulary)
    named_scales = iter(scales.tolist())
    translation = {attribute: {"prompts": texts[attribute], "scale": {value: next(named_scales) for value in values}}
                   for attribute, values in vocabulary.attributes.items()}
    return FitResult(classifier, learned={}, selection={"select_by": None, "val_metrics": val_metrics, "translation": translation,
                                                       "spurious_values_from": "val labels" if labelled else "zero-shot"})


def fit_tie(data: TrainingData, config: TIEConfig, *, seed: int, bundle, device: torch.device) -> FitResult:
    if data.val_groups_named_by_size:
        raise GcctlError("TIE reads each validation group's name as the spurious value it shows, and the --val-groups "
                         "file named some class's groups by size (no group label read); label --split val with "
                         "zeroshot-attr, give true validation groups, or use tie-star")
    return _fit(data, config, bundle, device, labelled=True)


def fit_tie_star(data: TrainingData, config: TIEConfig, *, seed: int, bundle, device: torch.device) -> FitResult:
    return _fit(data, config, bundle, device, labelled=False)
