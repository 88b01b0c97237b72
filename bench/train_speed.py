"""GroupCoOp on cached features against a loop that runs the frozen image tower every step, in one run.

CoOp's original trainer encodes every batch's images with the frozen image tower at every step; gcctl reads the
features from the HDF5 store instead. Both loops below train the same GroupCoOp prompts on the same samples in
the same order with the same loss; the ratio is reference time / cached time for one epoch (targets: >= 20x for
gcctl-tiny, >= 100x for ViT-B-16). `--memory` instead trains one epoch on a generated 1,000,000 x 512 float16
store (ViT-B-16's text tower, random weights) and reports the peak resident memory (target: under 3 GB).

    python bench/train_speed.py --model gcctl-tiny --images 1200
    python bench/train_speed.py --model ViT-B-16 --images 120 --batch-size 32
    python bench/train_speed.py --model ViT-B-16 --images 600 --device cuda
    python bench/train_speed.py --memory
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gcctl.clip.factory import build_clip
from gcctl.clip.text import logit_scale
from gcctl.datasets import load_dataset
from gcctl.datasets.groups import GroupVocabulary
from gcctl.methods.coop import PromptScorer
from gcctl.methods.data import load_training_data
from gcctl.methods.loop import group_units, inverse_frequency
from gcctl.methods.prompts import PromptLearner, TextTower
from gcctl.runtime import autocast, resolve_device
from gcctl.store import FeatureStore, extract, write_store
from gcctl.synth.benchmarks import WATERBIRDS_SPLIT_SIZES, write_waterbirds


def _scorer(bundle, vocabulary, train):
    unit, groups = group_units(train.group)
    prompt_class = torch.from_numpy(vocabulary.class_of(groups.cpu().numpy())).to(groups.device)
    learner = PromptLearner(TextTower(bundle.model), bundle.tokenizer, [vocabulary.class_names[c] for c in prompt_class.tolist()],
                            list(range(len(groups))))
    scorer = PromptScorer(learner, prompt_class, vocabulary.num_classes, logit_scale(bundle.model), "max")
    return scorer, unit, inverse_frequency(unit)


def _epoch(scorer, unit, weights, batches, features_of) -> float:
    """One epoch of weighted prompt cross-entropy; `features_of(batch)` gives the batch's image features.
    The scores are computed under autocast as gcctl's training loop does (full precision on a CPU)."""
    optimizer = torch.optim.SGD([p for p in scorer.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    device = unit.device
    started = time.perf_counter()
    for batch in batches:
        with autocast(device):
            scores = scorer(features_of(batch)).float()
        loss = (torch.nn.functional.cross_entropy(scores, unit[batch], reduction="none") * weights[batch]).sum() / weights[batch].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def speed(model: str, images: int, batch_size: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        scale = min(1.0, images / sum(WATERBIRDS_SPLIT_SIZES))
        table = load_dataset("waterbirds", write_waterbirds(scratch / "wb", scale=scale))
        bundle = build_clip(model, "none", device=device)
        extract(table, bundle, scratch / "f.h5", batch_size=batch_size, device=device)
        with FeatureStore(scratch / "f.h5") as store:
            data = load_training_data(store, device)
            train_rows = store.split_index("train")
        pixels = torch.stack([bundle.preprocess(Image.open(table.root / table.frame["path"][row]).convert("RGB")) for row in train_rows])
    pixels = pixels.to(device)
    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(0)).to(device)
    batches = order.split(batch_size)
    scorer, unit, sample_weights = _scorer(bundle, data.vocabulary, data.train)

    def encoded(batch):
        with torch.no_grad(), autocast(device):
            return torch.nn.functional.normalize(bundle.model.encode_image(pixels[batch]).float(), dim=-1)

    cached_features = lambda batch: data.train.features[batch].float()  # noqa: E731
    _epoch(scorer, unit, sample_weights, batches[:1], cached_features)  # warm-up
    if device.type == "cuda":  # the image tower's first CUDA calls set up kernels; a CPU has nothing to warm
        _epoch(scorer, unit, sample_weights, batches[:1], encoded)
    cached = _epoch(scorer, unit, sample_weights, batches, cached_features)
    reference = _epoch(scorer, unit, sample_weights, batches, encoded)
    return {"model": model, "device": str(device), "train_samples": len(train_rows), "batch_size": batch_size, "prompts": int(unit.max()) + 1,
            "cached_epoch_s": round(cached, 3), "image_tower_epoch_s": round(reference, 3), "ratio": round(reference / cached, 1)}


def memory(rows: int = 1_000_000, model: str = "ViT-B-16") -> dict:
    """Peak RSS of one GroupCoOp epoch on a large float16 store (the features alone are rows*dim*2 bytes)."""
    torch.manual_seed(0)
    bundle = build_clip(model, "none")
    dim = bundle.provenance["embed_dim"]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "big.h5"
        y = rng.integers(0, 2, rows)
        place = np.where(rng.random(rows) < 0.95, y, 1 - y)
        features = np.empty((rows, dim), dtype=np.float16)
        for start in range(0, rows, 100_000):  # generated in blocks, never whole in float32
            block = rng.standard_normal((min(100_000, rows - start), dim), dtype=np.float32)
            features[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        write_store(path, features, y, rng.choice(3, rows, p=[0.8, 0.1, 0.1]), [str(i) for i in range(rows)],
                    {"place": place}, vocabulary=GroupVocabulary(["circle", "square"], {"place": ["grass", "water"]}),
                    provenance={"model_ref": bundle.reference.to_dict(), "embed_dim": dim})
        del features
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with FeatureStore(path) as store:
            data = load_training_data(store, torch.device("cpu"))
        scorer, unit, sample_weights = _scorer(bundle, data.vocabulary, data.train)
        batches = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0)).split(8192)
        seconds = _epoch(scorer, unit, sample_weights, batches, lambda batch: data.train.features[batch].float())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": model, "rows": rows, "stored_dim": dim, "dtype": "float16", "epoch_s": round(seconds, 1),
            "peak_rss_gb": round(peak / 2**20, 2), "rss_before_training_gb": round(baseline / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gcctl-tiny")
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="Where both loops train: cpu, cuda, auto...")
    parser.add_argument("--memory", action="store_true", help="Run the 1M x 512 float16 memory check instead.")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as gcctl's feature training loop does on CPU; both loops run alike
    result = memory() if args.memory else speed(args.model, args.images, args.batch_size, resolve_device(args.device))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
