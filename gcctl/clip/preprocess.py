"""Preprocessing: one configuration (the model's `visual.preprocess_cfg`) builds the eval transform, its
bytes-then-batch split for extraction, its tensor twin (in-memory batches of pretraining, images decoded on a
device), and the training transform."""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

from gcctl.errors import GcctlError


def describe_preprocess(preprocess_cfg: dict) -> dict:
    """The eval transform in a few JSON-able fields (resize shortest side, centre crop, normalise)."""
    size = square_or_pair(preprocess_cfg["size"])
    return {
        "resize": size,
        "crop": size,
        "resize_mode": preprocess_cfg.get("resize_mode", "shortest"),
        "interpolation": preprocess_cfg.get("interpolation", "bicubic"),
        "mean": [float(value) for value in preprocess_cfg["mean"]],
        "std": [float(value) for value in preprocess_cfg["std"]],
    }


def eval_transform(preprocess_cfg: dict) -> Callable:
    """open_clip's eval transform for a preprocessing configuration: PIL image -> normalised tensor [3, H, W]."""
    return image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)


def train_transform(model: torch.nn.Module, crop_scale: float = 0.9) -> Callable:
    """open_clip's training transform for `model`'s preprocessing: a random resized crop covering [crop_scale, 1]
    of the image's area (0.9 in open_clip and in the StarFT authors' code), then the eval transform's
    normalisation; what FLYP and StarFT fine-tune with. Random: an image differs every epoch."""
    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=True,
                              aug_cfg={"scale": (crop_scale, 1.0)})


def preprocess_uint8(images: np.ndarray | torch.Tensor, model: torch.nn.Module, device=None) -> torch.Tensor:
    """A uint8 batch [N, H, W, 3] -> the model's normalised input [N, 3, size, size], on `device`.

    The vectorised twin of `bundle.preprocess` for in-memory arrays: resize the shortest side and
    centre-crop only when the size differs, then normalise with the model's mean and std.
    """
    cfg = model.visual.preprocess_cfg
    batch = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float().div_(255)
    return _normalize_of(eval_transform(cfg))(_resized_and_cropped(batch, cfg))


def decoded_batch(images: list[torch.Tensor], preprocess_cfg: dict) -> torch.Tensor:
    """Decoded uint8 images [3, H, W] of any sizes, all on one device -> the model's normalised input batch
    [N, 3, size, size] there: `preprocess_uint8`'s steps, the images of one size resized together."""
    height, width = _pair(preprocess_cfg["size"])
    batch = torch.empty(len(images), 3, height, width, device=images[0].device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for position, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[-2:]), []).append(position)
    for positions in by_size.values():
        same_size = torch.stack([images[position] for position in positions]).float().div_(255)
        batch[positions] = _resized_and_cropped(same_size, preprocess_cfg)
    return _normalize_of(eval_transform(preprocess_cfg))(batch)


def tensor_twin_gap(preprocess_cfg: dict) -> str | None:
    """Why the tensor twin (`preprocess_uint8`, `decoded_batch`) cannot stand in for this eval transform on
    images of any shape, or None: it resizes the shortest side and centre-crops, open_clip's default
    `resize_mode`; SigLIP's and CLIPA's weights 'squash' (stretch) and 'longest' pads, which it does not do
    (the three agree on an image of the target's aspect ratio, which the twin takes from any model)."""
    mode = preprocess_cfg.get("resize_mode", "shortest")
    if mode == "shortest":
        return None
    return f"gcctl's eval transform on tensors resizes the shortest side only, and this model's resize_mode is '{mode}'"


def _refuse_what_the_twin_lacks(preprocess_cfg: dict) -> None:
    gap = tensor_twin_gap(preprocess_cfg)
    if gap:
        raise GcctlError(gap)


def eval_transform_stages(preprocess: Callable) -> tuple[Callable, Callable]:
    """A bundle's eval transform (`bundle.preprocess`) cut where the pixels are still bytes; applied one after
    the other the two stages give the same input bit for bit:

    - per image: everything up to the tensor (resize, crop), ending in a uint8 tensor [3, H, W];
    - per batch: scale to [0, 1] and normalise, where the batch lands (the main process, or the accelerator).

    Decoders then hand over a quarter of the bytes, and a whole batch is normalised at once.
    """
    from torchvision.transforms import Compose, PILToTensor

    normalize = _normalize_of(preprocess)  # checks that the transform ends in ToTensor, Normalize
    return Compose([*preprocess.transforms[:-2], PILToTensor()]), functools.partial(_scaled_and_normalized, normalize=normalize)


def _normalize_of(preprocess: Callable) -> Callable:
    """The eval transform's final Normalize: the one definition of the model's mean and std on a tensor."""
    from torchvision.transforms import Normalize, ToTensor

    *_, to_tensor, normalize = preprocess.transforms
    if not (isinstance(to_tensor, ToTensor) and isinstance(normalize, Normalize)):  # open_clip changed its transform
        raise GcctlError(f"the eval transform no longer ends in ToTensor, Normalize ({to_tensor}, {normalize}); "
                         "update gcctl.clip.preprocess")
    return normalize


def _scaled_and_normalized(batch: torch.Tensor, normalize: Callable) -> torch.Tensor:
    return normalize(batch.float().div_(255))  # ToTensor's scaling, then Normalize (which broadcasts over a batch)


def _resized_and_cropped(batch: torch.Tensor, cfg: dict) -> torch.Tensor:
    height, width = _pair(cfg["size"])
    if batch.shape[-2:] == (height, width):
        return batch
    if batch.shape[-2] * width != batch.shape[-1] * height:  # the resize modes differ only here
        _refuse_what_the_twin_lacks(cfg)
    return _resize_and_crop(batch, height, width, cfg.get("interpolation", "bicubic"))


def _resize_and_crop(batch: torch.Tensor, height: int, width: int, interpolation: str) -> torch.Tensor:
    """Scale the shortest side to the target, then centre-crop: the eval transform, on a whole batch."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    if height == width:
        size = [height]  # torchvision's shortest-edge mode, exactly what the PIL transform does
    else:
        scale = max(height / batch.shape[-2], width / batch.shape[-1])
        size = [math.ceil(batch.shape[-2] * scale), math.ceil(batch.shape[-1] * scale)]
    batch = F.resize(batch, size, interpolation=InterpolationMode(interpolation), antialias=True)
    return F.center_crop(batch, [height, width]).clamp_(0, 1)


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def square_or_pair(size) -> int | list[int]:
    height, width = _pair(size)
    return height if height == width else [height, width]
