"""Extraction throughput against the model's pure forward throughput, measured in one run.

The extract stage (decode images, preprocess, encode, write HDF5) should run close to the speed of the image
tower alone on pre-loaded tensors with the same batch size: the ratio says how much the pipeline around the
model costs. Target: >= 0.9 on CPU for gcctl-tiny and ViT-B-16 (random weights).

    python bench/extract_throughput.py --model gcctl-tiny --images 2048 --batch-size 256
    python bench/extract_throughput.py --model ViT-B-16 --images 64 --batch-size 32
    python bench/extract_throughput.py --model ViT-B-16 --images 2048 --image-size 224 --jpeg --workers 8 --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from gcctl.clip.factory import build_clip
from gcctl.datasets import load_dataset
from gcctl.runtime import autocast, resolve_device
from gcctl.store import extract
from gcctl.synth.benchmarks import WATERBIRDS_SPLIT_SIZES, write_waterbirds


def _table_of(root: Path, images: int, jpeg: bool):
    table = load_dataset("waterbirds", root)
    table.frame = table.frame.iloc[:images].reset_index(drop=True)
    if jpeg:
        table.frame["path"] = [_as_jpeg(table.root / path).relative_to(table.root).as_posix() for path in table.frame["path"]]
    return table


def _as_jpeg(png: Path) -> Path:
    """The synthetic PNG re-encoded as a JPEG beside it: real photo datasets make the loader decode JPEG."""
    from PIL import Image

    jpeg = png.with_suffix(".jpg")
    with Image.open(png) as image:
        image.convert("RGB").save(jpeg, quality=90)
    return jpeg


def forward_images_per_second(bundle, table, batch_size: int, device) -> float:
    """The image tower alone on tensors already preprocessed and in memory."""
    from PIL import Image

    tensors = torch.stack([bundle.preprocess(Image.open(table.root / path).convert("RGB")) for path in table.frame["path"]])
    model = bundle.model.to(device).eval()
    with torch.inference_mode(), autocast(device):  # the precision extract runs the tower in
        model.encode_image(tensors[:batch_size].to(device))  # warm-up
        _synchronize(device)
        started = time.perf_counter()
        for start in range(0, len(tensors), batch_size):
            torch.nn.functional.normalize(model.encode_image(tensors[start : start + batch_size].to(device)), dim=-1)
        _synchronize(device)
        return len(tensors) / (time.perf_counter() - started)


def _synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def extract_images_per_second(bundle, table, batch_size: int, workers: int, device, out: Path) -> float:
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    extract(table, bundle, out, batch_size=batch_size, workers=workers, device=device)
    return len(table.frame) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gcctl-tiny")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=32, help="Side of the synthetic images, in pixels.")
    parser.add_argument("--jpeg", action="store_true", help="Store the images as JPEG (as real datasets are) instead of PNG.")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="Alternating measurements of each; the best counts.")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    bundle = build_clip(args.model, "none", device=device)
    with tempfile.TemporaryDirectory() as scratch:
        scale = min(1.0, 1.5 * args.images / sum(WATERBIRDS_SPLIT_SIZES))
        root = write_waterbirds(Path(scratch) / "waterbirds", scale=scale, size=args.image_size)
        table = _table_of(root, args.images, args.jpeg)
        # Alternate the two measurements and keep the best of each, so a burst of load elsewhere on the
        # machine does not land on one side only.
        forward, extracted = 0.0, 0.0
        for _ in range(args.repeats):
            forward = max(forward, forward_images_per_second(bundle, table, args.batch_size, device))
            extracted = max(extracted, extract_images_per_second(bundle, table, args.batch_size, args.workers, device, Path(scratch) / "f.h5"))
    result = {
        "model": args.model,
        "device": str(device),
        "images": len(table.frame),
        "image_size": args.image_size,
        "image_format": "jpeg" if args.jpeg else "png",
        "batch_size": args.batch_size,
        "workers": args.workers,
        "repeats": args.repeats,
        "forward_images_per_s": round(forward, 1),
        "extract_images_per_s": round(extracted, 1),
        "ratio": round(extracted / forward, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
