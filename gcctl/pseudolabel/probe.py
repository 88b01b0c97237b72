"""A compact multinomial logistic regression on frozen features, fitted full-batch with L-BFGS.

Pseudo-labelling fits many small probes (one per class on a few hundred validation samples, or an ERM probe
on the train split); full-batch L-BFGS converges in a fraction of a second and is deterministic, so the same
inputs always give the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LinearProbe:
    """Standardised features → logits; the standardisation is the fitting data's own."""

    mean: torch.Tensor  # [D]
    scale: torch.Tensor  # [D]
    weight: torch.Tensor  # [D, K]
    bias: torch.Tensor  # [K]

    @torch.no_grad()
    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self._logits(features), dim=1)

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.scale) @ self.weight + self.bias


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_outputs: int,
    *,
    l2: float = 1e-2,
    balanced: bool = False,
    standardize: bool = True,
    max_iter: int = 200,
) -> LinearProbe:
    """Fit a softmax regression of `labels` (0..n_outputs-1) on float32 `features` [N, D].

    The loss is the mean cross-entropy plus `l2`/2 · ‖W‖²; on `standardize`d features one `l2` suits any
    feature scale, on raw ones a strong `l2` favours the high-variance directions. `balanced` weighs every label
    equally in total: the probe then assumes equal label priors.
    """
    if standardize:
        mean, scale = features.mean(dim=0), features.std(dim=0, unbiased=False).clamp_min(1e-6)
    else:
        mean, scale = torch.zeros_like(features[0]), torch.ones_like(features[0])
    standardised = (features - mean) / scale
    weight = torch.zeros(features.shape[1], n_outputs, device=features.device, requires_grad=True)
    bias = torch.zeros(n_outputs, device=features.device, requires_grad=True)
    if balanced:
        counts = torch.bincount(labels, minlength=n_outputs).float()
        sample_weight = 1.0 / counts[labels]
    else:
        sample_weight = torch.ones(len(labels), device=features.device)
    sample_weight = sample_weight / sample_weight.sum()
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        losses = F.cross_entropy(standardised @ weight + bias, labels, reduction="none")
        loss = (losses * sample_weight).sum() + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearProbe(mean, scale, weight.detach(), bias.detach())
