"""The zero-shot transfer suite: fine-tuned checkpoints scored zero-shot on a list of target datasets.

StarFT's protocol (arXiv 2505.13232) fine-tunes on a source task and then reads the weights zero-shot on
targets of four kinds, each with its own class names and templates:
- `source`: the source task's own test split (what fine-tuning optimised);
- `domain`: domain shifts of the source (ImageNet-V2, -R, -A, -Sketch; outlines or other palettes here);
- `group`: group shifts the model never trained on (Waterbirds, PACS): worst-group and average accuracy;
- `other`: other datasets classified zero-shot (CIFAR-10, STL10, ...).

Each target writes `<out>/<target>.json` and its predictions like `gcctl evaluate --checkpoint`, then
`<out>/summary.json` holds the suite summary the paper reports, per seed and as mean ± std. A target whose
JSON already records the same checkpoints, table and templates is read back rather than recomputed, so an
interrupted suite resumes, and the summary appears only once every target is done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gcctl.clip.captions import DEFAULT_CAPTION, check_template
from gcctl.clip.checkpoint import SUMMARY_FILE, checkpoint_model_name
from gcctl.clip.factory import build_clip
from gcctl.datasets.table import DatasetTable
from gcctl.errors import GcctlError
from gcctl.evaluation.checkpoints import (
    checkpoint_metrics,
    find_checkpoints,
    seeded_checkpoints,
    zeroshot_scores,
)
from gcctl.files import read_json, refuse_directory, sha256_file, write_json
from gcctl.metrics import mean_std, seed_key
from gcctl.runtime import resolve_device

ROLES = ("source", "domain", "group", "other")
SUMMARY = SUMMARY_FILE  # a suite's summary, named like a run's


@dataclass(frozen=True)
class Target:
    """One dataset of the suite: its name (the table's file stem), role, canonical table and split."""

    name: str
    role: str
    table: DatasetTable
    split: str = "test"


def parse_target(spec: str) -> tuple[str, Path, str]:
    """`ROLE=TABLE[@SPLIT]` (e.g. `group=pipeline/tables/waterbirds.parquet@test`) → (role, table path, split)."""
    role, sep, rest = spec.partition("=")
    if not sep or not rest:
        raise GcctlError(f"--target '{spec}' is not ROLE=TABLE[@SPLIT], e.g. group=pipeline/tables/waterbirds.parquet")
    if role not in ROLES:
        raise GcctlError(f"--target '{spec}': role '{role}' is not one of {', '.join(ROLES)}")
    path, _, split = rest.partition("@")
    return role, Path(path), split or "test"


def check_suite(targets: Sequence[Target]) -> None:
    """One source at most, and every target named once (its name is its output file)."""
    names = [target.name for target in targets]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise GcctlError(f"target '{twice[0]}' is in the suite twice; each table is a target once")
    if sum(target.role == "source" for target in targets) > 1:
        raise GcctlError("the suite has several source targets; give the fine-tuning dataset once as source=TABLE")
    if not targets:
        raise GcctlError("the suite has no target; add --target ROLE=TABLE")


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


def _identity(checkpoints: dict, target: Target, templates: Sequence[str]) -> dict:
    """What a target's result depends on; an existing result with the same identity is reused."""
    return {
        "checkpoints": {seed_key(seed): sha256_file(path) for seed, path in checkpoints.items()},
        "dataset_fingerprint": target.table.fingerprint(),
        "split": target.split,
        "templates": list(templates),
    }


def _finished(path: Path, identity: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        metrics = read_json(path)
    except GcctlError:
        return None  # unreadable: computed again
    return metrics if metrics.get("provenance", {}).get("suite_identity") == identity else None


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
) -> dict:
    """Score every checkpoint (one per seed) zero-shot on every target; write each target's metrics and the suite
    summary into the folder `out`. Returns the summary."""
    check_suite(targets)
    for template in templates:
        check_template(template, "in --template")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GcctlError(f"--out {out} is a file; the suite writes a folder (one JSON per target)")
    for target in targets:
        refuse_directory(out / f"{target.name}.json")
    by_seed = seeded_checkpoints(find_checkpoints(checkpoints))
    architecture = _checkpoint_architecture(list(by_seed.values()), model_name)
    label = name or out.name
    identities = {target.name: _identity(by_seed, target, templates) for target in targets}
    results = {target.name: _finished(out / f"{target.name}.json", identities[target.name]) for target in targets}
    pending = [target for target in targets if results[target.name] is None]
    if pending:
        results.update(_score_pending(by_seed, architecture, pending, templates, identities, label, out,
                                      resolve_device(device), batch_size, workers))
    summary = suite_summary(targets, results, label)
    write_json(out / SUMMARY, summary)
    return summary


def _score_pending(by_seed: dict, architecture: str, pending: list[Target], templates, identities: dict, label: str,
                   out: Path, device: torch.device, batch_size: int, workers: int) -> dict:
    """Build each checkpoint once and score every pending target with it; write each target when all seeds are in."""
    scores: dict[str, dict] = {target.name: {} for target in pending}
    rows: dict[str, np.ndarray] = {}
    references = []
    for seed, path in by_seed.items():
        bundle = build_clip(architecture, str(path), device=device)
        references.append(bundle.reference.recorded_for(Path.cwd()).to_dict())
        for target in pending:
            scores[target.name][seed], rows[target.name] = zeroshot_scores(
                bundle, target.table, target.split, device=device, templates=templates, batch_size=batch_size, workers=workers)
        del bundle
    written = {}
    out.mkdir(parents=True, exist_ok=True)
    for target in pending:
        provenance = {"run": label, "target": target.name, "role": target.role, "templates": list(templates),
                      "checkpoints": references, "suite_identity": identities[target.name]}
        written[target.name] = checkpoint_metrics(scores[target.name], rows[target.name], target.table, target.split,
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
