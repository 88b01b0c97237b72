"""Peak memory and epoch time of GroupCoOp on stores larger than memory, against the in-memory path, in one run.

For each size (default 1M and 4M rows x 512 float16: ViT-B-16's text tower, random weights) the bench writes a
generated store, then trains GroupCoOp for one epoch with `gcctl.methods.runs.train_run` (batches of 8192) in a
fresh process per (size, path), so each peak resident memory (ru_maxrss) is that run's alone:

- `store`: `--max-memory` far below the split (64M), so train and val are read from HDF5 batch by batch;
- `memory`: no budget, the splits loaded whole (the features alone are rows x 512 x 2 bytes).

It prints one JSON line per run, then a summary with the store path's peak RSS ratio between the largest and
the smallest size (target <= 1.1) and, per size, its epoch time over the in-memory path's. The stores need
rows x 1 KiB of disk twice while one is written (about 10 GB at 4M) under --scratch.

    python bench/out_of_core.py
    python bench/out_of_core.py --rows 200000,800000 --model gcctl-tiny --paths store
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUDGET = "64M"
BATCH_SIZE = 8192


def generate(path: Path, rows: int, model: str) -> None:
    """A store of `rows` random unit features in blocks (never whole in float32), as bench/train_speed.py makes."""
    from gcctl.clip.factory import build_clip
    from gcctl.datasets.groups import GroupVocabulary
    from gcctl.store import write_store

    bundle = build_clip(model, "none")
    dim = bundle.provenance["embed_dim"]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, rows)
    place = np.where(rng.random(rows) < 0.95, y, 1 - y)
    staging = path.with_suffix(".npy")
    features = np.lib.format.open_memmap(staging, mode="w+", dtype=np.float16, shape=(rows, dim))
    for start in range(0, rows, 100_000):
        block = rng.standard_normal((min(100_000, rows - start), dim), dtype=np.float32)
        features[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    write_store(path, features, y, rng.choice(3, rows, p=[0.8, 0.1, 0.1]), [str(i) for i in range(rows)],
                {"place": place}, vocabulary=GroupVocabulary(["circle", "square"], {"place": ["grass", "water"]}),
                provenance={"model_ref": bundle.reference.to_dict(), "embed_dim": dim})
    del features
    staging.unlink()


def train_once(store: Path, out: Path, path: str) -> dict:
    """One GroupCoOp epoch on `store`, its splits read from the store (`path` store) or loaded (memory)."""
    import torch

    from gcctl.files import read_timings
    from gcctl.methods.runs import train_run
    from gcctl.runtime import set_quiet
    from gcctl.store import memory_budget

    set_quiet(True)
    torch.set_num_threads(1)  # as gcctl's feature training loop does on CPU
    started = time.perf_counter()
    train_run(store, "groupcoop", out, options={"epochs": 1, "batch_size": BATCH_SIZE}, seeds=[0], device="cpu",
              max_memory=memory_budget(BUDGET) if path == "store" else None)
    total = time.perf_counter() - started
    return {"epoch_s": round(read_timings(out)["epoch_seconds"]["0"][0], 1), "train_run_s": round(total, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def _child(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000,4000000", help="Comma-separated store sizes.")
    parser.add_argument("--model", default="ViT-B-16", help="Its text tower and embedding width (ViT-B-16: 512).")
    parser.add_argument("--paths", default="store,memory", help="store, memory or both (comma-separated).")
    parser.add_argument("--scratch", default=None, help="Folder for the generated stores (default: a temporary one).")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task, *rest = args.child
        result = generate(Path(rest[0]), int(rest[1]), rest[2]) if task == "generate" else train_once(Path(rest[0]), Path(rest[1]), rest[2])
        print(json.dumps(result or {}))
        return
    sizes, paths = [int(n) for n in args.rows.split(",")], args.paths.split(",")
    results = []
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        for rows in sizes:
            store = Path(scratch) / f"{rows}.h5"
            _child("generate", str(store), str(rows), args.model)
            for path in paths:
                result = {"rows": rows, "path": path, "model": args.model, "batch_size": BATCH_SIZE,
                          "max_memory": BUDGET if path == "store" else None,
                          **_child("train", str(store), str(Path(scratch) / f"run-{rows}-{path}"), path)}
                print(json.dumps(result), flush=True)
                results.append(result)
            store.unlink()
    print(json.dumps(summarise(results, sizes, paths)))


def summarise(results: list[dict], sizes: list[int], paths: list[str]) -> dict:
    by = {(r["rows"], r["path"]): r for r in results}
    summary = {}
    if "store" in paths and len(sizes) > 1:
        small, large = by[(min(sizes), "store")], by[(max(sizes), "store")]
        summary[f"store_peak_rss_ratio_{max(sizes)}_over_{min(sizes)}"] = round(large["peak_rss_gb"] / small["peak_rss_gb"], 3)
    if {"store", "memory"} <= set(paths):
        summary["store_over_memory_epoch_time"] = {rows: round(by[(rows, "store")]["epoch_s"] / by[(rows, "memory")]["epoch_s"], 2)
                                                   for rows in sizes}
    return summary


if __name__ == "__main__":
    main()
