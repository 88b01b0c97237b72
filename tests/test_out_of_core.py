"""Splits larger than the memory budget: read from the store on demand, with the in-memory path's results.

The comparisons are exact (bitwise): the out-of-core path reads the same float16 values and, with blocks of
64 rows here, computes what the in-memory path computes over the whole split.
"""

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import toy_store

import gcctl.store.format
from gcctl.errors import GcctlError
from gcctl.methods import METHODS
from gcctl.methods.data import load_training_data
from gcctl.methods.runs import train_run
from gcctl.pseudolabel import STRATEGIES, pseudo_label
from gcctl.store import FeatureStore, StoredRows, memory_budget

DIM = 32
SPLITS = (300, 200, 100)
BUDGET = DIM * 2 * 150  # bytes: 150 float16 rows, below the train (300) and val (200) splits
QUICK = {"epochs": 2, "batch_size": 32}


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    """Blocks of 64 rows, so block-wise code (TIE*, the adapter's mining, NaN checks) meets several."""
    monkeypatch.setattr(gcctl.store.format, "BLOCK_ROWS", 64)
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return toy_store(tmp_path_factory.mktemp("stores") / "small.h5", n=SPLITS)


def assert_identical(a, b, where="params"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    else:
        assert a == b, where


def test_stored_rows_hold_what_the_loaded_split_holds(tmp_path):
    """Rows read across storage chunks (512-wide float16: 1024 rows a chunk), by slice, positions and mask."""
    path = toy_store(tmp_path / "wide.h5", n=(1500, 700, 400), dim=512)
    with FeatureStore(path) as wide:
        index = wide.split_index("train")
        loaded = torch.from_numpy(wide.load_features(index))
        rows = StoredRows(wide, index, torch.device("cpu"))
        positions = torch.from_numpy(np.random.default_rng(0).integers(0, len(index), 300))  # unsorted, repeats
        mask = torch.arange(len(index)) % 3 == 0
        for key in (slice(1000, 1400), positions, mask, positions.numpy()):
            assert torch.equal(rows[key], loaded[key])
        assert torch.equal(rows.subset(positions)[10:20], loaded[positions][10:20])


def test_splits_over_the_budget_stay_in_the_store(store):
    with FeatureStore(store) as opened:
        in_memory = load_training_data(opened, torch.device("cpu"))
        out_of_core = load_training_data(opened, torch.device("cpu"), max_memory=BUDGET)
        assert isinstance(in_memory.train.features, torch.Tensor) and isinstance(in_memory.val.features, torch.Tensor)
        assert isinstance(out_of_core.train.features, StoredRows) and isinstance(out_of_core.val.features, StoredRows)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_the_same_model_out_of_core(tmp_path, store, method):
    options = QUICK if METHODS[method].trains else {}
    summaries = {name: train_run(store, method, tmp_path / name, options=options, seeds=[0], max_memory=budget)
                 for name, budget in (("memory", None), ("store", BUDGET))}
    assert summaries["memory"]["seeds"] == summaries["store"]["seeds"]
    memory, stored = (torch.load(tmp_path / name / "params.pt", weights_only=True) for name in ("memory", "store"))
    assert_identical(memory, stored)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_labels_the_same_out_of_core(tmp_path, store, strategy):
    reports = {name: pseudo_label(store, strategy, tmp_path / f"{name}.parquet", max_memory=budget)
               for name, budget in (("memory", None), ("store", BUDGET))}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "memory.parquet"), pd.read_parquet(tmp_path / "store.parquet"))
    assert reports["memory"]["agreement"] == reports["store"]["agreement"]
    assert reports["memory"]["notes"] == reports["store"]["notes"]


def test_a_budget_too_small_for_one_batch_is_refused_before_anything_is_written(tmp_path, store, run_cli):
    code, _, err = run_cli("train", "--features", str(store), "--method", "linear", "--batch-size", "256",
                           "--max-memory", "10K", "--out", str(tmp_path / "run"))
    assert code == 1
    assert err.strip().splitlines() == [
        "error: --max-memory 10240 bytes is too small for one batch of 256 rows x 32 features (65536 bytes); "
        "raise --max-memory to at least 1M or lower --batch-size"]
    assert not (tmp_path / "run").exists()


def test_memory_sizes():
    assert memory_budget("2G") == 2 << 30 and memory_budget("512M") == 512 << 20 and memory_budget("1.5k") == 1536
    assert memory_budget("4096") == 4096 and memory_budget("1GiB") == 1 << 30
    assert memory_budget(None) > 0  # half the memory available
    for text in ("lots", "0", "-1G", ""):
        with pytest.raises(GcctlError, match="is not a size"):
            memory_budget(text)


def test_the_commands_take_a_budget(tmp_path, store, run_cli):
    for name, budget in (("memory", "1G"), ("store", str(BUDGET))):
        code, _, err = run_cli("pseudo-label", "--features", str(store), "--strategy", "kmeans", "--max-memory", budget,
                               "--out", str(tmp_path / f"{name}.parquet"), "--json")
        assert code in (0, None), err
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "memory.parquet"), pd.read_parquet(tmp_path / "store.parquet"))
