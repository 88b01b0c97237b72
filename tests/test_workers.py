"""Image decoding workers that survive a process holding CUDA: what they receive, how they start, and which
devices a user may name (the CUDA side faked on this CPU machine)."""

import pickle

import numpy as np
import pytest
import torch

from gcctl.clip.preprocess import eval_transform_stages, train_transform
from gcctl.datasets import load_dataset
from gcctl.datasets.images import ImageDataset
from gcctl.errors import GcctlError
from gcctl.runtime import resolve_device, worker_context
from gcctl.store import FeatureStore, extract


class _TensorFinder(pickle.Pickler):
    """Pickles to nowhere, collecting every tensor met on the way: what a worker process would receive."""

    def __init__(self):
        import io

        super().__init__(io.BytesIO())
        self.tensors = []

    def reducer_override(self, obj):
        if isinstance(obj, torch.Tensor):
            self.tensors.append(obj)
        return NotImplemented


def _tensors_sent_to_workers(dataset):
    finder = _TensorFinder()
    finder.dump(dataset)
    return finder.tensors


@pytest.fixture()
def cuda_initialised(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)


def test_workers_fork_until_cuda_is_initialised_then_start_from_a_clean_process(monkeypatch):
    assert worker_context(2) is None  # the platform's default: fork, the cheapest
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert worker_context(0) is None  # no workers, nothing started
    assert worker_context(2).get_start_method() in ("forkserver", "spawn")


def test_what_extraction_and_fine_tuning_send_to_workers_is_picklable_and_holds_no_tensor(tiny_waterbirds, shared_micro):
    table = load_dataset("waterbirds", tiny_waterbirds)
    pixels, _ = eval_transform_stages(shared_micro.preprocess)
    for transform in (pixels, shared_micro.preprocess, train_transform(shared_micro.model)):
        dataset = ImageDataset(table, transform, indices=range(8))
        assert _tensors_sent_to_workers(dataset) == []
        image, row = pickle.loads(pickle.dumps(dataset))[3]
        assert row == 3 and image.shape[0] == 3


def test_an_extraction_with_workers_after_cuda_is_initialised_gives_the_store_of_forked_workers(
        tiny_waterbirds, micro_bundle, tmp_path, monkeypatch):
    table = load_dataset("waterbirds", tiny_waterbirds)
    extract(table, micro_bundle, tmp_path / "forked.h5", batch_size=64, workers=1, dtype="float32")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    extract(table, micro_bundle, tmp_path / "served.h5", batch_size=64, workers=1, dtype="float32")
    with FeatureStore(tmp_path / "forked.h5") as forked, FeatureStore(tmp_path / "served.h5") as served:
        np.testing.assert_array_equal(forked.load_features(), served.load_features())


def test_a_cuda_device_past_the_last_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(GcctlError, match=r"has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:7")
    with pytest.raises(GcctlError, match="is not a device"):
        resolve_device("gpu7")
