"""Fixed text prompts through a CLIP's text tower: class words, prompt features and the model's temperature.

The learnable prompts of CoOp and GroupCoOp build on these in `gcctl.methods.prompts`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gcctl.errors import GcctlError


def class_words(override: Sequence[str] | None, store_names: list[str]) -> list[str]:
    """The words that name each class in prompts: the override, or the store's names with '_' read as a space."""
    if override is None:
        return [name.replace("_", " ") for name in store_names]
    if len(override) != len(store_names):
        raise GcctlError(f"--class-names gives {len(override)} names but the store has {len(store_names)} classes ({', '.join(store_names)})")
    return list(override)


def encode_texts(model: nn.Module, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised text features [len(texts), D] of fixed prompts."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model.encode_text(tokenizer(list(texts)).to(device), normalize=True).float()


def logit_scale(model: nn.Module) -> float:
    """The model's learned temperature, capped at 100 as in CLIP training."""
    return float(model.logit_scale.detach().exp().clamp(max=100).item())


def class_text_features(bundle, words: list[str], templates: list[str]) -> torch.Tensor:
    """One normalised text feature per class: the renormalised mean of its templates' features (checked
    where they enter: ZeroShotConfig, evaluate's --caption, FinetuneConfig)."""
    per_template = torch.stack([encode_texts(bundle.model, bundle.tokenizer, [t.format(w) for w in words]) for t in templates])
    return F.normalize(per_template.mean(dim=0), dim=-1)
