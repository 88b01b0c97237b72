"""Extraction under torchrun: two gloo processes on CPU write the store one process writes, and a process that
fails mid-way leaves its part to be resumed by the rerun."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from gcctl.datasets import load_dataset
from gcctl.store import extract

REPO = Path(__file__).resolve().parents[1]


def _torchrun_extract(root: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "gcctl", "--quiet", "extract", "--dataset", "waterbirds", "--root", str(root),
               "--model", "gcctl-micro", "--batch-size", "8", "--device", "cpu", "--out", str(out), "--json"]
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


@pytest.mark.slow
def test_two_processes_write_the_store_of_one_and_a_failed_part_resumes(tiny_waterbirds, micro_bundle, tmp_path):
    root = shutil.copytree(tiny_waterbirds, tmp_path / "waterbirds")
    table = load_dataset("waterbirds", root)
    extract(table, micro_bundle, tmp_path / "one.h5", batch_size=8)

    # The second process's rows are the second half; an unreadable image 84 rows in stops it after 80 of them.
    rows, half = len(table.frame), len(table.frame) // 2
    damaged = root / table.frame["path"].iloc[half + 84]
    image = damaged.read_bytes()
    damaged.write_bytes(b"not an image")
    out = tmp_path / "two.h5"
    failed = _torchrun_extract(root, out)
    assert failed.returncode != 0
    assert f"error: cannot read image {damaged}" in failed.stderr
    assert not out.exists()
    assert (tmp_path / "two.h5.rank0-of-2").is_file()
    with h5py.File(tmp_path / "two.h5.rank1-of-2.partial", "r") as part:
        assert part.attrs["rows_done"] == 80

    damaged.write_bytes(image)
    (tmp_path / "two.h5.rank2-of-3.partial").write_bytes(b"left by a run with three processes")
    resumed = _torchrun_extract(root, out)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)  # rank 0 alone reports
    assert summary["resumed_from"] == [half, 80] and summary["world_size"] == 2 and summary["rows"] == rows
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("two")) == ["two.h5"]

    one_datasets, one_attrs = _contents(tmp_path / "one.h5")
    two_datasets, two_attrs = _contents(out)
    assert one_datasets.keys() == two_datasets.keys()
    for name, values in one_datasets.items():
        np.testing.assert_array_equal(two_datasets[name], values, err_msg=name)
    assert (one_attrs.pop("world_size"), two_attrs.pop("world_size")) == (1, 2)
    assert two_attrs == one_attrs
