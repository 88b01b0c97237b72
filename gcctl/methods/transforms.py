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


_TRANSFORMS: dict[str, Callable[[dict], FeatureTransform]] = {
    Projection.kind: lambda tensors: Projection(tensors["matrix"]),
}


def transform_from_state(state: dict | None, device: torch.device) -> FeatureTransform | None:
    """The transform `FeatureTransform.state()` saved (None for none), on `device`, in eval mode."""
    if state is None:
        return None
    tensors = {name: value for name, value in state.items() if name != "kind"}
    return _TRANSFORMS[state["kind"]](tensors).to(device).eval()
