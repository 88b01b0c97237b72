"""Fixtures and helpers shared across test modules: a tiny synthetic benchmark, a tiny random CLIP, toy feature
stores. Modules import the helpers by name: `from conftest import MICRO, toy_store`."""

import numpy as np
import pytest

MICRO = "gcctl-micro"  # the smallest shipped architecture: the tests' CLIP, with random weights
TOY_CLASSES, TOY_PLACES = ["landbird", "waterbird"], ["land", "water"]


@pytest.fixture(scope="session")
def tiny_waterbirds(tmp_path_factory):
    """A Waterbirds-like benchmark in Waterbirds' layout, about 240 images."""
    from gcctl.synth.benchmarks import write_waterbirds

    return write_waterbirds(tmp_path_factory.mktemp("data") / "waterbirds", seed=0, scale=0.02)


@pytest.fixture(scope="session")
def jpeg_waterbirds(tmp_path_factory):
    """A Waterbirds-like benchmark whose images are 4:3 JPEGs larger than gcctl-micro's 32 px input, so that
    decoding, resizing and cropping all act; its manifest points at them."""
    from PIL import Image

    from gcctl.datasets import load_dataset
    from gcctl.synth.benchmarks import write_waterbirds

    root = write_waterbirds(tmp_path_factory.mktemp("data") / "waterbirds", seed=0, scale=0.02, size=48)
    table = load_dataset("waterbirds", root)
    for relative in table.frame["path"]:
        png = root / relative
        with Image.open(png) as image:
            image.convert("RGB").resize((64, 48)).save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    metadata = root / "metadata.csv"
    metadata.write_text(metadata.read_text().replace(".png", ".jpg"))
    return root


@pytest.fixture()
def micro_bundle():
    """gcctl-micro with random weights of seed 0 (fresh per test: extraction moves it between devices)."""
    from gcctl.clip.factory import build_clip

    return build_clip(MICRO, "none")


@pytest.fixture(scope="session")
def shared_micro():
    """gcctl-micro with random weights of seed 0, built once per worker: only for tests that read it, on the CPU
    (its weights come from their own seed, so they agree with those of every run that builds it again)."""
    from gcctl.clip.factory import build_clip

    return build_clip(MICRO, "none")


def toy_features(*, n=(1200, 400, 800), corr=0.95, seed=0, dim=32, class_dirs=None, class_strength=1, place_dirs=None,
                 place_strength=2.0, noise=0.6, nan=False):
    """Rows of (features, y, place, split): features = class signal + place signal + noise, L2-normalised.

    `n`: the rows of train, val and test. In train the place agrees with the class in a fraction `corr` of the rows;
    in val and test it is independent of the class. `class_dirs`/`place_dirs` [2, dim]: the direction of each
    class/place (default ±e0/±e1), scaled by `class_strength`/`place_strength`; the noise is `noise` times N(0, 1).
    `nan`: one feature of row 5 is NaN. The sum is (class + place) + noise: the order test_tie's generator took and,
    where one signal is zero in an entry, bit for bit the noise-first sums test_methods' and test_adapter's took.
    """
    rng = np.random.default_rng(seed)
    class_dirs = _signs(dim, 0) if class_dirs is None else np.asarray(class_dirs)
    place_dirs = _signs(dim, 1) if place_dirs is None else np.asarray(place_dirs)
    parts = []
    for split, count in enumerate(n):
        y = rng.integers(0, 2, count)
        place = np.where(rng.random(count) < (corr if split == 0 else 0.5), y, 1 - y)
        signal = class_strength * class_dirs[y] + place_strength * place_dirs[place]
        features = signal + noise * rng.standard_normal((count, dim))
        parts.append((features / np.linalg.norm(features, axis=1, keepdims=True), y, place, np.full(count, split)))
    features, y, place, split = (np.concatenate(p) for p in zip(*parts))
    if nan:
        features[5, 3] = np.nan
    return features, y, place, split


def _signs(dim, axis):
    """[2, dim]: -e_axis for value 0, +e_axis for value 1."""
    directions = np.zeros((2, dim))
    directions[:, axis] = [-1, 1]
    return directions


def toy_store(path, *, dtype=np.float16, attributes=True, model=MICRO, **options):
    """A feature store of `toy_features(**options)` at `path` (returned): classes landbird/waterbird, with the
    attribute place (land/water) unless `attributes` is false, made with random weights of `model`."""
    from gcctl.clip.reference import ModelRef
    from gcctl.datasets.groups import GroupVocabulary
    from gcctl.store import write_store

    features, y, place, split = toy_features(**options)
    write_store(path, features.astype(dtype), y, split, [f"img{i}" for i in range(len(y))],
                {"place": place} if attributes else {},
                vocabulary=GroupVocabulary(TOY_CLASSES, {"place": TOY_PLACES} if attributes else None),
                provenance={"model_ref": ModelRef(model, "none", "", "none").to_dict(), "embed_dim": features.shape[1],
                            "normalized": True, "dataset": "toy", "dataset_fingerprint": "toy"})
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run tiny tensors: one thread avoids OpenMP spin-waits that make them crawl on a busy machine.
    GCCTL_THREADS keeps it so when a test runs the CLI in process, and in the processes tests start."""
    import os

    import torch

    threads, variable = torch.get_num_threads(), os.environ.get("GCCTL_THREADS")
    os.environ["GCCTL_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if variable is None:
        os.environ.pop("GCCTL_THREADS")
    else:
        os.environ["GCCTL_THREADS"] = variable


@pytest.fixture()
def run_cli(monkeypatch, capsys):
    """Run `gcctl ARGS…` through the real entry point; returns (exit code, stdout, stderr)."""
    import sys

    from gcctl.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["gcctl", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    return run


@pytest.fixture()
def quiet_random_weights():
    """Silence the warning every model with random weights logs (modules opt in with `pytestmark`)."""
    import logging

    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def tree_digest(root) -> str:
    """sha256 over every file below `root`, names and bytes in sorted order: equal for byte-identical trees."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
