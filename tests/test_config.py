"""`gcctl --config FILE:KEY`: a named run's options from params.yaml, checked against the command."""

import json

import pytest
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
                                           "source-small", "source-texture", "source-v2", "waterbirds"]

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


def _edited_default(tmp_path, edit):
    from pathlib import Path

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


@pytest.mark.parametrize("edit, fragment", [
    (lambda p: p["train"]["runs"]["adapter"].update(epochs="abc"),
     "train.runs.adapter: Invalid value for '--epochs'"),
    (lambda p: p["train"]["runs"]["adapter"].update(epochs=-1), "train.runs.adapter: --epochs must be positive, got -1"),
    (lambda p: p["train"]["runs"]["coop"].update(calibrate=True), "train.runs.coop: --calibrate does not apply to method 'coop'"),
    (lambda p: p["train"]["fits"]["zeroshot"].pop("method"), "train.fits.zeroshot: names no method"),
    (lambda p: p["train"]["runs"]["linear"].update(seeds="0,,1"), "--seeds '0,,1' is not a comma-separated list"),
    (lambda p: p["train"]["runs"]["linear"].update(max_memory="1e400"), "--max-memory '1e400' is larger than any memory"),
    (lambda p: p["finetune"]["runs"]["ft"].update(loss="mse"), "finetune.runs.ft: --loss 'mse' is unknown"),
    (lambda p: p["finetune"]["runs"]["ft"].update(epochs=0), "finetune.runs.ft: --epochs must be ≥ 1"),
    (lambda p: p["pretrain"]["runs"]["tiny"].update(lr="fast"), "pretrain.runs.tiny: Invalid value for '--lr'"),
    (lambda p: p["train"]["pseudo_runs"].update(groupcoop={"method": "groupcoop"}),
     "train.runs.groupcoop and train.pseudo_runs.groupcoop both write pipeline/metrics/DATASET/groupcoop.json"),
    (lambda p: p["train"]["fits"].update(linear={"method": "zeroshot"}),
     "train.runs.linear and train.fits.linear both write pipeline/metrics/DATASET/linear.json"),
    (lambda p: p["train"]["fits"].update(dfr2={"method": "dfr"}), "train.fits.dfr2: dfr trains; move it to train.runs"),
    (lambda p: p["finetune"]["runs"].update({"ft-wise": {"method": "ft"}}),
     "finetune.runs.ft-wise and finetune.runs.ft (as ft-wise) both write pipeline/finetuned/DATASET/ft-wise"),
    (lambda p: p["finetune"]["runs"].update(zeroshot={"method": "ft"}),
     "dvc.yaml's transfer_zeroshot and finetune.runs.zeroshot both write pipeline/transfer/zeroshot"),
    (lambda p: p["fetch"]["runs"].update(tiny={"model": "ViT-B-32"}), "pretrain.runs.tiny and fetch.runs.tiny both write"),
    (lambda p: p["train"]["datasets"].append("waterbirds"), "train.datasets lists waterbirds twice"),
    (lambda p: p["finetune"]["seeds"].append(0), "finetune.seeds lists 0 twice"),
    (lambda p: p["budget"].update(datasets="waterbirds"), "budget.datasets is not a list of dataset names"),
    (lambda p: p["budget"].update(datasets=["nowhere"]), "budget.datasets names dataset 'nowhere'"),
    (lambda p: p["budget"]["fraction"].append(0.01), "budget.fraction lists 0.01 twice"),
    (lambda p: p["label_free"]["runs"].update(groupcoop={"method": "groupcoop"}),
     "both write pipeline/metrics/DATASET/groupcoop.json"),
    (lambda p: p["discover"].update(run="nope"), "discover.run 'nope' is not a run of train.runs or train.fits"),
], ids=["type", "bound", "foreign-setting", "no-method", "seeds", "max-memory", "choice", "finetune-check", "pretrain-type",
        "runs-and-pseudo-runs", "runs-and-fits", "trained-fit", "wise-name", "transfer-zeroshot", "pretrain-and-fetch", "dataset-twice", "seed-twice",
        "budget-datasets-string", "budget-dataset-undeclared", "budget-fraction-twice", "label-free-name", "discover-run"])
def test_params_check_refuses_what_the_command_or_dvc_would(tmp_path, run_cli, edit, fragment):
    code, out, err = run_cli("params", "check", str(_edited_default(tmp_path, edit)))
    assert code == 1 and out == "" and err.count("\n") == 1 and fragment in err, err


def test_yaml_refuses_a_repeated_key_but_lets_a_merge_be_overridden(tmp_path):
    from gcctl.cli.config import read_mapping, unique_key_loader
    from gcctl.errors import GcctlError

    merged = yaml.load("base: &b {lr: 1, epochs: 2}\nrun:\n  <<: *b\n  lr: 3\n", Loader=unique_key_loader())
    assert merged["run"] == {"lr": 3, "epochs": 2}
    with pytest.raises(yaml.YAMLError, match="the key 'lr' appears twice in one mapping, line 3"):
        yaml.load("run:\n  lr: 1\n  lr: 3\n", Loader=unique_key_loader())
    (tmp_path / "p.yaml").write_text("train:\n  runs:\n    zs:\n      method: zeroshot\n    zs:\n      method: linear\n")
    with pytest.raises(GcctlError, match="p.yaml is not valid YAML \\(the key 'zs' appears twice"):
        read_mapping(f"{tmp_path / 'p.yaml'}:train.runs.zs")
