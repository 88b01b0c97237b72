"""Extraction throughput against the model's pure forward throughput: the median of alternating runs.

The extract stage (decode images, preprocess, encode, write HDF5) should run close to the speed of the image
tower alone on pre-loaded tensors with the same batch size: the ratio says how much the pipeline around the
model costs. Target: >= 0.9 on CPU for gcctl-tiny and ViT-B-16 (random weights). The two are measured in
turn (forward, extract, forward, extract, ...) and each pair gives a ratio; the median pair is reported, so a
burst of load elsewhere on the machine moves one pair, not the result.

    python bench/extract_throughput.py --model gcctl-tiny --images 1024 --batch-size 256 --repeats 9
    python bench/extract_throughput.py --model ViT-B-16 --images 64 --batch-size 32
    python bench/extract_throughput.py --model ViT-B-16 --images 2048 --image-size 224 --jpeg --workers 8 --device cuda \
        --decode pil,torchcodec,torchvision
"""

from __future__ import annotations

from gcctl.runtime import configure_cpu_threads

configure_cpu_threads()  # the CLI's thread policy, set before torch loads OpenMP

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from gcctl.clip.factory import build_clip  # noqa: E402
from gcctl.datasets import load_dataset  # noqa: E402
from gcctl.datasets.decoding import DECODERS, jpeg_decoder  # noqa: E402
from gcctl.errors import GcctlError  # noqa: E402
from gcctl.runtime import autocast, device_layout, resolve_device  # noqa: E402
from gcctl.store import extract  # noqa: E402
from gcctl.synth.benchmarks import WATERBIRDS_SPLIT_SIZES, write_waterbirds  # noqa: E402
from hardware import attention_kernels, counted_flops, peak_share  # noqa: E402


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


def preprocessed(bundle, table) -> torch.Tensor:
    from PIL import Image

    return torch.stack([bundle.preprocess(Image.open(table.root / path).convert("RGB")) for path in table.frame["path"]])


def forward_images_per_second(bundle, tensors: torch.Tensor, batch_size: int, device, encode=None) -> float:
    """The image tower alone on tensors already preprocessed and in memory (`encode`: another way to run it,
    such as its torch.compile'd form)."""
    model = device_layout(bundle.model.to(device), device).eval()  # the layout extract runs it in
    encode = encode or model.encode_image
    with torch.inference_mode(), autocast(device):  # the precision extract runs the tower in
        for shape in {batch_size, len(tensors) % batch_size} - {0}:  # warm-up: a compiled form compiles each shape here
            encode(tensors[:shape].to(device))
        _synchronize(device)
        started = time.perf_counter()
        for start in range(0, len(tensors), batch_size):
            torch.nn.functional.normalize(encode(tensors[start : start + batch_size].to(device)), dim=-1)
        _synchronize(device)
        return len(tensors) / (time.perf_counter() - started)


def forward_flops_per_image(bundle, tensors: torch.Tensor, device) -> float:
    """The image tower's FLOPs for one image, as torch's FLOP counter counts them (a multiply-add is 2), so
    images per second become achieved TFLOP/s."""
    model = bundle.model.to(device).eval()
    # With autograd on: without it nn.MultiheadAttention takes its fused fast path, which the counter misses
    # (ViT-B-16: 22.5 GFLOP an image counted that way against 33.7).
    return counted_flops(lambda: model.encode_image(tensors[:2].to(device))) / 2


def inference_attention(bundle, tensors: torch.Tensor, device) -> list[str]:
    """The attention kernels the image tower takes as extraction runs it (eval, inference mode, autocast)."""
    model = bundle.model.to(device).eval()
    with torch.inference_mode(), autocast(device):
        return attention_kernels(lambda: model.encode_image(tensors[:2].to(device)))


def _synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def extract_run(bundle, table, batch_size: int, workers: int | None, device, out: Path, decode: str) -> tuple[float, int]:
    """Images per second of a whole `extract` call (setup, decoding, encoding, writing), and its workers."""
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    summary = extract(table, bundle, out, batch_size=batch_size, workers=workers, device=device, decode=decode)
    return len(table.frame) / (time.perf_counter() - started), summary["workers"]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gcctl-tiny")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=32, help="Side of the synthetic images, in pixels.")
    parser.add_argument("--jpeg", action="store_true", help="Store the images as JPEG (as real datasets are) instead of PNG.")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="Decoding processes (default: extract's own choice).")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true",
                        help="Also time the tower under torch.compile (whether compiling pays is measured, not assumed).")
    parser.add_argument("--decode", default=DECODERS[0],
                        help="Comma-separated decoders to time extraction with (the first gives the headline ratio).")
    parser.add_argument("--repeats", type=int, default=9, help="Alternating pairs of measurements; the median pair counts.")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    decoders = args.decode.split(",")

    device = resolve_device(args.device)
    torch.manual_seed(0)
    bundle = build_clip(args.model, "none", device=device)
    with tempfile.TemporaryDirectory() as scratch:
        scale = min(1.0, 1.5 * args.images / sum(WATERBIRDS_SPLIT_SIZES))
        root = write_waterbirds(Path(scratch) / "waterbirds", scale=scale, size=args.image_size)
        table = _table_of(root, args.images, args.jpeg)
        tensors = preprocessed(bundle, table)
        flops = forward_flops_per_image(bundle, tensors, device)
        attention = inference_attention(bundle, tensors, device)
        available = {decode: _unavailable(decode) for decode in decoders}
        forward, extracted = [], {decode: [] for decode in decoders if available[decode] is None}
        workers = args.workers  # what extraction chose, once it has run
        for _ in range(args.repeats):
            forward.append(forward_images_per_second(bundle, tensors, args.batch_size, device))
            for decode, rates in extracted.items():
                rate, workers = extract_run(bundle, table, args.batch_size, args.workers, device, Path(scratch) / "f.h5", decode)
                rates.append(rate)
        compiled = None
        if args.compile:
            encode = torch.compile(bundle.model.encode_image)
            compiled = statistics.median(forward_images_per_second(bundle, tensors, args.batch_size, device, encode)
                                         for _ in range(args.repeats))
    by_decoder = {decode: _figures(extracted[decode], forward) if reason is None else {"unavailable": reason}
                  for decode, reason in available.items()}
    headline = by_decoder[decoders[0]]
    result = {
        "model": args.model,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "images": len(table.frame),
        "image_size": args.image_size,
        "image_format": "jpeg" if args.jpeg else "png",
        "batch_size": args.batch_size,
        "workers": workers,
        "repeats": args.repeats,
        "forward_images_per_s": round(statistics.median(forward), 1),
        "forward_gflops_per_image": round(flops / 1e9, 3),
        "forward_tflops_per_s": round(flops * statistics.median(forward) / 1e12, 3),
        "forward_peak_share": peak_share(flops * statistics.median(forward) / 1e12, device),
        "attention_kernels": attention,
        "compiled_forward_images_per_s": round(compiled, 1) if compiled else None,
        "decode": decoders[0],
        **headline,
        "decoders": by_decoder,
    }
    print(json.dumps(result))


def _unavailable(decode: str) -> str | None:
    """Why extraction cannot decode with `decode` here (its library is missing), or None."""
    try:
        jpeg_decoder(decode)
    except GcctlError as error:
        return str(error)
    return None


def _figures(rates: list[float], forward: list[float]) -> dict:
    ratios = [rate / reference for rate, reference in zip(rates, forward)]
    return {"extract_images_per_s": round(statistics.median(rates), 1), "ratios": [round(ratio, 3) for ratio in ratios],
            "ratio": round(statistics.median(ratios), 3)}


if __name__ == "__main__":
    main()
