"""The feature-based methods, by name: each a config dataclass (its options and defaults) and a `fit` function
`fit(data, config, *, seed, bundle, device) -> FitResult`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

from gcctl.clip.prompts import CLASS_POSITIONS
from gcctl.errors import GcctlError
from gcctl.methods.adapter import AdapterConfig
from gcctl.methods.adapter import fit as fit_adapter
from gcctl.methods.base import AGGREGATIONS, BALANCES, SELECT_BY
from gcctl.methods.coop import INITS, TARGETS, CoOpConfig, GroupCoOpConfig, fit_coop, fit_groupcoop
from gcctl.methods.linear import DFRConfig, LinearConfig, fit_dfr, fit_linear
from gcctl.methods.zeroshot import ZeroShotConfig
from gcctl.methods.zeroshot import fit as fit_zeroshot


@dataclass(frozen=True)
class Method:
    config: type
    fit: Callable
    uses_clip: bool  # needs the CLIP text tower (built from the store's provenance)
    summary: str


METHODS = {
    "zeroshot": Method(ZeroShotConfig, fit_zeroshot, True, "class prompts from templates, no training"),
    "linear": Method(LinearConfig, fit_linear, False, "linear probe (ERM; --balance for group reweighting)"),
    "dfr": Method(DFRConfig, fit_dfr, False, "last-layer retraining on the group-balanced validation set"),
    "coop": Method(CoOpConfig, fit_coop, True, "CoOp: learned shared (or class-specific) prompt context"),
    "groupcoop": Method(GroupCoOpConfig, fit_groupcoop, True, "GroupCoOp: one learned prompt per (class, group), group-balanced"),
    "adapter": Method(AdapterConfig, fit_adapter, True, "contrastive adapter (Zhang & Ré 2022): a residual MLP on the "
                      "image features, trained with mined hard positives/negatives; class labels only, no train groups"),
}

_CHOICES = {
    "balance": BALANCES,
    "select_by": SELECT_BY,
    "aggregation": AGGREGATIONS,
    "target": TARGETS,
    "init": INITS,
    "class_position": CLASS_POSITIONS,
}
_POSITIVE = ("epochs", "batch_size", "lr", "n_ctx")


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise GcctlError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def make_config(method: str, options: dict):
    """The method's config with the given options over its defaults; options set to None keep the default.

    An option the method does not have is a user error rather than silently ignored.
    """
    config_type = get_method(method).config
    known = {f.name for f in fields(config_type)}
    given = {key: value for key, value in options.items() if value is not None}
    foreign = sorted(set(given) - known)
    if foreign:
        raise GcctlError(f"{', '.join(map(_flag, foreign))} does not apply to method '{method}'; it takes {', '.join(map(_flag, sorted(known)))}")
    for key, value in given.items():
        if key in _CHOICES and value not in _CHOICES[key]:
            raise GcctlError(f"{_flag(key)} '{value}' is unknown; choose one of {', '.join(_CHOICES[key])}")
        if key in _POSITIVE and not value > 0:
            raise GcctlError(f"{_flag(key)} must be positive, got {value}")
    return config_type(**given)
