"""StarFT's teacher: the frozen zero-shot model, and the features of it a run computes once instead of every step.

The teacher never trains, so its features of a given input never change. Its text features of every
(class, spurious template) caption are computed when the run starts. Its image features of every training
image are too, when the training images are preprocessed deterministically (no --augment): one pass over
the train split before the first step (shared out over the processes of a data-parallel run), or read from a
feature store of the same model, weights, preprocessing and dataset. They are kept on the CPU by table row,
so any batch order (shuffling, resuming, a process's share) finds them; memory: 4·N·D bytes for a table of
N images and D-dimensional features (Waterbirds, D = 512: 24 MB; ImageNet: 2.7 GB per process).
With --augment an image differs every epoch, and the teacher encodes every batch.
"""

from __future__ import annotations

import copy
import logging
import os

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from gcctl.clip.reference import ModelRef
from gcctl.clip.text import logit_scale
from gcctl.datasets.images import ImageDataset, image_loader
from gcctl.datasets.table import DatasetTable
from gcctl.distributed import World
from gcctl.errors import GcctlError
from gcctl.evaluation.checkpoints import encode_images
from gcctl.files import identity_differences
from gcctl.finetune.parallel import gather
from gcctl.runtime import autocast
from gcctl.store import FeatureStore

log = logging.getLogger(__name__)


class Teacher:
    """The frozen copy of `model`, its features of the spurious captions [classes, templates, D] and its temperature."""

    def __init__(self, model: nn.Module, spurious_tokens: torch.Tensor, classes: int, device: torch.device):
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.device = device
        with torch.no_grad(), autocast(device):
            features = torch.cat([self.model.encode_text(chunk, normalize=True).float() for chunk in spurious_tokens.split(1024)])
        self.spurious = features.view(classes, len(spurious_tokens) // classes, -1)
        self.scale = logit_scale(self.model)
        self.images: torch.Tensor | None = None  # [table rows, D] on the CPU; NaN for rows not cached
        self.cache: dict = {"images": "per step", "texts": "once"}

    def image_features(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The teacher's normalised features of `images`, the table rows `rows`: cached, or encoded now."""
        if self.images is not None:
            return self.images[rows].to(images.device, non_blocking=True)
        with torch.no_grad(), autocast(self.device):
            return self.model.encode_image(images, normalize=True)

    def no_image_cache(self, reason: str) -> None:
        self.cache = {"images": "per step", "texts": "once", "reason": reason}
        log.warning("StarFT teacher: its image features are computed every step (%s)", reason)

    def compute_image_cache(self, table: DatasetTable, rows: np.ndarray, transform, *, batch_size: int, workers: int,
                            world: World) -> None:
        """Encode the training images `rows` once; each process encodes an equal share, then all are gathered."""
        share = -(-len(rows) // world.size)
        mine = rows[world.rank * share : (world.rank + 1) * share]
        mine = np.concatenate([mine, np.repeat(rows[-1:], share - len(mine))])  # all_gather needs equal shares
        loader = image_loader(ImageDataset(table, transform, mine), workers=workers, device=self.device,
                              batch_size=batch_size)
        encoded, _ = encode_images(self.model, loader, self.device)
        # Shares are padded at their ends and only the last ones are short, so the first len(rows) are `rows` in order.
        self._keep(len(table.frame), rows, gather(encoded, world)[: len(rows)], "computed once")

    def read_image_cache(self, path: str | os.PathLike, table: DatasetTable, rows: np.ndarray, base: ModelRef) -> None:
        """The training images' features from the feature store `path`, which must hold this model's features of this dataset."""
        with FeatureStore(path) as store:
            differing = identity_differences(base.identity(), store.model_ref().identity())
            if differing:
                raise GcctlError(f"feature store {store.path} holds another model's features than the run's base ({differing}); "
                                 "extract one with the same --model, --pretrained, or drop --teacher-features")
            if store.provenance.get("dataset_fingerprint") != table.fingerprint():
                raise GcctlError(f"feature store {store.path} was extracted from another dataset or version than {table.root}; "
                                 "extract it from this dataset, or drop --teacher-features")
            positions = pd.Index(store.ids).get_indexer(table.frame["id"].astype(str).to_numpy()[rows])
            if (positions < 0).any():
                raise GcctlError(f"feature store {store.path} lacks {int((positions < 0).sum())} training images; "
                                 "extract it again from this dataset, or drop --teacher-features")
            features = F.normalize(torch.from_numpy(store.load_features(positions)).float(), dim=-1)
        self._keep(len(table.frame), rows, features, f"read from {path}")

    def _keep(self, table_rows: int, rows: np.ndarray, features: torch.Tensor, source: str) -> None:
        # NaN for rows outside the cache: looking one up would show in the loss instead of passing silently.
        self.images = torch.full((table_rows, features.shape[1]), float("nan"))
        self.images[torch.as_tensor(rows)] = features.float().cpu()
        megabytes = round(self.images.numel() * self.images.element_size() / 2**20, 1)
        self.cache = {"images": source, "texts": "once", "training_images": len(rows), "megabytes": megabytes}
        log.info("StarFT teacher: image features of %d training images %s (%.1f MB)", len(rows), source, megabytes)
