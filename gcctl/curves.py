"""Training curves as DVCLive logs, so `dvc plots show/diff` and `dvc metrics show` read them without gcctl.

A curve directory holds `plots/metrics/<name>.tsv` (columns `step` and `<name>`, one row per logged step) and
`metrics.json` (each metric's last value and the last step). The only writer is `CurveLog`; the only reader
is `read_curve`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Mapping

from gcctl.runtime import corrupt_file_error

METRICS_SUBDIR = Path("plots") / "metrics"


def _file_only_live(directory: Path):
    """A dvclive `Live` that only writes files in `directory`.

    `Live()` also looks for the enclosing DVC repository: in a git repository without one it runs `dvc init`
    there (dvclive PR #539) and in a git repository without commits it crashes. A training command must not
    change the user's repository, and gcctl never saves DVC experiments or writes dvc.yaml, so that step is
    skipped; what dvclive writes into `directory` is unchanged.
    """
    from dvclive import Live

    class FileOnlyLive(Live):
        def _init_dvc(self):
            self._dvc_file = "dvc.yaml"  # read only when dvcyaml is set, which it never is here

    return FileOnlyLive(dir=str(directory), save_dvc_exp=False, dvcyaml=None)


class CurveLog:
    """Appends one run's training curve to a DVCLive directory; opening it removes an older curve there."""

    def __init__(self, directory: str | os.PathLike):
        self._live = _file_only_live(Path(directory))

    def log_records(self, records: Iterable[Mapping], step_key: str) -> None:
        """Append every numeric field of each record at the step `record[step_key]`, then rewrite
        `metrics.json` (each metric's latest value: what `dvc metrics show` reads). One call per epoch or per
        batch of steps: each call appends to the files."""
        for record in records:
            self._live.step = record[step_key]
            for name, value in record.items():
                if _is_number(value) and name != step_key:
                    self._live.log_metric(name, value)
        self._live.make_summary()


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


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
