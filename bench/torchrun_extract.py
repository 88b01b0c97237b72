"""Extraction throughput under torchrun on CPU: N processes against one, measured in one run.

Both sides run the same command, `torchrun --standalone --nproc-per-node P -m gcctl extract …`, on the same
synthetic images, alternating, each process with `OMP_NUM_THREADS = cores / P` so the two sides use the same
cores. Throughput is rows ÷ the extraction's own seconds from its summary (model building and imports left
out; the rank-0 publish of a multi-process run counted in); the wall time of the whole command is shown too.

    python bench/torchrun_extract.py --model gcctl-tiny --images 2048 --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gcctl.datasets import load_dataset
from gcctl.synth.benchmarks import WATERBIRDS_SPLIT_SIZES, write_waterbirds


def write_table(scratch: Path, images: int) -> Path:
    """A table of `images` synthetic Waterbirds images, so both sides read exactly the same rows."""
    scale = min(1.0, 1.5 * images / sum(WATERBIRDS_SPLIT_SIZES))
    table = load_dataset("waterbirds", write_waterbirds(scratch / "waterbirds", scale=scale, size=32))
    table.frame = table.frame.iloc[:images].reset_index(drop=True)
    path = scratch / "table.parquet"
    table.save(path)
    return path


def run_extraction(table: Path, out: Path, processes: int, args) -> dict:
    """One `torchrun … gcctl extract` into a fresh `out`: its summary plus the command's wall seconds."""
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "gcctl", "--quiet", "extract", "--table", str(table), "--model", args.model,
               "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", "cpu",
               "--out", str(out), "--json"]
    threads = max(1, (os.cpu_count() or 1) // processes)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"torchrun with {processes} processes failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    return {"images_per_s": summary["rows"] / summary["seconds"], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gcctl-tiny")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2, help="Processes of the side compared with one.")
    parser.add_argument("--repeats", type=int, default=3, help="Alternating runs of each side; the medians count.")
    args = parser.parse_args()

    runs: dict[int, list[dict]] = {1: [], args.processes: []}
    with tempfile.TemporaryDirectory() as scratch:
        table = write_table(Path(scratch), args.images)
        for _ in range(args.repeats):
            for processes in runs:
                runs[processes].append(run_extraction(table, Path(scratch) / "f.h5", processes, args))
    median = {processes: {key: statistics.median(run[key] for run in measured) for key in ("images_per_s", "wall_s")}
              for processes, measured in runs.items()}
    one, many = median[1], median[args.processes]
    print(json.dumps({
        "model": args.model,
        "images": args.images,
        "batch_size": args.batch_size,
        "cores": os.cpu_count(),
        "repeats": args.repeats,
        "one_process_images_per_s": round(one["images_per_s"], 1),
        f"{args.processes}_processes_images_per_s": round(many["images_per_s"], 1),
        "one_process_wall_s": round(one["wall_s"], 2),
        f"{args.processes}_processes_wall_s": round(many["wall_s"], 2),
        "ratio": round(many["images_per_s"] / one["images_per_s"], 3),
    }))


if __name__ == "__main__":
    main()
