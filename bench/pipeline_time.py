"""The pipeline's wall time stage by stage, and the share of it spent outside model compute.

It clones the repository's committed HEAD into a scratch folder (`--worktree`: plus the working tree's tracked
changes, so uncommitted code is measured), runs `dvc repro TARGETS` there and timestamps DVC's output line by
line: a stage lasts from its `Running stage 'NAME':` line to the next one or to the end. A `gcctl` shim first on
PATH runs each command as `python -X importtime -m gcctl ARGS` and logs its wall time and summed import time, so
each stage splits into

    overhead = (stage wall - command wall)      DVC's own work: hashing, lock writing, the shim's start
             + import seconds                    beyond what the bare interpreter imports
             + bare start-up                     `python -c pass`, measured once here
             + the warm server's imports         once per `dvc repro` (gcctl.cli.warm), measured once here

and model compute, the rest. The overhead share is total overhead / total wall, per `dvc repro` command: the
first is "main command", the later ones "rest". Figures come from one run; `-X importtime` itself adds a
little to every command's time. Nothing is written inside the pipeline's artifacts: the bench only reads.

    python bench/pipeline_time.py                                  # dvc repro report on HEAD (about 30 min)
    python bench/pipeline_time.py --targets report - --lock-out dvc.lock.full   # then the rest of dvc repro
    python bench/pipeline_time.py --targets report - --without-lock --lock-out dvc.lock.new   # a lock from scratch
    python bench/pipeline_time.py --worktree --params tiny.yaml --keep   # uncommitted code, a tiny parameter set
    python bench/pipeline_time.py --markdown-from bench-pipeline-time.json   # docs/pipeline.md's tables
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNING = re.compile(r"^Running stage '([^']+)':")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
NO_TARGET = "-"  # `--targets report -`: `dvc repro report`, then plain `dvc repro`


@dataclass(frozen=True)
class Span:
    name: str
    start: float  # seconds since the `dvc repro` command started
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def import_self_us(lines) -> int:
    """Summed `self [us]` column of `-X importtime` lines (bytes or str); other lines and the header count 0."""
    total = 0
    for line in lines:
        line = line.decode(errors="replace") if isinstance(line, bytes) else line
        if not line.startswith("import time:"):
            continue
        try:
            total += int(line[len("import time:"):].split("|")[0])
        except ValueError:  # the header line, "self [us] | cumulative | imported package"
            pass
    return total


def stage_spans(timed_lines: list[tuple[float, str]], end: float) -> tuple[float, list[Span]]:
    """DVC's start-up (seconds before the first stage) and each stage's span, from its timestamped output."""
    starts = []
    for at, line in timed_lines:
        found = RUNNING.match(ANSI.sub("", line).strip())
        if found:
            starts.append((at, found.group(1)))
    spans = [Span(name, at, starts[i + 1][0] if i + 1 < len(starts) else end) for i, (at, name) in enumerate(starts)]
    return (starts[0][0] if starts else end), spans


# The shim: a Python file written into the scratch folder, first on PATH as `gcctl`. It keeps the real
# stderr apart from the import-time lines and logs one JSON line per invocation; the parser is this module's
# own (pasted in below), so the bench and its test read import times the same way.
SHIM = '''#!{python}
"""gcctl, timed for bench/pipeline_time.py: runs `python -X importtime -m gcctl ARGS` and logs its cost."""
import json, os, subprocess, sys, time

PYTHON = {python!r}

{parser}

def main():
    args = [PYTHON, "-m", "gcctl", *sys.argv[1:]]
    if os.environ.get("GCCTL_BENCH_SHIM_ACTIVE"):  # a gcctl started by a gcctl: its time is its parent's
        os.execv(PYTHON, args)
    env = {{**os.environ, "GCCTL_BENCH_SHIM_ACTIVE": "1"}}
    started = time.perf_counter()
    child = subprocess.Popen([PYTHON, "-X", "importtime", *args[1:]], stderr=subprocess.PIPE, env=env)
    imports = []
    for line in child.stderr:  # stdout is inherited untouched; stderr passes through but for import times
        if line.startswith(b"import time:"):
            imports.append(line)
        else:
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()
    code = child.wait()
    record = {{"stage": os.environ.get("DVC_STAGE"), "argv": sys.argv[1:], "wall_s": time.perf_counter() - started,
              "import_s": import_self_us(imports) / 1e6, "returncode": code}}
    with open(os.environ["GCCTL_BENCH_LOG"], "a") as log:
        log.write(json.dumps(record) + "\\n")
    sys.exit(code if code >= 0 else 128 - code)


main()
'''


def write_shim(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "gcctl"
    shim.write_text(SHIM.format(python=sys.executable, parser=inspect.getsource(import_self_us)))
    shim.chmod(0o755)
    return folder


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def scratch_clone(scratch: Path, worktree: bool) -> list[str]:
    """Clone HEAD into `scratch`; with `worktree`, copy the tracked changes over. The changed paths."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(scratch)], check=True)
    if not worktree:
        return []
    changed = [name for name in _git("diff", "--name-only", "--no-renames", "-z", "HEAD", cwd=REPO).split("\0") if name]
    for name in changed:
        source, target = REPO / name, scratch / name
        if source.exists() or source.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
        else:  # deleted in the working tree
            target.unlink(missing_ok=True)
    return changed


def bare_startup() -> dict:
    """The interpreter's own start-up (median of 5 `python -c pass`) and what it imports on the way: every
    command pays both, and the command's import total already holds the latter."""
    walls, imports = [], []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        walls.append(time.perf_counter() - started)
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], check=True, capture_output=True)
        imports.append(import_self_us(done.stderr.splitlines()) / 1e6)
    return {"startup_s": statistics.median(walls), "import_s": statistics.median(imports)}


def warm_startup(repo: Path) -> float:
    """Seconds the warm server (gcctl.cli.warm) spends importing before it serves, measured once here: it runs
    beside the first stages of each `dvc repro`, so it counts as overhead once per command."""
    code = ("import time; started = time.perf_counter(); from gcctl.cli.warm import _warm_up; _warm_up(); "
            "print(time.perf_counter() - started)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=repo)
    return float(done.stdout.split()[-1])


def run_dvc(targets: list[str], cwd: Path, env: dict, echo: bool) -> tuple[float, list[tuple[float, str]], int]:
    """`dvc repro TARGETS`, its output read as it comes and timestamped: wall seconds, lines, return code."""
    started = time.perf_counter()
    process = subprocess.Popen(["dvc", "repro", *targets], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    lines = []
    for raw in process.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n")
        lines.append((time.perf_counter() - started, line))
        if echo:
            print(line, file=sys.stderr, flush=True)
    code = process.wait()
    return time.perf_counter() - started, lines, code


def read_calls(log: Path) -> dict[str, list[dict]]:
    """The shim's log, by stage."""
    calls: dict[str, list[dict]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            calls.setdefault(record["stage"], []).append(record)
    return calls


def stage_figures(span: Span, calls: list[dict], bare: dict) -> dict:
    """One stage's wall time split into DVC's work, imports, interpreter start-up and the rest (compute)."""
    command_s = sum(call["wall_s"] for call in calls)
    import_s = sum(max(0.0, call["import_s"] - bare["import_s"]) for call in calls)
    startup_s = bare["startup_s"] * len(calls)
    # A stage without a logged gcctl call ran something else: counted as compute, so the share is a lower bound.
    dvc_s = max(0.0, span.seconds - command_s) if calls else 0.0
    overhead_s = dvc_s + import_s + startup_s
    return {"stage": span.name, "group": span.name.split("@")[0], "wall_s": round(span.seconds, 3),
            "commands": len(calls), "command_s": round(command_s, 3), "dvc_s": round(dvc_s, 3),
            "import_s": round(import_s, 3), "startup_s": round(startup_s, 3), "overhead_s": round(overhead_s, 3),
            "compute_s": round(span.seconds - overhead_s, 3)}


def command_figures(label: str, targets: list[str], wall: float, lines, calls: dict, bare: dict) -> dict:
    dvc_start_s, spans = stage_spans(lines, wall)
    stages = [stage_figures(span, calls.get(span.name, []), bare) for span in spans]
    warm_s = bare["warm_start_s"] if len(stages) > 1 else 0.0  # a second stage is the first the server serves
    overhead = dvc_start_s + warm_s + sum(stage["overhead_s"] for stage in stages)
    return {"label": label, "command": " ".join(["dvc", "repro", *targets]), "wall_s": round(wall, 3),
            "dvc_start_s": round(dvc_start_s, 3), "warm_start_s": round(warm_s, 3), "overhead_s": round(overhead, 3),
            "overhead_share": round(overhead / wall, 4) if wall else None, "stages": stages,
            "unmeasured": [stage["stage"] for stage in stages if not stage["commands"]],
            "unmatched_calls": sorted(name or "?" for name in set(calls) - {span.name for span in spans})}


def groups(stages: list[dict]) -> dict[str, dict]:
    """Stages by the name before `@`, in pipeline order: count, seconds, overhead, the longest one."""
    table: dict[str, dict] = {}
    for stage in stages:
        row = table.setdefault(stage["group"], {"count": 0, "wall_s": 0.0, "overhead_s": 0.0, "longest": stage})
        row["count"] += 1
        row["wall_s"] += stage["wall_s"]
        row["overhead_s"] += stage["overhead_s"]
        if stage["wall_s"] > row["longest"]["wall_s"]:
            row["longest"] = stage
    return table


def print_table(command: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{command['label']}: `{command['command']}`, {command['wall_s']:.1f} s")
    for column in ("stage group", "stages", "total s", "overhead s", "overhead share", "longest stage"):
        table.add_column(column, justify="left" if column in ("stage group", "longest stage") else "right")
    table.add_row("(DVC start-up)", "", f"{command['dvc_start_s']:.1f}", f"{command['dvc_start_s']:.1f}", "1.00", "")
    if command["warm_start_s"]:
        table.add_row("(warm server's imports, beside the first stages)", "", "", f"{command['warm_start_s']:.1f}", "", "")
    for name, row in groups(command["stages"]).items():
        longest = row["longest"]
        table.add_row(name, str(row["count"]), f"{row['wall_s']:.1f}", f"{row['overhead_s']:.1f}",
                      f"{row['overhead_s'] / row['wall_s']:.2f}" if row["wall_s"] else "–",
                      f"{longest['stage']} ({longest['wall_s']:.1f} s)")
    table.add_section()
    table.add_row("total", str(len(command["stages"])), f"{command['wall_s']:.1f}", f"{command['overhead_s']:.1f}",
                  f"{command['overhead_share']:.2f}", "", style="bold")
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # a log keeps whole rows
    for key, what in (("unmeasured", "stages without a gcctl call (counted as compute)"),
                      ("unmatched_calls", "gcctl calls outside any stage")):
        if command[key]:
            print(f"{what}: {', '.join(command[key])}", file=sys.stderr)


def markdown_table(command: dict) -> str:
    """One command's stage groups as the Markdown table docs/pipeline.md carries (seconds rounded to whole)."""
    rows = ["| stages | count | seconds | of it outside compute | longest |", "|---|---:|---:|---:|---|"]
    for name, row in groups(command["stages"]).items():
        longest = f"{row['longest']['wall_s']:.1f} (`{row['longest']['stage']}`)" if row["count"] > 1 else ""
        matrix = "@" in row["longest"]["stage"]  # a foreach stage, even with one item (pretrain@tiny)
        rows.append(f"| `{name}{'@…' if matrix else ''}` | {row['count']} | {row['wall_s']:,.0f} | "
                    f"{row['overhead_s']:,.0f} | {longest} |")
    return "\n".join(rows)


def _label(index: int) -> str:
    return "main command" if index == 0 else ("rest" if index == 1 else f"rest {index}")


def measure(scratch: Path, target_sets: list[list[str]], bare: dict, echo: bool) -> list[dict]:
    """Each `dvc repro` in turn in the scratch clone, with the shim first on PATH; their figures."""
    bin_folder = write_shim(scratch / "bin")
    repo = scratch / "repo"
    commands = []
    for index, targets in enumerate(target_sets):
        log = scratch / "logs" / f"{index}.jsonl"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PATH": f"{bin_folder}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONUNBUFFERED": "1",  # DVC's lines arrive when printed, not when a buffer fills
               # the clone's gcctl, not the editable install's
               "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
               "GCCTL_BENCH_LOG": str(log)}
        print(f"{_label(index)}: dvc repro {' '.join(targets)}", file=sys.stderr, flush=True)
        wall, lines, code = run_dvc(targets, repo, env, echo)
        # DVC's timestamped output beside the shim's log, for reading a slow stage with --keep
        log.with_suffix(".dvc.txt").write_text("".join(f"{at:9.3f} {line}\n" for at, line in lines))
        if code:
            tail = "\n".join(line for _, line in lines[-40:])
            raise SystemExit(f"dvc repro {' '.join(targets)} failed ({code}) in {repo}:\n{tail}")
        commands.append(command_figures(_label(index), targets, wall, lines, read_calls(log), bare))
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=["report"],
                        help=f"One `dvc repro` per item, in turn (several targets in one item: space-separated; "
                             f"'{NO_TARGET}': no target, the whole pipeline). Default: report.")
    parser.add_argument("--worktree", action="store_true", help="Copy the working tree's tracked changes over HEAD.")
    parser.add_argument("--params", type=Path, default=None, help="A params.yaml to use instead of the clone's.")
    parser.add_argument("--json-out", type=Path, default=Path("bench-pipeline-time.json"),
                        help="Where the figures go (default: bench-pipeline-time.json here).")
    parser.add_argument("--lock-out", type=Path, default=None, help="Copy the scratch run's dvc.lock here.")
    parser.add_argument("--without-lock", action="store_true",
                        help="Remove the clone's dvc.lock first, as a pipeline's first `dvc repro`: the lock it writes "
                             "then holds no entry of a stage dvc.yaml no longer has (DVC never drops one).")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch folder (its path is printed).")
    parser.add_argument("--quiet", action="store_true", help="Do not echo DVC's output.")
    parser.add_argument("--markdown-from", type=Path, default=None, metavar="JSON",
                        help="Run nothing: print the Markdown tables of the figures an earlier run wrote.")
    args = parser.parse_args(argv)
    if args.markdown_from:
        for command in json.loads(args.markdown_from.read_text())["commands"]:
            print(f"{command['label']} (`{command['command']}`, {command['wall_s']:,.0f} s):\n\n{markdown_table(command)}\n")
        return 0
    target_sets = [[] if item == NO_TARGET else item.split() for item in args.targets]

    scratch = Path(tempfile.mkdtemp(prefix="gcctl-pipeline-time-"))
    try:
        changed = scratch_clone(scratch / "repo", args.worktree)
        if args.params:
            shutil.copy(args.params, scratch / "repo" / "params.yaml")
        if args.without_lock:
            (scratch / "repo" / "dvc.lock").unlink(missing_ok=True)
        bare = {**bare_startup(), "warm_start_s": warm_startup(scratch / "repo")}
        commands = measure(scratch, target_sets, bare, echo=not args.quiet)
        if args.lock_out:
            shutil.copy(scratch / "repo" / "dvc.lock", args.lock_out)
    finally:
        if args.keep:
            print(f"scratch kept: {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    commit = _git("rev-parse", "--short", "HEAD", cwd=REPO).strip()
    report = {"date": datetime.date.today().isoformat(), "commit": commit,
              "worktree_changes": changed if args.worktree else None,
              "params": str(args.params) if args.params else "params.yaml (the clone's)",
              "machine": {"cpus": len(os.sched_getaffinity(0)), "load_1min_at_end": round(os.getloadavg()[0], 2),
                          "python": sys.version.split()[0]},
              "bare_startup_s": round(bare["startup_s"], 4), "bare_import_s": round(bare["import_s"], 4),
              "warm_start_s": round(bare["warm_start_s"], 3),
              "commands": commands}
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    for command in commands:
        print_table(command)
    print(f"figures written to {args.json_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
