"""`gcctl discover`: a planted attribute is found, its output drives the methods, bad input is one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import TOY_CLASSES, TOY_PLACES, toy_store

from gcctl.discovery import OPTIONS_FILE, RESULT_FILE, discover, flagged_by_clusters, synthetic_candidates
from gcctl.errors import GcctlError
from gcctl.metrics import predictions_frame
from gcctl.store import FeatureStore

DISTRACTORS = ["red", "striped", "forest", "snow", "at night", "small", "sand", "blue"]


def bag_of_words(model, tokenizer, texts):
    """A text tower whose words are distinct: a prompt is the unit sum of one fixed random vector per word. A
    random-weight CLIP's prompts all point nearly one way, so no word could be told from another there."""
    from gcctl.clip.words import split_words

    def vector(word: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int.from_bytes(word.encode(), "little") % (2**31))
        return torch.randn(DIM, generator=generator)

    return torch.nn.functional.normalize(torch.stack([sum(vector(w) for w in split_words(text)) for text in texts]), dim=-1)


DIM = 32  # the micro CLIP's embedding width


@pytest.fixture(autouse=True)
def distinct_words(monkeypatch):
    monkeypatch.setattr("gcctl.discovery.encode_texts", bag_of_words)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A store whose place signal is the text direction of 'on land' / 'on water': the spurious attribute a
    discovery must name, among distractor words."""
    place_dirs = [bag_of_words(None, None, [f"a photo of a {name} on {place}." for name in TOY_CLASSES]).mean(dim=0)
                  for place in TOY_PLACES]
    class_dirs = np.zeros((2, DIM))
    class_dirs[0, 0], class_dirs[1, 0] = 1.0, -1.0
    base = tmp_path_factory.mktemp("planted")
    store = toy_store(base / "store.h5", dtype=np.float32, dim=DIM, class_dirs=class_dirs,
                      place_dirs=torch.stack(place_dirs).numpy(), place_strength=2.0, noise=0.1, corr=0.9)
    vocabulary = base / "words.txt"
    vocabulary.write_text("# the planted values among distractors\n" + "\n".join([*DISTRACTORS, *TOY_PLACES]) + "\n")
    return store, vocabulary


def test_the_planted_attribute_tops_every_class_from_clusters_alone(planted, tmp_path):
    store, vocabulary = planted
    result = discover(store, tmp_path / "d", vocabulary=str(vocabulary), device="cpu")
    # Each class's minority sits on the other class's place: that place's word explains the cluster.
    assert result["classes"]["landbird"]["ranked"][0]["word"] == "water"
    assert result["classes"]["waterbird"]["ranked"][0]["word"] == "land"
    assert sorted(result["discovered"]) == ["land", "water"]
    assert {(pair["attribute"], pair["value"], pair["word"]) for pair in result["attribute_values"]} == {
        ("place", "land", "land"), ("place", "water", "water")}
    assert result["provenance"]["flagged"] == "smaller k-means cluster" and result["provenance"]["candidates"] == 10


def test_errors_of_predictions_are_what_the_words_explain(planted, tmp_path):
    store, vocabulary = planted
    with FeatureStore(store) as opened:
        rows = opened.split_index("test")
        y, group = opened.y[rows], opened.group[rows]
        place = opened.vocabulary.decode(group)[1]["place"]
        ids, vocab = opened.ids[rows], opened.vocabulary
    # A shortcut model: it predicts the place, so its errors are the samples off their class's place.
    scores = np.eye(2)[place] * 5.0
    frame = predictions_frame(ids, y, group, "test", {0: scores}, vocab)
    from gcctl.metrics import write_evaluation

    write_evaluation(tmp_path / "m.json", {"provenance": {}}, frame, vocab)
    result = discover(store, tmp_path / "d", predictions=tmp_path / "m.predictions.parquet", vocabulary=str(vocabulary),
                      device="cpu")
    assert result["provenance"]["flagged"] == "errors" and result["provenance"]["split"] == "test"
    assert result["classes"]["landbird"]["flagged"] == int(((y == 0) & (place == 1)).sum())
    assert result["classes"]["landbird"]["ranked"][0]["word"] == "water"


def test_the_output_drives_roboshot_and_the_attribute_prompt_methods(planted, tmp_path, run_cli):
    store, vocabulary = planted
    code, out, err = run_cli("discover", "--features", str(store), "--vocabulary", str(vocabulary), "--out",
                             str(tmp_path / "d"), "--device", "cpu")
    assert code == 0, err
    assert "discovered:" in out
    options = yaml.safe_load((tmp_path / "d" / OPTIONS_FILE).read_text())
    assert sorted(options["attribute_prompts"]["attribute_prompt"]) == ["place:land=a photo of a {class} on land.",
                                                                        "place:water=a photo of a {class} on water."]
    lines = (tmp_path / "d" / "insights.tsv").read_text().splitlines()
    assert "harmful\ta photo of a landbird on land.\ta photo of a landbird on water." in lines
    for method, key in (("orthproj", "attribute_prompts"), ("roboshot", "insights")):
        code, _, err = run_cli("--config", f"{tmp_path / 'd' / OPTIONS_FILE}:{key}", "train", "--features", str(store),
                               "--method", method, "--out", str(tmp_path / method), "--device", "cpu")
        assert code == 0, err


def test_predictions_without_errors_fall_back_to_clusters_only_when_asked(planted, tmp_path):
    store, vocabulary = planted
    with FeatureStore(store) as opened:
        rows = opened.split_index("test")
        frame = predictions_frame(opened.ids[rows], opened.y[rows], opened.group[rows], "test",
                                  {0: np.eye(2)[opened.y[rows]] * 5.0}, opened.vocabulary)  # never wrong
        vocab = opened.vocabulary
    from gcctl.metrics import write_evaluation

    write_evaluation(tmp_path / "m.json", {"provenance": {}}, frame, vocab)
    predictions = tmp_path / "m.predictions.parquet"
    with pytest.raises(GcctlError, match="no class has both flagged and other images"):
        discover(store, tmp_path / "d", predictions=predictions, vocabulary=str(vocabulary), device="cpu")
    result = discover(store, tmp_path / "d", predictions=predictions, vocabulary=str(vocabulary), device="cpu",
                      clusters_without_errors=True)
    assert result["provenance"]["flagged"] == "smaller k-means cluster (the predictions had no error to explain)"
    assert result["provenance"]["split"] == "train" and result["classes"]["landbird"]["ranked"][0]["word"] == "water"


def test_smaller_clusters_are_flagged_per_class():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    minority = np.zeros(200, dtype=bool)
    minority[[*range(10), *range(100, 120)]] = True
    features = torch.from_numpy(np.where(minority[:, None], 3.0, -3.0) * np.eye(8)[1] + rng.normal(size=(200, 8)) * 0.3)
    np.testing.assert_array_equal(flagged_by_clusters(features.float(), y, 2, seed=0), minority)


def test_the_synthetic_vocabulary_reads_each_factor_as_the_corpus_does():
    by_word = {candidate.word: candidate.prompt for candidate in synthetic_candidates()}
    assert by_word["red"] == "a photo of a red {class}." and by_word["water"] == "a photo of a {class} on water."
    assert "striped" in by_word and "small" in by_word and "on the left" in by_word
    assert len(by_word) == len(synthetic_candidates())  # no word twice


@pytest.mark.parametrize("content, message", [("# only a comment\n\n", "holds no word"), (b"\xff\xfe", "not UTF-8")])
def test_a_bad_vocabulary_is_one_line_and_writes_nothing(planted, tmp_path, run_cli, content, message):
    store, _ = planted
    words = tmp_path / "words.txt"
    words.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = run_cli("discover", "--features", str(store), "--vocabulary", str(words), "--out", str(tmp_path / "d"),
                           "--device", "cpu")
    assert code == 1 and message in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_missing_inputs_and_an_earlier_output_are_refused(planted, tmp_path):
    store, vocabulary = planted
    with pytest.raises(GcctlError, match="predictions file .* not found"):
        discover(store, tmp_path / "d", predictions=tmp_path / "none.parquet", device="cpu")
    with pytest.raises(GcctlError, match="vocabulary .* not found"):
        discover(store, tmp_path / "d", vocabulary=str(tmp_path / "none.txt"), device="cpu")
    discover(store, tmp_path / "d", vocabulary=str(vocabulary), device="cpu")
    with pytest.raises(GcctlError, match="pass --overwrite"):
        discover(store, tmp_path / "d", vocabulary=str(vocabulary), device="cpu")
    again = discover(store, tmp_path / "d", vocabulary=str(vocabulary), device="cpu", overwrite=True)
    assert (tmp_path / "d" / RESULT_FILE).is_file() and again["discovered"]


def test_names_vocabulary_ranks_the_stores_own_values(planted, tmp_path):
    store, _ = planted
    result = discover(store, tmp_path / "d", vocabulary="names", device="cpu")
    assert result["classes"]["landbird"]["ranked"][0]["word"] == "water"
    assert pd.Series([entry["word"] for entry in result["classes"]["waterbird"]["ranked"]]).tolist() == ["land", "water"]
