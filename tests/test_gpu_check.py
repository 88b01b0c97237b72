"""bench/gpu.sh's driver: its commands fit the benchmarks' options, and it reports results, failures and hangs."""

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def _declared_options(script: Path) -> set[str]:
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text()))


def _exists(test: str) -> bool:
    path, _, name = test.partition("::")
    return (REPO / path).is_file() and (not name or f"def {name}(" in (REPO / path).read_text())


@pytest.mark.parametrize("cpu", [True, False])
def test_every_planned_benchmark_option_is_declared_by_its_script(gpu_check, cpu):
    for check in gpu_check.plan(cpu):
        scripts = [Path(part) for part in check.command if part.endswith(".py") and "bench" in part]
        if check.name == "tests":
            assert not scripts and all(_exists(test) for test in gpu_check.NEEDS_DVC)
            continue
        (script,) = scripts
        options = {part for part in check.command[check.command.index(str(script)) :] if part.startswith("--")}
        assert options <= _declared_options(script), (check.name, options - _declared_options(script))


def test_the_gpu_plan_runs_the_test_suite_last_and_the_dry_plan_skips_it(gpu_check):
    assert [check.name for check in gpu_check.plan(cpu=False)][-1] == "tests"
    assert "tests" not in [check.name for check in gpu_check.plan(cpu=True)]
    assert all("cuda" in check.command for check in gpu_check.plan(cpu=False) if check.name != "tests")


def test_the_suite_runs_whole_and_its_failures_are_named(gpu_check, tmp_path, monkeypatch):
    (tests,) = [check for check in gpu_check.plan(cpu=False) if check.name == "tests"]
    assert "-x" not in tests.command and f"--junitxml={gpu_check.JUNIT_XML}" in tests.command
    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_extract" name="test_ok" time="0.1" />'
        '<testcase classname="tests.test_extract" name="test_workers[2]"><failure message="boom" /></testcase>'
        '<testcase classname="tests.test_torchrun" name="test_ranks"><error message="crash" /></testcase>'
        '</testsuite></testsuites>')
    failed = gpu_check.failed_tests(report)
    assert failed == ["tests/test_extract.py::test_workers[2]", "tests/test_torchrun.py::test_ranks"]
    assert gpu_check.failed_tests(tmp_path / "missing.xml") == []
    figures = tests.figures({"summary": "2 failed, 1 passed", "failed_tests": failed})
    assert figures == "2 failed, 1 passed; failed: tests/test_extract.py::test_workers[2], tests/test_torchrun.py::test_ranks"
    monkeypatch.setattr(gpu_check, "JUNIT_XML", report)
    stub = gpu_check.Check("tests", "a suite", (sys.executable, "-c", "print('3 passed')"), 30, tests.figures)
    row = gpu_check.run_check(stub, 30, dict(os.environ))
    assert row["result"] == {"summary": "3 passed", "failed_tests": []}  # the stale report was removed first


def _check(gpu_check, code: str, timeout_s: int = 30):
    return gpu_check.Check("stub", "a stub", (sys.executable, "-c", code), timeout_s, lambda result: f"{result['rate']} img/s")


def test_a_check_reports_the_last_json_line_it_prints(gpu_check):
    code = "import sys; print('{not json'); print('{\"rate\": 7}'); print('warming up', file=sys.stderr)"
    row = gpu_check.run_check(_check(gpu_check, code), 30, env=None)
    assert (row["status"], row["figures"], row["result"]) == ("ok", "7 img/s", {"rate": 7})
    assert "output_tail" not in row


def test_a_failing_check_keeps_the_end_of_its_output(gpu_check):
    row = gpu_check.run_check(_check(gpu_check, "import sys; sys.exit('CUDA out of memory')"), 30, env=None)
    assert row["status"] == "failed (exit 1)" and row["figures"] == "" and row["result"] is None
    assert "CUDA out of memory" in row["output_tail"]


def test_a_hanging_check_is_killed_with_its_children(gpu_check):
    # a launcher whose child sleeps, as torchrun's worker would: the child holds the output pipes open
    code = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(60)'])"
    started = time.perf_counter()
    row = gpu_check.run_check(_check(gpu_check, code, timeout_s=2), 2, env=None)
    assert row["status"] == "timed out after 2 s" and time.perf_counter() - started < 20


def test_no_time_left_skips_a_check(gpu_check):
    row = gpu_check.run_check(_check(gpu_check, "print(1)"), 0.5, env=None)
    assert row["status"] == "skipped: no time left"


def test_main_writes_every_row_and_fails_when_a_check_fails(gpu_check, monkeypatch, tmp_path, capsys):
    checks = [_check(gpu_check, "print('{\"rate\": 3}')"), _check(gpu_check, "raise SystemExit(2)")]
    monkeypatch.setattr(gpu_check, "plan", lambda cpu: checks)
    assert gpu_check.main(["--cpu", "--out", str(tmp_path / "gpu.json")]) == 1
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["mode"] == "cpu (dry)" and [row["status"] for row in report["checks"]] == ["ok", "failed (exit 2)"]
    assert "3 img/s" in capsys.readouterr().out


@pytest.fixture(scope="module")
def hardware():
    spec = importlib.util.spec_from_file_location("hardware", REPO / "bench" / "hardware.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_rate_is_a_share_of_the_named_gpus_peak_and_of_none_on_a_cpu(hardware, monkeypatch):
    import torch

    monkeypatch.delenv(hardware.PEAK_VARIABLE, raising=False)
    assert hardware.peak_share(1.0, torch.device("cpu")) is None
    for name, peak in [("NVIDIA H200", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 80GB HBM3", 989.0), ("Tesla T4", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert hardware.peak_tflops(torch.device("cuda")) == peak
    monkeypatch.setenv(hardware.PEAK_VARIABLE, "400")
    assert hardware.peak_share(100.0, torch.device("cuda")) == 0.25


def test_a_training_step_names_its_attention_kernels_and_counts_its_backward(hardware, shared_micro):
    import copy

    import torch

    model = copy.deepcopy(shared_micro.model).train()
    tokens = shared_micro.tokenizer(["a photo of a bird"] * 2)

    def forward():
        return model.encode_text(tokens).sum()

    def step():
        forward().backward()

    assert any("scaled_dot_product" in name for name in hardware.attention_kernels(step))
    assert hardware.counted_flops(step) > 2 * hardware.counted_flops(forward) > 0
    with torch.no_grad():
        assert hardware.attention_kernels(lambda: model.eval().encode_text(tokens))  # inference takes a kernel too


def test_the_table_shows_peak_share_and_attention_kernels(gpu_check):
    extract = {"extract_images_per_s": 900, "forward_images_per_s": 1000, "forward_tflops_per_s": 35.0,
               "forward_gflops_per_image": 35.0, "forward_peak_share": 0.035, "ratio": 0.9, "images": 8,
               "image_format": "jpeg", "image_size": 224, "batch_size": 4, "workers": 2,
               "attention_kernels": ["aten::_native_multi_head_attention"]}
    text = gpu_check._extract_figures(extract)
    assert "4% of the dense bf16 peak" in text and text.endswith("attention: _native_multi_head_attention")
    assert "peak" not in gpu_check._extract_figures({**extract, "forward_peak_share": None})


@pytest.mark.parametrize("decode", ["torchcodec", "torchvision"])
def test_batched_decoding_on_a_device_keeps_the_model_inputs_within_two_levels(decode):
    """bench/decode_jpeg.py's two paths: the model's resize, crop and normalisation applied alike, so what moving
    decoding off PIL changes is rounding, which the benchmark reports."""
    spec = importlib.util.spec_from_file_location("decode_jpeg", REPO / "bench" / "decode_jpeg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    from gcctl.clip.factory import build_clip
    from gcctl.clip.preprocess import eval_transform_stages

    bundle = build_clip("gcctl-micro", "none")
    encoded = module.jpegs(6, 48)
    reference = module.cpu_inputs(encoded, eval_transform_stages(bundle.preprocess))
    moved = module.device_inputs(encoded, bundle.model, torch.device("cpu"), decode)
    assert reference.shape == moved.shape == (6, 3, 32, 32)
    std = torch.tensor(bundle.model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    assert ((moved - reference).abs() * std * 255).max() <= 2
    found = module.measured(decode, encoded, reference, bundle.model, torch.device("cpu"), repeats=1)
    assert found["images_per_s"] > 0 and found["max_level_difference"] <= 2


def test_the_decode_row_names_each_library_and_one_that_is_missing(gpu_check):
    result = {"device": "cuda", "images": 8, "source_size": [32, 42], "output_size": [32, 32], "cpu_images_per_s": 100,
              "decoders": {"torchcodec": {"images_per_s": 900, "max_level_difference": 1.1, "mean_level_difference": 0.3},
                           "torchvision": {"unavailable": "--decode torchvision needs the torchvision package"}}}
    text = gpu_check._decode_figures(result)
    assert text.startswith("torchcodec: 900 img/s decoded and resized on cuda, pixels up to 1.1 levels")
    assert "; torchvision: --decode torchvision needs the torchvision package vs 100 img/s with PIL" in text
