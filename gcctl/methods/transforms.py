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
    ResidualAdapter.kind: ResidualAdapter.from_tensors,
}


def transform_from_state(state: dict | None, device: torch.device) -> FeatureTransform | None:
    """The transform `FeatureTransform.state()` saved (None for none), on `device`, in eval mode."""
    if state is None:
        return None
    tensors = {name: value for name, value in state.items() if name != "kind"}
    return _TRANSFORMS[state["kind"]](tensors).to(device).eval()
