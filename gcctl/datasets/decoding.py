"""Who turns an image file into pixels for extraction: PIL in the loader's workers (the eval transform as
open_clip defines it), or a library's batched JPEG decoder where the batch lands (`decode_batch`): TorchCodec
(the PyTorch project's image decoders since torchcodec 0.16) or torchvision's (deprecated since torchvision
0.29 in favour of TorchCodec's), each of them on CUDA the GPU's own JPEG decoder. The decoders give slightly
different pixels, so a store records which (`gcctl.store`).

Torch loads only when a batch is decoded: the CLI lists the decoders without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Sequence

from gcctl.errors import GcctlError

if TYPE_CHECKING:
    import torch

# The module holding each library's batched `decode_jpeg` (one signature: CPU byte tensors, a mode, a device),
# and the first release whose `decode_jpeg` takes a list and mode="RGB" (torchvision 0.19 and 0.20).
_JPEG_DECODER_MODULES = {"torchcodec": "torchcodec.decoders", "torchvision": "torchvision.io"}
_FIRST_RELEASE = {"torchcodec": (0, 16), "torchvision": (0, 20)}
DECODERS = ("pil", *_JPEG_DECODER_MODULES)  # the first is the default (docs/feature-store.md#decoding says why)
_JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_MARK = b"Exif\x00\x00"  # an APP1 segment's header, within the first bytes of a JPEG that has one
_ORIENTATION_TAG = 0x0112


def jpeg_decoder(decode: str) -> Callable | None:
    """The batched `decode_jpeg` of `decode` (None for PIL), or one line saying what to install or choose."""
    if decode not in DECODERS:
        raise GcctlError(f"--decode '{decode}' is not a decoder; choose one of {', '.join(DECODERS)}")
    if decode == "pil":
        return None
    try:
        decoder = importlib.import_module(_JPEG_DECODER_MODULES[decode]).decode_jpeg
    except ImportError:
        raise GcctlError(f"--decode {decode} needs the {decode} package (pip install 'gcctl[decode]' or "
                         f"'{decode}'); or choose --decode pil") from None
    except (AttributeError, OSError, RuntimeError) as error:  # installed, but its native library fails to load
        raise GcctlError(f"--decode {decode}: the installed {decode} cannot load its JPEG decoder ({error}); "
                         "install the release built for this torch, or choose --decode pil") from None
    installed = _release(decode)
    if installed < _FIRST_RELEASE[decode]:
        needed = ".".join(map(str, _FIRST_RELEASE[decode]))
        raise GcctlError(f"--decode {decode} needs {decode} {needed} or later (installed: "
                         f"{'.'.join(map(str, installed))}); upgrade it, or choose --decode pil")
    return decoder


def _release(package: str) -> tuple[int, int]:
    """An installed package's major and minor version."""
    from importlib.metadata import version

    major, minor = (version(package).split(".") + ["0"])[:2]
    return int(major), int("".join(digit for digit in minor if digit.isdigit()) or 0)


def decode_batch(decode_jpeg: Callable, encoded: list[torch.Tensor], paths: Sequence[str],
                 device: torch.device) -> list[torch.Tensor]:
    """Files' bytes -> uint8 RGB images [3, H, W] on `device`: the JPEGs in one call of the batched decoder
    `decode_jpeg` there (`jpeg_decoder`); any other file, a JPEG that decoder refuses, and one its EXIF says to
    rotate (TorchCodec turns it upright, PIL and torchvision do not) by PIL in this thread (`read_rgb`: the same
    RGB rules and geometry as the default path), then moved."""
    import numpy as np
    import torch

    from gcctl.datasets.images import read_rgb

    images: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if _upright_jpeg(data)]
    # The libraries decode on CUDA (the GPU's decoder) or on the CPU; TorchCodec would send any other device
    # to nvJPEG and fail every image.
    where = device if device.type == "cuda" else torch.device("cpu")
    try:
        decoded = decode_jpeg([encoded[i] for i in jpegs], mode="RGB", device=where) if jpegs else []
    except torch.cuda.OutOfMemoryError:
        raise GcctlError(f"decoding a batch of {len(jpegs)} JPEGs ran out of GPU memory; lower --batch-size") from None
    except RuntimeError:  # one damaged file fails the whole call: decode them one by one
        decoded = [_decoded_alone(decode_jpeg, encoded[i], where) for i in jpegs]
    for i, image in zip(jpegs, decoded):
        images[i] = image
    for i, image in enumerate(images):
        if image is None:
            pixels = np.array(read_rgb(paths[i], bytes(encoded[i].numpy())))  # writable: torch shares its memory
            images[i] = torch.from_numpy(pixels).permute(2, 0, 1)
    return [image.to(device) for image in images]


def _upright_jpeg(data: torch.Tensor) -> bool:
    """Whether `data` is a JPEG that needs no EXIF rotation (most have no EXIF block at all)."""
    head = bytes(data[:65536].numpy())
    if not head.startswith(_JPEG_MAGIC):
        return False
    if _EXIF_MARK not in head:
        return True
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(data.numpy()))) as image:  # reads the headers only
            return image.getexif().get(_ORIENTATION_TAG, 1) == 1
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False  # PIL decodes it, or names the file


def _decoded_alone(decode_jpeg: Callable, data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    import torch

    try:
        return decode_jpeg(data, mode="RGB", device=device)
    except torch.cuda.OutOfMemoryError:
        raise GcctlError("decoding one JPEG ran out of GPU memory; lower --batch-size or free the GPU") from None
    except RuntimeError:
        return None  # PIL tries it next, and names the file if it cannot read it either
