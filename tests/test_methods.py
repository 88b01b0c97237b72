"""The feature-based methods on tiny stores of made-up features, with the `gcctl-micro` model."""

import json
import re
import subprocess
import sys

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import typer
import yaml
from conftest import MICRO, TOY_CLASSES, toy_store, tree_digest
from typer.testing import CliRunner

from gcctl.clip.registry import register_packaged_configs
from gcctl.clip.text import encode_texts
from gcctl.curves import read_seeded_curve
from gcctl.datasets.groups import GroupVocabulary
from gcctl.errors import GcctlError
from gcctl.files import read_timings
from gcctl.methods import group_supervision, make_config
from gcctl.methods.prompts import PromptLearner, TextTower
from gcctl.methods.runs import evaluate_run, train_run
from gcctl.metrics import metrics_from_predictions, read_predictions
from gcctl.report import plot_run_curve, write_report

DIM = 32
CLASSES = TOY_CLASSES
GROUPS = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
QUICK = {"epochs": 8}


pytestmark = pytest.mark.usefixtures("quiet_random_weights")  # conftest: models with random weights warn


@pytest.fixture(scope="module")
def spurious(tmp_path_factory):
    return toy_store(tmp_path_factory.mktemp("stores") / "spurious.h5")


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """Class signal only: the background is independent of the class in every split and weak."""
    return toy_store(tmp_path_factory.mktemp("stores") / "easy.h5", corr=0.5, place_strength=0.5)


def test_prompt_encoder_reproduces_encode_text(shared_micro):
    tower = TextTower(shared_micro.model)
    names = ["waterbird", "land bird"]
    templates = {"end": "a photo of a {}.", "front": "{} a photo of a.", "middle": "a photo {} of a."}
    for position, template in templates.items():
        learner = PromptLearner(tower, shared_micro.tokenizer, names, [0, 1], ctx_init="a photo of a",
                                class_position=position)
        expected = shared_micro.model.encode_text(shared_micro.tokenizer([template.format(n) for n in names]))
        torch.testing.assert_close(learner(), expected, rtol=0, atol=1e-5)  # shorter matmuls round differently
        assert learner.tokens.shape[1] == 4 + 2 + 3  # cut after the end token: start, context, "land bird", ".", end


def test_prompts_keep_their_padding_without_a_causal_mask():
    model = open_clip.create_model(MICRO, force_custom_text=True)
    model.text.attn_mask = None  # every position sees the padding: it is part of the features
    tokenizer = open_clip.get_tokenizer(MICRO)
    learner = PromptLearner(TextTower(model), tokenizer, ["cat"], [0])
    assert learner.tokens.shape[1] == model.text.context_length
    # the same computation in another order of float32 sums: equal to rounding
    torch.testing.assert_close(learner(), model.encode_text(tokenizer(["a photo of a cat."])), rtol=0, atol=1e-5)


def test_prompt_encoder_supports_custom_text_clip():
    register_packaged_configs()  # gcctl-micro is ours: open_clip knows it once gcctl.clip.registry has run
    torch.manual_seed(0)  # open_clip draws the random weights from the global generator: the same ones in any order
    model = open_clip.create_model(MICRO, force_custom_text=True)
    tokenizer = open_clip.get_tokenizer(MICRO)
    learner = PromptLearner(TextTower(model), tokenizer, ["cat"], [0])
    # the same computation in another order of float32 sums: equal to rounding
    torch.testing.assert_close(learner(), model.encode_text(tokenizer(["a photo of a cat."])), rtol=0, atol=1e-5)


def test_other_text_towers_are_refused():
    with pytest.raises(GcctlError, match="text tower"):
        TextTower(torch.nn.Linear(2, 2))


def test_only_the_contexts_learn(shared_micro):
    learner = PromptLearner(TextTower(shared_micro.model), shared_micro.tokenizer, ["a", "b", "c"], [0, 1, 2], ctx_init="",
                            n_ctx=3, generator=torch.Generator().manual_seed(0))
    assert learner.contexts.shape == (3, 3, 32)
    learner().sum().backward()
    assert learner.contexts.grad.abs().sum() > 0
    assert all(p.grad is None for name, p in learner.named_parameters() if name != "contexts")


def test_zeroshot_classifies_features_that_are_its_prompts(tmp_path, shared_micro):
    text = encode_texts(shared_micro.model, shared_micro.tokenizer, [f"a photo of a {c}." for c in CLASSES]).numpy()
    store = toy_store(tmp_path / "text.h5", corr=0.5, place_strength=0.0, class_dirs=text, class_strength=3)
    train_run(store, "zeroshot", tmp_path / "run")
    assert evaluate_run(tmp_path / "run", "test")["acc_avg"]["mean"] > 0.95


def test_zeroshot_template_ensemble_changes_the_classifier(tmp_path, easy):
    train_run(easy, "zeroshot", tmp_path / "one")
    train_run(easy, "zeroshot", tmp_path / "two", options={"templates": ["a photo of a {}.", "a drawing of a {}."]})
    one, two = (torch.load(tmp_path / name / "params.pt", weights_only=True)[None]["classifier"]["weight"] for name in ("one", "two"))
    assert not torch.allclose(one, two)


def test_a_training_free_method_is_fit_once_and_recorded_without_a_seed(tmp_path, easy):
    summary = train_run(easy, "zeroshot", tmp_path / "run", seeds=[0, 1, 2])
    assert list(summary["seeds"]) == ["none"]
    metrics = evaluate_run(tmp_path / "run", "test")
    assert metrics["provenance"]["seeds"] == [None] and metrics["acc_avg"]["std"] == 0.0


# With the random weights of the micro model, a context shared by both class names barely separates them
# in 8 epochs; class-specific contexts (an option of coop) show that the CoOp path learns.
@pytest.mark.parametrize(("method", "options"), [("linear", {}), ("dfr", {}), ("coop", {"class_specific": True}), ("groupcoop", {})])
def test_each_trained_method_beats_chance(tmp_path, easy, method, options):
    train_run(easy, method, tmp_path / method, options={**QUICK, **options})
    metrics = evaluate_run(tmp_path / method, "test")
    assert metrics["acc_avg"]["mean"] > 0.8
    assert metrics["provenance"]["method"] == method


def test_groupcoop_beats_coop_on_worst_group(tmp_path, spurious):
    wga = {}
    for method in ("coop", "groupcoop"):
        train_run(spurious, method, tmp_path / method, options={"epochs": 15})
        wga[method] = evaluate_run(tmp_path / method, "test")["acc_wg"]["mean"]
    assert wga["groupcoop"] > wga["coop"] + 0.2


def test_groupcoop_vector_ablation_learns_free_embeddings_started_at_the_prompts(tmp_path, spurious):
    options = {"epochs": 4, "init": "words"}
    train_run(spurious, "groupcoop", tmp_path / "prompt", options={**options, "epochs": 1})
    train_run(spurious, "groupcoop", tmp_path / "vector", options={**options, "learn": "vector"})
    prompt, vector = (torch.load(tmp_path / name / "params.pt", weights_only=True)[0] for name in ("prompt", "vector"))
    assert set(vector["learned"]) == {"vectors"} and set(prompt["learned"]) == {"contexts"}
    assert vector["learned"]["vectors"].shape == vector["classifier"]["weight"].shape  # one per (class, group)
    assert json.loads((tmp_path / "vector" / "selection.json").read_text())["0"]["learn"] == "vector"
    assert evaluate_run(tmp_path / "vector", "test")["acc_avg"]["mean"] > 0.6
    with pytest.raises(GcctlError, match="--learn 'linear' is unknown; choose one of prompt, vector"):
        make_config("groupcoop", {"learn": "linear"})


def assert_same_params(run_a, run_b, seed=0):
    a, b = (torch.load(run / "params.pt", weights_only=True)[seed] for run in (run_a, run_b))
    for part in ("classifier", "learned"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value, b[part][key], rtol=0, atol=0)
            else:
                assert value == b[part][key]


def test_same_seed_same_model(tmp_path, spurious):
    for name in ("a", "b"):
        train_run(spurious, "groupcoop", tmp_path / name, options={"epochs": 3, "balance": "sampling"}, seeds=[1])
    assert_same_params(tmp_path / "a", tmp_path / "b", seed=1)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")  # byte for byte: no wall-clock inside


def test_run_round_trip_and_seeds(tmp_path, spurious):
    run = tmp_path / "run"
    train_run(spurious, "groupcoop", run, options={"epochs": 4}, seeds=[10, 2], plot=plot_run_curve)
    assert {p.name for p in run.iterdir()} == {"config.json", "params.pt", "dvclive", "curve.png", "selection.json"}
    selection = json.loads((run / "selection.json").read_text())
    curve = read_seeded_curve(run / "dvclive")
    assert sorted((r["seed"], r["epoch"]) for r in curve) == [(seed, epoch) for seed in (2, 10) for epoch in range(1, 5)]
    assert {"loss", "val_acc_avg", "val_acc_wg"} <= set(curve[0])
    tsvs = sorted(p.name for p in (run / "dvclive" / "plots" / "metrics" / "seed-2").iterdir())
    assert tsvs == ["loss.tsv", "val_acc_avg.tsv", "val_acc_wg.tsv"]  # no wall-clock inside the run
    timings = read_timings(run)["epoch_seconds"]
    assert sorted(timings) == ["10", "2"] and all(len(seconds) == 4 for seconds in timings.values())
    kept = next(r for r in curve if r["seed"] == 2 and r["epoch"] == selection["2"]["best_epoch"])
    assert kept["val_acc_wg"] == selection["2"]["val_metrics"]["acc_wg"]
    assert [p["group"] for p in selection["2"]["prompts"]] == GROUPS
    # reloading the run reproduces the validation metrics of the kept epoch, keyed by the run's seeds in numeric order
    val = evaluate_run(run, "val", out=tmp_path / "val.json")
    assert list(val["seeds"]) == ["2", "10"] and val["provenance"]["seeds"] == [2, 10]
    for seed in ("2", "10"):
        assert val["seeds"][seed]["acc_wg"] == pytest.approx(selection[seed]["val_metrics"]["acc_wg"])
    values = [val["seeds"][s]["acc_avg"] for s in ("2", "10")]
    assert val["acc_avg"] == {"mean": pytest.approx(np.mean(values)), "std": pytest.approx(np.std(values))}
    assert val["provenance"]["model_ref"]["architecture"] == MICRO
    # the predictions written beside the metrics recompute them
    written = json.loads((tmp_path / "val.json").read_text())
    predictions, vocabulary = read_predictions(tmp_path / "val.predictions.parquet")
    assert len(predictions) == 2 * 400 and set(predictions["split"]) == {"val"}
    recomputed = metrics_from_predictions(predictions, vocabulary)
    for key in ("acc_avg", "acc_wg"):
        assert recomputed[key] == written[key] and recomputed["seeds"]["10"][key] == written["seeds"]["10"][key]


def test_group_file_with_the_true_groups_trains_the_same_model(tmp_path, spurious):
    from gcctl.store import FeatureStore

    with FeatureStore(spurious) as store:
        train = store.split_index("train")
        frame = pd.DataFrame({"id": store.ids[train], "group": np.array(GROUPS)[store.group[train]],
                              "confidence": 1.0, "strategy": "true"})
    frame.sample(frac=1.0, random_state=0).to_parquet(tmp_path / "groups.parquet")  # order must not matter
    train_run(spurious, "groupcoop", tmp_path / "store", options={"epochs": 3})
    train_run(spurious, "groupcoop", tmp_path / "file", options={"epochs": 3}, groups=tmp_path / "groups.parquet")
    assert_same_params(tmp_path / "store", tmp_path / "file")
    assert json.loads((tmp_path / "file" / "config.json").read_text())["groups"]["source"] == "file"


def test_an_earlier_run_is_replaced_only_with_overwrite(tmp_path, spurious):
    train_run(spurious, "linear", tmp_path / "run", options={"epochs": 1})
    with pytest.raises(GcctlError, match="pass --overwrite"):
        train_run(spurious, "linear", tmp_path / "run", options={"epochs": 2})
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["epochs"] == 1
    train_run(spurious, "linear", tmp_path / "run", options={"epochs": 2}, overwrite=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["epochs"] == 2
    # neither a .partial nor a lock is left; the epochs' seconds lie beside the run
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run", "run.timings.json"]


def test_group_file_with_other_ids_is_refused(tmp_path, spurious):
    pd.DataFrame({"id": ["elsewhere1", "elsewhere2"], "group": [0, 1]}).to_parquet(tmp_path / "groups.parquet")
    with pytest.raises(GcctlError, match="not in the feature store"):
        train_run(spurious, "groupcoop", tmp_path / "run", groups=tmp_path / "groups.parquet")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("groups", "message"), [(["landbird/land", "waterbird/water"], "group of another class"),
                                                 (["landbird_land", "waterbird/water"], "not one of the store's groups")])
def test_group_files_are_checked_against_the_store_vocabulary(tmp_path, spurious, groups, message):
    from gcctl.store import FeatureStore

    with FeatureStore(spurious) as store:
        train = store.split_index("train")
        names = np.array(GROUPS)[store.group[train]]
        names[np.flatnonzero(store.y[train] == 1)[0]] = groups[0]  # a waterbird labelled with groups[0]
    pd.DataFrame({"id": store.ids[train], "group": names}).to_parquet(tmp_path / "groups.parquet")
    with pytest.raises(GcctlError, match=message):
        train_run(spurious, "groupcoop", tmp_path / "run", groups=tmp_path / "groups.parquet")


def test_groupcoop_on_pseudo_groups_names_them_as_the_dataset_does(tmp_path, spurious):
    """Pseudo groups keep the dataset's group names through the group file, the run and its metrics."""
    from gcctl.pseudolabel import pseudo_label
    from gcctl.store import FeatureStore

    pseudo_label(spurious, "val-probe", tmp_path / "groups.parquet")
    assert set(pd.read_parquet(tmp_path / "groups.parquet")["group_name"]) == set(GROUPS)
    train_run(spurious, "groupcoop", tmp_path / "run", options={"epochs": 2, "init": "words"}, groups=tmp_path / "groups.parquet")
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())["0"]
    assert [prompt["group"] for prompt in selection["prompts"]] == GROUPS
    assert [prompt["class"] for prompt in selection["prompts"]] == ["landbird", "landbird", "waterbird", "waterbird"]
    assert set(selection["val_metrics"]["per_group"]) == set(GROUPS)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["groups"]["source"] == "file"
    with FeatureStore(spurious) as store:  # the store's vocabulary, true training counts included
        assert GroupVocabulary.from_dict(config["vocabulary"], "config") == store.vocabulary
    assert set(evaluate_run(tmp_path / "run", "test")["per_group"]) == set(GROUPS)


def test_evaluating_on_a_store_of_another_model_is_refused(tmp_path, spurious):
    train_run(spurious, "linear", tmp_path / "run", options=QUICK)
    other = toy_store(tmp_path / "other.h5", model="gcctl-tiny", dim=DIM)
    with pytest.raises(GcctlError, match="other features"):
        evaluate_run(tmp_path / "run", "test", features=other)


def tree_bytes(directory):
    return {path.relative_to(directory): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def test_nan_features_are_refused_and_nothing_is_overwritten(tmp_path, spurious):
    run = tmp_path / "run"
    train_run(spurious, "linear", run, options=QUICK)
    before = tree_bytes(run)
    with pytest.raises(GcctlError, match="NaN"):
        train_run(toy_store(tmp_path / "nan.h5", nan=True), "linear", run, options=QUICK, overwrite=True)
    assert tree_bytes(run) == before


def test_diverging_loss_is_a_clear_error(tmp_path, spurious):
    with pytest.raises(GcctlError, match="NaN or infinite"):
        train_run(spurious, "linear", tmp_path / "run", options={"epochs": 2, "lr": float("inf")})


def test_split_with_an_empty_group_is_refused(tmp_path):
    store = toy_store(tmp_path / "pure.h5", corr=1.0)  # train has no minority group
    with pytest.raises(GcctlError, match="split 'train' .* no sample of group"):
        train_run(store, "linear", tmp_path / "run")


def test_options_are_checked_against_the_method():
    with pytest.raises(GcctlError, match="--aggregation does not apply to method 'linear'"):
        make_config("linear", {"aggregation": "max"})
    with pytest.raises(GcctlError, match="--balance 'often' is unknown"):
        make_config("groupcoop", {"balance": "often"})
    assert make_config("groupcoop", {"lr": None}).lr == 0.5


def test_cli_train_evaluate_report(tmp_path, spurious):
    from gcctl.cli import evaluate, report, train

    app = typer.Typer()
    for command in (train, evaluate, report):
        command.register(app)
    runner = CliRunner()
    for method in ("linear", "groupcoop"):
        result = runner.invoke(app, ["train", "--features", str(spurious), "--method", method, "--epochs", "3",
                                     "--seeds", "0,1", "--out", str(tmp_path / method)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / method / "curve.png").stat().st_size > 0
        result = runner.invoke(app, ["evaluate", "--run", str(tmp_path / method), "--out", str(tmp_path / f"{method}.json")])
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"{method}.predictions.parquet").is_file()
        assert "waterbird/land" in result.output
    metrics = json.loads((tmp_path / "groupcoop.json").read_text())
    assert {"acc_avg", "acc_wg", "acc_mean_group", "acc_adj_avg", "acc_balanced", "per_group"} <= set(metrics)
    result = runner.invoke(app, ["report", str(tmp_path / "linear.json"), str(tmp_path / "groupcoop.json"), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| linear | linear | val | val worst-group | 0,1 |" in table
    assert "| groupcoop | groupcoop | train + val | val worst-group | 0,1 |" in table
    assert all((tmp_path / "report" / name).stat().st_size > 0 for name in ("per_group.png", "curves.png"))
    assert re.search(r"\| linear \| linear \| val \| val worst-group \| 0,1 \| \d+\.\d ± \d+\.\d \[\d+\.\d, \d+\.\d\] \|", table)
    result = runner.invoke(app, ["report", str(tmp_path / "linear.json"), str(tmp_path / "groupcoop.json"), "--out",
                                 str(tmp_path / "compared"), "--compare", "groupcoop:linear"])
    assert result.exit_code == 0, result.output
    compared = json.loads((tmp_path / "compared" / "comparisons.json").read_text())
    assert [(row["a"], row["b"]) for row in compared] == [("groupcoop", "linear")]
    low, high = compared[0]["acc_wg"]["interval"]
    assert low <= compared[0]["acc_wg"]["difference"] <= high and 0 <= compared[0]["acc_wg"]["p_value"] <= 1
    assert "| groupcoop | linear | " in (tmp_path / "compared" / "results.md").read_text()
    result = runner.invoke(app, ["report", str(tmp_path / "linear.json"), "--out", str(tmp_path / "bad"), "--compare", "linear:dfr"])
    assert isinstance(result.exception, GcctlError) and "not A:B of two reported runs (the runs: linear)" in str(result.exception)
    result = runner.invoke(app, ["train", "--features", str(spurious), "--method", "linear", "--seeds", "a", "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, GcctlError)


def test_each_runs_every_named_run_in_one_process_and_evaluate_takes_folders_of_runs(tmp_path, spurious, run_cli):
    """What the stages fit@ and evaluate@ run: `--each` over a mapping of runs, then every run of two folders."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"fits": {
        "zs": {"method": "zeroshot"}, "orth": {"method": "orthproj"}}}))
    code, _, err = run_cli("--quiet", "--config", f"{tmp_path}/params.yaml:fits", "--each", "train", "--features",
                           str(spurious), "--out", str(tmp_path / "fits" / "{name}"))
    assert code == 0, err
    assert sorted(path.name for path in (tmp_path / "fits").iterdir()) == ["orth", "zs"]
    assert json.loads((tmp_path / "fits/orth/config.json").read_text())["method"] == "orthproj"
    code, _, err = run_cli("train", "--features", str(spurious), "--method", "linear", "--epochs", "2",
                           "--out", str(tmp_path / "runs" / "linear"))
    assert code == 0, err
    out = tmp_path / "metrics"
    code, stdout, err = run_cli("evaluate", "--run", str(tmp_path / "runs"), "--run", str(tmp_path / "fits"),
                                "--out", str(out))
    assert code == 0, err
    assert sorted(path.name for path in out.iterdir()) == [
        f"{run}{suffix}" for run in ("linear", "orth", "zs") for suffix in (".json", ".predictions.parquet")]
    assert all(name in stdout for name in ("linear", "orth", "zs"))
    single = tmp_path / "zs.json"
    assert run_cli("evaluate", "--run", str(tmp_path / "fits/zs"), "--out", str(single))[0] == 0
    assert json.loads(single.read_text())["acc_wg"] == json.loads((out / "zs.json").read_text())["acc_wg"]


@pytest.mark.parametrize("args, message", [
    (["--config", "PFITS", "--each", "train"], "--each: fits is not a mapping of named runs (name: options) or names none"),
    (["--each", "train"], "--each needs --config FILE:KEY"),
    (["evaluate", "--run", "RUNS", "--run", "RUNS", "--out", "M"], "two runs are named linear"),
    (["evaluate", "--run", "NOWHERE", "--out", "M"], "is neither a run directory nor a folder of runs"),
    (["evaluate", "--run", "RUNS", "--out", "P"], "with several runs --out is the folder"),
])
def test_each_and_several_runs_refuse_what_they_cannot_do(tmp_path, spurious, run_cli, args, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"fits": {}}))
    train = ["train", "--features", str(spurious), "--method", "linear", "--epochs", "1", "--out", str(tmp_path / "runs/linear")]
    assert run_cli(*train)[0] == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "runs/x").mkdir()
    paths = {"P": f"{tmp_path}/params.yaml", "PFITS": f"{tmp_path}/params.yaml:fits", "RUNS": str(tmp_path / "runs"), "NOWHERE": str(tmp_path / "other"),
             "M": str(tmp_path / "m")}
    code, _, err = run_cli(*(paths.get(word, word) for word in args))
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "m").exists()


def test_report_refuses_a_file_that_is_not_metrics(tmp_path):
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(GcctlError, match="not a metrics file"):
        write_report([tmp_path / "bad.json"], tmp_path / "out")


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    from gcctl.errors import GcctlError
    from gcctl.report import update_readme

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:wb:start -->\nold\n<!-- results:wb:end -->\noutro\n")
    update_readme(readme, "wb", "| new |\n")
    assert readme.read_text() == "intro\n<!-- results:wb:start -->\n| new |\n<!-- results:wb:end -->\noutro\n"
    with pytest.raises(GcctlError, match="markers"):
        update_readme(readme, "other", "x")


def test_dvc_plots_and_metrics_show_a_runs_curves_without_gcctl(tmp_path, spurious):
    repo = tmp_path / "repo"
    repo.mkdir()
    train_run(spurious, "linear", repo / "run", options={**QUICK, "epochs": 3}, seeds=[0, 1])
    (repo / "dvc.yaml").write_text("plots:\n  - run/dvclive/plots/metrics:\n      x: step\nmetrics:\n  - run/dvclive/metrics.json\n")

    def dvc(*args):
        done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    dvc("init", "--no-scm", "-q")
    plots = json.loads(dvc("plots", "show", "--json"))
    assert not plots.get("errors")
    loss = plots["data"]["run/dvclive/plots/metrics/seed-1/loss.tsv"][0]
    assert loss["type"] == "vega" and [int(point["step"]) for point in loss["content"]["data"]["values"]] == [1, 2, 3]
    assert "run/dvclive/plots/metrics/seed-0/val_acc_wg.tsv" in plots["data"]
    metrics = json.loads(dvc("metrics", "show", "--json"))
    last = metrics[""]["data"]["run/dvclive/metrics.json"]["data"]
    assert last["step"] == 3 and last["seed-0"]["val_acc_wg"] == read_seeded_curve(repo / "run" / "dvclive")[2]["val_acc_wg"]


@pytest.mark.parametrize("method, options, train_groups_use, expected", [
    ("zeroshot", {}, ("train",), []),
    ("linear", {}, ("train",), ["val"]),  # ERM, but its epoch is kept by validation worst-group accuracy
    ("linear", {"balance": "weights", "select_by": "acc_avg"}, ("train",), ["train"]),
    ("dfr", {}, ("train",), ["val"]),
    ("groupcoop", {}, ("train",), ["train", "val"]),
    ("groupcoop", {}, ("val",), ["val"]),  # on val-probe's pseudo-labels
    ("groupcoop", {"select_by": "acc_avg"}, (), []),  # on zeroshot-attr's pseudo-labels
    ("linear", {"select_by": "acc_worst_class"}, ("train",), []),  # SubpopBench's rule: class labels only
])
def test_a_run_records_whose_group_labels_it_used(method, options, train_groups_use, expected):
    assert group_supervision(method, make_config(method, options), train_groups_use) == expected


def test_validation_pseudo_groups_stand_for_what_their_strategy_read():
    config = make_config("groupcoop", {"select_by": "acc_wg_pseudo"})
    assert group_supervision("groupcoop", config, ("val",), ()) == ["val"]  # val-probe train groups, label-free val
    assert group_supervision("groupcoop", config, (), ()) == []
    assert group_supervision("dfr", make_config("dfr", {"select_by": "acc_avg"}), (), ()) == []


def test_worst_class_selection_keeps_the_epoch_of_best_validation_worst_class_accuracy(tmp_path, spurious):
    train_run(spurious, "linear", tmp_path / "run", options={"epochs": 4, "select_by": "acc_worst_class"}, seeds=[0])
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())["0"]
    curve = read_seeded_curve(tmp_path / "run" / "dvclive")
    assert selection["select_by"] == "val_acc_worst_class"
    assert selection["best_value"] == max(point["val_acc_worst_class"] for point in curve)
    metrics = evaluate_run(tmp_path / "run", "test")
    assert metrics["provenance"]["select_by"] == "acc_worst_class" and metrics["provenance"]["group_supervision"] == []


def test_minority_cut_keeps_k_per_minority_group_the_same_for_every_method_and_nested(spurious):
    from gcctl.methods.data import cut_minority_groups, load_training_data
    from gcctl.store import FeatureStore

    with FeatureStore(spurious) as store:
        data = load_training_data(store, torch.device("cpu"))
    vocabulary, before = data.vocabulary, np.bincount(data.train.group.numpy(), minlength=4)
    minority = vocabulary.minority(before)
    assert minority.tolist() == [False, True, True, False]  # landbird/water, waterbird/land
    cuts = {k: cut_minority_groups(data.train, vocabulary, k, seed=0) for k in (1, 3)}
    after = np.bincount(cuts[3].group.numpy(), minlength=4)
    assert after[minority].tolist() == [3, 3] and np.array_equal(after[~minority], before[~minority])
    kept = {k: {tuple(row) for row in split.features.float().numpy().round(4).tolist()} for k, split in cuts.items()}
    assert kept[1] < kept[3]  # a smaller cut keeps a subset of a larger one's
    again = cut_minority_groups(data.train, vocabulary, 3, seed=0)
    assert torch.equal(again.features, cuts[3].features)
    assert not torch.equal(cut_minority_groups(data.train, vocabulary, 3, seed=1).features, cuts[3].features)
    with pytest.raises(GcctlError, match="outside 1..") as error:
        cut_minority_groups(data.train, vocabulary, 10**6, seed=0)
    assert "\n" not in str(error.value)


def test_train_records_the_minority_cut_and_evaluation_carries_it(spurious, tmp_path):
    train_run(spurious, "linear", tmp_path / "run", options={"epochs": 2}, seeds=[0], minority_per_group=2)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["minority_per_group"] == 2
    assert evaluate_run(tmp_path / "run")["provenance"]["minority_per_group"] == 2
    train_run(spurious, "linear", tmp_path / "whole", options={"epochs": 2}, seeds=[0])
    assert evaluate_run(tmp_path / "whole")["provenance"]["minority_per_group"] is None


def test_train_refuses_a_minority_cut_out_of_range_in_one_line_writing_nothing(spurious, tmp_path, run_cli):
    code, _, err = run_cli("--quiet", "train", "--features", str(spurious), "--method", "linear", "--epochs", "1",
                           "--minority-per-group", "0", "--out", str(tmp_path / "run"))
    assert code != 0 and "--minority-per-group 0 is outside 1.." in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_report_of_a_k_sweep_tabulates_and_plots_worst_group_against_k(spurious, tmp_path, run_cli):
    for k in (1, 3, None):
        runs = tmp_path / f"k{k}"
        train_run(spurious, "linear", runs / "linear", options={"epochs": 2}, seeds=[0, 1], minority_per_group=k)
        evaluate_run(runs / "linear", out=tmp_path / f"metrics-k{k}" / "linear.json")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:sweep:start -->\n<!-- results:sweep:end -->\n")
    code, stdout, err = run_cli("report", *(str(tmp_path / f"metrics-k{k}" / "linear.json") for k in (3, 1)),
                                "--every-image", str(tmp_path / "metrics-kNone"), "--out", str(tmp_path / "sweep"),
                                "--readme", str(readme))
    assert code == 0, err
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert table.startswith("Worst-group accuracy in % against K")
    assert "| run | method | group labels | K = 1 | K = 3 | all |" in table and table in readme.read_text()
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 0 and "K = 1" in stdout
    code, _, err = run_cli("report", str(tmp_path / "metrics-k1" / "linear.json"), str(tmp_path / "metrics-k1" / "linear.json"),
                           "--out", str(tmp_path / "twice"))
    assert code != 0 and "two metrics files of run 'linear' at K = 1" in err and not (tmp_path / "twice").exists()


def test_temperature_scaling_keeps_the_predictions_and_records_the_scaled_scores(tmp_path, spurious):
    train_run(spurious, "linear", tmp_path / "run", options={"epochs": 3}, seeds=[0, 1])
    plain = evaluate_run(tmp_path / "run", "test", out=tmp_path / "plain.json")
    scaled = evaluate_run(tmp_path / "run", "test", out=tmp_path / "scaled.json", temperature_scale=True)
    temperatures = scaled["provenance"]["temperature"]
    assert plain["provenance"]["temperature"] is None and sorted(temperatures) == ["0", "1"]
    assert all(t > 0 for t in temperatures.values())
    assert scaled["acc_wg"] == plain["acc_wg"] and scaled["per_group"] == plain["per_group"]
    assert scaled["calibration"] != plain["calibration"]
    before, _ = read_predictions(tmp_path / "plain.predictions.parquet")
    after, vocabulary = read_predictions(tmp_path / "scaled.predictions.parquet")
    score = f"score_{vocabulary.class_names[0]}"
    seed0 = before["seed"] == 0
    assert after.loc[seed0, score].to_numpy() == pytest.approx(before.loc[seed0, score].to_numpy() / temperatures["0"], rel=1e-5)
    assert metrics_from_predictions(after, vocabulary)["calibration"] == scaled["calibration"]


def _val_group_file(store, out, strategy="oracle"):
    from gcctl.pseudolabel import pseudo_label

    pseudo_label(store, strategy, out, split="val")
    return out


def test_pseudo_group_selection_on_the_true_validation_groups_keeps_the_epoch_worst_group_keeps(tmp_path, spurious):
    val_groups = _val_group_file(spurious, tmp_path / "val.parquet")
    train_run(spurious, "linear", tmp_path / "true", options={"epochs": 4}, seeds=[0])
    train_run(spurious, "linear", tmp_path / "pseudo", options={"epochs": 4, "select_by": "acc_wg_pseudo"}, seeds=[0],
              val_groups=val_groups)
    true, pseudo = (json.loads((tmp_path / name / "selection.json").read_text())["0"] for name in ("true", "pseudo"))
    assert pseudo["select_by"] == "val_acc_wg_pseudo" and pseudo["best_epoch"] == true["best_epoch"]
    assert_same_params(tmp_path / "true", tmp_path / "pseudo", seed=0)
    provenance = evaluate_run(tmp_path / "pseudo")["provenance"]
    assert provenance["group_supervision"] == ["val"]  # the oracle's validation file is the true groups
    assert provenance["val_groups"]["source"] == "file" and provenance["select_by"] == "acc_wg_pseudo"


def test_a_run_without_any_group_label_says_none_and_dfr_balances_on_the_pseudo_groups(tmp_path, spurious):
    from gcctl.pseudolabel import pseudo_label

    val_groups = _val_group_file(spurious, tmp_path / "val.parquet", "erm-error")
    pseudo_label(spurious, "erm-error", tmp_path / "train.parquet", val_fraction=0.0)
    train_run(spurious, "groupcoop", tmp_path / "groupcoop", options={"epochs": 2, "select_by": "acc_wg_pseudo"}, seeds=[0],
              groups=tmp_path / "train.parquet", val_groups=val_groups)
    train_run(spurious, "dfr", tmp_path / "dfr", options={"epochs": 2, "select_by": "acc_worst_class"}, seeds=[0],
              val_groups=val_groups)
    for run in ("groupcoop", "dfr"):
        assert evaluate_run(tmp_path / run)["provenance"]["group_supervision"] == []
    train_run(spurious, "dfr", tmp_path / "dfr-true", options={"epochs": 2, "select_by": "acc_worst_class"}, seeds=[0])
    assert evaluate_run(tmp_path / "dfr-true")["provenance"]["group_supervision"] == ["val"]


@pytest.mark.parametrize("method, options, with_val_groups, message", [
    ("linear", {"select_by": "acc_wg_pseudo"}, False, "needs --val-groups"),
    ("linear", {}, True, "say --select-by acc_wg_pseudo"),
    ("linear", {"select_by": "acc_worst_class"}, True, "would change nothing"),
])
def test_a_selection_rule_without_the_groups_it_needs_is_refused_writing_nothing(tmp_path, spurious, method, options,
                                                                                 with_val_groups, message):
    val_groups = _val_group_file(spurious, tmp_path / "val.parquet") if with_val_groups else None
    with pytest.raises(GcctlError, match=message):
        train_run(spurious, method, tmp_path / "run", options={"epochs": 1, **options}, val_groups=val_groups)
    assert not (tmp_path / "run").exists()


def test_a_validation_label_budget_cuts_each_validation_group_as_pseudo_labelling_does(tmp_path, spurious):
    from gcctl.datasets.groups import labelled_subset
    from gcctl.store import FeatureStore

    train_run(spurious, "tie", tmp_path / "run", val_fraction=0.2, val_seed=3)
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())["none"]
    with FeatureStore(spurious) as store:
        val = store.split_index("val")
        vocabulary = store.vocabulary
        kept, _ = labelled_subset(vocabulary.within(store.group[val]), store.y[val], vocabulary.groups_per_class, 0.2,
                                  0.0, np.random.default_rng(3))
        expected = np.bincount(store.group[val][kept], minlength=vocabulary.n_groups)
    assert {name: stats["n"] for name, stats in selection["val_metrics"]["per_group"].items()} == {
        vocabulary.names[g]: int(n) for g, n in enumerate(expected) if n}
    assert evaluate_run(tmp_path / "run")["provenance"]["val_fraction"] == 0.2


@pytest.mark.parametrize("method, options, fraction, message", [
    ("dfr", {}, 0.0, "outside \\(0, 1\\]"),
    ("dfr", {}, 1.5, "outside \\(0, 1\\]"),
    ("linear", {"select_by": "acc_worst_class"}, 0.5, "--val-fraction would change nothing"),
])
def test_a_budget_outside_its_range_or_unread_is_refused_writing_nothing(tmp_path, spurious, method, options, fraction,
                                                                         message):
    with pytest.raises(GcctlError, match=message):
        train_run(spurious, method, tmp_path / "run", options={"epochs": 1, **options}, val_fraction=fraction)
    assert not (tmp_path / "run").exists()


def test_report_of_a_label_budget_tabulates_worst_group_against_the_labelled_share(spurious, tmp_path, run_cli):
    for fraction in (0.05, 1.0):
        train_run(spurious, "dfr", tmp_path / f"f{fraction}" / "dfr", options={"epochs": 2}, val_fraction=fraction)
        evaluate_run(tmp_path / f"f{fraction}" / "dfr", out=tmp_path / "metrics" / f"f{fraction}" / "dfr.json")
    code, _, err = run_cli("report", *(str(tmp_path / "metrics" / f"f{f}" / "dfr.json") for f in (0.05, 1.0)),
                           "--out", str(tmp_path / "report"))
    assert code == 0, err
    table = (tmp_path / "report" / "results.md").read_text()
    assert "| run | method | group labels | 5% | 100% |" in table and "validation group" in table
    assert (tmp_path / "report" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
