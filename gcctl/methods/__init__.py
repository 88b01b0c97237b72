"""The feature-based methods, by name: each a config dataclass (its options and defaults) and a `fit` function
`fit(data, config, *, seed, bundle, device) -> FitResult`."""

from __future__ import annotations

from dataclasses import Field, dataclass, fields
from typing import Callable, Sequence

from gcctl.errors import GcctlError
from gcctl.methods.adapter import AdapterConfig
from gcctl.methods.adapter import fit as fit_adapter
from gcctl.methods.coop import CoOpConfig, GroupCoOpConfig, fit_coop, fit_groupcoop
from gcctl.methods.linear import DFRConfig, LinearConfig, fit_dfr, fit_linear
from gcctl.methods.orthproj import OrthProjConfig
from gcctl.methods.orthproj import fit as fit_orthproj
from gcctl.methods.roboshot import RoboShotConfig
from gcctl.methods.roboshot import fit as fit_roboshot
from gcctl.methods.tie import TIEConfig, fit_tie, fit_tie_star
from gcctl.methods.zeroshot import ZeroShotConfig
from gcctl.methods.zeroshot import fit as fit_zeroshot
from gcctl.metrics import PSEUDO_SELECTION
from gcctl.settings import check_value, flag_of


@dataclass(frozen=True)
class Method:
    config: type
    fit: Callable
    uses_clip: bool  # needs the CLIP text tower (built from the store's provenance)
    summary: str
    group_splits: tuple[str, ...] = ()  # the splits whose group labels the method itself trains on
    trains_on: str = "train"  # the split it fits (and balances) on
    trains: bool = True  # False: training-free, the same model whatever the seed (fit once, recorded without one)


METHODS = {
    "zeroshot": Method(ZeroShotConfig, fit_zeroshot, True, "class prompts from templates, no training", trains=False),
    "linear": Method(LinearConfig, fit_linear, False, "linear probe (ERM; --balance for group reweighting)"),
    "dfr": Method(DFRConfig, fit_dfr, False, "last-layer retraining on the group-balanced validation set",
                  trains_on="val"),
    "coop": Method(CoOpConfig, fit_coop, True, "CoOp: learned shared (or class-specific) prompt context"),
    "groupcoop": Method(GroupCoOpConfig, fit_groupcoop, True, "GroupCoOp: one learned prompt per (class, group), group-balanced",
                        ("train",)),
    "tie": Method(TIEConfig, fit_tie, True, "TIE: image embeddings translated against the spurious value's text (val groups)",
                  ("val",), trains=False),
    "tie-star": Method(TIEConfig, fit_tie_star, True, "TIE*: TIE with the spurious value inferred zero-shot (no labels)",
                       trains=False),
    "orthproj": Method(OrthProjConfig, fit_orthproj, True, "class prompts with the spurious prompts' span projected out (Chuang et al. 2023), no training",
                       trains=False),
    "roboshot": Method(RoboShotConfig, fit_roboshot, True, "image embeddings without harmful and with boosted helpful insight directions (RoboShot), no training",
                       trains=False),
    "adapter": Method(AdapterConfig, fit_adapter, True, "contrastive adapter (Zhang & Ré 2022): a residual MLP on the "
                      "image features, trained with mined hard positives/negatives; class labels only, no train groups"),
}

def get_method(name: str) -> Method:
    if name not in METHODS:
        raise GcctlError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def split_groups_read(method: str, config) -> set[str]:
    """The splits whose groups (true, or a group file's) a run of `method` with `config` reads: its own, the
    split it balances groups on, val for keeping the epoch by worst(-pseudo)-group accuracy."""
    spec = get_method(method)
    used = set(spec.group_splits)
    if getattr(config, "balance", "none") != "none":
        used.add(spec.trains_on)
    if getattr(config, "select_by", None) in ("acc_wg", PSEUDO_SELECTION):
        used.add("val")
    return used


def group_supervision(method: str, config, train_groups_use: Sequence[str] = ("train",),
                      val_groups_use: Sequence[str] = ("val",)) -> list[str]:
    """The splits whose true group labels a run of `method` with `config` uses: its own (GroupCoOp's train), the
    split it balances groups on (train, DFR's val), val for keeping the epoch of best worst-group accuracy. Train
    or validation groups read from a group file stand for what that file's strategy read instead
    (`train_groups_use`, `val_groups_use`: val for val-probe, none for a label-free strategy)."""
    used = split_groups_read(method, config)
    read = used - {"train", "val"}
    if "train" in used:
        read |= set(train_groups_use)
    if "val" in used:
        read |= set(val_groups_use)
    return sorted(read)


def settings() -> dict[str, list[tuple[str, Field]]]:
    """Every method setting by name: the (method, field) pairs that declare it, in registry order."""
    found: dict[str, list[tuple[str, Field]]] = {}
    for method, spec in METHODS.items():
        for field in fields(spec.config):
            found.setdefault(field.name, []).append((method, field))
    return found


def _flag(name: str) -> str:
    return flag_of(settings()[name][0][1])


def make_config(method: str, options: dict):
    """The method's config with the given options over its defaults; options set to None keep the default.

    An option the method does not have is a user error rather than silently ignored.
    """
    config_type = get_method(method).config
    known = {field.name: field for field in fields(config_type)}
    given = {key: value for key, value in options.items() if value is not None}
    foreign = sorted(set(given) - set(known))
    if foreign:
        flags = [_flag(name) if name in settings() else name for name in foreign]
        raise GcctlError(f"{', '.join(flags)} does not apply to method '{method}'; it takes "
                         f"{', '.join(flag_of(known[name]) for name in sorted(known))}")
    for key, value in given.items():
        check_value(known[key], value)
    return config_type(**given)
