"""Extraction into the feature store: round trip, provenance, resume, failures that leave nothing behind."""

import json

import numpy as np
import pytest

from gcctl.clip.factory import build_clip
from gcctl.datasets import load_dataset
from gcctl.errors import GcctlError
from gcctl.store import FeatureStore, Shard, extract, merge


class _InterruptAfter:
    """A first step of the eval transform that stops the extraction after `limit` images, as a killed one would
    stop (in this process: the extractions it interrupts decode with workers=0, in a thread of this process)."""

    def __init__(self, limit):
        self.limit, self.calls = limit, 0

    def __call__(self, image):
        self.calls += 1
        if self.calls > self.limit:
            raise KeyboardInterrupt
        return image


def _decoding_with(bundle, step):
    """`bundle`, whose eval transform runs `step` first (a fresh bundle per test, so nothing to undo)."""
    bundle.preprocess.transforms.insert(0, step)
    return bundle


def _decoding_plainly(bundle):
    """`bundle` with the step `_decoding_with` put in front of its eval transform taken out again."""
    del bundle.preprocess.transforms[0]
    return bundle


def test_extract_round_trip_with_provenance(tiny_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", tiny_waterbirds)
    summary = extract(table, micro_bundle, tmp_path / "f.h5", batch_size=32)
    assert summary["rows"] == len(table.frame)
    with FeatureStore(tmp_path / "f.h5") as store:
        features = store.load_features().astype(np.float32)
        assert features.shape == (len(table.frame), 32)
        np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=2e-3)
        assert list(store.ids) == table.frame["id"].astype(str).tolist()
        np.testing.assert_array_equal(store.group, table.frame["group"])
        assert store.vocabulary == table.vocabulary
        assert store.model_ref().architecture == "gcctl-micro" and store.model_ref().kind == "none"
        assert store.provenance["dataset_fingerprint"] == table.fingerprint()
        assert store.model_ref().preprocess["resize"] == 32
        assert "place" in store.attributes


def test_interrupted_extraction_resumes_to_the_same_file(tiny_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", tiny_waterbirds)
    extract(table, micro_bundle, tmp_path / "whole.h5", batch_size=32, dtype="float32")

    with pytest.raises(KeyboardInterrupt):
        extract(table, _decoding_with(micro_bundle, _InterruptAfter(100)), tmp_path / "resumed.h5", batch_size=32,
                dtype="float32", workers=0)
    assert not (tmp_path / "resumed.h5").exists()
    assert (tmp_path / "resumed.h5.partial").exists()

    _decoding_plainly(micro_bundle)
    summary = extract(table, micro_bundle, tmp_path / "resumed.h5", batch_size=32, dtype="float32")
    assert summary["resumed_from"] == 96  # three whole batches of 32 were done before the interruption
    with FeatureStore(tmp_path / "whole.h5") as whole, FeatureStore(tmp_path / "resumed.h5") as resumed:
        np.testing.assert_array_equal(resumed.load_features(), whole.load_features())
    assert not (tmp_path / "resumed.h5.partial").exists()
    assert (tmp_path / "resumed.h5").read_bytes() == (tmp_path / "whole.h5").read_bytes()


def test_a_resume_with_another_batch_size_goes_back_to_a_batch_start(tiny_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", tiny_waterbirds)
    with pytest.raises(KeyboardInterrupt):
        extract(table, _decoding_with(micro_bundle, _InterruptAfter(100)), tmp_path / "f.h5", batch_size=32,
                dtype="float32", workers=0)
    _decoding_plainly(micro_bundle)
    summary = extract(table, micro_bundle, tmp_path / "f.h5", batch_size=40, dtype="float32")
    assert summary["resumed_from"] == 80  # 96 rows were done: back to row 80, where a batch of 40 starts


def test_batches_are_cut_by_the_row_index_alone(tiny_waterbirds):
    import pandas as pd

    from gcctl.store.extraction import _batch_starts, _shard_rows

    table = load_dataset("waterbirds", tiny_waterbirds)  # 236 rows
    parts = [_shard_rows(table, Shard(i, 3), 39) for i in range(3)]
    assert parts == [range(0, 78), range(78, 156), range(156, 236)]  # whole batches; the last part ends short
    assert [_batch_starts(table, part, 39) for part in parts] == [[0, 39], [78, 117], [156, 195, 234]]
    whole = _batch_starts(table, _shard_rows(table, Shard(), 39), 39)
    assert sum((_batch_starts(table, part, 39) for part in parts), []) == whole

    class Archived:  # the rows of three tar files of 4, 1 and 7 images
        frame = pd.DataFrame({"path": [f"{n}.tar::{i}.png" for n, size in enumerate((4, 1, 7)) for i in range(size)]})

    assert _shard_rows(Archived, Shard(1, 2), 3) == range(4, 12)  # whole tar files, whatever the batch size
    assert _batch_starts(Archived, range(0, 12), 3) == [0, 3, 4, 5, 8, 11]  # every 3 rows from each file's first
    assert _batch_starts(Archived, range(4, 12), 3) == [4, 5, 8, 11]


def test_a_single_process_run_removes_the_parts_a_torchrun_left(tiny_waterbirds, micro_bundle, tmp_path):
    from gcctl.files import output_lock

    table = load_dataset("waterbirds", tiny_waterbirds)
    left = ["f.h5.rank0-of-2", "f.h5.rank1-of-2.partial", "f.h5.rank1-of-2.lock", "f.h5.rank2-of-3.partial"]
    for name in left:
        (tmp_path / name).write_bytes(b"left by a killed torchrun")
    (tmp_path / "f.h5.rank9-of-10.partial").write_bytes(b"written by a live process, which holds its lock")
    with output_lock(tmp_path / "f.h5.rank9-of-10"):
        extract(table, micro_bundle, tmp_path / "f.h5", batch_size=64)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["f.h5", "f.h5.rank9-of-10.partial"]


def test_a_partial_file_of_another_extraction_is_not_resumed(tiny_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", tiny_waterbirds)
    with pytest.raises(KeyboardInterrupt):
        extract(table, _decoding_with(micro_bundle, _InterruptAfter(40)), tmp_path / "f.h5", batch_size=16,
                dtype="float16", workers=0)
    _decoding_plainly(micro_bundle)
    summary = extract(table, micro_bundle, tmp_path / "f.h5", batch_size=16, dtype="float32")
    assert summary["resumed_from"] == 0


def test_a_partial_file_of_other_random_weights_is_restarted_not_mixed(tiny_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", tiny_waterbirds)
    other_seed = build_clip("gcctl-micro", "none", seed=1)
    extract(table, other_seed, tmp_path / "whole.h5", batch_size=32, dtype="float32")
    with pytest.raises(KeyboardInterrupt):
        extract(table, _decoding_with(micro_bundle, _InterruptAfter(100)), tmp_path / "f.h5", batch_size=32,
                dtype="float32", workers=0)
    summary = extract(table, other_seed, tmp_path / "f.h5", batch_size=32, dtype="float32")
    assert summary["resumed_from"] == 0  # seed 0's rows are discarded, not continued with seed 1's model
    with FeatureStore(tmp_path / "whole.h5") as whole, FeatureStore(tmp_path / "f.h5") as restarted:
        np.testing.assert_array_equal(restarted.load_features(), whole.load_features())
        assert restarted.model_ref().seed == 1


def test_shards_merge_into_the_whole(tiny_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", tiny_waterbirds)
    extract(table, micro_bundle, tmp_path / "whole.h5", batch_size=64)
    parts = [extract(table, micro_bundle, tmp_path / f"p{i}.h5", batch_size=64, shard=Shard(i, 2))["out"] for i in range(2)]
    merge(parts, tmp_path / "merged.h5")
    with FeatureStore(tmp_path / "whole.h5") as whole, FeatureStore(tmp_path / "merged.h5") as merged:
        np.testing.assert_array_equal(merged.load_features(), whole.load_features())
        np.testing.assert_array_equal(merged.ids, whole.ids)


def test_shards_cut_with_different_batch_sizes_are_not_merged(tiny_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", tiny_waterbirds)  # 236 rows: shard 0/2 is rows 0-127 in batches of 64
    first = extract(table, micro_bundle, tmp_path / "p0.h5", batch_size=64, shard=Shard(0, 2))["out"]
    second = extract(table, micro_bundle, tmp_path / "p1.h5", batch_size=32, shard=Shard(1, 2))["out"]  # from 128
    assert merge([first, second], tmp_path / "merged.h5")  # these two happen to meet
    third = extract(table, micro_bundle, tmp_path / "q1.h5", batch_size=50, shard=Shard(1, 2))["out"]  # from 100
    with pytest.raises(GcctlError, match="starts at row 100 but the shards before it end at row 128"):
        merge([first, third], tmp_path / "other.h5")
    assert not (tmp_path / "other.h5").exists()


def test_missing_image_fails_before_writing_anything(tiny_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", tiny_waterbirds)
    table.frame.loc[3, "path"] = "001.Circle/gone.png"
    with pytest.raises(GcctlError, match="gone.png not found"):
        extract(table, micro_bundle, tmp_path / "f.h5")
    assert not list(tmp_path.iterdir())


def test_unreadable_image_in_a_worker_is_one_line(tiny_waterbirds, micro_bundle, tmp_path):
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(tiny_waterbirds, broken)
    table = load_dataset("waterbirds", broken)
    (broken / table.frame.loc[5, "path"]).write_bytes(b"not a png")
    with pytest.raises(GcctlError) as caught:
        extract(table, micro_bundle, tmp_path / "f.h5", workers=1)
    message = str(caught.value)
    assert message.startswith("cannot read image") and "Traceback" not in message
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.slow
def test_cli_extract_then_info(tiny_waterbirds, tmp_path, run_cli):
    out = tmp_path / "f.h5"
    code, stdout, _ = run_cli("extract", "--dataset", "waterbirds", "--root", str(tiny_waterbirds),
                               "--model", "gcctl-micro", "--out", str(out), "--json")
    assert code == 0 and json.loads(stdout)["rows"] > 0
    code, stdout, _ = run_cli("info", str(out), "--json")
    assert code == 0
    assert json.loads(stdout)["group_counts"]["heart/water"]["test"] > 0


def test_cli_random_weights_of_one_seed_give_one_store(tiny_waterbirds, tmp_path, run_cli):
    def extract_with_seed(seed, name):
        code, _, stderr = run_cli("extract", "--dataset", "waterbirds", "--root", str(tiny_waterbirds), "--model", "gcctl-micro",
                                  "--pretrained", "none", "--seed", seed, "--out", str(tmp_path / name), "--json")
        assert code == 0, stderr
        return FeatureStore(tmp_path / name)

    with extract_with_seed("0", "a.h5") as first, extract_with_seed("0", "b.h5") as again, extract_with_seed("1", "c.h5") as other:
        np.testing.assert_array_equal(again.load_features(), first.load_features())
        assert again.model_ref() == first.model_ref() and first.model_ref().seed == 0
        assert not np.array_equal(other.load_features(), first.load_features())
        assert other.model_ref().sha256 != first.model_ref().sha256


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--root", "/nonexistent/place"], "not a directory"),
        (["--model", "gcctl-nano"], "gcctl-nano"),
        (["--pretrained", "/nonexistent/model.pt"], "model.pt"),
        (["--dtype", "int8"], "int8"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_1(tiny_waterbirds, tmp_path, run_cli, args, fragment):
    base = {"--dataset": "waterbirds", "--root": str(tiny_waterbirds), "--model": "gcctl-micro", "--out": str(tmp_path / "f.h5")}
    base.update(dict(zip(args[::2], args[1::2])))
    code, _, stderr = run_cli("extract", *[item for pair in base.items() for item in pair])
    assert code == 1
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0]
    assert not list(tmp_path.iterdir())


class _PauseAfter:
    """A first step of the eval transform that, after `limit` images, signals `paused` and waits for `resume`:
    a first extraction caught in the middle of its work."""

    def __init__(self, limit):
        import threading

        self.limit, self.calls = limit, 0
        self.paused, self.resume = threading.Event(), threading.Event()

    def __call__(self, image):
        self.calls += 1
        if self.calls == self.limit + 1:
            self.paused.set()
            assert self.resume.wait(timeout=60)
        return image


def test_a_second_extraction_on_the_same_out_refuses_and_the_first_completes(tiny_waterbirds, micro_bundle, tmp_path, run_cli):
    import threading
    import time

    table = load_dataset("waterbirds", tiny_waterbirds)
    extract(table, micro_bundle, tmp_path / "single.h5", batch_size=32, dtype="float32")
    out = tmp_path / "f.h5"
    pause = _PauseAfter(limit=64)
    _decoding_with(micro_bundle, pause)
    first = threading.Thread(target=extract, args=(table, micro_bundle, out), kwargs={"batch_size": 32, "dtype": "float32", "workers": 0})
    first.start()
    try:
        assert pause.paused.wait(timeout=60)
        started = time.perf_counter()
        code, _, stderr = run_cli("extract", "--dataset", "waterbirds", "--root", str(tiny_waterbirds), "--model", "gcctl-micro",
                                  "--out", str(out), "--dtype", "float32", "--device", "cpu")
        assert time.perf_counter() - started < 30  # refused at once, not after encoding anything
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert code == 1 and len(errors) == 1 and "being written by another gcctl process" in errors[0]
        assert out.with_name("f.h5.partial").exists() and not out.exists()  # the first one's work is untouched
    finally:
        pause.resume.set()
        first.join()
    with FeatureStore(tmp_path / "single.h5") as single, FeatureStore(out) as published:
        np.testing.assert_array_equal(published.load_features(), single.load_features())
        np.testing.assert_array_equal(published.ids, single.ids)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["f.h5", "single.h5"]  # no partial, no lock left


def test_a_cut_short_store_moved_into_place_is_refused(tiny_waterbirds, micro_bundle, tmp_path):
    """What a second writer once published: a `.partial` with rows still zero. Nothing reads it as a store."""
    table = load_dataset("waterbirds", tiny_waterbirds)
    with pytest.raises(KeyboardInterrupt):
        extract(table, _decoding_with(micro_bundle, _InterruptAfter(40)), tmp_path / "f.h5", batch_size=16, workers=0)
    (tmp_path / "f.h5.partial").rename(tmp_path / "f.h5")
    with pytest.raises(GcctlError, match="is incomplete .*rerun `gcctl extract`"):
        FeatureStore(tmp_path / "f.h5")


def test_an_earlier_store_is_replaced_only_with_overwrite(tiny_waterbirds, micro_bundle, tmp_path):
    table = load_dataset("waterbirds", tiny_waterbirds)
    extract(table, micro_bundle, tmp_path / "f.h5", batch_size=64)
    with pytest.raises(GcctlError, match="pass --overwrite"):
        extract(table, micro_bundle, tmp_path / "f.h5", batch_size=64)
    assert extract(table, micro_bundle, tmp_path / "f.h5", batch_size=64, overwrite=True)["rows"] == len(table.frame)


@pytest.fixture()
def small_disk(tmp_path):
    """A 256 KiB file system (tmpfs), where the machine lets this process mount one."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_store_that_cannot_fit_is_refused_before_any_work(tiny_waterbirds, small_disk, run_cli):
    out = small_disk / "features.h5"
    code, out_text, err = run_cli("extract", "--dataset", "waterbirds", "--root", str(tiny_waterbirds),
                                  "--model", "gcctl-micro", "--pretrained", "none", "--out", str(out), "--device", "cpu")
    assert code == 1 and out_text == "" and err.count("\n") == 1
    assert "MiB free; free some space or choose another --out" in err
    assert list(small_disk.iterdir()) == []  # no partial file, no lock left


def test_a_disk_that_fills_mid_way_stops_cleanly_and_the_run_resumes(tiny_waterbirds, micro_bundle, tmp_path, monkeypatch):
    import shutil as real_shutil

    from gcctl.store import extraction as store_module

    table = load_dataset("waterbirds", tiny_waterbirds)
    out = tmp_path / "features.h5"
    disk = real_shutil.disk_usage(tmp_path)
    calls = {"n": 0}

    def filling_disk(path):  # plenty at the start, nearly nothing after the second batch
        calls["n"] += 1
        return disk if calls["n"] <= 3 else disk._replace(free=1024)

    monkeypatch.setattr(store_module.shutil, "disk_usage", filling_disk)
    with pytest.raises(GcctlError, match=r"is nearly full after 64 of \d+ rows; free some space and run the same command again"):
        extract(table, micro_bundle, out, batch_size=32)
    assert not out.exists() and (tmp_path / "features.h5.partial").is_file()

    monkeypatch.undo()
    summary = extract(table, micro_bundle, out, batch_size=32)
    assert summary["resumed_from"] == 64
    whole = extract(table, micro_bundle, tmp_path / "whole.h5", batch_size=32)
    with FeatureStore(out) as resumed, FeatureStore(tmp_path / "whole.h5") as uninterrupted:
        assert whole["resumed_from"] == 0
        np.testing.assert_array_equal(resumed.load_features(), uninterrupted.load_features())


def test_decoding_workers_write_the_same_features_as_the_main_process(tiny_waterbirds, micro_bundle, tmp_path):
    """The overlapped path (worker processes decoding ahead of the tower, a last batch smaller than the rest)
    stores bit for bit what decoding in the main process stores."""
    table = load_dataset("waterbirds", tiny_waterbirds)
    serial = extract(table, micro_bundle, tmp_path / "serial.h5", batch_size=50, workers=0)
    overlapped = extract(table, micro_bundle, tmp_path / "overlapped.h5", batch_size=50, workers=2)
    assert serial["workers"] == 0 and overlapped["workers"] == 2 and len(table.frame) % 50
    with FeatureStore(tmp_path / "serial.h5") as reference, FeatureStore(tmp_path / "overlapped.h5") as store:
        np.testing.assert_array_equal(store.load_features(), reference.load_features())
        np.testing.assert_array_equal(store.ids, reference.ids)


def test_default_workers_follow_the_cpus_this_process_may_use(monkeypatch):
    import torch

    from gcctl.store import extraction as store_module

    for budget, on_cpu, on_gpu in ((1, 0, 0), (2, 0, 1), (16, 0, 8), (64, 0, 8)):
        monkeypatch.setattr(store_module, "cpu_budget", lambda: budget)
        assert store_module.default_workers(torch.device("cpu")) == on_cpu
        assert store_module.default_workers(torch.device("cuda")) == on_gpu


def test_cuda_extraction_asks_for_deterministic_kernels_and_restores_the_settings():
    import torch

    from gcctl.store.extraction import _deterministic_kernels

    cudnn = torch.backends.cudnn
    before = cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with _deterministic_kernels(torch.device("cuda")):  # only flags: no GPU needed
        assert (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, False, False, False)
    assert (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    with _deterministic_kernels(torch.device("cpu")):
        assert cudnn.deterministic == before[0]
