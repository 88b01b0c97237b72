"""The fine-tuning losses: FLYP's contrastive loss, cross-entropy through a zero-shot head, StarFT's regulariser.

All take L2-normalised features and compute in float32, so they are the same under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gcctl.clip.contrastive import symmetric_infonce


def flyp_loss(image_features: torch.Tensor, caption_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """FLYP: fine-tune as CLIP was pretrained, image i paired with the caption of its class (InfoNCE both ways)."""
    return symmetric_infonce(logit_scale.float() * image_features.float() @ caption_features.float().T)


class ZeroShotHead(nn.Module):
    """A linear classifier on normalised image features, initialised with the zero-shot class prompts."""

    def __init__(self, class_features: torch.Tensor, logit_scale: float):
        super().__init__()
        self.weight = nn.Parameter(logit_scale * class_features.detach().float().clone())

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(image_features.float(), dim=-1) @ self.weight.T


def starft_regulariser(
    image_features: torch.Tensor,
    spurious_features: torch.Tensor,
    zeroshot_image_features: torch.Tensor,
    zeroshot_spurious_features: torch.Tensor,
    labels: torch.Tensor,
    zeroshot_scale: float,
    mask_same_class: bool = True,
) -> torch.Tensor:
    """KL(zero-shot ‖ fine-tuned) between each image's softmax over the batch's spurious captions.

    Caption j is sample j's class caption with a spurious template. Entries whose caption has the image's
    own class (the diagonal included) are left out of the softmax, so what is kept is how the image relates
    to the spurious attributes of *other* classes (the authors' `StarReg`; `mask_same_class=False` keeps every
    caption, their `SpuriousKLReg`, the `kl` ablation). Both similarity matrices use the frozen model's
    temperature. A row with no caption of another class has nothing to align and adds 0; the sum is
    divided by the batch size (batch mean, as in the authors' code).
    """
    same_class = labels[:, None] == labels[None, :]
    if not mask_same_class:
        same_class = torch.zeros_like(same_class)
    finetuned = _masked_log_softmax(zeroshot_scale * image_features.float() @ spurious_features.float().T, same_class)
    with torch.no_grad():
        zeroshot = _masked_log_softmax(
            zeroshot_scale * zeroshot_image_features.float() @ zeroshot_spurious_features.float().T, same_class
        )
    kl = torch.where(same_class, 0.0, zeroshot.exp() * (zeroshot - finetuned))
    return kl.sum() / len(labels)


def _masked_log_softmax(logits: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    # Masked entries get -inf (probability 0). A fully masked row would be all -inf, NaN in the forward and
    # the backward pass, so it keeps its logits; the caller drops every masked entry anyway.
    fully_masked = masked.all(dim=-1, keepdim=True)
    log_probs = torch.log_softmax(logits.masked_fill(masked & ~fully_masked, float("-inf")), dim=-1)
    return torch.where(masked, 0.0, log_probs)
