"""Zero-shot evaluation of a model straight from images: what selects the fine-tuning epoch.

The same classifier as the `zeroshot` method on cached features (one prompt per class), without the
feature store in between, because the image tower changes every epoch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from gcctl.clip.factory import ClipBundle
from gcctl.datasets.images import ImageDataset
from gcctl.datasets.table import DatasetTable
from gcctl.errors import GcctlError
from gcctl.clip.prompts import class_words
from gcctl.methods.zeroshot import class_text_features
from gcctl.metrics import compute_metrics
from gcctl.runtime import autocast

CAPTION = "a photo of a {}."


def split_rows(table: DatasetTable, split: str) -> np.ndarray:
    rows = np.flatnonzero(table.frame["split"].to_numpy() == split)
    if len(rows) == 0:
        raise GcctlError(f"dataset {table.root} has no '{split}' images; fine-tuning needs train and val splits")
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
        group_names=table.group_names,
        num_classes=len(table.class_names),
        train_group_counts=table.group_counts()["train"].to_numpy(),
    )
