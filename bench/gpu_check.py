"""Everything only a GPU can show, in one run: the driver behind `bench/gpu.sh`.

It runs the benchmarks in bench/ with GPU-sized options, one process each (a crash or a hang costs one row,
not the run), then the test suite with CUDA visible, prints one table and writes the figures as JSON:

- extraction images/s against the image tower's pure forward, ViT-B-16 at 224 px from JPEG files, with
  DataLoader workers, with each `--decode` (bench/extract_throughput.py);
- JPEG decoding and resizing alone: PIL's path against each library decoder's on the device, and how far the
  model inputs move (bench/decode_jpeg.py);
- one GroupCoOp epoch on cached features against encoding the images every step (bench/train_speed.py);
- FT and StarFT steps with autocast (bench/starft_step.py), and the same through DistributedDataParallel in a
  one-process group under torchrun;
- `pytest -q`, the whole suite (no `-x`: every failure counts), without the files that need the `dvc` CLI,
  which the GPU machine lacks (CI runs them); its JUnit XML names each failing test in the table and the JSON.

`--cpu` is the dry mode: the same steps with gcctl-micro, a few images, on the CPU, no test suite; it checks
that the script and the benchmarks' options still fit together, in under a minute.

    bench/gpu.sh                 # installs what is missing, then: python bench/gpu_check.py
    python bench/gpu_check.py --cpu --out bench-gpu-cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gcctl.datasets.decoding import DECODERS

REPO = Path(__file__).resolve().parents[1]
GPU_SECONDS = 450  # the whole driver on one GPU; bench/gpu.sh's installing comes on top (8 minutes in all)
CPU_SECONDS = 300  # a guard against a hang only: the dry mode takes under a minute on an idle 2-core machine
# Tests that run the `dvc` CLI or DVC's Hydra composition (files, or single tests as FILE::NAME): the GPU machine
# has no dvc (the pipeline's optional extra); CI runs them. A new test of that kind belongs here.
NEEDS_DVC = ("tests/test_pipeline.py", "tests/test_ci_example.py",
             "tests/test_methods.py::test_dvc_plots_and_metrics_show_a_runs_curves_without_gcctl")


@dataclass(frozen=True)
class Check:
    name: str
    what: str  # what the row measures, for the table
    command: tuple[str, ...]
    timeout_s: int
    figures: Callable[[dict], str]  # the row's result, from the command's JSON line


def _bench(script: str, *options: str, torchrun: bool = False) -> tuple[str, ...]:
    # torch.distributed.run is torchrun, started with this interpreter so that it sees the same packages
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1") if torchrun else (sys.executable,)
    return (*launcher, str(REPO / "bench" / script), *options)


def _share(share: float | None) -> str:
    return f", {share:.0%} of the dense bf16 peak" if share is not None else ""


def _kernels(names: list[str]) -> str:
    return f"; attention: {', '.join(name.removeprefix('aten::') for name in names) or 'none seen'}"


def _extract_figures(r: dict) -> str:
    return (f"{r['extract_images_per_s']:.0f} img/s extract vs {r['forward_images_per_s']:.0f} forward "
            f"({r['forward_tflops_per_s']:.2f} TFLOP/s at {r['forward_gflops_per_image']:.2f} GFLOP an image"
            f"{_share(r['forward_peak_share'])}): ratio {r['ratio']:.2f} "
            f"({r['images']} {r['image_format']} images, {r['image_size']} px, batch {r['batch_size']}, {r['workers']} workers)"
            f"{_kernels(r['attention_kernels'])}{_compiled(r)}{_other_decoders(r)}")


def _other_decoders(r: dict) -> str:
    """The same extraction with each other decoder (`--decode`): its rate and ratio, or why it could not run."""
    others = {decode: found for decode, found in r.get("decoders", {}).items() if decode != r.get("decode")}
    return "".join(f"; --decode {decode}: " + (found["unavailable"] if "unavailable" in found else
                                               f"{found['extract_images_per_s']:.0f} img/s, ratio {found['ratio']:.2f}")
                   for decode, found in others.items())


def _compiled(r: dict) -> str:
    rate = r.get("compiled_forward_images_per_s")
    return f"; torch.compile'd forward {rate:.0f} img/s ({rate / r['forward_images_per_s']:.2f}x eager)" if rate else ""


def _decode_figures(r: dict) -> str:
    return "; ".join(f"{decode}: {_one_decoder(found, r['device'])}" for decode, found in r["decoders"].items()) + (
        f" vs {r['cpu_images_per_s']:.0f} img/s with PIL on one CPU core ({r['images']} JPEGs "
        f"{r['source_size'][0]}x{r['source_size'][1]} to {r['output_size'][0]} px)")


def _one_decoder(found: dict, device: str) -> str:
    if "unavailable" in found:
        return found["unavailable"]
    return (f"{found['images_per_s']:.0f} img/s decoded and resized on {device}, pixels up to "
            f"{found['max_level_difference']} levels from PIL's (mean {found['mean_level_difference']})")


def _groupcoop_figures(r: dict) -> str:
    return (f"{r['cached_epoch_s']:.3f} s per epoch on cached features vs {r['image_tower_epoch_s']:.3f} s encoding images: "
            f"{r['ratio']}x ({r['train_samples']} samples, {r['prompts']} prompts)")


def _step_figures(r: dict) -> str:
    ddp = f", DDP over {r['ddp_processes']} process" if r["ddp_processes"] else ""
    return (f"FT {r['ft_seconds_per_step']:.3f} s, StarFT {r['starft_seconds_per_step']:.3f} s per step: ratio {r['ratio']:.2f} "
            f"(batch {r['batch_size']}{ddp}); FT {r['ft_images_per_s']:.0f} img/s, {r['ft_tflops_per_s']:.2f} TFLOP/s"
            f"{_share(r['ft_peak_share'])}{_kernels(r['attention_kernels'])}")


def plan(cpu: bool) -> list[Check]:
    """The checks in running order: the benchmarks first, the longest (the test suite) last."""
    if cpu:
        model, device = "gcctl-micro", "cpu"
        extract = ("--images", "32", "--image-size", "64", "--batch-size", "16", "--workers", "0", "--repeats", "1")
        decode = ("--images", "32", "--source-size", "64", "--repeats", "1")
        groupcoop, step, timeout = ("--images", "100", "--batch-size", "32"), ("--batch-size", "8", "--steps", "1"), 60
    else:
        model, device = "ViT-B-16", "cuda"
        extract = ("--images", "2048", "--image-size", "224", "--batch-size", "256", "--workers", "8", "--repeats", "3", "--compile")
        decode = ("--images", "512", "--source-size", "320", "--repeats", "3")
        # batch 256: the size issue 26's training-step target is set at
        groupcoop, step, timeout = ("--images", "1200", "--batch-size", "256"), ("--batch-size", "256", "--steps", "5"), 180
    common = ("--model", model, "--device", device)
    extract = (*extract, "--decode", ",".join(DECODERS))  # which decoder makes extraction keep up is measured
    checks = [
        Check("extract", f"{model} extraction from JPEG vs pure forward", _bench("extract_throughput.py", *common, "--jpeg", *extract),
              timeout, _extract_figures),
        Check("decode", f"JPEG decoding and resizing on {device} vs PIL (issue 26 item 3)",
              _bench("decode_jpeg.py", *common, *decode), timeout, _decode_figures),
        Check("groupcoop", f"GroupCoOp epoch, {model} prompts", _bench("train_speed.py", *common, *groupcoop), timeout, _groupcoop_figures),
        Check("ft-starft", f"FT and StarFT steps, {model}, autocast", _bench("starft_step.py", *common, *step), timeout, _step_figures),
        Check("ddp", f"the same through DDP, 1 process ({'gloo' if cpu else 'nccl'})",
              _bench("starft_step.py", *common, *step, "--ddp", torchrun=True), timeout, _step_figures),
    ]
    if not cpu:
        ignored = [f"--deselect={test}" if "::" in test else f"--ignore={test}" for test in NEEDS_DVC]
        # a few processes when pytest-xdist is there (the GPU machine has it): the suite is single-threaded CPU
        # work, 5.5 minutes on 2 cores; a test file stays in one process, its fixtures too
        parallel = ("-n", "4", "--dist", "loadfile") if importlib.util.find_spec("xdist") else ()
        junit = f"--junitxml={JUNIT_XML}"
        checks.append(Check("tests", " ".join(("pytest -q", *parallel, "with CUDA visible")),
                            (sys.executable, "-m", "pytest", "-q", *parallel, junit, *ignored), GPU_SECONDS, _test_figures))
    return checks


JUNIT_XML = Path(tempfile.gettempdir()) / "gcctl-gpu-tests.xml"


def _test_figures(r: dict) -> str:
    failed = r.get("failed_tests") or []
    return r["summary"] + (f"; failed: {', '.join(failed)}" if failed else "")


def failed_tests(junit_xml: Path) -> list[str]:
    """`FILE::NAME` of every test the JUnit XML records as failed or in error (a crashed run may leave none)."""
    try:
        root = ElementTree.parse(junit_xml).getroot()
    except (OSError, ElementTree.ParseError):
        return []
    names = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            path = case.get("classname", "").replace(".", "/")
            names.append(f"{path}.py::{case.get('name')}" if path else case.get("name", "?"))
    return names


def run_check(check: Check, timeout_s: float, env: dict) -> dict:
    """Run one check's command; its result is the last JSON line it prints (pytest: its summary line)."""
    row = {"name": check.name, "what": check.what, "command": shlex.join(check.command)}
    if timeout_s < 1:
        return {**row, "status": "skipped: no time left", "seconds": 0.0, "figures": "", "result": None}
    started = time.perf_counter()
    JUNIT_XML.unlink(missing_ok=True)  # a report from an earlier run must not name this run's failures
    stdout, stderr, status = _run(check.command, timeout_s, env)
    row.update(status=status, seconds=round(time.perf_counter() - started, 1))
    if check.name == "tests":
        result = {"summary": _last_line(stdout), "failed_tests": failed_tests(JUNIT_XML)}
    else:
        result = _last_json(stdout)
    try:
        row["figures"] = check.figures(result) if result else ""
    except (KeyError, TypeError, ValueError):
        row["figures"] = ""  # a result without the expected fields: the status and output say why
    row["result"] = result
    if status != "ok":
        row["output_tail"] = "\n".join((stdout + stderr).strip().splitlines()[-25:])
    return row


def _run(command: tuple[str, ...], timeout_s: float, env: dict) -> tuple[str, str, str]:
    """stdout, stderr and status of `command`; on timeout its whole process group is killed (torchrun's
    workers too, which would otherwise hold the pipes open)."""
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            return stdout, stderr, f"timed out after {timeout_s:.0f} s"
    return stdout, stderr, "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"


def _last_json(output: str) -> dict | None:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _last_line(output: str) -> str:
    lines = [line.strip("= ") for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def machine() -> dict:
    """What ran the checks: the GPU as nvidia-smi names it, and the Python packages that matter."""
    gpu = ""
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True)
        gpu = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else ""
    versions = {}
    for package in ("torch", "torchvision", "open_clip_torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"gpu": gpu, "cpus": os.cpu_count(), "python": sys.version.split()[0], **versions}


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"gcctl GPU check ({report['mode']}), {report['date']}, {report['machine']['gpu'] or 'no GPU'}"
    table = Table(title=title)
    for column in ("check", "what", "status", "s", "result"):
        table.add_column(column, justify="right" if column == "s" else "left")
    for row in report["checks"]:
        style = None if row["status"] == "ok" else "red"
        table.add_row(row["name"], row["what"], row["status"], f"{row['seconds']:.1f}", row["figures"], style=style)
    Console(width=None if sys.stdout.isatty() else 180).print(table)  # a log keeps whole rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="Dry mode: tiny model, few images, CPU, no test suite.")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default bench-gpu.json, bench-gpu-cpu.json with --cpu).")
    args = parser.parse_args(argv)
    out = args.out or REPO / ("bench-gpu-cpu.json" if args.cpu else "bench-gpu.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    budget, started = (CPU_SECONDS if args.cpu else GPU_SECONDS), time.perf_counter()
    rows = []
    for check in plan(args.cpu):
        left = budget - (time.perf_counter() - started)
        print(f"{check.name}: {check.what}", file=sys.stderr, flush=True)
        rows.append(run_check(check, min(check.timeout_s, left), env))
    report = {"mode": "cpu (dry)" if args.cpu else "gpu", "date": datetime.date.today().isoformat(), "machine": machine(),
              "seconds": round(time.perf_counter() - started, 1), "checks": rows}
    from gcctl.files import write_json

    write_json(out, report)
    print_table(report)
    print(f"figures written to {out}", file=sys.stderr)
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
