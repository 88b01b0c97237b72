"""Training curves as DVCLive logs: what they write, what they leave alone."""

import logging
import subprocess

from gcctl.curves import CurveLog, read_curve, write_curve


def test_curve_log_appends_steps_and_reads_back_by_step(tmp_path):
    log = CurveLog(tmp_path / "live")
    log.log_records([{"epoch": 0, "val": 0.5}], step_key="epoch")  # e.g. a zero-shot start: no loss yet
    log.log_records([{"epoch": 1, "loss": 2.0, "val": 0.6, "note": "text is skipped", "val_groups": {}}], step_key="epoch")
    assert read_curve(tmp_path / "live") == [{"step": 0, "val": 0.5}, {"step": 1, "loss": 2.0, "val": 0.6}]
    write_curve(tmp_path / "live", [{"epoch": 5, "loss": 1.0}], step_key="epoch")  # a new log replaces the old
    assert read_curve(tmp_path / "live") == [{"step": 5, "loss": 1.0}]
    assert read_curve(tmp_path / "missing") == []


def test_logging_inside_a_git_repository_changes_nothing_and_stays_quiet(tmp_path, monkeypatch, capfd, caplog):
    # Curves are plain files: nothing is initialised in the enclosing repository (dvclive's Live() ran `dvc init`).
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        write_curve(tmp_path / "run" / "dvclive", [{"step": 1, "loss": 1.0}], step_key="step")
    assert read_curve(tmp_path / "run" / "dvclive") == [{"step": 1, "loss": 1.0}]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".git", "run"]
    assert not [record for record in caplog.records if record.name.startswith("dvc")]
    assert capfd.readouterr().err == ""
