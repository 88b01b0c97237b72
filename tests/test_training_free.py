"""The training-free debiasing methods (orthproj, roboshot) on a tiny store, with the `gcctl-micro` model."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MICRO

from gcctl.clip.reference import ModelRef
from gcctl.clip.text import encode_texts
from gcctl.datasets.groups import GroupVocabulary
from gcctl.errors import GcctlError
from gcctl.methods import make_config
from gcctl.methods.data import load_training_data
from gcctl.methods.orthproj import fit as fit_orthproj
from gcctl.methods.roboshot import fit as fit_roboshot
from gcctl.store import FeatureStore, write_store

CLASSES = ["circle", "square"]
VALUES = ["grass", "water"]
PROMPT = "a photo of a {} on {}."  # gcctl.clip.captions' default attribute prompt


pytestmark = pytest.mark.usefixtures("quiet_random_weights")  # conftest: models with random weights warn


# Not conftest.toy_store: no signal at all, and groups laid out in a fixed, balanced pattern rather than drawn.
def make_store(path, attributes=True, seed=0):
    """Random unit features, 40 per split, every (class, place) group present in each split."""
    rng = np.random.default_rng(seed)
    n = 120
    features = rng.standard_normal((n, 32))
    y, place, split = np.arange(n) % 2, (np.arange(n) // 2) % 2, np.arange(n) // 40
    vocabulary = GroupVocabulary(CLASSES, {"place": VALUES} if attributes else {})
    write_store(path, (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32), y, split,
                [f"img{i}" for i in range(n)], {"place": place} if attributes else {}, vocabulary=vocabulary,
                provenance={"model_ref": ModelRef(MICRO, "none", "", "none").to_dict(), "embed_dim": 32,
                            "normalized": True, "dataset": "toy", "dataset_fingerprint": "toy"})
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("stores") / "toy.h5")


@pytest.fixture(scope="module")
def data(store):
    with FeatureStore(store) as opened:
        return load_training_data(opened, torch.device("cpu"))


def embed(bundle, texts):
    return encode_texts(bundle.model, bundle.tokenizer, texts).double()


def class_prompt_pairs(bundle):
    """The attribute prompts per (class, place), and the class-neutral embedding of each place."""
    prompts = {(c, v): embed(bundle, [PROMPT.format(c, v)])[0] for c in CLASSES for v in VALUES}
    neutral = torch.stack([(prompts[CLASSES[0], v] + prompts[CLASSES[1], v]) / 2 for v in VALUES])
    return prompts, neutral


@pytest.mark.parametrize("calibrate", [False, True])
def test_orthogonal_projection_leaves_the_classes_no_component_on_the_spurious_span(data, shared_micro, calibrate):
    result = fit_orthproj(data, make_config("orthproj", {"calibrate": calibrate}), seed=0, bundle=shared_micro, device=torch.device("cpu"))
    _, spurious = class_prompt_pairs(shared_micro)
    classes = F.normalize(result.classifier.weight.double(), dim=-1)
    before = embed(shared_micro, [f"a photo of a {c}." for c in CLASSES])
    assert (before @ F.normalize(spurious, dim=-1).T).abs().min() > 0.05  # the prompts did lie on the span
    assert (classes @ F.normalize(spurious, dim=-1).T).abs().max() < 1e-5


def test_calibration_is_the_closed_form_optimum_and_brings_matched_pairs_closer(data, shared_micro):
    device, lam = torch.device("cpu"), 1000.0
    plain, calibrated = (fit_orthproj(data, make_config("orthproj", {"calibrate": c}), seed=0, bundle=shared_micro, device=device)
                         .learned["projection"].double() for c in (False, True))
    prompts, _ = class_prompt_pairs(shared_micro)
    differences = torch.stack([prompts[c, VALUES[0]] - prompts[c, VALUES[1]] for c in CLASSES])
    # The loss ||P - P0||² + λ mean ||P (z_i - z_j)||² is stationary where P (I + λ M) = P0.
    m = differences.T @ differences / len(differences)
    torch.testing.assert_close(calibrated @ (torch.eye(len(m), dtype=m.dtype) + lam * m), plain, atol=1e-4, rtol=0)

    def pair_distance(projection):
        return (differences @ projection.T).square().sum(dim=1).mean()

    assert pair_distance(calibrated) < 0.1 * pair_distance(plain)


def write_insights(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_roboshot_output_has_no_component_on_a_harmful_direction(tmp_path, data, shared_micro):
    pairs = [("a circle on grass", "a circle on water"), ("a circle on water", "a square on sand"),
             ("a circle on grass", "a square on sand")]  # the third is the sum of the others: no new direction
    insights = write_insights(tmp_path / "insights.tsv", ["# harmful only: the rejection step"] + [f"harmful\t{a}\t{b}" for a, b in pairs])
    result = fit_roboshot(data, make_config("roboshot", {"insights": str(insights)}), seed=0, bundle=shared_micro, device=torch.device("cpu"))
    harmful = F.normalize(torch.stack([embed(shared_micro, [a])[0] - embed(shared_micro, [b])[0] for a, b in pairs]), dim=-1).float()
    images = F.normalize(torch.randn(50, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert (images @ harmful.T).abs().max() > 0.1
    out = result.classifier.transform(images)
    assert (out @ harmful.T).abs().max() < 1e-5
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(50))
    assert torch.linalg.matrix_rank(result.classifier.transform.matrix) == 32 - 2  # only the span is removed


def papers_updates(images, harmful, helpful):
    """RoboShot's rule as its paper states it: QR each kind, reject then accept one direction at a time."""
    x = images.double()
    for directions, sign in ((harmful, -1), (helpful, +1)):
        basis, _ = torch.linalg.qr(directions.T)
        for v in basis.T:
            x = F.normalize(x + sign * (x @ v)[:, None] * v, dim=-1)
    return x.float()


def test_roboshot_by_default_follows_the_papers_updates_on_insights_from_the_names(data, shared_micro):
    result = fit_roboshot(data, make_config("roboshot", {}), seed=0, bundle=shared_micro, device=torch.device("cpu"))
    prompts, _ = class_prompt_pairs(shared_micro)
    harmful = torch.stack([prompts[c, VALUES[0]] - prompts[c, VALUES[1]] for c in CLASSES])
    helpful = torch.stack([prompts[CLASSES[0], v] - prompts[CLASSES[1], v] for v in VALUES])
    images = F.normalize(torch.randn(50, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    torch.testing.assert_close(result.classifier.transform(images), papers_updates(images, harmful, helpful), atol=1e-5, rtol=0)
    assert result.selection["insights"]["harmful"][0] == [PROMPT.format("circle", "grass"), PROMPT.format("circle", "water")]


@pytest.mark.parametrize("line", ["harmful\tonly one text", "useful\ta\tb", "harmful a circle  a square",
                                  "helpful\ta circle\ta circle", "harmful\t\tb"])
def test_a_malformed_insight_line_is_refused_with_its_number(tmp_path, line):
    insights = write_insights(tmp_path / "insights.tsv", ["# comment", "harmful\ton grass\ton water", "", line])
    with pytest.raises(GcctlError, match="line 4"):
        make_config("roboshot", {"insights": str(insights)})


def test_insight_files_without_pairs_or_beside_attribute_prompts_are_refused(tmp_path):
    with pytest.raises(GcctlError, match="no insight pairs"):
        make_config("roboshot", {"insights": str(write_insights(tmp_path / "empty.tsv", ["# nothing"]))})
    with pytest.raises(GcctlError, match="not found"):
        make_config("roboshot", {"insights": str(tmp_path / "absent.tsv")})
    insights = write_insights(tmp_path / "one.tsv", ["harmful\ta\tb"])
    with pytest.raises(GcctlError, match="give one of them"):
        make_config("roboshot", {"insights": str(insights), "attribute_prompts": ["place=on {value}"]})
    with pytest.raises(GcctlError, match="--calibration-lambda does not apply to method 'roboshot'"):
        make_config("roboshot", {"calibration_lambda": 10.0})
    with pytest.raises(GcctlError, match="--attribute-prompt does not apply to method 'linear'"):
        make_config("linear", {"attribute_prompts": ["place=on {value}"]})


@pytest.mark.parametrize("args", [["--method", "orthproj", "--calibrate"], ["--method", "roboshot"]])
def test_cli_trains_and_evaluates(tmp_path, store, run_cli, args):
    code, _, err = run_cli("train", "--features", str(store), *args, "--out", str(tmp_path / "run"), "--device", "cpu", "--json")
    assert code == 0, err
    code, _, err = run_cli("evaluate", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "test.json"), "--device", "cpu")
    assert code == 0, err
    metrics = json.loads((tmp_path / "test.json").read_text())
    assert metrics["provenance"]["method"] == args[1] and set(metrics["per_group"]) == {f"{c}/{v}" for c in CLASSES for v in VALUES}


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "roboshot", "--insights", "BAD"], "line 2 is not 'harmful|helpful<TAB>text a<TAB>text b'"),
    (["--method", "orthproj", "--features", "PLAIN"], "needs the spurious attribute's value names"),
    (["--method", "roboshot", "--attribute-prompt", "shape=a {value}"], "has no attribute 'shape'"),
])
def test_cli_bad_input_is_one_line_and_leaves_no_run(tmp_path, store, run_cli, args, message):
    bad = write_insights(tmp_path / "bad.tsv", ["harmful\ton grass\ton water", "harmful on grass, on water"])
    plain = make_store(tmp_path / "plain.h5", attributes=False)
    args = [{"BAD": str(bad), "PLAIN": str(plain)}.get(arg, arg) for arg in args]
    features = [] if "--features" in args else ["--features", str(store)]
    code, _, err = run_cli("train", *features, *args, "--out", str(tmp_path / "run"), "--device", "cpu")
    assert code == 1
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()
