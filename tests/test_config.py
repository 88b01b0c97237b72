"""`gcctl --config FILE:KEY`: a named run's options from params.yaml, checked against the command."""

import json

import yaml


def _params(tmp_path, runs):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"runs": runs}}))
    return path


def test_config_supplies_option_values_and_the_command_line_wins(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the defaults on one line each, however many options train has
    params = _params(tmp_path, {"zs": {"method": "zeroshot", "seeds": "0,1", "batch-size": 8}})
    code, out, _ = run_cli("--config", f"{params}:train.runs.zs", "train", "--help")
    assert code == 0
    assert "[default: zeroshot]" in out and "[default: 0,1]" in out and "[default: 8]" in out


def test_an_unknown_option_in_a_run_is_one_line_naming_it(tmp_path, run_cli):
    params = _params(tmp_path, {"bad": {"methd": "zeroshot"}})
    code, _, err = run_cli("--config", f"{params}:train.runs.bad", "train", "--features", "x.h5", "--out", "run")
    assert code == 1
    assert err.count("\n") == 1 and "'methd' is not an option of gcctl train" in err and "method" in err
    assert not (tmp_path / "run").exists()


def test_a_missing_run_names_the_runs_there(tmp_path, run_cli):
    params = _params(tmp_path, {"zs": {"method": "zeroshot"}})
    code, _, err = run_cli("--config", f"{params}:train.runs.nope", "train", "--features", "x.h5", "--out", "run")
    assert code == 1 and "has no 'train.runs.nope'" in err and "known there: zs" in err


def test_config_is_for_a_command_not_a_group(tmp_path, run_cli):
    params = _params(tmp_path, {"zs": {"method": "zeroshot"}})
    code, _, err = run_cli("--config", f"{params}:train.runs.zs", "models", "fetch", "--help")
    assert code == 1 and "not to 'models'" in err


def test_params_check_accepts_the_default_and_names_the_first_problem(tmp_path, run_cli):
    from pathlib import Path

    default = Path(__file__).resolve().parents[1] / "params.yaml"
    code, out, err = run_cli("params", "check", str(default), "--json")
    assert code == 0, err
    assert json.loads(out)["datasets"] == ["multiceleba", "scattered", "source", "source-outline", "source-palette",
                                           "source-small", "source-v2", "waterbirds"]

    params = yaml.safe_load(default.read_text())
    params["train"]["datasets"].append("birds")
    (tmp_path / "undeclared.yaml").write_text(yaml.safe_dump(params))
    code, _, err = run_cli("params", "check", str(tmp_path / "undeclared.yaml"))
    assert code == 1 and err.count("\n") == 1
    assert "train.datasets names dataset 'birds', which is not declared under datasets:" in err

    params = yaml.safe_load(default.read_text())
    params["transfer"]["target"].append("group=pipeline/tables/birds.parquet")  # a suite's table is a declared dataset's
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(params))
    code, _, err = run_cli("params", "check", str(tmp_path / "suite.yaml"))
    assert code == 1 and "transfer.target names dataset 'birds'" in err

    params = yaml.safe_load(default.read_text())
    params["datasets"]["waterbirds"]["colour"] = "red"
    (tmp_path / "option.yaml").write_text(yaml.safe_dump(params))
    code, _, err = run_cli("params", "check", str(tmp_path / "option.yaml"))
    assert code == 1 and "datasets.waterbirds: 'colour' is not an option of gcctl data table" in err
