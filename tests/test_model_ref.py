"""Model references: a feature store's model is rebuilt wherever the store and its weights move, verified by sha256."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import MICRO

from gcctl.clip.factory import build_clip
from gcctl.clip.reference import ModelRef
from gcctl.datasets import load_dataset
from gcctl.files import sha256_file
from gcctl.store import FeatureStore, extract

CHECKPOINT = "pipeline/models/micro.pt"
STORE = "pipeline/features/waterbirds.h5"


@pytest.fixture(scope="module")
def project(tiny_waterbirds, tmp_path_factory):
    """A project as a pipeline leaves it: a micro checkpoint (a bare state_dict) and a store extracted with it
    from the project's root."""
    root = tmp_path_factory.mktemp("project")
    (root / CHECKPOINT).parent.mkdir(parents=True)
    torch.save(build_clip(MICRO, "none").model.state_dict(), root / CHECKPOINT)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        extract(load_dataset("waterbirds", tiny_waterbirds), build_clip(MICRO, CHECKPOINT), STORE, batch_size=64)
    return root


def _train(run_cli, features, *extra):
    return run_cli("train", "--features", str(features), "--method", "coop", "--epochs", "1", "--out", "run", "--json", *extra)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


def test_a_store_records_its_weights_relative_to_its_folder(project):
    with FeatureStore(project / STORE) as store:
        reference = store.model_ref()
    assert (reference.kind, reference.source) == ("file", "../models/micro.pt")
    assert reference.sha256 == sha256_file(project / CHECKPOINT)
    assert ModelRef.from_dict(reference.to_dict()) == reference


def test_a_copied_pipeline_folder_trains_from_another_directory(project, tmp_path, monkeypatch, run_cli):
    copy = tmp_path / "copy" / "pipeline"
    shutil.copytree(project / "pipeline", copy)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, stderr = _train(run_cli, copy / "features" / "waterbirds.h5")
    assert code == 0, stderr
    recorded = json.loads(Path("run/config.json").read_text())["model_ref"]
    assert (Path("run") / recorded["source"]).resolve() == (copy / "models" / "micro.pt").resolve()


def test_a_store_without_its_weights_needs_and_takes_pretrained(project, tmp_path, monkeypatch, run_cli):
    lonely = tmp_path / "lonely.h5"
    shutil.copy(project / STORE, lonely)
    monkeypatch.chdir(tmp_path)
    code, _, stderr = _train(run_cli, lonely)
    assert code == 1 and "pass --pretrained" in _one_error_line(stderr)
    assert not Path("run").exists()
    code, _, stderr = _train(run_cli, lonely, "--pretrained", str(project / CHECKPOINT))
    assert code == 0, stderr
    code, _, stderr = run_cli("pseudo-label", "--features", str(lonely), "--strategy", "zeroshot-attr",
                              "--pretrained", str(project / CHECKPOINT), "--out", "groups.parquet", "--json")
    assert code == 0, stderr


def test_other_weights_are_refused_naming_both_hashes(project, tmp_path, monkeypatch, run_cli):
    torch.save(build_clip(MICRO, "none", seed=1).model.state_dict(), tmp_path / "other.pt")
    monkeypatch.chdir(tmp_path)
    code, _, stderr = _train(run_cli, project / STORE, "--pretrained", str(tmp_path / "other.pt"))
    line = _one_error_line(stderr)
    assert code == 1 and "--pretrained" in line
    assert sha256_file(tmp_path / "other.pt")[:16] in line and sha256_file(project / CHECKPOINT)[:16] in line
    assert not Path("run").exists() and not Path("run.partial").exists()


def test_pretrained_is_refused_where_no_model_is_built(project, tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli("train", "--features", str(project / STORE), "--method", "linear", "--out", "run",
                              "--pretrained", str(project / CHECKPOINT))
    assert code == 1 and "--pretrained" in _one_error_line(stderr)
    code, _, stderr = run_cli("pseudo-label", "--features", str(project / STORE), "--strategy", "kmeans",
                              "--pretrained", str(project / CHECKPOINT), "--out", "groups.parquet")
    assert code == 1 and "--pretrained" in _one_error_line(stderr)


def test_weights_outside_the_project_are_recorded_absolute(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    reference = ModelRef(MICRO, "file", str(tmp_path / "shared" / "model.pt"), "abc")
    assert reference.recorded_for("pipeline/features").source == str(tmp_path / "shared" / "model.pt")
    inside = ModelRef(MICRO, "file", "pipeline/models/model.pt", "abc").recorded_for("pipeline/features")
    assert inside.source == "../models/model.pt" and inside.anchor == tmp_path / "project" / "pipeline" / "features"
