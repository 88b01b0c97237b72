"""The pseudo-labelling stage: infer every train sample's group, write the group file and the agreement report.

The group file (Parquet) has one row per train sample: `id`, `group` (the id in the store's group vocabulary),
`group_name` (its name, e.g. `waterbird/water`), `confidence` (the strategy's confidence in its own prediction)
and `strategy`; its schema metadata records the vocabulary, with the training counts of the inferred groups.
Every train sample keeps a group, since GroupCoOp gives a prompt to every (class, group) present: a sample whose
confidence is below `min_confidence` carries its class's majority group (the group the strategy gave most of the
class's confident samples) and keeps its low confidence, so filtering on the column recovers the confident rows.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from gcctl.datasets.groups import GROUP_FILE_METADATA_KEY
from gcctl.errors import GcctlError
from gcctl.files import (
    atomic_path,
    check_beside,
    check_output,
    is_png,
    json_document,
    parquet_metadata,
    refuse_directory,
    refuse_input,
    write_json,
)
from gcctl.metrics import agreement
from gcctl.pseudolabel.data import LabelingData, load_labeling_data
from gcctl.pseudolabel.strategies import Inference, erm_error, kmeans, oracle, val_probe
from gcctl.pseudolabel.zeroshot import zeroshot_attr
from gcctl.runtime import resolve_device, seed_everything
from gcctl.store import FeatureStore

GROUP_FILE_COLUMNS = ("id", "group", "group_name", "confidence", "strategy")


@dataclass(frozen=True)
class Strategy:
    """A pseudo-labelling strategy: how it infers the train groups, and what it reads besides the features."""

    infer: Callable[..., Inference]  # infer(data, store, **options) -> Inference
    # The splits whose true group labels it reads (kmeans and erm-error name their clusters by the validation
    # groups when the store has them); a run trained on its group file records them as its supervision.
    group_splits: tuple[str, ...]
    options: tuple[str, ...] = ()  # the options only this strategy reads (`OPTION_FLAGS`)
    needs_val_groups: bool = False  # learns from them, so cannot label the validation split
    fits_on_train: bool = False  # labelling the validation split, fits on the train split's classes (erm-error)


def _zeroshot_attr(data: LabelingData, store: FeatureStore, *, attribute_prompts, class_names, pretrained) -> Inference:
    return zeroshot_attr(data, store.model_ref(), attribute_prompts, class_names, pretrained)


STRATEGIES = {
    "val-probe": Strategy(lambda data, store: val_probe(data), ("val",), needs_val_groups=True),
    "zeroshot-attr": Strategy(_zeroshot_attr, (), ("attribute_prompts", "class_names", "pretrained")),
    "kmeans": Strategy(lambda data, store, clusters_per_group: kmeans(data, clusters_per_group), ("val",),
                       ("clusters_per_group",)),
    "erm-error": Strategy(lambda data, store: erm_error(data), ("val",), fits_on_train=True),
    "oracle": Strategy(lambda data, store: oracle(data), ("train",)),
}
# Each strategy-specific option's flag and default: giving one to another strategy is a mistake.
OPTION_FLAGS = {"attribute_prompts": ("--attribute-prompt", ()), "class_names": ("--class-names", None),
                "clusters_per_group": ("--clusters-per-group", 1), "pretrained": ("--pretrained", None)}


LABELLED_SPLITS = ("train", "val")


def read_group_splits(spec: Strategy, split: str, read_val_groups: bool) -> list[str]:
    """The splits whose true group labels a group file of `split` stands for: the labelled split's own for the
    oracle, val where the strategy read validation groups (not under --val-fraction 0 or --split val)."""
    return sorted({split if used == "train" else used for used in spec.group_splits if used == "train" or read_val_groups})


def _report_paths(out: str | os.PathLike, report: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The agreement JSON (default `<out stem>.report.json` beside the group file) and its PNG (same stem)."""
    out = Path(out)
    report = Path(report) if report is not None else out.with_name(out.stem + ".report.json")
    return report, report.with_suffix(".png")


def _is_group_file(path: Path) -> bool:
    return parquet_metadata(path, GROUP_FILE_METADATA_KEY) is not None


def _is_report(path: Path) -> bool:
    document = json_document(path)
    return isinstance(document, dict) and {"strategy", "agreement", "group_file"} <= set(document)


def check_pseudo_label_out(out: Path | str, report_path: Path, figure_path: Path | None, overwrite: bool, *,
                           inputs: dict) -> None:
    """Refuse, before any work, outputs that are folders, one another or an input, or that hold anything but an
    earlier pseudo-labelling's group file, report and figure (which only `overwrite` replaces). The figure counts
    as one's own where it is a PNG beside one's own report."""
    out = Path(out)
    refuse_directory(out)
    refuse_directory(report_path, "--report")
    written = [out, report_path, *([figure_path] if figure_path is not None else [])]
    if len({path.resolve() for path in written}) < len(written):
        raise GcctlError(f"--out {out}, --report {report_path} and its figure {report_path.with_suffix('.png')} "
                         "would be one file; give --report a .json path of its own")
    for path, option in ((out, "--out"), (report_path, "--report")):
        refuse_input(path, inputs, option)
    check_output(out, "pseudo-label", is_own=_is_group_file, replace_own=overwrite)
    check_beside(report_path, out, "pseudo-label", is_own=_is_report, replace_own=overwrite, what="agreement report")
    if figure_path is not None:
        check_beside(figure_path, out, "pseudo-label", replace_own=overwrite, what="confusion-matrix figure",
                     is_own=lambda path: is_png(path) and _is_report(report_path))


def _fall_back_to_majority(data: LabelingData, within: np.ndarray, confident: np.ndarray) -> np.ndarray:
    within = within.copy()
    for label in range(data.num_classes):
        in_class = data.train_y == label
        voters = within[in_class & confident] if np.any(in_class & confident) else within[in_class]
        if len(voters):
            within[in_class & ~confident] = np.bincount(voters).argmax()
    return within


def _checked_strategy(strategy: str, split: str, given: dict, *, val_fraction: float, val_label_noise: float,
                      min_confidence: float) -> Strategy:
    """The strategy asked for, once its options and the split fit it (else a one-line error)."""
    if strategy not in STRATEGIES:
        raise GcctlError(f"unknown strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}")
    spec = STRATEGIES[strategy]
    for option, (flag, default) in OPTION_FLAGS.items():
        if option not in spec.options and given[option] != default:
            owner = next(name for name, other in STRATEGIES.items() if option in other.options)
            raise GcctlError(f"{flag} applies to --strategy {owner} only, not to {strategy}; drop it")
    if split not in LABELLED_SPLITS:
        raise GcctlError(f"--split {split} cannot be labelled; choose {' or '.join(LABELLED_SPLITS)} (test keeps its true groups)")
    if split == "val" and (val_fraction != 1.0 or val_label_noise != 0.0):
        raise GcctlError("labelling --split val reads no validation group label, so --val-fraction and "
                         "--val-label-noise apply to --split train only; drop them")
    if split == "val" and spec.needs_val_groups:
        raise GcctlError(f"--strategy {strategy} learns from the validation groups, so it cannot infer them; "
                         "label --split val with kmeans, erm-error or zeroshot-attr")
    if not 0.0 <= min_confidence <= 1.0:
        raise GcctlError(f"--min-confidence {min_confidence} must be between 0 and 1 (0 keeps every prediction)")
    return spec


def pseudo_label(
    features: str | os.PathLike,
    strategy: str = "val-probe",
    out: str | os.PathLike = "groups.parquet",
    *,
    report: str | os.PathLike | None = None,
    min_confidence: float = 0.0,
    val_fraction: float = 1.0,
    val_label_noise: float = 0.0,
    attribute_prompts: Sequence[str] = (),
    class_names: Sequence[str] | None = None,
    clusters_per_group: int = 1,
    pretrained: str | None = None,
    seed: int = 0,
    device: str = "auto",
    plot: Callable[[dict, Path], None] | None = None,
    max_memory: int | None = None,
    overwrite: bool = False,
    split: str = "train",
) -> dict:
    """Infer the groups of the store's `split` (train; or val, reading no validation group label, for
    `gcctl train --val-groups`) with `strategy`; write the group file `out`, the agreement
    report and, drawn by `plot(report, path)` (e.g. `gcctl.report.plot_confusion`), its confusion-matrix PNG
    (all or nothing), over an earlier pseudo-labelling's files only with `overwrite` and over nothing else.
    Features larger than `max_memory` bytes (None: no limit) are read from the store as the strategy needs them,
    with the same result. Returns the report; its `figure` is None without `plot`."""
    given = {"attribute_prompts": tuple(attribute_prompts), "class_names": class_names, "clusters_per_group": clusters_per_group,
             "pretrained": pretrained}
    spec = _checked_strategy(strategy, split, given, val_fraction=val_fraction, val_label_noise=val_label_noise,
                             min_confidence=min_confidence)
    if split == "val":
        val_fraction = 0.0  # what is recorded is what was used
    report_path, figure_path = _report_paths(out, report)
    check_pseudo_label_out(out, report_path, figure_path if plot is not None else None, overwrite,
                           inputs={"--features": features, "--pretrained": pretrained})
    seed_everything(seed)
    with FeatureStore(features) as store:  # open while the strategy may read features from it
        data = load_labeling_data(store, resolve_device(device), val_fraction=val_fraction, val_label_noise=val_label_noise,
                                  seed=seed, max_memory=max_memory, split=split, train_reference=spec.fits_on_train)
        inference = spec.infer(data, store, **{option: given[option] for option in spec.options})
    confident = inference.confidence >= min_confidence
    within = _fall_back_to_majority(data, inference.within, confident)
    group = data.vocabulary.group_of(data.train_y, within)
    options = {"min_confidence": min_confidence, "val_fraction": val_fraction, "val_label_noise": val_label_noise,
               "val_samples_used": int(len(data.val_y)),
               **({"clusters_per_group": clusters_per_group} if strategy == "kmeans" else {}), "seed": seed}
    summary = _summary(strategy, split, spec, data, inference, group, confident, options,
                       files={"features": features, "group_file": out, "report": report_path,
                              "figure": figure_path if plot is not None else None})
    _write_outputs(out, report_path, figure_path, data, group, inference.confidence, summary, plot)
    return summary


def _summary(strategy: str, split: str, spec, data: LabelingData, inference, group: np.ndarray, confident: np.ndarray,
             options: dict, files: dict) -> dict:
    """The agreement report: what was inferred, from which files, with which options, and how well it agrees
    with the true groups (where the store has them)."""
    return {
        "strategy": strategy,
        "split": split,
        "group_splits": read_group_splits(spec, split, len(data.val_y) > 0),
        "named_by_size": inference.named_by_size,
        "features": str(files["features"]),
        "dataset": data.provenance.get("dataset"),
        "group_file": str(files["group_file"]),
        "report": str(files["report"]),
        "figure": None if files["figure"] is None else str(files["figure"]),
        "options": options,
        "fallback": int(np.sum(~confident)),
        "notes": inference.notes,
        "agreement": agreement(data.train_truth, group, data.vocabulary),
    }


def _group_table(data: LabelingData, group: np.ndarray, confidence: np.ndarray, summary: dict):
    """The group file's rows, with the vocabulary (counting the inferred groups) in the schema metadata."""
    import pyarrow as pa

    table = pa.table({
        "id": data.train_ids.astype(str),
        "group": group.astype(np.int64),
        "group_name": np.asarray(data.vocabulary.names, dtype=object)[group],
        "confidence": confidence.astype(np.float32),
        "strategy": np.full(len(group), summary["strategy"], dtype=object),
    })
    described = {"vocabulary": data.vocabulary.counted(group).to_dict(), "strategy": summary["strategy"], "split": summary["split"],
                 "group_splits": summary["group_splits"], "named_by_size": summary["named_by_size"]}
    return table.replace_schema_metadata({GROUP_FILE_METADATA_KEY: json.dumps(described).encode()})


def _write_outputs(out, report_path: Path, figure_path: Path, data: LabelingData, group, confidence, summary: dict,
                   plot: Callable[[dict, Path], None] | None) -> None:
    import pyarrow.parquet as pq

    table = _group_table(data, group, confidence, summary)
    # Nested: if any artifact fails, none of them is renamed into place.
    with contextlib.ExitStack() as stack:
        table_tmp = stack.enter_context(atomic_path(out))
        pq.write_table(table, table_tmp)
        if plot is not None:
            plot(summary, stack.enter_context(atomic_path(figure_path)))
        write_json(report_path, summary)
