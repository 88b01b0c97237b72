"""Extraction under torchrun: two gloo processes on CPU write, byte for byte, the store one process writes, even
when one of them stopped mid-way and the rerun resumed its part; a single-process rerun removes the parts; a
user error is one line from rank 0, before any work when --out is held, and torchrun adds nothing to it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from gcctl.datasets import load_dataset
from gcctl.files import output_lock
from gcctl.store import Shard, extract

REPO = Path(__file__).resolve().parents[1]
# 236 rows in batches of 39: the split of the old code (rows 0-117 | 118-235) gave rank 0 a last batch of one
# row, which the micro model encodes differently in float32 from the same row among 38 others.
BATCH = 39


def _torchrun_extract(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "gcctl", "--quiet", "extract", "--dataset", "waterbirds", "--root", str(root),
               "--model", "gcctl-micro", "--batch-size", str(BATCH), "--dtype", "float32", "--device", "cpu",
               "--out", str(out), "--json", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _contents(path: Path) -> tuple[dict, dict]:
    """Every dataset's values and every root attribute of an HDF5 file."""
    datasets = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: datasets.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
        attrs = {key: value.item() if isinstance(value, np.generic) else value for key, value in handle.attrs.items()}
    return datasets, attrs


def _assert_same_store(path: Path, reference: Path) -> None:
    datasets, attrs = _contents(path)
    expected_datasets, expected_attrs = _contents(reference)
    assert datasets.keys() == expected_datasets.keys()
    for name, values in expected_datasets.items():
        assert np.array_equal(datasets[name], values), name
    assert attrs == expected_attrs  # no process count: that is kept in the parts alone
    assert path.read_bytes() == reference.read_bytes()


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a torchrun that stopped on a user error: printed by rank 0 alone, before
    torchrun's own report of the failed processes."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    report = result.stderr.find("ChildFailedError")
    assert report == -1 or result.stderr.index(errors[0]) < report
    assert result.returncode == 1 and result.stdout == ""  # a failure never exits 0
    return errors[0]


@pytest.mark.slow
def test_two_processes_stopped_and_resumed_write_the_bytes_of_one(tiny_waterbirds, micro_bundle, tmp_path):
    root = shutil.copytree(tiny_waterbirds, tmp_path / "waterbirds")
    table = load_dataset("waterbirds", root)
    cpu = torch.device("cpu")
    extract(table, micro_bundle, tmp_path / "one.h5", batch_size=BATCH, dtype="float32", device=cpu)

    # The second process's rows start on a whole batch (row 117); an unreadable image 84 rows in stops it after
    # two batches, as a kill would: its .partial records the rows done, the first process's part is finished.
    second = Shard(1, 2)
    start = 3 * BATCH
    damaged = root / table.frame["path"].iloc[start + 84]
    image = damaged.read_bytes()
    damaged.write_bytes(b"not an image")
    out = tmp_path / "two.h5"
    failed = _torchrun_extract(root, out)
    assert f"cannot read image {damaged}" in _one_error_line(failed)
    assert not out.exists()
    assert (tmp_path / "two.h5.rank0-of-2").is_file()
    with h5py.File(tmp_path / "two.h5.rank1-of-2.partial", "r") as part:
        assert (part.attrs["row_offset"], part.attrs["rows_done"], part.attrs["shard"]) == (start, 2 * BATCH, str(second))
    damaged.write_bytes(image)

    # A single-process rerun on an --out that a torchrun left parts of writes every row itself and removes them.
    for part in tmp_path.glob("two.h5.rank*"):
        shutil.copy(part, tmp_path / part.name.replace("two.h5", "single.h5"))
    extract(table, micro_bundle, tmp_path / "single.h5", batch_size=BATCH, dtype="float32", device=cpu)
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("single")) == ["single.h5"]
    _assert_same_store(tmp_path / "single.h5", tmp_path / "one.h5")

    (tmp_path / "two.h5.rank2-of-3.partial").write_bytes(b"left by a run with three processes")
    resumed = _torchrun_extract(root, out)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)  # rank 0 alone reports
    assert summary["resumed_from"] == [start, 2 * BATCH] and summary["world_size"] == 2
    assert summary["rows"] == len(table.frame)
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("two")) == ["two.h5"]
    _assert_same_store(out, tmp_path / "one.h5")


@pytest.mark.slow
def test_two_processes_decoding_with_a_library_write_the_bytes_of_one(jpeg_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", jpeg_waterbirds)
    extract(table, micro_bundle, tmp_path / "one.h5", batch_size=BATCH, dtype="float32", decode="torchvision",
            device=torch.device("cpu"))
    result = _torchrun_extract(jpeg_waterbirds, tmp_path / "two.h5", "--decode", "torchvision")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["world_size"], summary["decode"]) == (2, "torchvision")
    _assert_same_store(tmp_path / "two.h5", tmp_path / "one.h5")  # the store records decode=torchvision


@pytest.mark.slow
@pytest.mark.parametrize("case", ["held --out", "bad --root"])
def test_a_user_error_under_torchrun_is_one_line_before_any_work(tiny_waterbirds, tmp_path, case):
    out = tmp_path / "f.h5"
    if case == "held --out":  # rank 0 alone meets it, before any process encodes a row
        with output_lock(out):
            result = _torchrun_extract(tiny_waterbirds, out)
        assert "being written by another gcctl process" in _one_error_line(result)
    else:  # every process meets it, while reading the dataset options
        result = _torchrun_extract(tmp_path / "nowhere", out)
        assert "not a directory" in _one_error_line(result)
    assert list(tmp_path.iterdir()) == []  # no part, no partial, no lock
