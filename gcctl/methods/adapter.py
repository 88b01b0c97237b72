"""Contrastive adapter (Zhang & Ré, NeurIPS 2022, "Contrastive adapters for foundation model group robustness").

A residual bottleneck MLP on the frozen image embeddings (`ResidualAdapter`, the identity when new), scored
against the zero-shot class prompts. Training pulls each adapted embedding towards its class prompt
(cross-entropy) and, contrastively, pulls the samples zero-shot gets wrong (anchors) towards same-class samples
it classifies differently (hard positives) and away from their nearest neighbours of other classes (hard
negatives). Mining uses only class labels, the frozen embeddings and the zero-shot predictions; no group labels.
The kept epoch is chosen on validation (true groups), like the other trained methods.

Defaults are the authors' code's (hidden 128, temperature 0.1, 2048 positives, 2048 negatives drawn from the
4096 nearest neighbours, SGD momentum 0.9, weight decay 5e-5, batch 128, 100 epochs). Where this differs:
their code alternates contrastive epochs with cross-entropy epochs resampled over the inferred groups (class,
zero-shot prediction); here every step sums the contrastive loss and that inverse-frequency-weighted
cross-entropy (`classification_weight`). It steps once per 128 anchors on their summed losses at lr 1e-3;
the loop here averages over the batch, so the equivalent lr is about 0.13 (default 0.1). Hard samples are
drawn once per seed rather than every epoch, and the adapter has no batch norm, so it is the identity at start.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gcctl.clip.captions import check_template
from gcctl.clip.text import class_text_features, class_words, logit_scale
from gcctl.errors import GcctlError
from gcctl.methods.base import (
    Classifier,
    FitResult,
    LoopOptions,
    class_names_setting,
    templates_setting,
)
from gcctl.methods.data import Features, TrainingData, feature_blocks, map_features
from gcctl.methods.loop import fit_loop, group_units, inverse_frequency
from gcctl.methods.transforms import ResidualAdapter
from gcctl.settings import override, setting

_MINING_ROWS = 512  # anchors whose similarities are held at once while mining


@dataclass
class AdapterConfig(LoopOptions):
    class_names: list[str] | None = class_names_setting()
    templates: list[str] = templates_setting()  # class prompts, as zeroshot's
    hidden_dim: int = setting(128, help="The residual MLP's bottleneck width.")
    temperature: float = setting(0.1, help="Temperature of the contrastive loss over cosine similarities.")
    num_positives: int = setting(2048, help="Hard positives per anchor: same class, other zero-shot prediction (fewer when fewer exist).")
    num_negatives: int = setting(2048, help="Hard negatives per anchor, among its nearest neighbours of other classes.")
    num_neighbors_for_negatives: int = setting(4096, help="Nearest neighbours (frozen embeddings) the hard negatives come from.")
    classification_weight: float = setting(1.0, help="Weight of the cross-entropy to the class prompts; 0 = contrastive only.")
    epochs: int = override(LoopOptions, "epochs", 100)
    batch_size: int = override(LoopOptions, "batch_size", 128)
    lr: float = override(LoopOptions, "lr", 0.1)
    weight_decay: float = override(LoopOptions, "weight_decay", 5e-5)

    def __post_init__(self) -> None:
        for template in self.templates:
            check_template(template, "in --template")
        for name in ("hidden_dim", "temperature", "num_positives", "num_negatives", "num_neighbors_for_negatives"):
            if not getattr(self, name) > 0:
                raise GcctlError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.classification_weight >= 0:
            raise GcctlError(f"--classification-weight must be 0 or more, got {self.classification_weight}")


@dataclass
class HardSamples:
    """Per anchor: its train index, and its drawn hard positives and negatives (train indices, padded) with
    masks marking the real ones. Every anchor has at least one of each."""

    anchor: torch.Tensor  # [A]
    positives: torch.Tensor  # [A, P]
    positive_mask: torch.Tensor  # [A, P] bool
    negatives: torch.Tensor  # [A, Q]
    negative_mask: torch.Tensor  # [A, Q] bool


def mine_hard_samples(features: Features, y: torch.Tensor, zeroshot_pred: torch.Tensor, *, num_positives: int,
                      num_negatives: int, num_neighbors: int, generator: torch.Generator) -> HardSamples:
    """The contrastive adapter's anchors and their hard samples, from L2-normalised frozen `features`.

    Anchors are the samples the zero-shot classifier gets wrong. A hard positive is a sample of the anchor's
    class that zero-shot predicts differently (embedded on the other side of its boundary); a hard negative
    is one of the anchor's `num_neighbors` nearest neighbours (cosine) of another class. Up to
    `num_positives` / `num_negatives` of each are drawn at random; anchors lacking either are dropped.
    """
    num_neighbors = min(num_neighbors, len(features) - 1)
    parts = []  # one block of anchors at a time (an empty block when there are none)
    for anchor in (zeroshot_pred != y).nonzero().flatten().split(_MINING_ROWS):
        same_class_other_prediction = (y[anchor, None] == y) & (zeroshot_pred[anchor, None] != zeroshot_pred)
        positives, positive_mask = _draw(same_class_other_prediction, num_positives, generator)
        neighbors = _nearest_neighbors(features, anchor, num_neighbors)
        drawn, negative_mask = _draw(y[neighbors] != y[anchor, None], num_negatives, generator)
        keep = positive_mask.any(dim=1) & negative_mask.any(dim=1)
        parts.append((anchor[keep], positives[keep], positive_mask[keep], neighbors.gather(1, drawn)[keep], negative_mask[keep]))
    return HardSamples(*(torch.cat(part) for part in zip(*parts)))


def _nearest_neighbors(features: Features, anchor: torch.Tensor, k: int) -> torch.Tensor:
    """The `k` samples most cosine-similar to each anchor [A, k], itself excluded: the best of every block of
    features, then the best of those (one block, the whole split, when it is in memory)."""
    anchors, best = features[anchor], None
    for start, block in feature_blocks(features):
        similarity = anchors @ block.T
        inside = ((anchor >= start) & (anchor < start + len(block))).nonzero().flatten()
        similarity[inside, anchor[inside] - start] = -torch.inf  # not its own neighbour
        found = similarity.topk(min(k, len(block)), dim=1)
        candidates = (found.values, found.indices + start)
        if best is not None:
            values, indices = torch.cat([best[0], candidates[0]], dim=1), torch.cat([best[1], candidates[1]], dim=1)
            kept = values.topk(min(k, values.shape[1]), dim=1).indices
            candidates = (values.gather(1, kept), indices.gather(1, kept))
        best = candidates
    return best[1]


def _draw(allowed: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, up to `k` allowed columns drawn uniformly without replacement: column indices [R, k'] and a
    mask of the real ones (a row with fewer allowed columns is padded with masked-out ones)."""
    keys = torch.rand(allowed.shape, generator=generator).to(allowed.device).masked_fill(~allowed, -1.0)
    drawn = keys.topk(min(k, allowed.shape[1]), dim=1)
    return drawn.indices, drawn.values >= 0


def contrastive_loss(embed, features: Features, hard: HardSamples, slots: torch.Tensor, batch: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Per sample of `batch` [B]: for an anchor, the mean over its hard positives p of
    -log(e^{s(a,p)/t} / (e^{s(a,p)/t} + sum over its hard negatives n of e^{s(a,n)/t})), s the cosine
    similarity of the `embed`ded features; 0 for a sample that is not an anchor. `slots` maps a train index
    to its row in `hard` (-1 for none)."""
    rows = slots[batch]
    is_anchor = rows >= 0
    loss = torch.zeros(len(batch), device=features.device)
    if not is_anchor.any():
        return loss
    rows = rows[is_anchor]
    positives, negatives = hard.positives[rows], hard.negatives[rows]
    # Embed each sample the batch needs once, then read the similarities off one anchors x samples matrix.
    # group_units is torch.unique(return_inverse=True) by a lookup: the same sorted indices without a sort.
    column, needed = group_units(torch.cat([hard.anchor[rows], positives.flatten(), negatives.flatten()]))
    anchor_column, positive_column, negative_column = column.split([len(rows), positives.numel(), negatives.numel()])
    embedded = embed(features[needed])
    similarity = embedded[anchor_column] @ embedded.T / temperature
    positive = similarity.gather(1, positive_column.view(len(rows), -1))
    negative = similarity.gather(1, negative_column.view(len(rows), -1)).masked_fill(~hard.negative_mask[rows], -torch.inf)
    per_positive = torch.logaddexp(positive, negative.logsumexp(dim=1, keepdim=True)) - positive
    mask = hard.positive_mask[rows]
    per_anchor = (per_positive * mask).sum(dim=1) / mask.sum(dim=1)
    return loss.index_put((is_anchor.nonzero().flatten(),), per_anchor)


class AdapterScorer(nn.Module):
    """Class scores of adapted embeddings: `adapter(normalise(x)) @ class_weight.T` (text features x logit scale)."""

    def __init__(self, adapter: ResidualAdapter, class_weight: torch.Tensor):
        super().__init__()
        self.adapter = adapter
        self.register_buffer("class_weight", class_weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.embed(features) @ self.class_weight.T

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.adapter(F.normalize(features.float(), dim=-1))

    @torch.no_grad()
    def classifier(self) -> Classifier:
        num_classes = len(self.class_weight)
        return Classifier(
            weight=self.class_weight.clone(),
            bias=torch.zeros(num_classes, device=self.class_weight.device),
            prompt_class=torch.arange(num_classes, device=self.class_weight.device),
            num_classes=num_classes,
            transform=copy.deepcopy(self.adapter).eval(),  # a snapshot: the adapter trains on
        )

    def learned(self) -> dict:
        return {}  # the adapter is saved as the classifier's transform


def adapter_scorer(data: TrainingData, config: AdapterConfig, bundle, device: torch.device, generator: torch.Generator) -> AdapterScorer:
    """A new (identity) adapter on the zero-shot classifier of `config.templates`."""
    words = class_words(config.class_names, data.class_names)
    class_weight = logit_scale(bundle.model) * class_text_features(bundle, words, config.templates).to(device)
    adapter = ResidualAdapter(class_weight.shape[1], config.hidden_dim, generator).to(device)
    return AdapterScorer(adapter, class_weight)


def fit(data: TrainingData, config: AdapterConfig, *, seed: int, bundle, device: torch.device) -> FitResult:
    generator = torch.Generator().manual_seed(seed)
    scorer = adapter_scorer(data, config, bundle, device, generator)
    train = data.train
    frozen = map_features(train.features, lambda features: F.normalize(features.float(), dim=-1))
    zeroshot_pred = torch.cat([(block @ scorer.class_weight.T).argmax(dim=1) for _, block in feature_blocks(frozen)])
    hard = mine_hard_samples(frozen, train.y, zeroshot_pred, num_positives=config.num_positives,
                             num_negatives=config.num_negatives, num_neighbors=config.num_neighbors_for_negatives,
                             generator=generator)
    slots = torch.full((len(train),), -1, dtype=torch.long, device=device)
    slots[hard.anchor] = torch.arange(len(hard.anchor), device=device)
    # Cross-entropy weighted over the inferred groups (class, zero-shot prediction): every one weighs the same.
    inferred = train.y * len(data.class_names) + zeroshot_pred
    unit, units = group_units(inferred)
    ce_weight = (len(train) / len(units)) * inverse_frequency(unit)

    def loss(scores: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(scores, train.y[batch], reduction="none") * ce_weight[batch]
        return config.classification_weight * ce + contrastive_loss(scorer.embed, frozen, hard, slots, batch, config.temperature)

    result = fit_loop(scorer, loss, train, data.val, data.vocabulary, config, seed=seed, label="adapter")
    result.selection["mining"] = {
        "zeroshot_train_errors": int((zeroshot_pred != train.y).sum()),
        "anchors": len(hard.anchor),
        "mean_positives": float(hard.positive_mask.sum(dim=1).float().mean()) if len(hard.anchor) else 0.0,
        "mean_negatives": float(hard.negative_mask.sum(dim=1).float().mean()) if len(hard.anchor) else 0.0,
    }
    return result
