"""Transforms of image embeddings that a method learns or derives, applied before its prompts score them.

Training-free debiasing methods (a projection removing spurious directions, a translation along them) and
trained ones (an adapter) change the image side, not only the classifier. A transform is a torch module from
L2-normalised features [B, D] to features [B, D], saved inside the classifier's state as
`{"kind": ..., **tensors}` and rebuilt by `transform_from_state` from the registry below, so a run directory
evaluates without knowing which method wrote it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class FeatureTransform(nn.Module):
    """Base of the image-feature transforms: `forward(features) -> features` and `state()` for saving."""

    kind: str = ""

    def state(self) -> dict:
        return {"kind": self.kind, **{name: tensor.detach().cpu() for name, tensor in self.state_dict().items()}}


class Projection(FeatureTransform):
    """`x -> normalise(x @ matrix.T)`: a linear map of the embedding space, e.g. removing spurious directions."""

    kind = "projection"

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.register_buffer("matrix", matrix.to(torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features @ self.matrix.T, dim=-1)


class SpuriousTranslation(FeatureTransform):
    """`x -> normalise(x - Σ_k scales[v_k] · directions[v_k])` (TIE): for every spurious attribute k, subtract the
    text direction of the value v_k the image shows, scaled by that value's mean projection.

    The rows enumerate every value of every attribute (`attribute[r]` names row r's attribute); `v_k` is the row
    of attribute k whose score `x @ scorer_weight.T + scorer_bias` is highest: the value texts themselves
    (zero-shot) or a probe fitted on labelled images.
    """

    kind = "spurious_translation"

    def __init__(self, scorer_weight: torch.Tensor, scorer_bias: torch.Tensor, directions: torch.Tensor,
                 scales: torch.Tensor, attribute: torch.Tensor):
        super().__init__()
        self.register_buffer("scorer_weight", scorer_weight.to(torch.float32))  # [R, D]
        self.register_buffer("scorer_bias", scorer_bias.to(torch.float32))  # [R]
        self.register_buffer("directions", directions.to(torch.float32))  # [R, D], unit text directions
        self.register_buffer("scales", scales.to(torch.float32))  # [R]
        self.register_buffer("attribute", attribute.to(torch.long))  # [R]

    def values(self, features: torch.Tensor) -> torch.Tensor:
        """The chosen row of every attribute per image [B, K], attributes in order."""
        scores = features @ self.scorer_weight.T + self.scorer_bias
        chosen = []
        for k in torch.unique(self.attribute):
            rows = torch.nonzero(self.attribute == k).squeeze(1)
            chosen.append(rows[scores[:, rows].argmax(dim=1)])
        return torch.stack(chosen, dim=1)

    def shift(self, features: torch.Tensor) -> torch.Tensor:
        """What is subtracted from each image [B, D], before renormalising."""
        rows = self.values(features)
        return (self.scales[rows].unsqueeze(-1) * self.directions[rows]).sum(dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features - self.shift(features), dim=-1)


class ResidualAdapter(FeatureTransform):
    """`x -> normalise(x + up(relu(down(x))))`: a bottleneck MLP added to the embedding (contrastive adapter).

    `up` starts at zero, so a new adapter is the identity on normalised features and its classifier is the
    zero-shot one until training moves it.
    """

    kind = "residual_adapter"

    def __init__(self, dim: int, hidden_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.down = nn.Linear(dim, hidden_dim)
        self.up = nn.Linear(hidden_dim, dim)
        bound = dim ** -0.5  # nn.Linear's default range, drawn from `generator` so a seed fixes it
        with torch.no_grad():
            self.down.weight.uniform_(-bound, bound, generator=generator)
            self.down.bias.uniform_(-bound, bound, generator=generator)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features + self.up(F.relu(self.down(features))), dim=-1)

    @classmethod
    def from_tensors(cls, tensors: dict) -> "ResidualAdapter":
        hidden_dim, dim = tensors["down.weight"].shape
        adapter = cls(dim, hidden_dim)
        adapter.load_state_dict(tensors)
        return adapter


_TRANSFORMS: dict[str, Callable[[dict], FeatureTransform]] = {
    Projection.kind: lambda tensors: Projection(tensors["matrix"]),
    SpuriousTranslation.kind: lambda tensors: SpuriousTranslation(**tensors),
    ResidualAdapter.kind: ResidualAdapter.from_tensors,
}


def transform_from_state(state: dict | None, device: torch.device) -> FeatureTransform | None:
    """The transform `FeatureTransform.state()` saved (None for none), on `device`, in eval mode."""
    if state is None:
        return None
    tensors = {name: value for name, value in state.items() if name != "kind"}
    return _TRANSFORMS[state["kind"]](tensors).to(device).eval()
