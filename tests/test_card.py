"""The concept check of a model's card: every factor of the synthetic world, every value, counted."""

import json

import pytest

from gcctl.errors import GcctlError
from gcctl.evaluation.concepts import concept_check
from gcctl.synth.render import BACKGROUNDS, COLOURS, FILLS, SHAPES

pytestmark = pytest.mark.usefixtures("quiet_random_weights")


def test_every_value_of_every_factor_is_checked(shared_micro):
    card = concept_check(shared_micro, per_value=2, seed=0, size=32)
    for factor, values in (("kind", SHAPES), ("colour", COLOURS), ("background", BACKGROUNDS), ("fill", FILLS[1:])):
        entry = card[factor]
        assert list(entry["per_value"]) == list(values) and entry["values"] == len(values)
        assert entry["named"] == sum(accuracy >= 0.5 for accuracy in entry["per_value"].values())
        assert 0 <= entry["accuracy"] <= 1
    assert card["concepts"] == 16 + 12 + 10 + 3 and card["images"] == 2 * 16 * 3
    assert card["named"] == sum(card[factor]["named"] for factor in ("kind", "colour", "background", "fill"))
    assert concept_check(shared_micro, per_value=2, seed=0) == card  # a function of the seed
    with pytest.raises(GcctlError, match="at least 1"):
        concept_check(shared_micro, per_value=0)


def test_a_card_beside_its_weights_records_them_by_a_relative_path(run_cli, tmp_path):
    from gcctl.clip import build_clip, save_checkpoint

    weights = save_checkpoint(build_clip("gcctl-micro", "none"), tmp_path / "model" / "model.pt")
    out = tmp_path / "model" / "card.json"
    code, _, err = run_cli("models", "card", "--model", "gcctl-micro", "--pretrained", str(weights), "--per-value", "1",
                           "--out", str(out))
    assert code == 0, err
    assert json.loads(out.read_text())["model_ref"]["source"] == "model.pt"  # no machine path in the artifact


def test_card_command_writes_what_it_prints(run_cli, tmp_path):
    out = tmp_path / "card.json"
    code, printed, err = run_cli("models", "card", "--model", "gcctl-micro", "--per-value", "1", "--out", str(out), "--json")
    assert code == 0, err
    assert json.loads(printed) == json.loads(out.read_text())
    assert json.loads(printed)["model_ref"]["architecture"] == "gcctl-micro"
    code, _, err = run_cli("models", "card", "--model", "gcctl-micro", "--out", str(tmp_path))
    assert code == 1 and "is a directory" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("models", "card", "--model", "gcctl-micro", "--per-value", "0")
    assert code == 1 and err.strip() == "error: --per-value must be at least 1, got 0"
