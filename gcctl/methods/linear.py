"""Linear probes on the frozen image features: `linear` (ERM, optionally group-balanced) and `dfr`
(deep feature reweighting: last-layer retraining on the group-balanced validation set)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gcctl.errors import GcctlError
from gcctl.methods.base import Classifier, FitResult, LoopOptions
from gcctl.methods.data import TrainingData
from gcctl.methods.loop import cross_entropy_loss, fit_loop, group_units
from gcctl.settings import override


@dataclass
class LinearConfig(LoopOptions):
    epochs: int = override(LoopOptions, "epochs", 100)
    lr: float = override(LoopOptions, "lr", 1.0)


@dataclass
class DFRConfig(LoopOptions):
    epochs: int = override(LoopOptions, "epochs", 100)
    lr: float = override(LoopOptions, "lr", 1.0)
    balance: str = override(LoopOptions, "balance", "weights")


class LinearScorer(nn.Module):
    """A linear layer on the raw features, one output per class; starts at zero so only the data decides."""

    def __init__(self, dim: int, num_classes: int, device: torch.device):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes, device=device)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def classifier(self) -> Classifier:
        num_classes = self.linear.out_features
        return Classifier(
            weight=self.linear.weight.detach().clone(),
            bias=self.linear.bias.detach().clone(),
            prompt_class=torch.arange(num_classes, device=self.linear.weight.device),
            num_classes=num_classes,
            normalize=False,
        )

    def learned(self) -> dict:
        return {}  # the classifier is the whole of what was learned


def _fit_probe(data: TrainingData, config: LoopOptions, train, select, seed: int, label: str) -> FitResult:
    scorer = LinearScorer(train.features.shape[1], len(data.class_names), train.features.device)
    return fit_loop(scorer, cross_entropy_loss(train.y), train, select, data.vocabulary, config, seed=seed, label=label)


def fit_linear(data: TrainingData, config: LinearConfig, *, seed: int, bundle=None, device=None) -> FitResult:
    return _fit_probe(data, config, data.train, data.val, seed, "linear")


def fit_dfr(data: TrainingData, config: DFRConfig, *, seed: int, bundle=None, device=None) -> FitResult:
    """Train on one half of the validation split (true groups), select the epoch on the other half."""
    fit_half, select_half = _halves_per_group(data, seed)
    if len(select_half) == 0:
        raise GcctlError("dfr fits on half of each validation group and keeps its epoch on the other half, and every "
                         "group has one validation sample; give a larger --val-fraction")
    result = _fit_probe(data, config, data.val.subset(fit_half), data.val.subset(select_half), seed, "dfr")
    result.selection["fit_on"] = f"{len(fit_half)} validation samples; selected on the other {len(select_half)}"
    return result


def _halves_per_group(data: TrainingData, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random half of every (class, group) unit of the validation split (the larger half of an odd unit, so a
    unit of one sample, as a small validation-label budget leaves, is still fitted on), and the rest."""
    generator = torch.Generator().manual_seed(seed)
    unit, _ = group_units(data.val.group)
    unit = unit.cpu()
    first, second = [], []
    for u in range(int(unit.max()) + 1):
        members = (unit == u).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        first.append(members[: (len(members) + 1) // 2])
        second.append(members[(len(members) + 1) // 2 :])
    device = data.val.y.device
    return torch.cat(first).to(device), torch.cat(second).to(device)
