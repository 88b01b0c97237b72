"""The zero-shot transfer suite (`gcctl transfer`): per-target metrics, the suite summary, reuse, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import MICRO

from gcctl.clip import build_clip, save_checkpoint
from gcctl.datasets import DatasetTable, load_dataset
from gcctl.evaluation import transfer as transfer_module
from gcctl.evaluation.checkpoints import evaluate_checkpoints


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 'fine-tuning run' of two seeds: micro CLIPs with random weights in seed-N folders."""
    run = tmp_path_factory.mktemp("finetuned") / "starft"
    for seed in (0, 1):
        bundle = build_clip(MICRO, "none")
        for parameter in bundle.model.parameters():  # make the two seeds differ
            parameter.data.add_(0.01 * seed)
        save_checkpoint(bundle, run / f"seed-{seed}" / "model.pt")
    return run


@pytest.fixture(scope="module")
def tables(tmp_path_factory, tiny_waterbirds):
    """The same tiny benchmark as three tables, standing for a source, a domain shift and a group shift."""
    folder = tmp_path_factory.mktemp("tables")
    table = load_dataset("waterbirds", tiny_waterbirds)
    paths = {name: folder / f"{name}.parquet" for name in ("source", "sketch", "birds")}
    for path in paths.values():
        table.save(path)
    return paths


def suite_args(run_dir, tables, out):
    return ["transfer", "--checkpoint", str(run_dir), "--target", f"source={tables['source']}",
            "--target", f"domain={tables['sketch']}", "--target", f"group={tables['birds']}", "--out", str(out)]


def test_the_suite_scores_every_target_and_summarises_by_role(run_cli, run_dir, tables, tmp_path):
    code, out, err = run_cli(*suite_args(run_dir, tables, tmp_path / "suite"), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary == json.loads((tmp_path / "suite" / "summary.json").read_text())
    assert list(summary["seeds"]) == ["0", "1"]
    # Each target's metrics are what `gcctl evaluate --checkpoint` gives on that table.
    alone = evaluate_checkpoints([run_dir], DatasetTable.load(tables["birds"]), "test", device="cpu")
    birds = json.loads((tmp_path / "suite" / "birds.json").read_text())
    assert birds["acc_wg"] == alone["acc_wg"] and birds["acc_avg"] == alone["acc_avg"]
    assert (tmp_path / "suite" / "birds.predictions.parquet").is_file()
    for seed in ("0", "1"):
        row = summary["seeds"][seed]
        assert row["source_acc"] == row["source/acc_avg"]
        assert row["domain_shift_acc"] == row["sketch/acc_avg"]
        assert row["group_shift_acc_wg"] == row["birds/acc_wg"] == alone["seeds"][seed]["acc_wg"]
    assert summary["mean"]["group_shift_acc_wg"]["mean"] == pytest.approx(alone["acc_wg"]["mean"])


def test_each_target_is_scored_with_its_own_templates(run_cli, run_dir, tables, tmp_path):
    picture = "This is a picture of a {}."
    code, _, err = run_cli(*suite_args(run_dir, tables, tmp_path / "suite"), "--template", "a sketch of a {}.",
                           "--target-template", f"birds={picture}", "--target-template", "source=openai-imagenet")
    assert code == 0, err
    recorded = {name: json.loads((tmp_path / "suite" / f"{name}.json").read_text())["provenance"]["templates"]
                for name in ("source", "sketch", "birds")}
    assert recorded["birds"] == [picture] and recorded["sketch"] == ["a sketch of a {}."]
    assert len(recorded["source"]) == 80 and recorded["source"][0] == "a bad photo of a {}."
    alone = evaluate_checkpoints([run_dir], DatasetTable.load(tables["birds"]), "test", device="cpu", caption=picture)
    assert json.loads((tmp_path / "suite" / "birds.json").read_text())["acc_wg"] == alone["acc_wg"]


@pytest.mark.parametrize("spec, message", [
    ("birds", "is not TARGET=TEMPLATE"),
    ("herons=a photo of a {}.", "no target 'herons' in the suite (its targets: source, sketch, birds)"),
    ("birds=a photo of a bird.", "for target birds (or a named set: openai-imagenet) has no {}"),
])
def test_a_bad_target_template_is_one_line_and_writes_nothing(run_cli, run_dir, tables, tmp_path, spec, message):
    code, _, err = run_cli(*suite_args(run_dir, tables, tmp_path / "suite"), "--target-template", spec)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "suite").exists()


def test_finished_targets_are_reused_and_only_new_ones_scored(run_cli, run_dir, tables, tmp_path, monkeypatch):
    out = tmp_path / "suite"
    args = suite_args(run_dir, tables, out)
    assert run_cli(*args[:-4], "--out", str(out))[0] == 0  # source and domain only
    first = (out / "source.json").read_text()
    scored = []
    original = transfer_module.zeroshot_scores
    monkeypatch.setattr(transfer_module, "zeroshot_scores",
                        lambda bundle, table, *a, **k: scored.append(table.fingerprint()) or original(bundle, table, *a, **k))
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert len(scored) == 2  # birds, once per seed; source and sketch were read back
    assert (out / "source.json").read_text() == first


def test_checkpoints_of_two_architectures_are_refused_before_any_output(run_cli, run_dir, tables, tmp_path):
    mixed = tmp_path / "mixed"
    save_checkpoint(build_clip(MICRO, "none"), mixed / "seed-0" / "model.pt")
    save_checkpoint(build_clip("gcctl-tiny", "none"), mixed / "seed-1" / "model.pt")
    code, _, err = run_cli(*suite_args(mixed, tables, tmp_path / "suite"))
    assert code == 1 and "different architectures" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "suite").exists()


@pytest.mark.parametrize("spec, message", [
    ("source", "is not ROLE=TABLE"),
    ("target=x.parquet", "role 'target' is not one of"),
    ("group={missing}", "does not exist; write it first"),
])
def test_a_bad_target_is_one_line(run_cli, run_dir, tmp_path, spec, message):
    spec = spec.format(missing=tmp_path / "nowhere.parquet")
    code, _, err = run_cli("transfer", "--checkpoint", str(run_dir), "--target", spec, "--out", str(tmp_path / "suite"))
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_report_compares_suites_and_writes_their_readme_table(run_cli, run_dir, tables, tmp_path):
    for name in ("ft", "starft"):
        assert run_cli(*suite_args(run_dir, tables, tmp_path / name))[0] == 0
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:transfer:start -->\n<!-- results:transfer:end -->\n")
    summaries = [str(tmp_path / name / "summary.json") for name in ("ft", "starft")]
    code, out, err = run_cli("report", *summaries, "--out", str(tmp_path / "transfer"), "--readme", str(readme))
    assert code == 0, err
    table = (tmp_path / "transfer" / "results.md").read_text()
    assert (tmp_path / "transfer" / "suites.png").is_file()
    header = table.splitlines()[2]
    assert header.startswith("| run | seeds | source | domain shifts | group shifts worst-group | group shifts avg |")
    summary = json.loads((tmp_path / "starft" / "summary.json").read_text())
    wg = summary["mean"]["group_shift_acc_wg"]
    assert "| starft | 0,1 | " in table and f"{100 * wg['mean']:.1f} ± {100 * wg['std']:.1f}" in table
    assert table in readme.read_text()


def count_scoring(monkeypatch, fail_at: int | None = None, error: BaseException | None = None) -> list:
    """Count the (checkpoint, target) scorings of the suite; the call number `fail_at` (from 1) raises `error`."""
    calls = []
    original = transfer_module.zeroshot_scores

    def scoring(bundle, table, *args, **kwargs):
        calls.append(table.root)
        if fail_at is not None and len(calls) == fail_at:
            raise error
        return original(bundle, table, *args, **kwargs)

    monkeypatch.setattr(transfer_module, "zeroshot_scores", scoring)
    return calls


def file_state(*paths) -> list:
    return [(path.read_bytes(), path.stat().st_mtime_ns) for path in paths]


def test_a_bad_image_in_a_later_target_keeps_the_finished_ones_for_the_rerun(run_cli, run_dir, tables, tiny_waterbirds,
                                                                             tmp_path, monkeypatch):
    root = Path(shutil.copytree(tiny_waterbirds, tmp_path / "copy"))
    table = load_dataset("waterbirds", root)
    broken = root / table.frame.loc[table.frame["split"] == "test", "path"].iloc[3]
    original = broken.read_bytes()
    broken.write_bytes(b"not a png")
    bad = tmp_path / "tables@v2" / "sketch.parquet"  # an @ in the path is the path's, not a split
    table.save(bad)
    out = tmp_path / "suite"
    args = ["transfer", "--checkpoint", str(run_dir), "--target", f"source={tables['source']}", "--target", f"domain={bad}",
            "--out", str(out)]
    code, _, err = run_cli(*args)
    assert code == 1 and f"cannot read image {broken}" in err and len(err.strip().splitlines()) == 1
    # The source target was published when its seeds were done; the failed one and the summary were not.
    assert sorted(path.name for path in out.iterdir()) == ["source.json", "source.predictions.parquet"]
    finished = file_state(out / "source.json", out / "source.predictions.parquet")
    broken.write_bytes(original)
    calls = count_scoring(monkeypatch)
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert calls == [root, root]  # sketch, once per seed; source was read back
    assert file_state(out / "source.json", out / "source.predictions.parquet") == finished
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["targets"]) == ["source", "sketch"] and summary["targets"]["sketch"]["split"] == "test"


def test_ctrl_c_during_a_later_target_keeps_the_finished_ones_for_the_rerun(run_cli, run_dir, tables, tmp_path, monkeypatch):
    out = tmp_path / "suite"
    args = suite_args(run_dir, tables, out)
    count_scoring(monkeypatch, fail_at=3, error=KeyboardInterrupt())  # the first seed of the second target
    code, _, err = run_cli(*args)
    assert (code, err) == (130, "interrupted\n")
    assert sorted(path.name for path in out.iterdir()) == ["source.json", "source.predictions.parquet"]
    finished = file_state(out / "source.json")
    calls = count_scoring(monkeypatch)
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert len(calls) == 4  # sketch and birds, once per seed
    assert file_state(out / "source.json") == finished
    # Nothing left to do: every target and the summary stay as they are, byte for byte and untouched.
    everything = sorted(out.iterdir())
    before = file_state(*everything)
    calls.clear()
    assert run_cli(*args)[0] == 0 and calls == []
    assert sorted(out.iterdir()) == everything and file_state(*everything) == before


def change_weights(run) -> None:
    """Other weights for the run's seed 1 (retrained, say)."""
    bundle = build_clip(MICRO, "none")
    for parameter in bundle.model.parameters():
        parameter.data.add_(0.02)
    save_checkpoint(bundle, run / "seed-1" / "model.pt")


def repaint_a_test_image(table_path, tmp_path) -> Path:
    """A copy of the table's dataset with one test image's pixels changed and every name kept (re-rendered, say)."""
    from PIL import Image


    table = DatasetTable.load(table_path)
    root = Path(shutil.copytree(table.root, tmp_path / "repainted"))
    image = root / table.frame.loc[table.frame["split"] == "test", "path"].iloc[0]
    pixels = np.asarray(Image.open(image)).copy()
    Image.fromarray(255 - pixels).save(image)
    table.root = root
    (tmp_path / "tables").mkdir()
    table.save(tmp_path / "tables" / "source.parquet")  # the target keeps its name: its file's stem
    return tmp_path / "tables" / "source.parquet"


@pytest.mark.parametrize("change", ["template", "name", "weights", "split", "images", "overwrite"])
def test_a_target_is_scored_again_when_an_input_changed(run_cli, run_dir, tables, tmp_path, monkeypatch, change):
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    out = tmp_path / "suite"
    args = ["transfer", "--checkpoint", str(run), "--target", f"source={tables['source']}", "--out", str(out)]
    assert run_cli(*args)[0] == 0
    first = json.loads((out / "source.json").read_text())
    first_bytes = (out / "source.json").read_bytes()
    if change == "weights":
        change_weights(run)
    extra = {"template": ["--template", "a drawing of a {}."], "name": ["--name", "other"], "split": [], "weights": [],
             "images": [], "overwrite": ["--overwrite"]}[change]
    if change == "split":
        args[4] += "@val"
    if change == "images":
        args[4] = f"source={repaint_a_test_image(tables['source'], tmp_path)}"
    calls = count_scoring(monkeypatch)
    code, _, err = run_cli(*args, *extra)
    assert code == 0, err
    assert len(calls) == 2  # both seeds again
    identity, before = json.loads((out / "source.json").read_text())["provenance"]["suite_identity"], first["provenance"]["suite_identity"]
    if change == "overwrite":
        assert (out / "source.json").read_bytes() == first_bytes  # scored again, to the same bytes
        return
    keys = {"template": {"templates"}, "name": {"run"}, "weights": {"checkpoints"}, "split": {"split", "images_sha256"},
            "images": {"images_sha256"}}[change]
    assert all(identity[key] != before[key] for key in keys)
    assert {k: v for k, v in identity.items() if k not in keys} == {k: v for k, v in before.items() if k not in keys}


def test_targets_dropped_from_the_suite_go_and_other_files_stay(run_cli, run_dir, tables, tmp_path):
    out = tmp_path / "suite"
    assert run_cli(*suite_args(run_dir, tables, out)[:-4], "--out", str(out))[0] == 0  # source and sketch
    (out / "notes.txt").write_text("mine\n")
    assert run_cli("transfer", "--checkpoint", str(run_dir), "--target", f"source={tables['source']}", "--out", str(out))[0] == 0
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt", "source.json", "source.predictions.parquet",
                                                           "summary.json"]
    assert list(json.loads((out / "summary.json").read_text())["targets"]) == ["source"]


def test_a_target_split_comes_after_the_last_at_only_when_it_names_a_split(tmp_path):
    from gcctl.errors import GcctlError

    table = tmp_path / "v@2" / "t.parquet"
    table.parent.mkdir()
    table.write_bytes(b"")
    assert transfer_module.parse_target(f"group={table}") == ("group", table, "test")
    assert transfer_module.parse_target(f"group={table}@val") == ("group", table, "val")
    assert transfer_module.parse_target(f"group={tmp_path}/x@train") == ("group", tmp_path / "x", "train")
    with pytest.raises(GcctlError, match="'tset' is not a split; give one of train, val, test"):
        transfer_module.parse_target(f"group={table}@tset")


def test_an_out_another_transfer_is_writing_is_refused_at_once(run_cli, run_dir, tables, tmp_path, monkeypatch):
    from gcctl.files import output_lock

    out = tmp_path / "suite"
    calls = count_scoring(monkeypatch)
    with output_lock(out):
        code, _, err = run_cli(*suite_args(run_dir, tables, out))
    assert code == 1 and "is being written by another gcctl process" in err and len(err.strip().splitlines()) == 1
    assert calls == [] and not out.exists()
