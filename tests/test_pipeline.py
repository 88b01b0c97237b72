"""The DVC chain: a real `dvc repro` of dvc.yaml on a tiny parameter set, and the presets' shape."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gcctl.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = {
    "synth": {"seed": 0, "corpus_size": 256, "image_size": 32, "scale": 0.02, "minority_fraction": 0.05},
    "pretrain": {"runs": {"micro": {"model": "gcctl-micro", "epochs": 1, "batch-size": 64, "lr": 0.002, "seed": 0}}},
    "fetch": {"runs": {}},
    "extract": {
        "model": "gcctl-micro",
        "pretrained": "pipeline/models/micro/model.pt",
        "batch_size": 64,
        "dtype": "float16",
        "datasets": {
            "waterbirds": {"dataset": "waterbirds", "root": "pipeline/data/waterbirds"},
            "multiceleba": {"dataset": "celeba", "root": "pipeline/data/multiceleba", "target": "High_Cheekbones", "bias": ["Young", "Male"]},
        },
    },
    "pseudo_label": {"strategy": "val-probe", "seed": 0},
    "train": {
        "seeds": "0",
        "datasets": ["waterbirds"],
        "runs": [
            {"name": "zeroshot", "args": {"method": "zeroshot"}},
            {"name": "groupcoop", "args": {"method": "groupcoop", "epochs": 2}},
        ],
        "pseudo": {"method": "groupcoop", "epochs": 2},
    },
    "finetune": {
        "on": "waterbirds",
        "data": {"dataset": "waterbirds", "root": "pipeline/data/waterbirds"},
        "seeds": [0],
        "runs": [
            {"name": "ft", "args": {"method": "ft", "epochs": 1, "batch-size": 32, "lr": 0.001}},
            {"name": "starft", "args": {"method": "starft", "epochs": 1, "batch-size": 32, "lr": 0.001, "pool": "synthetic"}},
        ],
        "wise_alpha": 0.5,
        "evaluate": ["ft", "wise-starft"],
    },
    "evaluate": {"split": "test", "runs": ["zeroshot", "groupcoop", "groupcoop-pseudo"]},
}


def _run(*args, cwd):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("gcctl") is None, reason="needs the installed CLIs")
def test_dvc_repro_builds_the_chain_on_tiny_params(tmp_path):
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    _run("git", "init", "-q", cwd=tmp_path)
    _run("dvc", "init", "-q", cwd=tmp_path)
    shutil.copy(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")

    _run("dvc", "repro", cwd=tmp_path)

    with FeatureStore(tmp_path / "pipeline/features/multiceleba.h5") as store:
        assert len(store.group_names) == 8
        assert store.model_ref().architecture == "gcctl-micro"
    with FeatureStore(tmp_path / "pipeline/features/waterbirds.h5") as store:
        assert store.model_ref().sha256 != "none" and store.model_ref().locate().is_file()
    metrics = json.loads(_run("dvc", "metrics", "show", "--json", cwd=tmp_path))
    shown = json.dumps(metrics)
    for run in ("zeroshot", "groupcoop", "groupcoop-pseudo", "ft", "wise-starft"):
        assert f"pipeline/metrics/waterbirds/{run}.json" in shown
    assert "wise-starft" in (tmp_path / "pipeline/report/waterbirds/results.md").read_text()
    assert (tmp_path / "pipeline/runs/waterbirds/starft/seed-0/state.pt").is_file()  # kept for resuming
    assert (tmp_path / "pipeline/groups/multiceleba.parquet").is_file()
    assert "Data and pipelines are up to date" in _run("dvc", "status", cwd=tmp_path)


@pytest.mark.parametrize("preset", sorted((REPO / "pipeline/presets").glob("*.yaml")), ids=lambda path: path.stem)
def test_presets_define_every_section_the_pipeline_reads(preset):
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    params = yaml.safe_load(preset.read_text())
    assert set(params) == set(default)
    for section in default:
        assert set(params[section]) == set(default[section]), section
    for name, run in params["fetch"]["runs"].items():
        assert params["extract"]["pretrained"] == f"pipeline/models/{name}/model.pt"
    assert set(params["train"]["datasets"]) <= set(params["extract"]["datasets"])
