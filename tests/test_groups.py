"""Pseudo group labelling on toy stores whose features carry an obvious spurious direction."""

import json
import logging
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import MICRO

from gcctl.clip.captions import DEFAULT_ATTRIBUTE_PROMPT, attribute_prompts
from gcctl.clip.reference import ModelRef
from gcctl.datasets.groups import GroupVocabulary
from gcctl.errors import GcctlError
from gcctl.metrics import agreement, best_assignment
from gcctl.pseudolabel import GROUP_FILE_COLUMNS, STRATEGIES, pseudo_label
from gcctl.report import plot_confusion
from gcctl.store import write_store

DIM = 16
CLASSES = ["circle", "square"]
PROVENANCE = {"model_ref": ModelRef(MICRO, "none", "", "none").to_dict(), "dataset": "toy", "dataset_fingerprint": "toy"}


@pytest.fixture(autouse=True)
def _quiet_single_threaded():
    """No random-weights warnings; one torch thread, since on a shared, busy machine the threads of tiny ops
    wait for each other (an L-BFGS probe on 100 samples took 1.2 s with 2 threads, 0.02 s with 1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)
    torch.set_num_threads(threads)


def _splits(rng, n, minority):
    """Classes and one binary attribute: in train the attribute agrees with the class but for `minority`;
    in val and test it is independent of the class."""
    y, attr, split = [], [], []
    for index, count in enumerate(n):
        labels = rng.integers(0, 2, count)
        agree = rng.random(count) >= (minority if index == 0 else 0.5)
        y.append(labels)
        attr.append(np.where(agree, labels, 1 - labels))
        split.append(np.full(count, index))
    return np.concatenate(y), np.concatenate(attr), np.concatenate(split)


def _write(path, features, y, attributes, split, attribute_values):
    return write_store(
        path, features.astype(np.float16), y, split, [f"img{i}" for i in range(len(y))], attributes,
        vocabulary=GroupVocabulary(CLASSES, attribute_values),
        provenance={**PROVENANCE, "embed_dim": features.shape[1], "normalized": True},
    )


# Not conftest.toy_store: labels of every split drawn before one noise matrix, 16-d, a weak class signal.
def make_store(path, *, n=(600, 200, 200), minority=0.2, seed=0):
    """Features = class direction e0 + a stronger attribute direction e1 + noise, L2-normalised: as in
    Waterbirds, the spurious attribute is the easier feature."""
    rng = np.random.default_rng(seed)
    y, attr, split = _splits(rng, n, minority)
    features = 0.5 * rng.standard_normal((len(y), DIM))
    features[:, 0] += 0.5 * (2 * y - 1)
    features[:, 1] += 2 * (2 * attr - 1)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return _write(path, features, y, {"place": attr}, split, {"place": ["grass", "water"]})


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("stores") / "toy.h5")


def _minority_recall(summary):
    per_group = summary["agreement"]["per_group"]
    return min(per_group["circle/water"]["recall"], per_group["square/grass"]["recall"])


def test_oracle_writes_the_true_groups_with_the_exact_columns(tmp_path, toy):
    out = tmp_path / "groups.parquet"
    summary = pseudo_label(toy, "oracle", out, plot=plot_confusion)
    frame = pd.read_parquet(out)
    assert tuple(frame.columns) == GROUP_FILE_COLUMNS
    from gcctl.store import FeatureStore

    with FeatureStore(toy) as store:
        train = store.split_index("train")
        assert list(frame["id"]) == list(store.ids[train])
        np.testing.assert_array_equal(frame["group"], store.group[train])
        assert list(frame["group_name"]) == [store.vocabulary.names[g] for g in store.group[train]]
    assert (frame["strategy"] == "oracle").all() and (frame["confidence"] == 1).all()
    assert summary["agreement"]["accuracy"] == 1.0
    report = json.loads((tmp_path / "groups.report.json").read_text())
    assert report["agreement"]["confusion"]["matrix"][1][1] == report["agreement"]["per_group"]["circle/water"]["true_n"]
    assert (tmp_path / "groups.report.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("strategy", ["val-probe", "kmeans", "erm-error"])
def test_each_feature_strategy_beats_the_majority_guess(tmp_path, toy, strategy):
    # Calling every train sample its class's majority group scores 80% accuracy and 0% minority recall.
    summary = pseudo_label(toy, strategy, tmp_path / "groups.parquet")
    assert summary["agreement"]["accuracy"] > 0.9
    assert _minority_recall(summary) > 0.6


def test_kmeans_over_clustering_survives_a_nuisance_factor(tmp_path):
    """A strong nuisance direction (like the synthetic world's random colour) splits every group in two."""
    rng = np.random.default_rng(2)
    y, attr, split = _splits(rng, (600, 200, 200), 0.2)
    features = 0.3 * rng.standard_normal((len(y), DIM))
    features[:, 0] += 0.5 * (2 * y - 1)
    features[:, 1] += 2 * (2 * attr - 1)
    features[:, 2] += 4 * rng.choice([-1, 1], len(y))
    store = _write(tmp_path / "nuisance.h5", features, y, {"place": attr}, split, {"place": ["grass", "water"]})
    one_each = pseudo_label(store, "kmeans", tmp_path / "k1.parquet")
    assert one_each["agreement"]["accuracy"] < 0.7  # two clusters per class split along the nuisance
    summary = pseudo_label(store, "kmeans", tmp_path / "k.parquet", clusters_per_group=3)
    assert summary["agreement"]["accuracy"] > 0.95 and _minority_recall(summary) > 0.8
    assert set(summary["notes"]["clusters_matched_by"].values()) == {"nearest validation group"}
    with pytest.raises(GcctlError, match="validation"):
        pseudo_label(store, "kmeans", tmp_path / "x.parquet", clusters_per_group=3, val_fraction=0.0)
    with pytest.raises(GcctlError, match="--clusters-per-group applies to --strategy kmeans only"):
        pseudo_label(store, "val-probe", tmp_path / "x.parquet", clusters_per_group=3)


def _text_feature_store(path, bundle, seed=0):
    """Features that ARE the text features of "a photo of a {class} on {value}." plus a little noise,
    so zero-shot attribute prediction must recover the attribute even with random text weights."""
    import torch

    from gcctl.clip.text import encode_texts

    rng = np.random.default_rng(seed)
    y, attr, split = _splits(rng, (300, 100, 100), 0.2)
    texts = [DEFAULT_ATTRIBUTE_PROMPT.replace("{class}", c).replace("{value}", v) for c in CLASSES for v in ("grass", "water")]
    with torch.no_grad():
        prompts = encode_texts(bundle.model, bundle.tokenizer, texts).numpy().reshape(2, 2, -1)
    spread = np.linalg.norm(prompts[:, 0] - prompts[:, 1], axis=1).min()
    features = prompts[y, attr] + 0.1 * spread / np.sqrt(prompts.shape[-1]) * rng.standard_normal((len(y), prompts.shape[-1]))
    return _write(path, features / np.linalg.norm(features, axis=1, keepdims=True), y, {"place": attr}, split,
                  {"place": ["grass", "water"]})


def test_zeroshot_attr_reads_the_attribute_from_its_prompts(tmp_path, shared_micro):
    store = _text_feature_store(tmp_path / "text.h5", shared_micro)  # the weights pseudo_label builds from seed 0
    summary = pseudo_label(store, "zeroshot-attr", tmp_path / "groups.parquet", seed=0)
    assert summary["agreement"]["accuracy"] > 0.9 and _minority_recall(summary) > 0.6
    assert summary["notes"]["prompts"]["place"] == ["a photo of a {class} on grass.", "a photo of a {class} on water."]
    # The same prompts spelled per value give the same labels.
    again = pseudo_label(store, "zeroshot-attr", tmp_path / "again.parquet", seed=0,
                         attribute_prompts=["place:grass=a photo of a {class} on grass.", "place:1=a photo of a {class} on water."])
    assert again["agreement"] == summary["agreement"]


def test_attribute_prompts_fill_templates_in_the_store_order():
    values = {"Young": ["purple", "orange"], "Male": ["snow", "forest"]}
    prompts = attribute_prompts(["Young=a photo of a {value} {class}.", "Male:1=a {class} in a forest"], values)
    assert list(prompts) == ["Young", "Male"]
    assert prompts["Young"] == ["a photo of a purple {class}.", "a photo of a orange {class}."]
    assert prompts["Male"] == ["a photo of a {class} on snow.", "a {class} in a forest"]
    # The dataset's own template for an attribute (its vocabulary's attribute_prompts) replaces the default.
    dataset_own = attribute_prompts(["Male:1=a {class} in a forest"], values, {"Young": "a {value} {class}", "Male": "{class} on {value}"})
    assert dataset_own == {"Young": ["a purple {class}", "a orange {class}"], "Male": ["{class} on snow", "a {class} in a forest"]}
    for bad in (["Old=a {value}"], ["Young=a photo"], ["Young:grey=a grey {class}"], ["no equals sign"]):
        with pytest.raises(GcctlError):
            attribute_prompts(bad, values)


def test_two_attributes_use_the_mixed_radix_vocabulary(tmp_path):
    rng = np.random.default_rng(1)
    y, young, split = _splits(rng, (800, 400, 200), 0.2)
    male = np.where(rng.random(len(y)) >= np.where(split == 0, 0.2, 0.5), y, 1 - y)  # like young, independently
    features = 0.4 * rng.standard_normal((len(y), DIM))
    features[:, 0] += 0.5 * (2 * y - 1)
    features[:, 1] += 2 * (2 * young - 1)
    features[:, 2] += 2 * (2 * male - 1)
    store = _write(tmp_path / "two.h5", features, y, {"Young": young, "Male": male}, split,
                   {"Young": ["purple", "orange"], "Male": ["snow", "forest"]})
    oracle = pseudo_label(store, "oracle", tmp_path / "oracle.parquet")
    assert oracle["agreement"]["accuracy"] == 1.0
    assert np.array(oracle["agreement"]["confusion"]["matrix"]).shape == (8, 8)
    probe = pseudo_label(store, "val-probe", tmp_path / "probe.parquet")
    assert probe["agreement"]["accuracy"] > 0.9
    groups = pd.read_parquet(tmp_path / "probe.parquet")["group"].to_numpy()
    assert set(np.unique(groups)) == set(range(8))
    # erm-error makes two groups per class; the correctly classified samples must be named after the
    # class's majority group (both attributes agreeing with the class: groups 0 and 7), not any group
    # the ERM probe happens to classify as well on the validation split.
    erm = pseudo_label(store, "erm-error", tmp_path / "erm.parquet")["agreement"]["per_group"]
    assert erm["circle/purple/snow"]["inferred_n"] > 0.5 * np.sum((y == 0) & (split == 0))
    assert erm["square/orange/forest"]["inferred_n"] > 0.5 * np.sum((y == 1) & (split == 0))


def test_the_group_file_is_what_training_reads(tmp_path, toy):
    from gcctl.methods.data import read_group_file
    from gcctl.store import FeatureStore

    out = tmp_path / "groups.parquet"
    pseudo_label(toy, "val-probe", out)
    with FeatureStore(toy) as store:
        groups, group_splits, named_by_size = read_group_file(out, store)
    np.testing.assert_array_equal(groups, pd.read_parquet(out)["group"])
    assert group_splits == ("val",)  # val-probe's groups stand for the validation split's labels
    assert not named_by_size


def test_low_confidence_samples_take_their_class_majority_group(tmp_path, toy):
    summary = pseudo_label(toy, "val-probe", tmp_path / "groups.parquet", min_confidence=1.0)
    frame = pd.read_parquet(tmp_path / "groups.parquet")
    assert summary["fallback"] == int((frame["confidence"] < 1.0).sum()) > 0
    assert set(frame["group"]) == {0, 3}  # circle/grass and square/water, the majority groups
    kept = pseudo_label(toy, "val-probe", tmp_path / "kept.parquet", min_confidence=0.0)
    assert kept["fallback"] == 0


def test_validation_cut_and_noise_are_seeded(tmp_path, toy):
    def run(name, seed):
        summary = pseudo_label(toy, "val-probe", tmp_path / name, val_fraction=0.25, val_label_noise=0.1, seed=seed)
        return summary, pd.read_parquet(tmp_path / name)["confidence"].to_numpy()

    (first, confidence), (_, again), (_, other) = run("a.parquet", 3), run("b.parquet", 3), run("c.parquet", 4)
    assert first["options"]["val_samples_used"] == 9 + 14 + 12 + 15  # a quarter of the groups of 37, 54, 49, 60
    np.testing.assert_array_equal(confidence, again)
    assert not np.array_equal(confidence, other)  # another seed, another quarter of the validation split


def test_without_validation_groups_kmeans_matches_by_size_and_val_probe_refuses(tmp_path, toy):
    summary = pseudo_label(toy, "kmeans", tmp_path / "k.parquet", val_fraction=0.0)
    assert set(summary["notes"]["clusters_matched_by"].values()) == {"size"}
    assert summary["agreement"]["accuracy_up_to_relabelling"] > 0.9
    with pytest.raises(GcctlError, match="validation"):
        pseudo_label(toy, "val-probe", tmp_path / "v.parquet", val_fraction=0.0)
    assert not (tmp_path / "v.parquet").exists() and not (tmp_path / "v.report.json").exists()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_store_with_one_group_per_class_is_refused_and_nothing_is_written(tmp_path, strategy):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 30)
    store = write_store(tmp_path / "flat.h5", rng.standard_normal((30, 4)).astype(np.float32), y, np.arange(30) % 3,
                        [f"i{k}" for k in range(30)], {}, vocabulary=GroupVocabulary(CLASSES), provenance=PROVENANCE)
    with pytest.raises(GcctlError, match="single group per class"):
        pseudo_label(store, strategy, tmp_path / "groups.parquet")
    assert list(tmp_path.iterdir()) == [store]


@pytest.mark.parametrize("options", [{"strategy": "magic"}, {"val_fraction": 1.5}, {"val_label_noise": 1.0},
                                     {"min_confidence": -0.1}, {"attribute_prompts": ["place=on {value}"]}])
def test_bad_options_are_refused(tmp_path, toy, options):
    with pytest.raises(GcctlError):
        pseudo_label(toy, out=tmp_path / "groups.parquet", **{"strategy": "val-probe", **options})
    assert not any(tmp_path.iterdir())


def test_agreement_counts_separation_up_to_relabelling():
    truth = np.array([0, 0, 1, 2, 3, 3])
    swapped = np.array([1, 1, 0, 3, 2, 2])  # every group renamed within its class
    result = agreement(truth, swapped, GroupVocabulary(["a", "b"], {"v": ["x", "y"]}))
    assert result["accuracy"] == 0.0 and result["accuracy_up_to_relabelling"] == 1.0
    assert result["per_group"]["a/x"] == {"true_n": 2, "inferred_n": 1, "precision": 0.0, "recall": 0.0}


def test_best_assignment_is_exact_and_greedy_beyond_eight():
    rng = np.random.default_rng(0)
    score = rng.random((5, 5))
    match = best_assignment(score)
    assert sorted(match) == list(range(5))
    import itertools

    best = max(itertools.permutations(range(5)), key=lambda p: score[np.arange(5), p].sum())
    assert score[np.arange(5), match].sum() == pytest.approx(score[np.arange(5), best].sum())
    diagonal = np.eye(10)[::-1]
    np.testing.assert_array_equal(best_assignment(diagonal), np.arange(10)[::-1])


def _cli(monkeypatch, capsys, *args):
    import gcctl.cli as cli
    from gcctl.cli import pseudo_label as command

    register = cli._register
    monkeypatch.setattr(cli, "_register", lambda: (register(), command.register(cli.app)))
    monkeypatch.setattr(sys, "argv", ["gcctl", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_cli_pseudo_label(monkeypatch, capsys, tmp_path, toy):
    code, out, _ = _cli(monkeypatch, capsys, "pseudo-label", "--help")
    assert code == 0 and "Example: gcctl pseudo-label" in " ".join(out.split())
    code, out, err = _cli(monkeypatch, capsys, "pseudo-label", "--features", str(toy), "--strategy", "kmeans",
                          "--out", str(tmp_path / "g.parquet"), "--report", str(tmp_path / "r.json"), "--json")
    assert code == 0, err
    assert json.loads(out)["strategy"] == "kmeans" and (tmp_path / "r.json").is_file() and (tmp_path / "r.png").is_file()
    code, out, err = _cli(monkeypatch, capsys, "pseudo-label", "--features", str(tmp_path / "missing.h5"),
                          "--out", str(tmp_path / "x.parquet"))
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("strategy", ["kmeans", "erm-error"])
def test_the_validation_split_is_labelled_without_reading_a_validation_group(tmp_path, toy, strategy):
    from gcctl.methods.data import read_group_file
    from gcctl.store import FeatureStore

    out = tmp_path / "val.parquet"
    summary = pseudo_label(toy, strategy, out, split="val")
    assert summary["split"] == "val" and summary["group_splits"] == [] and summary["options"]["val_samples_used"] == 0
    assert summary["agreement"]["accuracy_up_to_relabelling"] > 0.9
    with FeatureStore(toy) as store:
        assert list(pd.read_parquet(out)["id"]) == list(store.ids[store.split_index("val")])
        groups, group_splits, named_by_size = read_group_file(out, store, "val")
        assert group_splits == () and len(groups) == len(store.split_index("val"))
        assert named_by_size and summary["named_by_size"]  # no validation group to match its groups to
        with pytest.raises(GcctlError, match="no group for 600 train id"):
            read_group_file(out, store)  # a validation file is not the train split's


def test_group_files_say_which_true_groups_they_stand_for(tmp_path, toy):
    unmatched, matched = (pseudo_label(toy, "kmeans", tmp_path / name, val_fraction=fraction)
                          for name, fraction in (("a.parquet", 0.0), ("b.parquet", 1.0)))
    assert unmatched["group_splits"] == [] and unmatched["named_by_size"]
    assert matched["group_splits"] == ["val"] and not matched["named_by_size"]  # matched to validation groups
    assert pseudo_label(toy, "oracle", tmp_path / "c.parquet", split="val")["group_splits"] == ["val"]
    assert pseudo_label(toy, "oracle", tmp_path / "d.parquet")["group_splits"] == ["train"]


@pytest.mark.parametrize("strategy, split, message", [("val-probe", "val", "cannot infer them"),
                                                      ("kmeans", "test", "cannot be labelled")])
def test_a_split_that_cannot_be_labelled_is_refused_writing_nothing(tmp_path, toy, strategy, split, message):
    with pytest.raises(GcctlError, match=message):
        pseudo_label(toy, strategy, tmp_path / "groups.parquet", split=split)
    assert not any(tmp_path.iterdir())


def test_labelling_the_validation_split_refuses_validation_label_options_and_records_none_used(tmp_path, toy):
    with pytest.raises(GcctlError, match="apply to --split train only"):
        pseudo_label(toy, "kmeans", tmp_path / "a.parquet", split="val", val_fraction=0.5)
    assert not any(tmp_path.iterdir())
    assert pseudo_label(toy, "kmeans", tmp_path / "b.parquet", split="val")["options"]["val_fraction"] == 0.0
