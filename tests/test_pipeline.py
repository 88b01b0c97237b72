"""The DVC chain: a real `dvc repro` of dvc.yaml on a tiny parameter set, and the presets' shape."""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from gcctl.finetune import FinetuneConfig
from gcctl.methods import get_method
from gcctl.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]
TINY_PARAMS = {
    "synth": {"seed": 0, "corpus_size": 256, "image_size": 32, "scale": 0.02, "minority_fraction": 0.05},
    "datasets": {
        "waterbirds": {"layout": "waterbirds", "root": "pipeline/data/waterbirds"},
        "multiceleba": {"layout": "celeba", "root": "pipeline/data/multiceleba", "target": "High_Cheekbones",
                        "bias": ["Young", "Male"]},
    },
    "pretrain": {"runs": {"micro": {"model": "gcctl-micro", "epochs": 1, "batch_size": 64, "lr": 0.002, "seed": 0}}},
    "fetch": {"runs": {}},
    "extract": {"model": "gcctl-micro", "pretrained": "pipeline/models/micro/model.pt", "batch_size": 64, "dtype": "float16"},
    "pseudo_label": {"strategy": "val-probe", "seed": 0},
    "train": {
        "seeds": "0",
        "datasets": ["waterbirds"],
        "runs": {"groupcoop": {"method": "groupcoop", "epochs": 2}, "dfr": {"method": "dfr", "epochs": 2}},
        "pseudo_runs": {"groupcoop-pseudo": {"method": "groupcoop", "epochs": 2}},
        "fits": {"zeroshot": {"method": "zeroshot"}, "orthproj": {"method": "orthproj"}},
    },
    "evaluate": {"split": "test"},
    "discover": {"run": "groupcoop", "vocabulary": "synthetic"},
    "label_free": {"strategy": "erm-error", "seed": 0,
                   "runs": {"groupcoop-free": {"method": "groupcoop", "epochs": 2, "select_by": "acc_wg_pseudo"}}},
    "budget": {"datasets": ["waterbirds"], "fraction": [0.5], "val_seed": 0, "runs": {"dfr": {"method": "dfr", "epochs": 2}},
               "pseudo_runs": {"groupcoop-pseudo": {"method": "groupcoop", "epochs": 2}}},
    "sweep": {"datasets": ["waterbirds"], "k": [1], "runs": {"groupcoop": {"method": "groupcoop", "epochs": 2}}},
    "finetune": {
        "dataset": "waterbirds",
        "seeds": [0],
        "runs": {
            "ft": {"method": "ft", "epochs": 1, "batch_size": 32, "lr": 0.001},
            "starft": {"method": "starft", "epochs": 1, "batch_size": 32, "lr": 0.001, "pool": "synthetic"},
        },
        "wise_alpha": 0.5,
    },
    "transfer": {"target": ["source=pipeline/tables/waterbirds.parquet", "group=pipeline/tables/multiceleba.parquet"]},
}


def _run(*args, cwd):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _project_copy(tmp_path: Path) -> Path:
    """The pipeline's files and the gcctl code its stages depend on, in a fresh git + DVC repository."""
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, tmp_path / name)
    for folder in ("gcctl", "conf"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    _run("git", "init", "-q", cwd=tmp_path)
    _run("dvc", "init", "-q", cwd=tmp_path)
    shutil.copy(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")
    return tmp_path


def _changed_stages(cwd: Path) -> dict:
    return json.loads(_run("dvc", "status", "--json", cwd=cwd))


needs_clis = pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("gcctl") is None,
                                reason="needs the installed CLIs")


@pytest.mark.slow
@needs_clis
def test_dvc_repro_builds_the_chain_on_tiny_params(tmp_path):
    repo = _project_copy(tmp_path)
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))

    _run("dvc", "repro", cwd=repo)

    with FeatureStore(repo / "pipeline/features/multiceleba.h5") as store:
        assert store.vocabulary.n_groups == 8
        assert store.model_ref().architecture == "gcctl-micro"
    with FeatureStore(repo / "pipeline/features/waterbirds.h5") as store:
        assert store.model_ref().sha256 != "none" and store.model_ref().locate().is_file()
    shown = json.dumps(json.loads(_run("dvc", "metrics", "show", "--json", cwd=repo)))
    for run in ("zeroshot", "orthproj", "groupcoop", "groupcoop-pseudo"):
        assert f"pipeline/metrics/waterbirds/{run}.json" in shown
    assert sorted(path.name for path in (repo / "pipeline/fits/waterbirds").iterdir()) == ["orthproj", "zeroshot"]
    suites = (repo / "pipeline/report/transfer/results.md").read_text()
    assert all(f"| {run} |" in suites for run in ("zeroshot", "ft", "ft-wise", "starft", "starft-wise"))
    summary = json.loads((repo / "pipeline/transfer/starft/summary.json").read_text())
    assert {"source_acc", "group_shift_acc_wg", "group_shift_acc_avg"} <= set(summary["mean"])
    assert (repo / "pipeline/finetuned/waterbirds/starft/seed-0/state.pt").is_file()  # kept for resuming
    sweep = (repo / "pipeline/report/sweep-waterbirds/results.md").read_text()  # K = 1 beside the default run
    assert "| run | method | group labels | K = 1 | all |" in sweep and "| groupcoop | groupcoop |" in sweep
    cut = json.loads((repo / "pipeline/sweep/waterbirds/k1/groupcoop/config.json").read_text())
    assert cut["minority_per_group"] == 1 and cut["method"] == "groupcoop"
    assert (repo / "pipeline/tables/multiceleba.parquet").is_file()
    assert (repo / "pipeline/groups/waterbirds.parquet").is_file()
    budget = (repo / "pipeline/report/budget-waterbirds/results.md").read_text()  # 50% beside train's runs (100%)
    assert "| run | method | group labels | 50% | 100% |" in budget and "| groupcoop-pseudo | groupcoop |" in budget
    assert json.loads((repo / "pipeline/budget/waterbirds/f0.5/dfr/config.json").read_text())["val_fraction"] == 0.5
    label_free = (repo / "pipeline/report-label-free/waterbirds/results.md").read_text()  # beside the default runs
    assert "| groupcoop-free | groupcoop | none | val worst pseudo-group |" in label_free and "| groupcoop | groupcoop |" in label_free
    assert "Data and pipelines are up to date" in _run("dvc", "status", cwd=repo)

    # Every output is a pure function of its inputs: running stages again writes the same bytes, so dvc.lock
    # stays as it was (wall-clock figures go beside outputs, in files no stage declares).
    lock = (repo / "dvc.lock").read_text()
    _run("dvc", "repro", "--force", "--single-item", "pretrain@micro", "extract@waterbirds", "pseudo_label@waterbirds",
         "train@waterbirds-groupcoop", "fit@waterbirds", "evaluate@waterbirds", "report@waterbirds", cwd=repo)
    assert (repo / "dvc.lock").read_text() == lock
    assert (repo / "pipeline/runs/waterbirds/groupcoop.timings.json").is_file()

    # Editing one run's options changes that run's stage only.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["runs"]["groupcoop"]["epochs"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    changed = _changed_stages(repo)
    assert set(changed) == {"train@waterbirds-groupcoop"}, changed
    params["train"]["fits"]["orthproj"]["calibrate"] = True  # the training-free fits of a dataset share a stage
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert set(_changed_stages(repo)) == {"train@waterbirds-groupcoop", "fit@waterbirds"}
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))

    # A change in a method's code reruns what trains and evaluates on features, not what makes data, models or
    # features, nor fine-tuning; one in fine-tuning reruns no feature method. `dvc status` names the edited
    # package under stage `code`; once it has run, the stages whose command's digest changed are out of date.
    coop, finetuning = repo / "gcctl/methods/coop.py", repo / "gcctl/finetune/train.py"
    with open(coop, "a") as handle:
        handle.write("# a change\n")
    assert set(_changed_stages(repo)) == {"code"}
    _run("dvc", "repro", "code", cwd=repo)
    changed = set(_changed_stages(repo))
    assert {"train@waterbirds-groupcoop", "train_pseudo@waterbirds-groupcoop-pseudo", "fit@waterbirds",
            "evaluate@waterbirds"} <= changed
    assert not changed & {"synth", "data@waterbirds", "pretrain@micro", "extract@waterbirds", "pseudo_label@waterbirds",
                          "finetune@ft-0", "transfer@ft"}
    coop.write_text(coop.read_text().removesuffix("# a change\n"))
    with open(finetuning, "a") as handle:
        handle.write("# a change\n")
    _run("dvc", "repro", "code", cwd=repo)
    changed = set(_changed_stages(repo))
    assert {"finetune@ft-0", "wise@ft-0"} <= changed
    assert not {name for name in changed if name.startswith(("train", "fit", "evaluate", "pseudo_label", "extract", "pretrain"))}


TINY_PRESET = """# @package _global_
defaults:
  - override /model: micro
synth:
  corpus_size: 256
  scale: 0.02
train:
  datasets: [waterbirds]
"""
MICRO_MODEL = """# @package _global_
pretrain:
  runs:
    micro: {model: gcctl-micro, epochs: 1, batch_size: 64, lr: 0.002, seed: 0}
fetch:
  runs: {}
extract:
  model: gcctl-micro
  pretrained: pipeline/models/micro/model.pt
"""


@pytest.mark.slow
@needs_clis
def test_dvc_exp_run_selects_a_preset(tmp_path):
    repo = _project_copy(tmp_path)
    (repo / "conf/preset/tiny.yaml").write_text(TINY_PRESET)
    (repo / "conf/model/micro.yaml").write_text(MICRO_MODEL)
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    _run("git", "add", "-A", cwd=repo)
    _run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init", cwd=repo)

    unknown = subprocess.run(["dvc", "exp", "run", "-S", "preset=nope"], cwd=repo, capture_output=True, text=True)
    assert unknown.returncode != 0 and "Could not find 'preset/nope'" in unknown.stderr
    assert "tiny" in unknown.stderr.split("Available options in 'preset':")[1]  # the fix: the names there are
    assert not (repo / "pipeline").exists()

    _run("dvc", "exp", "run", "-S", "preset=tiny", "train@waterbirds-groupcoop", cwd=repo)

    composed = yaml.safe_load((repo / "params.yaml").read_text())
    assert composed["extract"]["model"] == "gcctl-micro"
    assert composed["pretrain"]["runs"] == {"micro": yaml.safe_load(MICRO_MODEL)["pretrain"]["runs"]["micro"]}
    assert composed["train"]["datasets"] == ["waterbirds"]
    assert composed["train"]["runs"]["groupcoop"] == {"method": "groupcoop"}  # the default's runs stay
    assert (repo / "pipeline/runs/waterbirds/groupcoop/config.json").is_file()
    shown = _run("dvc", "exp", "show", "--json", cwd=repo)
    assert "gcctl-micro" in shown and "gcctl-tiny" in shown  # the experiment beside the default it came from


def _compose(overrides: list[str]) -> dict:
    from dvc.utils.hydra import compose_and_dump

    out = Path(tempfile.mkdtemp()) / "params.yaml"
    compose_and_dump(out, str(REPO / "conf"), None, "config", "", overrides)
    return yaml.safe_load(out.read_text())


def test_params_yaml_is_the_composition_of_conf():
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == _compose([])


@pytest.mark.parametrize("preset", sorted(path.stem for path in (REPO / "conf/preset").glob("*.yaml")))
def test_presets_compose_into_a_complete_pipeline(preset):
    default, params = _compose([]), _compose([f"preset={preset}"])
    assert set(params) == set(default)
    assert set(params["train"]["datasets"]) <= set(params["datasets"])
    assert params["finetune"]["dataset"] in params["datasets"]
    assert params["pretrain"]["runs"] == {}  # real weights are fetched, not pretrained
    for name, run in params["fetch"]["runs"].items():
        assert params["extract"]["pretrained"] == f"pipeline/models/{name}/model.pt"


@pytest.mark.parametrize("model", sorted(path.stem for path in (REPO / "conf/model").glob("*.yaml") if path.stem != "tiny"))
def test_each_model_config_fetches_an_architecture_and_weights_open_clip_knows(model):
    import open_clip

    params = _compose([f"model={model}"])
    (name, fetch), = params["fetch"]["runs"].items()
    assert fetch["model"] in open_clip.list_models() and fetch["pretrained"] in open_clip.list_pretrained_tags_by_model(fetch["model"])
    assert params["extract"] == {**params["extract"], "model": fetch["model"], "pretrained": f"pipeline/models/{name}/model.pt"}
    assert params["pretrain"]["runs"] == {}


# The StarFT authors' fine-tuning (alinlab/StarFT: scripts/train.sh, src/args.py, clip/clip.py's training crop).
AUTHORS_FINETUNING = {"epochs": 10, "batch_size": 512, "lr": 1e-5, "weight_decay": 0.1, "warmup": 500, "augment": True,
                      "crop_scale": 0.9, "select_by": "last"}


@pytest.mark.parametrize("preset", sorted(path.stem for path in (REPO / "conf/preset").glob("*.yaml")))
def test_presets_fine_tune_at_the_starft_authors_settings(preset):
    runs = _compose([f"preset={preset}"])["finetune"]["runs"]
    for name, run in runs.items():
        assert {key: run.get(key) for key in AUTHORS_FINETUNING} == AUTHORS_FINETUNING, name
        renamed = {"lambda": "reg_lambda", "pool": "pools"}
        FinetuneConfig(**{renamed.get(key, key): (value,) if key == "pool" else value for key, value in run.items()}).check()
    starft = runs["starft"]
    assert (starft["lambda"], starft["lambda_schedule"], starft["pool"]) == (0.5, "paper", "background")


def test_every_run_has_its_dvc_metrics_entries_and_every_curve_its_plot():
    """DVC cannot generate top-level plots or metrics with foreach, so dvc.yaml lists each run's evaluation and the
    runs' DVCLive folders: keep it in step with params.yaml (training-free runs, zero-shot among them, have no curve)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    runs = {**params["train"]["runs"], **params["train"]["pseudo_runs"]}
    folders = [f"pipeline/runs/{dataset}/{name}" for dataset in params["train"]["datasets"]
               for name, options in runs.items() if get_method(options["method"]).trains]
    folders += [f"pipeline/finetuned/{params['finetune']['dataset']}/{name}/seed-{seed}"
                for name in params["finetune"]["runs"] for seed in params["finetune"]["seeds"]]
    assert sorted(next(iter(entry)) for entry in pipeline["plots"]) == sorted(f"{f}/dvclive/plots/metrics" for f in folders)
    evaluations = [f"pipeline/metrics/{dataset}/{name}.json" for dataset in params["train"]["datasets"]
                   for name in {**runs, **params["train"]["fits"]}]
    assert sorted(pipeline["metrics"]) == sorted([*evaluations, *(f"{f}/dvclive/metrics.json" for f in folders)])


def _write_jpegs(folder: Path, count: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{k:04d}.JPEG")


def _imagenet_fixtures(root: Path) -> None:
    """ImageNet, its four shift sets, Caltech101 and PACS in their release layouts, a few random images of a few
    classes each."""
    from gcctl.datasets.imagenet import imagenet_classes

    classes = imagenet_classes()
    for index, wnid in enumerate(classes["wnid"][:3]):
        _write_jpegs(root / "imagenet/train" / wnid, 6, index)
        _write_jpegs(root / "imagenet/val" / wnid, 2, 10 + index)
        _write_jpegs(root / "imagenet-v2" / str(index), 2, 20 + index)
        _write_jpegs(root / "imagenet-sketch" / wnid, 2, 30 + index)
    for subset in ("imagenet_r", "imagenet_a"):
        for index, wnid in enumerate(classes[classes[subset] == 1]["wnid"][:2]):
            _write_jpegs(root / subset.replace("_", "-") / wnid, 2, 40 + index)
    for index, name in enumerate(("accordion", "airplanes")):
        _write_jpegs(root / "caltech101/101_ObjectCategories" / name, 2, 50 + index)
    for index, domain in enumerate(("art_painting", "photo")):
        for offset, name in enumerate(("dog", "horse")):
            _write_jpegs(root / "pacs" / domain / name, 2, 60 + 2 * index + offset)


@pytest.mark.slow
@needs_clis
def test_the_imagenet_preset_runs_starfts_protocol_end_to_end_on_tiny_fixtures(tmp_path):
    """`imagenet-vitb16` as a GPU runner would run it, with only the paths and the model swapped: a micro CLIP
    pretrained for one epoch on the tiny synthetic corpus instead of the fetched ViT-B/16, tiny fixtures in the
    datasets' real layouts, one epoch. CIFAR-10, CIFAR-100 and STL10 are left out: torchvision checks their files'
    md5 sums, which fixtures cannot match (their readers are tested in-process in test_readers.py)."""
    repo = _project_copy(tmp_path)
    _imagenet_fixtures(repo / "fixtures")
    params = _compose(["preset=imagenet-vitb16"])
    params.update({key: TINY_PARAMS[key] for key in ("synth", "pretrain", "fetch", "extract")})
    packed = ("cifar10", "cifar100", "stl10")
    for name in packed:
        del params["datasets"][name]
    params["transfer"]["target"] = [spec for spec in params["transfer"]["target"]
                                    if Path(spec.split("=")[1]).stem not in packed]
    for name, dataset in params["datasets"].items():
        dataset["root"] = "pipeline/data/waterbirds" if name == "waterbirds" else f"fixtures/{name}"
    params["finetune"]["seeds"] = [0]
    for run in params["finetune"]["runs"].values():
        run.update(epochs=1, batch_size=4, lr=0.001)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

    _run("dvc", "repro", "report_transfer", cwd=repo)

    suites = (repo / "pipeline/report/transfer/results.md").read_text()
    assert all(f"| {run} |" in suites for run in ("zeroshot", "ft", "ft-wise", "starft", "starft-wise")), suites
    summary = json.loads((repo / "pipeline/transfer/starft/summary.json").read_text())
    assert summary["targets"]["imagenet-r"] == {"role": "domain", "split": "test", "dataset": "imagenet-r"}
    assert summary["targets"]["pacs"]["role"] == "group" and summary["targets"]["caltech101"]["role"] == "other"
    templates = {name: json.loads((repo / f"pipeline/transfer/starft/{name}.json").read_text())["provenance"]["templates"]
                 for name in ("imagenet-r", "waterbirds")}
    assert len(templates["imagenet-r"]) == 80 and templates["waterbirds"] == ["This is a picture of a {}."]
    assert {"source_acc", "domain_shift_acc", "group_shift_acc_wg", "group_shift_acc_avg"} <= set(summary["mean"])
    run = json.loads((repo / "pipeline/finetuned/imagenet/starft/seed-0/summary.json").read_text())
    assert run["config"]["lambda_schedule"] == "paper" and run["config"]["reg_lambda"] == 0.5
    assert run["config"]["warmup"] == 500 and run["config"]["augment"] and run["select_by"] == "last"


@pytest.mark.slow
@needs_clis
@pytest.mark.parametrize("preset, source, group", [
    ("waterbirds-vitb16", "waterbirds", None),
    ("celeba-vitb16", "celeba", "multiceleba"),
])
def test_the_real_data_presets_fine_tune_and_transfer_end_to_end_on_tiny_fixtures(tmp_path, preset, source, group):
    """A preset as a GPU runner runs it up to its transfer report, with only the roots and the model swapped: the
    tiny synthetic world's benchmarks in the datasets' real layouts (its CelebA files carry all 40 attributes)
    and a micro CLIP pretrained for one epoch; one epoch of batch 4."""
    repo = _project_copy(tmp_path)
    params = _compose([f"preset={preset}"])
    params.update({key: TINY_PARAMS[key] for key in ("synth", "pretrain", "fetch", "extract")})
    for name, dataset in params["datasets"].items():
        dataset["root"] = "pipeline/data/waterbirds" if dataset["layout"] == "waterbirds" else "pipeline/data/multiceleba"
    params["finetune"]["seeds"] = [0]
    for run in params["finetune"]["runs"].values():
        run.update(epochs=1, batch_size=4, lr=0.001)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

    _run("dvc", "repro", "report_transfer", cwd=repo)

    summary = json.loads((repo / "pipeline/transfer/starft/summary.json").read_text())
    assert summary["targets"][source]["role"] == "source"
    assert group is None or summary["targets"][group]["role"] == "group"
    run = json.loads((repo / f"pipeline/finetuned/{source}/starft/seed-0/summary.json").read_text())
    assert run["config"]["warmup"] == 500 and run["select_by"] == "last" and run["config"]["lambda_schedule"] == "paper"


def test_dvc_ignores_the_wall_clock_beside_outputs():
    """A run's `<run>.timings.json` sits inside pipeline/runs/<dataset>, a dependency of evaluate@<dataset>: DVC must
    not hash it, or every retraining would change that dependency and dvc.lock."""
    from gcctl.files import TIMINGS_SUFFIX

    assert f"*{TIMINGS_SUFFIX}" in (REPO / ".dvcignore").read_text().splitlines()
