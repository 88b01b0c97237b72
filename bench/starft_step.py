"""StarFT's time per optimisation step over plain FT's, measured in one run.

Both runs start from the same weights and take steps on the same pre-loaded batches, alternating FT and
StarFT step by step so that the load of a shared machine hits both alike; the medians are compared.
The frozen model's features are cached (its image features of every training image and its text features of
every spurious caption, computed once when the run is made; --no-teacher-cache encodes the images every step),
so StarFT's extra work per step is the student's: the batch's distinct spurious captions through the text
tower, forward and backward, beside FT's one caption per class, and the regulariser's batch × batch softmax.
Target: ratio <= 1.2 with the cache.

    python bench/starft_step.py --model gcctl-tiny --pretrained pipeline/models/tiny/model.pt --batch-size 128
    python bench/starft_step.py --model ViT-B-16 --batch-size 32 --steps 5
    torchrun --standalone --nproc-per-node 1 bench/starft_step.py --model ViT-B-16 --device cuda --ddp

`--ddp` (under torchrun) wraps both models in DistributedDataParallel, as `gcctl finetune` does with several
processes: with one process it shows the cost of the process group and the gradient all-reduce.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from gcctl.datasets import load_dataset
from gcctl.datasets.images import ImageDataset
from gcctl.finetune import FinetuneConfig
from gcctl.finetune.pools import draw_templates
from gcctl.finetune.train import FinetuneRun
from gcctl.runtime import resolve_device
from gcctl.synth.benchmarks import write_waterbirds
from hardware import attention_kernels, counted_flops, peak_share


def timed_step(run: FinetuneRun, batch, device) -> float:
    work = step_work(run, batch, device)
    started = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def step_work(run: FinetuneRun, batch, device):
    """One untimed optimisation step, for the FLOP counter and the profiler."""
    images, rows, templates = batch
    return lambda: run.step(images.to(device), rows, templates.to(device), run.config.lambda_at(0))


def measure(runs: dict[str, FinetuneRun], batch, device, steps: int) -> tuple[float, float, float, list[str]]:
    """Median seconds per FT and StarFT step (alternating, after one warm-up step each), an FT step's FLOPs
    (forward and backward of both towers) and the attention kernels it takes."""
    for run in runs.values():
        run.model.train()
        timed_step(run, batch, device)  # warm-up
    ft_flops = counted_flops(step_work(runs["ft"], batch, device))
    attention = attention_kernels(step_work(runs["ft"], batch, device))
    seconds = {method: [] for method in runs}
    for _ in range(steps):
        for method, run in runs.items():
            seconds[method].append(timed_step(run, batch, device))
    ft, starft = (statistics.median(seconds[method]) for method in ("ft", "starft"))
    return ft, starft, ft_flops, attention


def join_process_group(device: torch.device) -> torch.device:
    """The process group torchrun describes; one GPU per process, picked by the local rank."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def wrap_data_parallel(run: FinetuneRun, device: torch.device) -> None:
    run.encoder = torch.nn.parallel.DistributedDataParallel(run.encoder, device_ids=[device.index] if device.type == "cuda" else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gcctl-tiny")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--pool", default="synthetic")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--teacher-cache", action=argparse.BooleanOptionalAction, default=True,
                        help="StarFT's frozen model encodes each training image once (default), or every step")
    parser.add_argument("--ddp", action="store_true", help="Train through DistributedDataParallel (run under torchrun).")
    args = parser.parse_args()
    if args.ddp and "RANK" not in os.environ:
        parser.error("--ddp joins torchrun's process group: torchrun --standalone --nproc-per-node 1 bench/starft_step.py --ddp ...")

    device = resolve_device(args.device)
    if args.ddp:
        device = join_process_group(device)
    with tempfile.TemporaryDirectory() as scratch:
        root = write_waterbirds(Path(scratch) / "waterbirds", scale=0.1)
        table = load_dataset("waterbirds", root)
        runs = {
            method: FinetuneRun(table, Path(scratch) / method, model_name=args.model, pretrained=args.pretrained,
                                config=FinetuneConfig(method=method, pools=(args.pool,), batch_size=args.batch_size),
                                device=device, teacher_cache=args.teacher_cache)
            for method in ("ft", "starft")
        }
        for run in runs.values() if args.ddp else ():
            wrap_data_parallel(run, device)
        train_rows = table.frame.index[table.frame["split"] == "train"].tolist()[: args.batch_size]
        images, rows = next(iter(DataLoader(ImageDataset(table, runs["ft"].bundle.preprocess, train_rows), batch_size=len(train_rows))))
        templates = draw_templates(len(table.frame), len(runs["starft"].templates), seed=0)
        batch = (images, rows, templates[rows])
        ft, starft, ft_flops, attention = measure(runs, batch, device, args.steps)
    processes = dist.get_world_size() if args.ddp else 0
    if args.ddp:
        dist.destroy_process_group()
    print(json.dumps({
        "model": args.model,
        "device": str(device),
        "batch_size": len(train_rows),
        "templates": len(runs["starft"].templates),
        "distinct_spurious_captions": len(torch.unique(runs["ft"].labels[rows] * len(runs["starft"].templates) + templates[rows])),
        "teacher_cache": runs["starft"].teacher.cache["images"],
        "steps": args.steps,
        "ddp_processes": processes,
        "ft_seconds_per_step": round(ft, 4),
        "starft_seconds_per_step": round(starft, 4),
        "ratio": round(starft / ft, 3),
        "ft_images_per_s": round(len(train_rows) / ft, 1),
        "ft_tflops_per_s": round(ft_flops / ft / 1e12, 3),
        "ft_peak_share": peak_share(ft_flops / ft / 1e12, device),
        "attention_kernels": attention,
    }))


if __name__ == "__main__":
    main()
