"""Zero-shot evaluation of a model straight from images: what selects the fine-tuning epoch, and how a
fine-tuned checkpoint is scored (`gcctl evaluate --checkpoint`).

The same classifier as the `zeroshot` method on cached features (one prompt per class), without the
feature store in between, because the image tower changes every epoch.

A checkpoint's seed is a fact of the run that trained it: the `summary.json` beside `model.pt` (a fine-tuning
run's `config.seed`, or a pretraining run's `seed`); a checkpoint without one takes the N of a `seed-N` folder
it sits in (the pipeline's layout, e.g. WiSE-FT interpolations). A single checkpoint with neither (e.g.
downloaded weights) is evaluated as one model without a seed ('none'); several such checkpoints are refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from gcctl.clip.captions import DEFAULT_CAPTION, check_template
from gcctl.clip.checkpoint import MODEL_FILE, SUMMARY_FILE, checkpoint_model_name
from gcctl.clip.factory import ClipBundle, build_clip
from gcctl.clip.text import class_text_features, class_words, logit_scale
from gcctl.datasets.images import ImageDataset, image_loader
from gcctl.datasets.table import DatasetTable
from gcctl.errors import GcctlError
from gcctl.files import read_json
from gcctl.metrics import (
    check_evaluation_out,
    compute_metrics,
    metrics_from_predictions,
    predictions_frame,
    write_evaluation,
)
from gcctl.runtime import autocast, resolve_device


def split_rows(table: DatasetTable, split: str) -> np.ndarray:
    rows = np.flatnonzero(table.frame["split"].to_numpy() == split)
    if len(rows) == 0:
        present = ", ".join(sorted(set(table.frame["split"])))
        raise GcctlError(f"dataset {table.root} has no '{split}' images (its splits: {present}); "
                         f"use one of those splits or a dataset with a '{split}' split")
    return rows


@torch.no_grad()
def encode_images(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
    """Normalised image features of every batch of `loader`, and the table rows they belong to."""
    features, rows = [], []
    for images, batch_rows in loader:
        with autocast(device):
            features.append(model.encode_image(images.to(device), normalize=True).float())
        rows.append(batch_rows.numpy())
    return torch.cat(features), np.concatenate(rows)


def zeroshot_scores(
    bundle: ClipBundle,
    table: DatasetTable,
    split: str,
    *,
    device: torch.device,
    templates: Sequence[str] = (DEFAULT_CAPTION,),
    batch_size: int = 256,
    workers: int = 0,
    text_features: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits [N, C] of every image of `split`: its cosine similarity to each class's text feature (the mean over
    `templates`) times the model's logit scale, as the `zeroshot` method scores (so their softmax, hence the
    calibration figures, is the model's own); and the table rows they belong to. `text_features`: a cache of
    class features by (class words, templates) for a model that does not change between calls (targets that share
    a label space, as ImageNet and its -V2 and -Sketch with 1,000 classes and 80 templates, encode it once)."""
    model = bundle.model
    was_training = model.training
    model.eval()
    try:
        words = class_words(None, table.class_names)
        key = (tuple(words), tuple(templates))
        text = None if text_features is None else text_features.get(key)
        if text is None:
            text = class_text_features(bundle, words, list(templates)).to(device)
            if text_features is not None:
                text_features[key] = text
        loader = image_loader(ImageDataset(table, bundle.preprocess, split_rows(table, split)),
                              workers=workers, device=device, batch_size=batch_size)
        features, rows = encode_images(model, loader, device)
    finally:
        model.train(was_training)
    return (logit_scale(model) * (features @ text.T)).cpu().numpy(), rows


def zeroshot_metrics(bundle: ClipBundle, table: DatasetTable, split: str, *, device: torch.device, **options) -> dict:
    """Every metric of `gcctl.metrics` for zero-shot prediction on `split` (options: those of `zeroshot_scores`)."""
    scores, rows = zeroshot_scores(bundle, table, split, device=device, **options)
    frame = table.frame.iloc[rows]
    return compute_metrics(scores.argmax(axis=1), frame["y"].to_numpy(), frame["group"].to_numpy(), table.vocabulary)


def find_checkpoints(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Checkpoint files from `paths`: a file stands for itself, a directory for every `model.pt` below it
    (a fine-tuning run, or a folder of one run per seed), in sorted order."""
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            inside = sorted(path.rglob(MODEL_FILE)) if path.name != MODEL_FILE else [path]
            folders = [checkpoint for checkpoint in inside if not checkpoint.is_file()]
            if folders:
                what = "a directory" if folders[0].is_dir() else "a broken link"
                raise GcctlError(f"checkpoint {folders[0]} is {what}, not a weights file; "
                                 "pass a checkpoint file or a finished `gcctl finetune` run")
            if not inside:
                raise GcctlError(f"{path} holds no model.pt; pass a checkpoint file or a finished `gcctl finetune` run")
            found += inside
        else:
            raise GcctlError(f"checkpoint {path} does not exist")
    return found


def checkpoint_seed(path: Path) -> int | None:
    """The seed that trained the checkpoint `path` (see the module notes), or None when nothing records it."""
    summary = path.parent / SUMMARY_FILE
    if summary.is_file():
        recorded = read_json(summary)
        seed = recorded.get("config", {}).get("seed", recorded.get("seed"))
        if seed is not None:
            return int(seed)
    folder = re.fullmatch(r"seed-(\d+)", path.parent.name)
    return int(folder.group(1)) if folder else None


def seeded_checkpoints(paths: list[Path]) -> dict[int | None, Path]:
    """The checkpoints by their seed, in seed order; two with one seed, or several without one, are refused."""
    by_seed: dict[int | None, Path] = {}
    for path in paths:
        seed = checkpoint_seed(path)
        if seed is None and len(paths) > 1:
            raise GcctlError(f"cannot tell the seed of {path}: no run's summary.json beside it and no seed-N folder; "
                             "pass the `gcctl finetune` run folders, or put each checkpoint in a seed-N folder")
        if seed in by_seed:
            raise GcctlError(f"{by_seed[seed]} and {path} were both trained with seed {seed}; evaluate one run's seeds at a time")
        by_seed[seed] = path
    return dict(sorted(by_seed.items(), key=lambda item: -1 if item[0] is None else item[0]))


def evaluate_checkpoints(
    checkpoints: Sequence[str | os.PathLike],
    table: DatasetTable,
    split: str = "test",
    *,
    model_name: str | None = None,
    caption: str = DEFAULT_CAPTION,
    name: str | None = None,
    device: str = "auto",
    batch_size: int = 256,
    workers: int = 0,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Zero-shot metrics on `split` of each checkpoint, keyed by the seed that trained it, aggregated as mean
    and std in the same form as `evaluate_run`, and written like it with `out` (outside the dataset's root; over
    an earlier evaluation only with `overwrite`); `model_name` defaults to the architecture each checkpoint records."""
    if out is not None:
        check_evaluation_out(out, overwrite, dataset_root=table.root)
    check_template(caption, "in --caption")
    torch_device = resolve_device(device)
    scores, references = {}, []
    for seed, path in seeded_checkpoints(find_checkpoints(checkpoints)).items():
        architecture = model_name or checkpoint_model_name(path)
        if not architecture:
            raise GcctlError(f"cannot tell the architecture of {path}; pass --model (see `gcctl models`)")
        bundle = build_clip(architecture, str(path), device=torch_device)
        scores[seed], rows = zeroshot_scores(bundle, table, split, device=torch_device, templates=[caption],
                                             batch_size=batch_size, workers=workers)
        references.append(bundle.reference.recorded_for(Path.cwd()).to_dict())
    # model references in the order of the seeds, their paths relative to the current directory
    provenance = {"run": name or _label(checkpoints), "caption": caption, "checkpoints": references}
    return checkpoint_metrics(scores, rows, table, split, provenance, out=out)


def checkpoint_metrics(scores: dict, rows: np.ndarray, table: DatasetTable, split: str, provenance: dict,
                       out: str | os.PathLike | None = None) -> dict:
    """Metrics of zero-shot `scores` (per seed, [N, C] over table `rows` of `split`) in `evaluate_run`'s form, with
    `provenance` completed by what every checkpoint evaluation records; written with its predictions to `out`."""
    frame = table.frame.iloc[rows]
    predictions = predictions_frame(frame["id"].to_numpy(), frame["y"].to_numpy(), frame["group"].to_numpy(), split, scores,
                                    table.vocabulary)
    metrics = {
        **metrics_from_predictions(predictions, table.vocabulary),
        "provenance": {
            "run_dir": None,
            "method": "zeroshot",
            "split": split,
            "seeds": list(scores),
            "dataset": table.dataset,
            "dataset_fingerprint": table.fingerprint(),
            **provenance,
        },
    }
    if out is not None:
        write_evaluation(out, metrics, predictions, table.vocabulary)
    return metrics


def _label(checkpoints: Sequence[str | os.PathLike]) -> str:
    """A report label for what the user named: the folder the paths share (a run), a checkpoint's run
    folder (`run/model.pt`), or a checkpoint file's stem."""
    given = [Path(path).resolve() for path in checkpoints]
    common = Path(os.path.commonpath(given)) if len(given) > 1 else given[0]
    if common.is_file():
        return common.parent.name if common.name == MODEL_FILE else common.stem
    return common.name
