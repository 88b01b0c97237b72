"""The contrastive adapter: identity at the start, its hard-sample mining and loss, seeds, CLI and bad input."""

import math

import numpy as np
import pytest
import torch
from conftest import toy_store

from gcctl.methods.adapter import (
    AdapterConfig,
    HardSamples,
    adapter_scorer,
    contrastive_loss,
    mine_hard_samples,
)
from gcctl.methods.base import Classifier
from gcctl.methods.data import load_training_data
from gcctl.methods.runs import evaluate_run, train_run
from gcctl.methods.transforms import ResidualAdapter
from gcctl.methods.zeroshot import ZeroShotConfig
from gcctl.methods.zeroshot import fit as fit_zeroshot
from gcctl.store import FeatureStore

SMALL = {"epochs": 2, "num_positives": 16, "num_negatives": 16, "num_neighbors_for_negatives": 32}


pytestmark = pytest.mark.usefixtures("quiet_random_weights")  # conftest: models with random weights warn


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Class signal on e0, a background that agrees with the class in 90% of train (independent in val/test)."""
    return toy_store(tmp_path_factory.mktemp("stores") / "toy.h5", n=(300, 120, 120), corr=0.9, place_strength=1)


def test_a_new_adapter_is_the_identity_so_its_classifier_is_zeroshot(store, shared_micro):
    with FeatureStore(store) as opened:
        data = load_training_data(opened, torch.device("cpu"))
    scorer = adapter_scorer(data, AdapterConfig(), shared_micro, torch.device("cpu"), torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(data.val.features.float(), dim=-1)
    torch.testing.assert_close(scorer.adapter(unit), unit)
    zeroshot = fit_zeroshot(data, ZeroShotConfig(), seed=0, bundle=shared_micro, device=torch.device("cpu")).classifier
    assert np.allclose(scorer.classifier().scores(data.val.features), zeroshot.scores(data.val.features), atol=1e-5)
    # ...but not a do-nothing module: its hidden layer is live, and moving `up` changes the output.
    torch.nn.init.normal_(scorer.adapter.up.weight)
    assert not torch.allclose(scorer.adapter(unit), unit)


def _circle(degrees):
    radians = torch.tensor(degrees, dtype=torch.float32) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


def test_mining_takes_anchors_from_zeroshot_errors_positives_across_its_boundary_negatives_from_neighbours():
    # index:            0    1    2     3     4     5   6
    features = _circle([0, 10, 170, 180, 175, 4, 90])
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    zeroshot = torch.tensor([0, 0, 1, 1, 1, 0, 1])  # 2 and 5 are wrong: the anchors
    hard = mine_hard_samples(features, y, zeroshot, num_positives=10, num_negatives=10, num_neighbors=3,
                             generator=torch.Generator().manual_seed(0))

    def chosen(indices, mask, row):
        return set(indices[row][mask[row]].tolist())

    assert hard.anchor.tolist() == [2, 5]
    assert chosen(hard.positives, hard.positive_mask, 0) == {0, 1}  # class 0, predicted 0 unlike anchor 2
    assert chosen(hard.positives, hard.positive_mask, 1) == {3, 4, 6}  # class 1, predicted 1 unlike anchor 5
    assert chosen(hard.negatives, hard.negative_mask, 0) == {4, 3, 6}  # 2's 3 nearest (175°, 180°, 90°), all class 1
    assert chosen(hard.negatives, hard.negative_mask, 1) == {0, 1}  # 5's 3 nearest are 0, 1 and 6; 6 is its class

    fewer = mine_hard_samples(features, y, zeroshot, num_positives=1, num_negatives=2, num_neighbors=2,
                              generator=torch.Generator().manual_seed(0))
    assert fewer.positives.shape == (2, 1) and fewer.positive_mask.all()
    assert chosen(fewer.positives, fewer.positive_mask, 0) <= {0, 1}
    assert chosen(fewer.negatives, fewer.negative_mask, 0) == {4, 3}  # only the 2 nearest are candidates

    perfect = mine_hard_samples(features, y, y.clone(), num_positives=10, num_negatives=10, num_neighbors=3,
                                generator=torch.Generator().manual_seed(0))
    assert len(perfect.anchor) == 0 and contrastive_loss(None, features, perfect, torch.full((7,), -1), torch.arange(7), 0.1).eq(0).all()


def test_contrastive_loss_is_the_stated_formula():
    features = _circle([0, 30, 60, 120, 200])
    hard = HardSamples(anchor=torch.tensor([0]), positives=torch.tensor([[1, 2]]), positive_mask=torch.tensor([[True, True]]),
                       negatives=torch.tensor([[3, 4, 0]]), negative_mask=torch.tensor([[True, True, False]]))
    slots = torch.tensor([0, -1, -1, -1, -1])
    loss = contrastive_loss(lambda x: x, features, hard, slots, torch.tensor([1, 0]), temperature=0.5)

    cos = features @ features[0]
    negatives = math.exp(cos[3] / 0.5) + math.exp(cos[4] / 0.5)
    expected = np.mean([-math.log(math.exp(cos[p] / 0.5) / (math.exp(cos[p] / 0.5) + negatives)) for p in (1, 2)])
    assert loss[0] == 0  # not an anchor
    assert loss[1].item() == pytest.approx(expected, rel=1e-5)


def _params(run, seed):
    return torch.load(run / "params.pt", weights_only=True)[seed]["classifier"]["transform"]


def test_same_seed_same_adapter_other_seed_another(tmp_path, store):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train_run(store, "adapter", tmp_path / name, options=SMALL, seeds=[seed])
    a, b, c = _params(tmp_path / "a", 1), _params(tmp_path / "b", 1), _params(tmp_path / "c", 2)
    assert a["kind"] == "residual_adapter"
    for key in ("down.weight", "down.bias", "up.weight", "up.bias"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.equal(a["down.weight"], c["down.weight"])
    assert a["up.weight"].abs().sum() > 0  # it trained away from the identity


def test_cli_trains_and_evaluates_an_adapter_run(tmp_path, store, run_cli):
    run = tmp_path / "run"
    code, _, err = run_cli("train", "--features", str(store), "--method", "adapter", "--epochs", "6", "--num-positives", "16",
                           "--num-negatives", "16", "--num-neighbors-for-negatives", "32", "--hidden-dim", "16",
                           "--out", str(run), "--device", "cpu")
    assert code in (0, None), err
    code, _, err = run_cli("evaluate", "--run", str(run), "--out", str(tmp_path / "test.json"))
    assert code in (0, None), err
    metrics = evaluate_run(run, "test")
    assert metrics["acc_avg"]["mean"] > 0.8  # class labels teach the adapter the classes the random text tower can't
    assert metrics["provenance"]["method"] == "adapter"


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--hidden-dim", "0", "--hidden-dim must be positive, got 0"),
    ("--temperature", "-1", "--temperature must be positive, got -1.0"),
    ("--classification-weight", "-0.5", "--classification-weight must be 0 or more"),
])
def test_bad_adapter_options_are_one_line_errors_without_a_run(tmp_path, store, run_cli, flag, value, message):
    code, _, err = run_cli("train", "--features", str(store), "--method", "adapter", flag, value, "--out", str(tmp_path / "run"))
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_adapter_options_do_not_apply_to_other_methods(tmp_path, store, run_cli):
    code, _, err = run_cli("train", "--features", str(store), "--method", "linear", "--hidden-dim", "8", "--out", str(tmp_path / "run"))
    assert code == 1 and "--hidden-dim does not apply to method 'linear'" in err


def test_an_adapted_classifier_scores_the_same_after_a_round_trip_through_its_state():
    torch.manual_seed(0)
    adapter = ResidualAdapter(8, 4, torch.Generator().manual_seed(0))
    torch.nn.init.normal_(adapter.up.weight)  # a trained-looking adapter, not the identity
    classifier = Classifier(weight=torch.randn(3, 8), bias=torch.zeros(3), prompt_class=torch.arange(3), num_classes=3,
                            transform=adapter)
    features = torch.randn(5, 8)
    restored = Classifier.from_state(classifier.state(), torch.device("cpu"))
    assert isinstance(restored.transform, ResidualAdapter)
    assert np.allclose(restored.scores(features), classifier.scores(features))


def test_group_units_is_torch_unique_without_the_sort():
    """The contrastive loss dedupes a step's samples with group_units; it must give torch.unique's answer."""
    from gcctl.methods.loop import group_units

    indices = torch.randint(0, 5000, (20000,), generator=torch.Generator().manual_seed(0))
    inverse, present = group_units(indices)
    expected_present, expected_inverse = torch.unique(indices, return_inverse=True)
    assert torch.equal(present, expected_present) and torch.equal(inverse, expected_inverse)
