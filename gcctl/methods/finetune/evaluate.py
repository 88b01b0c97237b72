"""Zero-shot evaluation of a model straight from images: what selects the fine-tuning epoch, and how a
fine-tuned checkpoint is scored (`gcctl evaluate --checkpoint`).

The same classifier as the `zeroshot` method on cached features (one prompt per class), without the
feature store in between, because the image tower changes every epoch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from gcctl.clip.factory import ClipBundle, build_clip, checkpoint_model_name
from gcctl.datasets.images import ImageDataset
from gcctl.datasets.table import DatasetTable
from gcctl.errors import GcctlError
from gcctl.clip.prompts import class_words
from gcctl.methods.zeroshot import class_text_features
from gcctl.metrics import aggregate_seeds, compute_metrics
from gcctl.runtime import autocast, resolve_device

CAPTION = "a photo of a {}."


def split_rows(table: DatasetTable, split: str) -> np.ndarray:
    rows = np.flatnonzero(table.frame["split"].to_numpy() == split)
    if len(rows) == 0:
        present = ", ".join(sorted(set(table.frame["split"])))
        raise GcctlError(f"dataset {table.root} has no '{split}' images (its splits: {present}); fine-tuning needs train and val")
    return rows


@torch.no_grad()
def _encode_images(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """Normalised image features of every batch of `loader`, and the table rows they belong to."""
    features, rows = [], []
    for images, batch_rows in loader:
        with autocast(device):
            features.append(model.encode_image(images.to(device), normalize=True).float())
        rows.append(batch_rows.numpy())
    return torch.cat(features), np.concatenate(rows)


def zeroshot_metrics(
    bundle: ClipBundle,
    table: DatasetTable,
    split: str,
    *,
    device: torch.device,
    caption: str = CAPTION,
    batch_size: int = 256,
    workers: int = 0,
) -> dict:
    """Every metric of `gcctl.metrics` for zero-shot prediction with `caption` per class on `split`."""
    model = bundle.model
    was_training = model.training
    model.eval()
    try:
        text = class_text_features(bundle, class_words(None, table.class_names), [caption]).to(device)
        loader = DataLoader(ImageDataset(table, bundle.preprocess, split_rows(table, split)),
                            batch_size=batch_size, num_workers=workers)
        features, rows = _encode_images(model, loader, device)
    finally:
        model.train(was_training)
    pred = (features @ text.T).argmax(dim=1).cpu().numpy()
    frame = table.frame.iloc[rows]
    return compute_metrics(
        pred,
        frame["y"].to_numpy(),
        frame["group"].to_numpy(),
        table.vocabulary,
    )


def find_checkpoints(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Checkpoint files from `paths`: a file stands for itself, a directory for every `model.pt` below it
    (a fine-tuning run, or a folder of one run per seed), in sorted order."""
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            inside = sorted(path.rglob("model.pt"))
            if not inside:
                raise GcctlError(f"{path} holds no model.pt; pass a checkpoint file or a finished `gcctl finetune` run")
            found += inside
        else:
            raise GcctlError(f"checkpoint {path} does not exist")
    return found


def evaluate_checkpoints(
    checkpoints: Sequence[str | os.PathLike],
    table: DatasetTable,
    split: str = "test",
    *,
    model_name: str | None = None,
    caption: str = CAPTION,
    name: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    workers: int = 0,
) -> dict:
    """Zero-shot metrics on `split` of each checkpoint (each counts as one seed), aggregated as mean and std,
    in the same form as `evaluate_run`; `model_name` defaults to the architecture each checkpoint records."""
    paths = find_checkpoints(checkpoints)
    torch_device = resolve_device(device)
    per_seed, references = {}, []
    for index, path in enumerate(paths):
        architecture = model_name or checkpoint_model_name(path)
        if not architecture:
            raise GcctlError(f"cannot tell the architecture of {path}; pass --model (see `gcctl models`)")
        bundle = build_clip(architecture, str(path), device=torch_device)
        per_seed[str(index)] = zeroshot_metrics(bundle, table, split, device=torch_device, caption=caption,
                                                batch_size=batch_size, workers=workers)
        references.append(bundle.reference.recorded_for(Path.cwd()).to_dict())
    return {
        **aggregate_seeds(list(per_seed.values())),
        "seeds": per_seed,
        "provenance": {
            "run": name or _label(checkpoints),
            "run_dir": None,
            "method": "zeroshot",
            "caption": caption,
            "split": split,
            "seeds": list(range(len(paths))),
            "checkpoints": references,  # model references, their paths relative to the current directory
            "dataset": table.dataset,
            "dataset_fingerprint": table.fingerprint(),
        },
    }


def _label(checkpoints: Sequence[str | os.PathLike]) -> str:
    """A report label for what the user named: the folder the paths share (a run), a checkpoint's run
    folder (`run/model.pt`), or a checkpoint file's stem."""
    given = [Path(path).resolve() for path in checkpoints]
    common = Path(os.path.commonpath(given)) if len(given) > 1 else given[0]
    if common.is_file():
        return common.parent.name if common.name == "model.pt" else common.stem
    return common.name
