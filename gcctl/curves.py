"""Training curves as DVCLive logs, so `dvc plots show/diff` and `dvc metrics show` read them without gcctl.

A curve directory holds `plots/metrics/<name>.tsv` (columns `step` and `<name>`, one row per logged step) and
`metrics.json` (each metric's last value and the last step). The only writer is `CurveLog`; the only reader
is `read_curve`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, Mapping

from gcctl.files import corrupt_file_error

METRICS_SUBDIR = Path("plots") / "metrics"
METRICS_FILE = "metrics.json"
CURVE_DIR = "dvclive"  # where a run folder (pretraining, fine-tuning, a feature run) keeps its curve
_SEED_FOLDER = re.compile(r"seed-(\d+)/(.+)")


class CurveLog:
    """Appends one run's training curve to a DVCLive directory; opening it removes an older curve there.

    gcctl writes the format itself rather than through the dvclive package, which requires DVC: the pipeline
    is an optional extra, training is not. The files are what dvclive writes (`plots/metrics/<name>.tsv` with
    `step` and the value, `metrics.json` with each metric's latest value nested by `/` and the last step), so
    `dvc plots` and `dvc metrics` read them as they read dvclive's.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        shutil.rmtree(self.directory / METRICS_SUBDIR, ignore_errors=True)
        (self.directory / METRICS_FILE).unlink(missing_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)  # at once: a run that has begun shows its curve folder
        self.summary: dict = {}

    def log_records(self, records: Iterable[Mapping], step_key: str) -> None:
        """Append every numeric field of each record at the step `record[step_key]`, then rewrite
        `metrics.json` (each metric's latest value: what `dvc metrics show` reads). One call per epoch or per
        batch of steps: each call appends to the files."""
        step = None
        for record in records:
            step = record[step_key]
            for name, value in record.items():
                if _is_number(value) and name != step_key:
                    value = value if math.isfinite(value) else str(value)  # as dvclive: JSON has no NaN
                    self._append(name, step, value)
                    _set_in(self.summary, name.split("/"), value)
        if step is not None:
            self.summary["step"] = step
        (self.directory / METRICS_FILE).write_text(json.dumps(self.summary, indent=4) + "\n", encoding="utf-8")

    def _append(self, name: str, step, value) -> None:
        path = self.directory / METRICS_SUBDIR / f"{name}.tsv"
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator=os.linesep)
            if new:
                writer.writerow(["step", path.stem])
            writer.writerow([step, value])


def _set_in(tree: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def write_curve(directory: str | os.PathLike, records: Iterable[Mapping], step_key: str) -> None:
    """Write a whole curve at once: one step per record, numbered by `record[step_key]`."""
    CurveLog(directory).log_records(records, step_key)


def read_curve(directory: str | os.PathLike) -> list[dict]:
    """The curve in `directory` as one record per step, {"step": s, name: value, …}; [] when there is none."""
    root = Path(directory) / METRICS_SUBDIR
    by_step: dict[int, dict] = {}
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        name = path.relative_to(root).with_suffix("").as_posix()
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle, delimiter="\t"):
                    step = int(row["step"])
                    by_step.setdefault(step, {"step": step})[name] = float(row[path.stem])
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as error:
            raise corrupt_file_error(path, error) from None
    return [by_step[step] for step in sorted(by_step)]


def write_seeded_curve(directory: str | os.PathLike, per_seed: Mapping[int, Iterable[Mapping]], step_key: str) -> None:
    """Several seeds' curves in one log, each seed's metrics in its own folder `seed-S/` (so one dvc.yaml entry
    shows every seed); steps numbered by `record[step_key]`."""
    points = [{step_key: record[step_key], **{f"seed-{seed}/{key}": value for key, value in record.items() if key != step_key}}
              for seed, records in per_seed.items() for record in records]
    write_curve(directory, points, step_key)


def read_seeded_curve(directory: str | os.PathLike) -> list[dict]:
    """A log of `write_seeded_curve` as one record per (seed, step): {"seed": s, "epoch": step, name: value, …},
    seeds in increasing order; [] when there is none."""
    by_seed: dict[int, dict[int, dict]] = {}
    for point in read_curve(directory):
        for name, value in point.items():
            match = _SEED_FOLDER.fullmatch(name)
            if match:
                seed = int(match.group(1))
                by_seed.setdefault(seed, {}).setdefault(point["step"], {"seed": seed, "epoch": point["step"]})[match.group(2)] = value
    return [record for seed in sorted(by_seed) for _, record in sorted(by_seed[seed].items())]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
