"""TIE and TIE*: image embeddings translated against the text direction of their spurious value."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TOY_CLASSES, TOY_PLACES, toy_features, toy_store

from gcctl.clip.captions import DEFAULT_ATTRIBUTE_PROMPT, fill_prompt
from gcctl.clip.text import encode_texts
from gcctl.methods.runs import evaluate_run, train_run
from gcctl.methods.spurious import prompt_embeddings
from gcctl.methods.tie import value_directions
from gcctl.methods.transforms import SpuriousTranslation, transform_from_state

DIM = 32
CLASSES, PLACES = TOY_CLASSES, TOY_PLACES
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("quiet_random_weights")  # conftest: models with random weights warn


@pytest.fixture(scope="module")
def place_texts(shared_micro):
    """The default value directions: the attribute prompt of each place, averaged over the classes."""
    texts = {"place": [[fill_prompt(DEFAULT_ATTRIBUTE_PROMPT, value=p, **{"class": c}) for c in CLASSES] for p in PLACES]}
    return value_directions(prompt_embeddings(shared_micro, texts)["place"])


def write_toy_store(path, place_texts, *, attributes=True, n=(400, 200, 200), seed=0):
    """Features = 2 × a random class direction + 3 × the place's text direction + noise; the place follows the class
    in 90% of train, independent of it in val and test. Returns the store and its features, places and splits."""
    centers = F.normalize(torch.randn(2, DIM, generator=torch.Generator().manual_seed(seed)), dim=-1).numpy()
    options = {"n": n, "corr": 0.9, "seed": seed, "dim": DIM, "class_dirs": centers, "class_strength": 2,
               "place_dirs": place_texts.numpy(), "place_strength": 3, "noise": 0.15}
    toy_store(path, dtype=np.float32, attributes=attributes, **options)
    features, _, place, split = toy_features(**options)
    return path, torch.from_numpy(features).float(), torch.from_numpy(place), split


@pytest.fixture(scope="module")
def toy(tmp_path_factory, place_texts):
    return write_toy_store(tmp_path_factory.mktemp("stores") / "toy.h5", place_texts)


def saved_translation(run) -> SpuriousTranslation:
    state = torch.load(run / "params.pt", weights_only=True)[None]["classifier"]["transform"]
    return transform_from_state(state, CPU)


def test_translation_subtracts_each_attributes_scaled_direction_then_renormalises():
    directions = torch.eye(5)  # attribute 0: rows 0, 1; attribute 1: rows 2, 3, 4
    translation = SpuriousTranslation(scorer_weight=torch.eye(5), scorer_bias=torch.zeros(5), directions=directions,
                                      scales=torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), attribute=torch.tensor([0, 0, 1, 1, 1]))
    features = F.normalize(torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.8], [0.1, 0.7, 0.6, 0.2, 0.0]]), dim=-1)

    assert translation.values(features).tolist() == [[0, 4], [1, 2]]
    expected_shift = torch.stack([0.1 * directions[0] + 0.5 * directions[4], 0.2 * directions[1] + 0.3 * directions[2]])
    torch.testing.assert_close(translation.shift(features), expected_shift)
    torch.testing.assert_close(translation(features), F.normalize(features - expected_shift, dim=-1))


def test_tie_removes_the_mean_projection_of_each_value_measured_on_val(tmp_path, toy, place_texts):
    store, features, place, split = toy
    train_run(store, "tie", tmp_path / "run", device="cpu")
    translation = saved_translation(tmp_path / "run")
    torch.testing.assert_close(translation.directions, place_texts)

    val, val_place = features[split == 1], place[split == 1]
    expected = torch.stack([(val[val_place == v] @ place_texts[v]).mean() for v in range(2)])
    torch.testing.assert_close(translation.scales, expected)
    # The val probe names every image's place, so each moves by exactly its place's scale along its text...
    test = features[split == 2]
    assert (translation.values(test)[:, 0] == place[split == 2]).float().mean() > 0.97
    chosen = translation.values(val)[:, 0]
    torch.testing.assert_close(translation.shift(val), expected[chosen, None] * place_texts[chosen])
    # ...which leaves the val images of a place with no mean component along that place's text.
    moved = val - translation.shift(val)
    for v in range(2):
        assert abs(float((moved[(val_place == v) & (chosen == v)] @ place_texts[v]).mean())) < 0.01


def test_tie_star_infers_the_place_zero_shot_and_measures_scales_on_train(tmp_path, toy, place_texts):
    store, features, _, split = toy
    train_run(store, "tie-star", tmp_path / "run", device="cpu")
    translation = saved_translation(tmp_path / "run")

    train = features[split == 0]
    inferred = (train @ place_texts.T).argmax(dim=1)
    assert translation.values(train)[:, 0].tolist() == inferred.tolist()
    expected = torch.stack([(train[inferred == v] @ place_texts[v]).mean() for v in range(2)])
    torch.testing.assert_close(translation.scales, expected)


def test_attribute_prompt_sets_the_direction_and_the_run_evaluates(tmp_path, toy, shared_micro, run_cli):
    store = toy[0]
    code, out, err = run_cli("train", "--features", str(store), "--method", "tie-star", "--device", "cpu",
                             "--attribute-prompt", "place=a photo with a {value} background.", "--out", str(tmp_path / "run"))
    assert code == 0, err
    texts = encode_texts(shared_micro.model, shared_micro.tokenizer, [f"a photo with a {p} background." for p in PLACES])
    torch.testing.assert_close(saved_translation(tmp_path / "run").directions, texts)
    code, out, err = run_cli("evaluate", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "m.json"), "--device", "cpu")
    assert code == 0, err
    assert 0 <= evaluate_run(tmp_path / "run", "test", device="cpu")["acc_wg"]["mean"] <= 1


@pytest.mark.parametrize(("method", "extra", "fragment"), [
    ("tie", [], "the store has no attribute"),
    ("tie-star", ["--attribute-prompt", "place"], "is not ATTR=TEMPLATE"),
    ("linear", ["--attribute-prompt", "place=a {value}"], "does not apply to method 'linear'"),
])
def test_bad_input_is_one_line_and_writes_no_run(tmp_path, place_texts, toy, run_cli, method, extra, fragment):
    store = write_toy_store(tmp_path / "plain.h5", place_texts, attributes=False)[0] if method == "tie" else toy[0]
    code, out, err = run_cli("train", "--features", str(store), "--method", method, "--device", "cpu", *extra,
                             "--out", str(tmp_path / "run"))
    assert code == 1
    assert err.startswith("error:") and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()
