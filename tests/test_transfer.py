"""The zero-shot transfer suite (`gcctl transfer`): per-target metrics, the suite summary, reuse, bad input."""

from __future__ import annotations

import json

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
