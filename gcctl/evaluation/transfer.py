"""The zero-shot transfer suite: fine-tuned checkpoints scored zero-shot on a list of target datasets.

StarFT's protocol (arXiv 2505.13232) fine-tunes on a source task and then reads the weights zero-shot on
targets of four kinds, each with its own class names and templates:
- `source`: the source task's own test split (what fine-tuning optimised);
- `domain`: domain shifts of the source (ImageNet-V2, -R, -A, -Sketch; outlines or other palettes here);
- `group`: group shifts the model never trained on (Waterbirds, PACS): worst-group and average accuracy;
- `other`: other datasets classified zero-shot (CIFAR-10, STL10, ...).

Each target writes `<out>/<target>.json` and its predictions like `gcctl evaluate --checkpoint`, as soon as
every seed has scored it (atomically), then `<out>/summary.json` holds the suite summary the paper reports,
per seed and as mean ± std; it is written last, once every target is done. A target's JSON records what its
result depends on (`provenance.suite_identity`: the model, the weights' hashes and paths, the table's
fingerprint and its images' bytes, the split, the templates, the run label and role); a rerun reads a target
with the same record back instead of scoring it again, so an interrupted suite resumes where it stopped, and
scores one whose record differs again. Files in `<out>` that transfer did not write are never replaced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gcctl.clip.captions import DEFAULT_CAPTION, expand_templates
from gcctl.clip.checkpoint import SUMMARY_FILE, checkpoint_model_name
from gcctl.clip.factory import build_clip
from gcctl.clip.reference import ModelRef
from gcctl.datasets.table import SPLITS, DatasetTable
from gcctl.errors import GcctlError
from gcctl.evaluation.checkpoints import (
    checkpoint_metrics,
    find_checkpoints,
    seeded_checkpoints,
    split_rows,
    zeroshot_scores,
)
from gcctl.files import (
    output_lock,
    partial_path,
    read_json,
    refuse_directory,
    refuse_inside,
    sha256_file,
    write_json,
)
from gcctl.metrics import mean_std, predictions_path, read_predictions, seed_key
from gcctl.runtime import resolve_device

ROLES = ("source", "domain", "group", "other")
SUMMARY = SUMMARY_FILE  # a suite's summary, named like a run's
SUMMARY_KEYS = ("run", "targets", "seeds", "mean")  # what `suite_summary` writes, and how its file is recognised
COMMAND = "`gcctl transfer`"


@dataclass(frozen=True)
class Target:
    """One dataset of the suite: its name (the table's file stem), role, canonical table, split, and the class
    prompt templates it is scored with (empty: the suite's)."""

    name: str
    role: str
    table: DatasetTable
    split: str = "test"
    templates: tuple[str, ...] = ()


def with_target_templates(targets: Sequence[Target], specs: Sequence[str]) -> list[Target]:
    """`targets` with the templates of `specs` (`--target-template NAME=TEMPLATE`, repeated for an ensemble; a
    TEMPLATE may be a named set), each given to the target of that name."""
    chosen: dict[str, list[str]] = {}
    names = [target.name for target in targets]
    for spec in specs:
        name, sep, template = spec.partition("=")
        if not sep or not template:
            raise GcctlError(f"--target-template '{spec}' is not TARGET=TEMPLATE, e.g. 'waterbirds=This is a picture of a {{}}.'")
        if name not in names:
            raise GcctlError(f"--target-template '{spec}': no target '{name}' in the suite (its targets: {', '.join(names)})")
        chosen.setdefault(name, []).append(template)
    return [replace(target, templates=tuple(expand_templates(chosen[target.name], f"for target {target.name}")))
            if target.name in chosen else target for target in targets]


def parse_target(spec: str) -> tuple[str, Path, str]:
    """`ROLE=TABLE[@SPLIT]` (e.g. `group=pipeline/tables/waterbirds.parquet@test`) → (role, table path, split).

    The split is the text after the last `@` only when it names a split (train, val, test); otherwise the `@`
    belongs to the path, whose split is test."""
    role, sep, rest = spec.partition("=")
    if not sep or not rest:
        raise GcctlError(f"--target '{spec}' is not ROLE=TABLE[@SPLIT], e.g. group=pipeline/tables/waterbirds.parquet")
    if role not in ROLES:
        raise GcctlError(f"--target '{spec}': role '{role}' is not one of {', '.join(ROLES)}")
    path, at, split = rest.rpartition("@")
    if at and split in SPLITS and path:
        return role, Path(path), split
    if at and path and not Path(rest).exists() and Path(path).is_file():
        raise GcctlError(f"--target '{spec}': '{split}' is not a split; give one of {', '.join(SPLITS)} after the @")
    return role, Path(rest), "test"


def check_suite(targets: Sequence[Target]) -> None:
    """One source at most, every target named once (its name is its output file), and its split present."""
    names = [target.name for target in targets]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise GcctlError(f"target '{twice[0]}' is in the suite twice; each table is a target once")
    if sum(target.role == "source" for target in targets) > 1:
        raise GcctlError("the suite has several source targets; give the fine-tuning dataset once as source=TABLE")
    if not targets:
        raise GcctlError("the suite has no target; add --target ROLE=TABLE")
    reserved = [target.name for target in targets if f"{target.name}.json" == SUMMARY]
    if reserved:
        raise GcctlError(f"target '{reserved[0]}' would write {SUMMARY}, the suite summary; rename its table")
    for target in targets:
        split_rows(target.table, target.split)  # refused now, not after the targets before it are scored


def _checkpoint_architecture(paths: list[Path], model_name: str | None) -> str:
    """The one architecture of every checkpoint: a suite scores one model family, seed by seed."""
    if model_name:
        return model_name
    recorded = {path: checkpoint_model_name(path) for path in paths}
    unknown = [path for path, name in recorded.items() if not name]
    if unknown:
        raise GcctlError(f"cannot tell the architecture of {unknown[0]}; pass --model (see `gcctl models`)")
    names = sorted(set(recorded.values()))
    if len(names) > 1:
        first = {name: next(p for p, n in recorded.items() if n == name) for name in names}
        raise GcctlError(f"the checkpoints are of different architectures ({', '.join(f'{n}: {p}' for n, p in first.items())}); "
                         "score one run's checkpoints per suite")
    return names[0]


def _weights(by_seed: dict, architecture: str) -> dict:
    """Each seed's weights as a target's result records them: their hash, and their path as the model
    reference in its provenance gives it (relative to the current directory inside the project)."""
    weights = {}
    for seed, path in by_seed.items():
        digest = sha256_file(path)
        recorded = ModelRef(architecture, "file", str(Path(path).resolve()), digest).recorded_for(Path.cwd())
        weights[seed_key(seed)] = {"sha256": digest, "path": recorded.source}
    return weights


def _identity(weights: dict, architecture: str, target: Target, label: str) -> dict:
    """Everything a target's result file depends on; an earlier result with the same identity is reused. (The
    device is not in it: a result scored on another device is the same evaluation, within float tolerance.)"""
    return {
        "model": architecture,
        "checkpoints": weights,
        "dataset_fingerprint": target.table.fingerprint(),
        "images_sha256": target.table.content_digest(target.split),  # the fingerprint reads no pixel
        "split": target.split,
        "templates": list(target.templates),
        "run": label,
        "role": target.role,
    }


def _own_target(path: Path, name: str) -> dict | None:
    """The metrics in `path` if an earlier `gcctl transfer` wrote them for target `name`, else None."""
    try:
        metrics = read_json(path)
    except GcctlError:
        return None  # never written half (atomic): not a file of ours
    provenance = metrics.get("provenance") if isinstance(metrics, dict) else None
    if isinstance(provenance, dict) and "suite_identity" in provenance and provenance.get("target") == name:
        return metrics
    return None


def _own_predictions(path: Path) -> bool:
    try:
        read_predictions(path)
    except GcctlError:
        return False
    return True


def _own_summary(path: Path) -> bool:
    try:
        summary = read_json(path)
    except GcctlError:
        return False
    return isinstance(summary, dict) and tuple(summary) == SUMMARY_KEYS


def _foreign(path: Path) -> GcctlError:
    return GcctlError(f"{path} exists and is not the output of {COMMAND}; move it, or choose another --out")


def _survey(out: Path, targets: Sequence[Target], identities: dict, overwrite: bool) -> tuple[dict, list[Path]]:
    """What `out` already holds: the finished targets to reuse (by name; none with `overwrite`), and the files of
    targets no longer in the suite (transfer's own, removed once the suite is done). Anything in the way that
    transfer did not write is refused before any work."""
    reused = {}
    for target in targets:
        path = out / f"{target.name}.json"
        predictions = predictions_path(path)
        if path.exists():
            metrics = _own_target(path, target.name)
            if metrics is None:
                raise _foreign(path)
            if not overwrite and predictions.is_file() and metrics["provenance"]["suite_identity"] == identities[target.name]:
                reused[target.name] = metrics
        elif predictions.exists() and not _own_predictions(predictions):
            raise _foreign(predictions)
    summary = out / SUMMARY
    if summary.exists() and not _own_summary(summary):
        raise _foreign(summary)
    names = {f"{target.name}.json" for target in targets} | {SUMMARY}
    stale = []
    for path in sorted(out.glob("*.json")) if out.is_dir() else []:
        if path.name not in names and _own_target(path, path.stem) is not None:
            stale += [path, predictions_path(path)]
    return reused, stale


def evaluate_suite(
    checkpoints: Sequence[str | os.PathLike],
    targets: Sequence[Target],
    out: str | os.PathLike,
    *,
    templates: Sequence[str] = (DEFAULT_CAPTION,),
    model_name: str | None = None,
    name: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    workers: int = 0,
    overwrite: bool = False,
) -> dict:
    """Score every checkpoint (one per seed) zero-shot on every target; write each target's metrics as soon as it
    is done and the suite summary last, into the folder `out`. Returns the summary.

    A target whose earlier result in `out` records the same inputs is read back, not scored again (`overwrite`
    scores every target again); a file in `out` that transfer did not write is refused, never replaced."""
    check_suite(targets)
    suite_templates = tuple(expand_templates(templates))
    targets = [target if target.templates else replace(target, templates=suite_templates) for target in targets]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GcctlError(f"--out {out} is a file; the suite writes a folder (one JSON per target)")
    for target in targets:
        refuse_inside(out, target.table.root, f"the dataset root of target '{target.name}'")
        refuse_directory(out / f"{target.name}.json")
        refuse_directory(predictions_path(out / f"{target.name}.json"))
    refuse_directory(out / SUMMARY)
    by_seed = seeded_checkpoints(find_checkpoints(checkpoints))
    architecture = _checkpoint_architecture(list(by_seed.values()), model_name)
    label = name or out.name
    weights = _weights(by_seed, architecture)
    identities = {target.name: _identity(weights, architecture, target, label) for target in targets}
    with output_lock(out):
        results, stale = _survey(out, targets, identities, overwrite)
        pending = [target for target in targets if target.name not in results]
        if pending:
            _forget_summary(out, targets)
            results.update(_score_pending(by_seed, architecture, pending, identities, label, out,
                                          resolve_device(device), batch_size, workers))
        for path in stale:
            path.unlink(missing_ok=True)
        summary = suite_summary(targets, results, label)
        if not (out / SUMMARY).is_file() or read_json(out / SUMMARY) != summary:  # all reused: the file stays as it is
            write_json(out / SUMMARY, summary)
    return summary


def _forget_summary(out: Path, targets: Sequence[Target]) -> None:
    """Before a target is scored again: no summary of the earlier suite stays beside its new results, and no
    file a killed run was writing."""
    (out / SUMMARY).unlink(missing_ok=True)  # checked to be transfer's own by `_survey`
    for target in targets:
        path = out / f"{target.name}.json"
        for leftover in (partial_path(path), partial_path(predictions_path(path))):
            leftover.unlink(missing_ok=True)
    partial_path(out / SUMMARY).unlink(missing_ok=True)


def _score_pending(by_seed: dict, architecture: str, pending: list[Target], identities: dict, label: str,
                   out: Path, device: torch.device, batch_size: int, workers: int) -> dict:
    """Score every pending target with every checkpoint and publish each target as soon as all its seeds are in,
    so a failure or an interruption later in the suite keeps it. One model is held at a time; the one built last
    scores the next target first, so a suite of one seed builds its model once."""
    seeds = list(by_seed)
    built: tuple | None = None  # (seed, bundle, its class text features by label space and templates)
    references: dict = {}
    written = {}
    for target in pending:
        order = seeds if built is None else [built[0], *(seed for seed in seeds if seed != built[0])]
        scores: dict = {}
        for seed in order:
            if built is None or built[0] != seed:
                built = None  # the previous model freed before the next is built
                built = (seed, build_clip(architecture, str(by_seed[seed]), device=device), {})
                references.setdefault(seed, built[1].reference.recorded_for(Path.cwd()).to_dict())
            scores[seed], rows = zeroshot_scores(built[1], target.table, target.split, device=device, templates=target.templates,
                                                 batch_size=batch_size, workers=workers, text_features=built[2])
        provenance = {"run": label, "target": target.name, "role": target.role, "templates": list(target.templates),
                      "checkpoints": [references[seed] for seed in seeds], "suite_identity": identities[target.name]}
        # The JSON is renamed into place just before its predictions: a run killed in between leaves no
        # predictions (so the target counts as unfinished), never the new JSON beside the old predictions.
        predictions_path(out / f"{target.name}.json").unlink(missing_ok=True)
        written[target.name] = checkpoint_metrics({seed: scores[seed] for seed in seeds}, rows, target.table, target.split,
                                                  provenance, out=out / f"{target.name}.json")
    return written


def suite_summary(targets: Sequence[Target], results: dict[str, dict], label: str) -> dict:
    """Per seed and as mean ± std: source accuracy, mean accuracy over domain shifts, worst-group and average
    accuracy over group shifts, and mean accuracy over other targets (each present only if the suite has such
    targets), plus every target's average (and, for group targets, worst-group) accuracy."""
    seeds = list(next(iter(results.values()))["seeds"])
    by_role = {role: [t for t in targets if t.role == role] for role in ROLES}

    def per_seed(seed: str) -> dict:
        acc = {t.name: results[t.name]["seeds"][seed]["acc_avg"] for t in targets}
        wg = {t.name: results[t.name]["seeds"][seed]["acc_wg"] for t in by_role["group"]}
        row = {f"{name}/acc_avg": value for name, value in acc.items()}
        row.update({f"{name}/acc_wg": value for name, value in wg.items()})
        if by_role["source"]:
            row["source_acc"] = acc[by_role["source"][0].name]
        if by_role["domain"]:
            row["domain_shift_acc"] = float(np.mean([acc[t.name] for t in by_role["domain"]]))
        if by_role["group"]:
            row["group_shift_acc_wg"] = float(np.mean(list(wg.values())))
            row["group_shift_acc_avg"] = float(np.mean([acc[t.name] for t in by_role["group"]]))
        if by_role["other"]:
            row["other_acc"] = float(np.mean([acc[t.name] for t in by_role["other"]]))
        return row

    rows = {seed: per_seed(seed) for seed in seeds}
    keys = list(rows[seeds[0]])
    return {
        "run": label,
        "targets": {t.name: {"role": t.role, "split": t.split, "dataset": t.table.dataset} for t in targets},
        "seeds": rows,
        "mean": {key: mean_std([rows[seed][key] for seed in seeds]) for key in keys},
    }
