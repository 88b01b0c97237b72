"""bench/pipeline_time.py's readers on canned text: DVC's output into stage spans, `-X importtime` lines into
seconds, and the overhead sums; the benchmark itself runs the pipeline and is not run here."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "pipeline_time.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("pipeline_time", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


DVC_OUTPUT = [
    (0.0, "Verifying data sources in stage: 'dvc.yaml'"),
    (2.5, "Running stage 'synth':"),
    (2.5, "> gcctl --quiet data synth --out pipeline/data"),
    (6.0, "Updating lock file 'dvc.lock'"),
    (7.0, ""),
    (7.0, "\x1b[1mRunning stage 'train@waterbirds-zeroshot':\x1b[0m"),
    (7.1, "> gcctl --quiet --config params.yaml:train.runs.zeroshot train"),
    (9.0, "Stage 'data@waterbirds' didn't change, skipping"),
    (9.5, "Running stage 'train@waterbirds-groupcoop':"),
    (12.0, "Use `dvc push` to send your updates to remote storage."),
]

IMPORT_TIMES = """import time: self [us] | cumulative | imported package
import time:       244 |        244 |   _io
import time:      1500 |       1744 | torch
a warning on stderr
import time:   2000000 |    2000000 |     open_clip
"""


def test_each_stage_lasts_until_the_next_or_the_end(bench):
    dvc_start, spans = bench.stage_spans(DVC_OUTPUT, end=13.0)
    assert dvc_start == 2.5
    assert [(span.name, span.start, span.end) for span in spans] == [
        ("synth", 2.5, 7.0), ("train@waterbirds-zeroshot", 7.0, 9.5), ("train@waterbirds-groupcoop", 9.5, 13.0)]


def test_no_stage_run_is_all_dvc(bench):
    assert bench.stage_spans([(0.0, "Stage 'synth' didn't change, skipping")], end=3.0) == (3.0, [])


def test_import_time_sums_the_self_column_of_bytes_or_text(bench):
    assert bench.import_self_us(IMPORT_TIMES.splitlines()) == 244 + 1500 + 2000000
    assert bench.import_self_us(IMPORT_TIMES.encode().splitlines(keepends=True)) == 244 + 1500 + 2000000


BARE = {"startup_s": 0.05, "import_s": 0.01, "warm_start_s": 4.0}
CALLS = {"synth": [{"wall_s": 3.0, "import_s": 1.01}],
         "train@waterbirds-zeroshot": [{"wall_s": 2.0, "import_s": 0.51}],
         "train@waterbirds-groupcoop": [{"wall_s": 3.0, "import_s": 2.01}]}


def test_overhead_is_dvc_plus_imports_beyond_start_up_plus_start_up(bench):
    command = bench.command_figures("main command", ["report"], 13.0, DVC_OUTPUT, CALLS, BARE)
    synth = command["stages"][0]
    assert (synth["wall_s"], synth["dvc_s"], synth["import_s"], synth["startup_s"]) == (4.5, 1.5, 1.0, 0.05)
    assert synth["overhead_s"] == pytest.approx(2.55) and synth["compute_s"] == pytest.approx(1.95)
    # DVC's start-up (2.5 s) + the warm server's imports (4 s, once) + per stage: (4.5 - 3) + 1 + .05,
    # (2.5 - 2) + .5 + .05, (3.5 - 3) + 2 + .05
    assert command["overhead_s"] == pytest.approx(2.5 + 4.0 + 2.55 + 1.05 + 2.55)
    assert command["overhead_share"] == pytest.approx(command["overhead_s"] / 13.0, abs=1e-4)
    assert command["unmeasured"] == [] and command["unmatched_calls"] == []
    train = bench.groups(command["stages"])["train"]
    assert (train["count"], train["longest"]["stage"]) == (2, "train@waterbirds-groupcoop")


def test_a_stage_without_a_gcctl_call_is_flagged(bench):
    command = bench.command_figures("rest", [], 13.0, DVC_OUTPUT, {"elsewhere": [{"wall_s": 1.0, "import_s": 0.0}]},
                                    BARE)
    assert len(command["unmeasured"]) == 3 and command["unmatched_calls"] == ["elsewhere"]
    assert command["overhead_s"] == 6.5  # DVC's start-up and the server's: unmeasured stages count as compute


def test_the_shim_is_valid_python(bench, tmp_path):
    shim = bench.write_shim(tmp_path) / "gcctl"
    compile(shim.read_text(), str(shim), "exec")
    assert shim.stat().st_mode & 0o111


def test_the_docs_table_is_printed_from_saved_figures(bench, tmp_path, capsys):
    command = bench.command_figures("main command", ["report"], 13.0, DVC_OUTPUT, CALLS, BARE)
    saved = tmp_path / "figures.json"
    saved.write_text(json.dumps({"commands": [command]}))
    assert bench.main(["--markdown-from", str(saved)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "main command (`dvc repro report`, 13 s):"
    # synth: 4.5 s, 2.55 outside compute; the two train stages: 2.5 + 3.5 s, 1.05 + 2.55 outside
    assert "| `synth` | 1 | 4 | 3 |  |" in lines
    assert "| `train@…` | 2 | 6 | 4 | 3.5 (`train@waterbirds-groupcoop`) |" in lines
