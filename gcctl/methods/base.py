"""What every feature-based method leaves behind (a `Classifier`) and the options shared by the trained ones."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import gcctl.store.format as store_format
from gcctl.clip.captions import DEFAULT_CAPTION
from gcctl.methods.transforms import FeatureTransform, transform_from_state
from gcctl.metrics import SELECT_BY
from gcctl.settings import setting

AGGREGATIONS = ("max", "logsumexp", "mean")
BALANCES = ("none", "weights", "sampling")


def aggregate(scores: torch.Tensor, prompt_class: torch.Tensor, num_classes: int, how: str) -> torch.Tensor:
    """Class scores [B, C] from prompt scores [B, P]: each class reduces the scores of its prompts."""
    reduce = {
        "max": lambda s: s.amax(dim=1),
        "logsumexp": lambda s: s.logsumexp(dim=1),
        "mean": lambda s: s.mean(dim=1),
    }[how]
    return torch.stack([reduce(scores[:, prompt_class == c]) for c in range(num_classes)], dim=1)


@dataclass
class Classifier:
    """Class scores from image features: prompt scores `features @ weight.T + bias`, aggregated per class.

    A linear probe has one "prompt" per class; a prompt method's `weight` is its text features times the
    logit scale, applied to L2-normalised image features (`normalize`). A method that changes the image
    embeddings themselves (a projection, a translation, an adapter) adds a `transform`, applied after
    normalising and before the prompts.
    """

    weight: torch.Tensor  # [P, D] float32
    bias: torch.Tensor  # [P]
    prompt_class: torch.Tensor  # [P] class of each prompt
    num_classes: int
    aggregation: str = "max"
    normalize: bool = True
    transform: FeatureTransform | None = None

    def class_scores(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        features = torch.as_tensor(features).to(self.weight.device, torch.float32)
        if self.normalize:
            features = F.normalize(features, dim=-1)
        if self.transform is not None:
            features = self.transform(features)
        return aggregate(features @ self.weight.T + self.bias, self.prompt_class, self.num_classes, self.aggregation)

    @torch.no_grad()
    def predict(self, features: torch.Tensor | np.ndarray) -> np.ndarray:
        """Predicted classes, computed in blocks so a large float16 split is never converted whole."""
        return self.scores(features).argmax(axis=1)

    @torch.no_grad()
    def scores(self, features: torch.Tensor | np.ndarray) -> np.ndarray:
        """Class scores [N, C] (float32), computed in blocks like `predict`."""
        blocks = [self.class_scores(features[i : i + store_format.BLOCK_ROWS]).cpu() for i in range(0, len(features), store_format.BLOCK_ROWS)]
        return torch.cat(blocks).numpy()

    def state(self) -> dict:
        return {
            "weight": self.weight.detach().cpu(),
            "bias": self.bias.detach().cpu(),
            "prompt_class": self.prompt_class.cpu(),
            "num_classes": self.num_classes,
            "aggregation": self.aggregation,
            "normalize": self.normalize,
            "transform": None if self.transform is None else self.transform.state(),
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> "Classifier":
        tensors = {key: state[key].to(device) for key in ("weight", "bias", "prompt_class")}
        transform = transform_from_state(state.get("transform"), device)
        return cls(**tensors, num_classes=state["num_classes"], aggregation=state["aggregation"],
                   normalize=state["normalize"], transform=transform)


@dataclass
class LoopOptions:
    """Options of the shared training loop (SGD with momentum, cosine schedule, per-epoch model selection)."""

    epochs: int = setting(30, help="Training epochs.", positive=True)
    batch_size: int = setting(256, help="Samples per step.", positive=True)
    lr: float = setting(0.5, help="SGD learning rate (cosine schedule).", positive=True)
    momentum: float = setting(0.9, help="SGD momentum.")
    weight_decay: float = setting(0.0, help="SGD weight decay.")
    balance: str = setting("none", choices=BALANCES, help="Group balancing over (class, group): none, weights "
                           "(inverse frequency) or sampling (group-balanced batches).")
    select_by: str = setting("acc_wg", choices=SELECT_BY, help="Validation metric that picks the kept epoch: acc_wg "
                             "(reads validation group labels), acc_wg_pseudo (worst group of the --val-groups "
                             "pseudo-groups), acc_avg or acc_worst_class (class labels only).")


# Settings several methods share, declared once.
def class_names_setting():
    return setting(None, csv=True, help="Comma-separated words naming the classes in prompts (default: the store's names).")


def templates_setting():
    return setting(default_factory=lambda: [DEFAULT_CAPTION], flag="--template",
                   help="Class prompt template with {} for the class; repeat for an ensemble.")


def attribute_prompts_setting():
    return setting(default_factory=list, flag="--attribute-prompt",
                   help="The spurious attribute's prompts, ATTR=TEMPLATE with {value} (and optionally {class}), or "
                        "ATTR:VALUE=TEXT; repeatable. Default: the dataset's own (gcctl-names.json), else "
                        "'a photo of a {class} on {value}.' with the store's value names.")


@dataclass
class FitResult:
    classifier: Classifier
    learned: dict[str, torch.Tensor]  # the trained parameters (contexts, linear weights)
    curve: list[dict] = field(default_factory=list)  # one record per epoch
    selection: dict = field(default_factory=dict)  # which epoch was kept, and why
    epoch_seconds: list[float] = field(default_factory=list)  # wall-clock per epoch: kept beside a run, never in it
