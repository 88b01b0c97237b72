"""What pretraining and whole-model fine-tuning share: the contrastive loss, the learning-rate schedule, and the
optimisation step with its one weight-decay rule.

The rule is open_clip's (and CLIP's): weight decay on matrices only; biases, normalisation gains, embeddings
of fewer than two dimensions and the logit scale are not decayed. (StarFT's released code decays every
parameter; gcctl applies the one rule to both trainers.)
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from gcctl.clip.schedule import warmup_cosine
from gcctl.runtime import loss_scaling

MAX_LOGIT_SCALE = math.log(100)  # CLIP's cap: a larger temperature makes the loss unstable
WEIGHT_DECAY_RULE = "matrices"  # recorded in a run's identity: states saved under another rule do not resume


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of images over texts and texts over images; pair i matches pair i."""
    targets = torch.arange(len(logits), device=logits.device)
    logits = logits.float()
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def param_groups(parameters: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """The weight-decay rule: decay matrices only (see the module notes)."""
    parameters = [parameter for parameter in parameters if parameter.requires_grad]
    return [
        {"params": [parameter for parameter in parameters if parameter.ndim >= 2], "weight_decay": weight_decay},
        {"params": [parameter for parameter in parameters if parameter.ndim < 2], "weight_decay": 0.0},
    ]


class ContrastiveOptimiser:
    """AdamW under the weight-decay rule, the warm-up cosine schedule and the mixed-precision scaler; `step`
    is the one optimisation step of both trainers. `state_dict`/`load_state_dict` make it resumable."""

    def __init__(self, model: nn.Module, parameters: Iterable[nn.Parameter], *, lr: float, weight_decay: float,
                 total_steps: int, warmup: float, device: torch.device, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.model = model
        # One fused kernel for the whole update on CUDA (torch's foreach path launches several per parameter
        # group); the CPU keeps the default path, whose results the pipeline's lock records.
        fused = True if device.type == "cuda" else None
        self.optimizer = torch.optim.AdamW(param_groups(parameters, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine(step, total_steps, warmup))
        self.scaler = torch.amp.GradScaler(device.type, enabled=loss_scaling(device))

    def last_lr(self) -> float:
        return self.schedule.get_last_lr()[0]

    def step(self, loss: torch.Tensor) -> None:
        """Back-propagate `loss`, update the weights, advance the schedule, keep the temperature within CLIP's cap."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        kernel = {key: self.optimizer.defaults[key] for key in ("fused", "foreach")}
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the saved groups carry the saving device's kernel choice
            group.update(kernel)
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler.is_enabled() and state["scaler"]:  # none saved where no scaling was needed (CPU, bf16)
            self.scaler.load_state_dict(state["scaler"])
