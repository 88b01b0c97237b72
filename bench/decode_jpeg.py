"""JPEG decoding and resizing where they cost least (issue 26 item 3): gcctl's CPU pixel stage (PIL decode, the
model's eval resize and crop, per image, then the batch normalised) against what `gcctl extract --decode
torchcodec|torchvision` runs on `--device`: that library's batched `decode_jpeg` there, then gcctl's tensor twin
of the eval transform (`decode_batch`, `decoded_batch`). Prints the images per second of each and how far the
model inputs land apart (in uint8 levels), since moving decoding to the GPU changes the features a store holds:
the choice is a measurement of both, not an assumption. A decoder whose library is missing is reported so.

    python bench/decode_jpeg.py --model ViT-B-16 --images 512 --source-size 320 --device cuda
    python bench/decode_jpeg.py --model gcctl-micro --images 32 --source-size 64 --device cpu   # dry run
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image

from gcctl.clip.factory import build_clip
from gcctl.clip.preprocess import decoded_batch, eval_transform_stages
from gcctl.datasets.decoding import DECODERS, decode_batch, jpeg_decoder
from gcctl.datasets.images import read_rgb
from gcctl.errors import GcctlError
from gcctl.runtime import resolve_device


def jpegs(count: int, side: int, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth colour fields with noise, quality 90), 4:3 so that resizing and cropping both act."""
    generator = np.random.default_rng(seed)
    height, width = side, side * 4 // 3
    ramp = np.linspace(0, 1, width)[None, :, None] * np.linspace(1, 0, height)[:, None, None]
    encoded = []
    for _ in range(count):
        colour = generator.uniform(0, 255, size=(1, 1, 3))
        pixels = np.clip(ramp * colour + generator.normal(0, 12, size=(height, width, 3)) + 40, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def cpu_inputs(encoded: list[bytes], stages) -> torch.Tensor:
    """gcctl's path: PIL decodes, the pixel stage resizes and crops each image, the batch is normalised."""
    pixel_stage, normalized = stages
    return normalized(torch.stack([pixel_stage(read_rgb(f"image {i}", data)) for i, data in enumerate(encoded)]))


def device_inputs(encoded: list[bytes], model, device: torch.device, decode: str) -> torch.Tensor:
    """What extraction with `--decode decode` makes of the files: batched decoding on `device`, then gcctl's
    tensor twin of the eval transform there (the same resize, crop and normalisation)."""
    data = [torch.frombuffer(bytearray(item), dtype=torch.uint8) for item in encoded]
    images = decode_batch(jpeg_decoder(decode), data, [f"image {i}" for i in range(len(data))], device)
    return decoded_batch(images, model.visual.preprocess_cfg)


def rate(work, images: int, device: torch.device, repeats: int) -> float:
    def once() -> float:
        started = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return images / (time.perf_counter() - started)

    once()  # warm-up: the decoder's handles, the allocator
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gcctl-tiny", help="Whose eval resize and crop both paths apply.")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--source-size", type=int, default=320, help="Height of the JPEGs (width 4/3 of it).")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    device = resolve_device(args.device)
    bundle = build_clip(args.model, "none")
    model, stages = bundle.model, eval_transform_stages(bundle.preprocess)
    encoded = jpegs(args.images, args.source_size)
    reference = cpu_inputs(encoded, stages)
    print(json.dumps({
        "model": args.model,
        "device": str(device),
        "images": args.images,
        "source_size": [args.source_size, args.source_size * 4 // 3],
        "output_size": list(reference.shape[-2:]),
        "cpu_images_per_s": round(rate(lambda: cpu_inputs(encoded, stages), args.images, torch.device("cpu"), args.repeats), 1),
        "decoders": {decode: measured(decode, encoded, reference, model, device, args.repeats) for decode in DECODERS[1:]},
    }))


def measured(decode: str, encoded: list[bytes], reference: torch.Tensor, model, device, repeats: int) -> dict:
    """One library's images per second on `device` and its distance from PIL's model inputs, in uint8 levels."""
    try:
        inputs = device_inputs(encoded, model, device, decode)
    except GcctlError as error:  # its library is not installed here
        return {"unavailable": str(error)}
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    levels = (inputs.cpu() - reference).abs() * std * 255  # back in uint8 levels
    return {
        "images_per_s": round(rate(lambda: device_inputs(encoded, model, device, decode), len(encoded), device, repeats), 1),
        "max_level_difference": round(float(levels.max()), 2),
        "mean_level_difference": round(float(levels.mean()), 3),
    }


if __name__ == "__main__":
    main()
