"""Prompt learning on the frozen text tower: `coop` (CoOp) and `groupcoop` (GroupCoOp).

GroupCoOp gives each class one prompt per group of that class present in training, each with its own context;
a class's score aggregates its prompts (max by default). Its objective is group-balanced so that the minority
groups' prompts are learnt rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from gcctl.clip.captions import DEFAULT_CONTEXT
from gcctl.clip.text import class_words, logit_scale
from gcctl.methods.base import (
    AGGREGATIONS,
    Classifier,
    FitResult,
    LoopOptions,
    aggregate,
    class_names_setting,
)
from gcctl.methods.data import TrainingData
from gcctl.methods.loop import cross_entropy_loss, fit_loop, group_units
from gcctl.methods.prompts import CLASS_POSITIONS, PromptLearner, TextTower
from gcctl.settings import override, setting

TARGETS = ("prompt", "class")
INITS = ("coop", "words")
LEARNS = ("prompt", "vector")


@dataclass
class CoOpConfig(LoopOptions):
    class_names: list[str] | None = class_names_setting()
    ctx_init: str = setting(DEFAULT_CONTEXT, help="Words initialising the prompt context (their count sets its length); '' for random.")
    n_ctx: int = setting(4, positive=True, help="Context length of a random initialisation.")
    class_position: str = setting("end", choices=CLASS_POSITIONS, help="Where the class name sits in the prompt: end, middle or front.")
    class_specific: bool = setting(False, flag="--class-specific/--shared-context", help="One context per class, or one shared.")


@dataclass
class GroupCoOpConfig(CoOpConfig):
    balance: str = override(CoOpConfig, "balance", "weights")
    aggregation: str = setting("max", choices=AGGREGATIONS, help="A class's score from its group prompts: max, logsumexp or mean.")
    target: str = setting("prompt", choices=TARGETS, help="The loss: prompt (cross-entropy over all prompts, the "
                          "sample's (class, group) prompt the target) or class (on the aggregated class scores).")
    init: str = setting("coop", choices=INITS, help="Contexts start from: coop (a CoOp context trained first on the "
                        "same data) or words (--ctx-init).")
    learn: str = setting("prompt", choices=LEARNS, help="What each (class, group) learns: prompt (a context read "
                         "through the frozen text tower: GroupCoOp) or vector (a free embedding started from that "
                         "prompt's text embedding: the paper's linear-classifier ablation).")


class PromptScorer(nn.Module):
    """Cosine similarity of image features to learned prompts, times the model's logit scale."""

    def __init__(self, learner: PromptLearner, prompt_class: torch.Tensor, num_classes: int, scale: float, aggregation: str):
        super().__init__()
        self.learner = learner
        self.register_buffer("prompt_class", prompt_class)
        self.num_classes = num_classes
        self.scale = scale
        self.aggregation = aggregation

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        text = F.normalize(self.learner(), dim=-1)  # every prompt once per step, in one batch
        return self.scale * F.normalize(features, dim=-1) @ text.T

    @torch.no_grad()
    def classifier(self) -> Classifier:
        text = F.normalize(self.learner().float(), dim=-1)
        return Classifier(
            weight=self.scale * text,
            bias=torch.zeros(len(text), device=text.device),
            prompt_class=self.prompt_class.clone(),
            num_classes=self.num_classes,
            aggregation=self.aggregation,
        )

    def learned(self) -> dict:
        return self.learner.learned()


class VectorLearner(nn.Module):
    """One free text-side embedding per prompt, started from `initial` (the prompts' text embeddings): GroupCoOp's
    ablation that keeps its group-wise classifiers and objective but learns no prompt, so the text tower's prior
    shapes only the start."""

    def __init__(self, initial: torch.Tensor):
        super().__init__()
        self.vectors = nn.Parameter(initial.detach().float().clone())

    def forward(self) -> torch.Tensor:
        return self.vectors

    def learned(self) -> dict:
        return {"vectors": self.vectors.detach().clone()}


def _learner(bundle, names: list[str], context_of: list[int], config: CoOpConfig, seed: int) -> PromptLearner:
    return PromptLearner(
        TextTower(bundle.model),
        bundle.tokenizer,
        names,
        context_of,
        ctx_init=config.ctx_init or None,
        n_ctx=config.n_ctx,
        class_position=config.class_position,
        generator=torch.Generator().manual_seed(seed),
    )


def _class_contexts(num_classes: int, class_specific: bool) -> list[int]:
    return list(range(num_classes)) if class_specific else [0] * num_classes


def fit_coop(data: TrainingData, config: CoOpConfig, *, seed: int, bundle, device: torch.device) -> FitResult:
    words = class_words(config.class_names, data.class_names)
    num_classes = len(words)
    learner = _learner(bundle, words, _class_contexts(num_classes, config.class_specific), config, seed)
    scorer = PromptScorer(learner, torch.arange(num_classes, device=device), num_classes, logit_scale(bundle.model), "max")
    return fit_loop(scorer, cross_entropy_loss(data.train.y), data.train, data.val, data.vocabulary, config, seed=seed, label="coop")


def fit_groupcoop(data: TrainingData, config: GroupCoOpConfig, *, seed: int, bundle, device: torch.device) -> FitResult:
    words = class_words(config.class_names, data.class_names)
    num_classes = len(words)
    unit, unit_group = group_units(data.train.group)
    unit_class = torch.from_numpy(data.vocabulary.class_of(unit_group.cpu().numpy())).to(device)
    learner = _learner(bundle, [words[c] for c in unit_class.tolist()], list(range(len(unit_class))), config, seed)
    init_log = {"init": config.init, "learn": config.learn}
    if config.init == "coop":
        coop_config = CoOpConfig(**{f.name: getattr(config, f.name) for f in fields(CoOpConfig)})
        coop = fit_coop(data, coop_config, seed=seed, bundle=bundle, device=device)
        class_context = torch.tensor(_class_contexts(num_classes, config.class_specific), device=device)
        with torch.no_grad():
            learner.contexts.copy_(coop.learned["contexts"][class_context[unit_class]])
        init_log["coop_selection"] = {key: coop.selection[key] for key in ("best_epoch", "best_value")}
    if config.learn == "vector":
        with torch.no_grad():
            learner = VectorLearner(learner())
    scorer = PromptScorer(learner, unit_class, num_classes, logit_scale(bundle.model), config.aggregation)
    if config.target == "prompt":
        loss_fn = cross_entropy_loss(unit)
    else:
        to_class = partial(aggregate, prompt_class=unit_class, num_classes=num_classes, how=config.aggregation)
        loss_fn = cross_entropy_loss(data.train.y, to_class)
    result = fit_loop(scorer, loss_fn, data.train, data.val, data.vocabulary, config, seed=seed, label="groupcoop")
    result.selection["prompts"] = [{"class": data.class_names[c], "group": data.vocabulary.names[g]}
                                   for c, g in zip(unit_class.tolist(), unit_group.tolist())]
    result.selection.update(init_log)
    return result
