"""CPU stages beside a competing job: step time with one CPU-bound process running against idle, per stage.

Pretraining and extraction run as users run them (`python -m gcctl …` in a fresh process, so gcctl's thread
policy applies from the start), first on an otherwise idle machine, then beside `--competitors` busy-looping
Python processes; the two alternate `--repeats` times and the medians count. A fair share on 2 cores with one
competitor is 2x; target: loaded ÷ idle <= 2.5 (it was 5.6 for pretraining before gcctl set the policy).
Run it on a quiet machine: other jobs count as competitors.

    python bench/under_load.py
    python bench/under_load.py --wait-policy active   # OpenMP busy-waiting, as torch's default does
    GCCTL_THREADS=1 python bench/under_load.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

COMPETITOR = "while True: pass"


def _gcctl(args: list[str], env: dict) -> dict:
    """Run `gcctl ARGS --json` in a fresh process; its summary."""
    done = subprocess.run([sys.executable, "-m", "gcctl", "--quiet", *args, "--json"], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"gcctl {' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def pretrain_seconds_per_step(corpus: Path, out: Path, batch_size: int, env: dict) -> float:
    summary = _gcctl(["pretrain", "--corpus", str(corpus), "--out", str(out), "--model", "gcctl-tiny", "--epochs", "1",
                      "--batch-size", str(batch_size), "--device", "cpu", "--overwrite", "--restart"], env)
    return summary["seconds_per_step"]


def extract_seconds_per_batch(root: Path, out: Path, batch_size: int, env: dict) -> float:
    summary = _gcctl(["extract", "--dataset", "waterbirds", "--root", str(root), "--model", "gcctl-tiny", "--out", str(out),
                      "--batch-size", str(batch_size), "--device", "cpu", "--overwrite"], env)
    return summary["seconds"] / math.ceil(summary["rows"] / batch_size)


@contextmanager
def competing(processes: int):
    """`processes` CPU-bound Python loops for the duration of the block."""
    running = [subprocess.Popen([sys.executable, "-c", COMPETITOR]) for _ in range(processes)]
    try:
        yield
    finally:
        for process in running:
            process.kill()
            process.wait()


def measure(step, repeats: int, competitors: int) -> dict:
    """Alternating idle and loaded runs of `step` (a callable returning seconds per step); medians and ratio."""
    idle, loaded = [], []
    for _ in range(repeats):
        idle.append(step())
        with competing(competitors):
            loaded.append(step())
    return {"idle_s_per_step": round(statistics.median(idle), 4), "loaded_s_per_step": round(statistics.median(loaded), 4),
            "ratio": round(statistics.median(loaded) / statistics.median(idle), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", nargs="+", default=["pretrain", "extract"], choices=["pretrain", "extract"])
    parser.add_argument("--steps", type=int, default=6, help="Pretraining steps per run.")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=1024, help="Images extracted per run.")
    parser.add_argument("--competitors", type=int, default=1, help="Busy-looping processes beside the loaded runs.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wait-policy", choices=["passive", "active"], default=None,
                        help="OMP_WAIT_POLICY for the stages (default: gcctl's choice, passive).")
    args = parser.parse_args()

    from gcctl.datasets import load_dataset
    from gcctl.synth.benchmarks import WATERBIRDS_SPLIT_SIZES, write_waterbirds
    from gcctl.synth.corpus import write_corpus

    env = dict(os.environ)
    if args.wait_policy:
        env["OMP_WAIT_POLICY"] = args.wait_policy.upper()
    result = {"cpus": len(os.sched_getaffinity(0)), "competitors": args.competitors, "repeats": args.repeats,
              "wait_policy": env.get("OMP_WAIT_POLICY", "gcctl default (PASSIVE)"),
              "threads": env.get("GCCTL_THREADS") or env.get("OMP_NUM_THREADS") or "gcctl default (CPU budget)"}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if "pretrain" in args.stages:
            corpus = write_corpus(scratch / "corpus", n=args.steps * args.batch_size, seed=0)
            step = lambda: pretrain_seconds_per_step(corpus, scratch / "pretrain", args.batch_size, env)  # noqa: E731
            result["pretrain"] = {"batch_size": args.batch_size, "steps": args.steps,
                                  **measure(step, args.repeats, args.competitors)}
        if "extract" in args.stages:
            scale = min(1.0, 1.05 * args.images / sum(WATERBIRDS_SPLIT_SIZES))
            root = write_waterbirds(scratch / "waterbirds", scale=scale)
            step = lambda: extract_seconds_per_batch(root, scratch / "features.h5", args.batch_size, env)  # noqa: E731
            result["extract"] = {"batch_size": args.batch_size, "images": len(load_dataset("waterbirds", root).frame),
                                 **measure(step, args.repeats, args.competitors)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
