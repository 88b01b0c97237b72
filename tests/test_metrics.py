import numpy as np
import pytest

from gcctl.datasets.groups import GroupVocabulary
from gcctl.errors import GcctlError
from gcctl.metrics import (
    METRIC_KEYS,
    aggregate_seeds,
    brier_score,
    calibration_metrics,
    compute_metrics,
    expected_calibration_error,
    fit_temperature,
    softmax,
    metrics_from_predictions,
    predictions_frame,
    predictions_path,
    read_predictions,
    write_evaluation,
)

VOCABULARY = GroupVocabulary(["c0", "c1"], {"a": ["x", "y"]})  # groups g0..g3: c0/x, c0/y, c1/x, c1/y
#                 g0 g0 g0 g1 g2 g2 g3 g3 g3 g3
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
GROUP = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
PRED = np.array([0, 0, 1, 1, 1, 0, 1, 1, 0, 1])
TRAIN_COUNTS = np.array([10, 0, 30, 60])


def metrics(pred=PRED, y=Y, group=GROUP, vocabulary=VOCABULARY, counts=TRAIN_COUNTS):
    return compute_metrics(pred, y, group, GroupVocabulary(vocabulary.class_names, vocabulary.attributes, counts))


def test_hand_computed_case():
    m = metrics()
    # group accuracies: g0 2/3, g1 0/1, g2 1/2, g3 3/4
    assert m["acc_avg"] == pytest.approx(6 / 10)
    assert m["acc_wg"] == pytest.approx(0.0)
    assert m["acc_mean_group"] == pytest.approx((2 / 3 + 0 + 1 / 2 + 3 / 4) / 4)
    # weighted by train proportions 10:0:30:60, so g1's accuracy does not count
    assert m["acc_adj_avg"] == pytest.approx((10 * 2 / 3 + 30 * 1 / 2 + 60 * 3 / 4) / 100)
    # recall of class 0 is 2/4, of class 1 is 4/6
    assert m["acc_balanced"] == pytest.approx((2 / 4 + 4 / 6) / 2)
    assert m["per_group"] == {
        "c0/x": {"acc": pytest.approx(2 / 3), "n": 3},
        "c0/y": {"acc": 0.0, "n": 1},
        "c1/x": {"acc": 0.5, "n": 2},
        "c1/y": {"acc": 0.75, "n": 4},
    }


def test_group_absent_from_split_is_left_out():
    wider = GroupVocabulary(["c0", "c1"], {"a": ["x", "y", "z"]})  # c0/z (2) and c1/z (5) have no sample
    m = metrics(group=wider.group_of(Y, VOCABULARY.within(GROUP)), vocabulary=wider,
                counts=[10, 0, 1000, 30, 60, 1000])
    assert set(m["per_group"]) == {"c0/x", "c0/y", "c1/x", "c1/y"}
    assert m["acc_wg"] == pytest.approx(0.0)
    assert m["acc_mean_group"] == pytest.approx(metrics()["acc_mean_group"])
    assert m["acc_adj_avg"] == pytest.approx(metrics()["acc_adj_avg"])


def test_test_only_dataset_adjusts_to_its_own_groups():
    # A domain shift has no train split: its own group counts weigh the groups, so acc_adj_avg is acc_avg.
    m = metrics(counts=[0, 0, 0, 0])
    assert m["acc_adj_avg"] == pytest.approx(m["acc_avg"]) == pytest.approx(6 / 10)
    with pytest.raises(ValueError, match="undefined"):  # a train split without any evaluated group stays an error
        metrics(group=np.zeros(10, int), y=np.zeros(10, int), counts=[0, 5, 5, 5])


def test_perfect_predictions_score_one_everywhere():
    m = metrics(pred=Y)
    assert all(m[key] == 1.0 for key in METRIC_KEYS)


def test_mismatched_lengths_are_a_bug():
    with pytest.raises(ValueError):
        metrics(pred=PRED[:-1])


def test_seed_aggregate_has_mean_and_population_std():
    worse = metrics()
    better = metrics(pred=np.where(np.arange(10) == 2, 0, PRED))  # fixes one g0 sample
    aggregated = aggregate_seeds([worse, better])
    assert aggregated["acc_avg"] == {"mean": pytest.approx(0.65), "std": pytest.approx(0.05)}
    assert aggregated["per_group"]["c0/x"]["acc"] == {"mean": pytest.approx(5 / 6), "std": pytest.approx(1 / 6)}
    assert aggregated["per_group"]["c0/x"]["n"] == 3
    assert set(aggregated) == set(METRIC_KEYS) | {"per_group"}


def test_single_seed_has_zero_std():
    aggregated = aggregate_seeds([metrics()])
    assert aggregated["acc_wg"] == {"mean": 0.0, "std": 0.0}


def _scores(pred):
    """Two-class scores whose argmax is `pred`."""
    return np.stack([1.0 - pred, pred.astype(float)], axis=1)


BETTER = np.where(np.arange(10) == 2, 0, PRED)  # fixes one g0 sample
COUNTED = GroupVocabulary(VOCABULARY.class_names, VOCABULARY.attributes, TRAIN_COUNTS)


def _frame(scores_by_seed):
    return predictions_frame([f"img{i}" for i in range(10)], Y, GROUP, "test", scores_by_seed, COUNTED)


def test_predictions_frame_is_long_with_one_score_column_per_class():
    frame = _frame({10: _scores(PRED), 2: _scores(BETTER)})
    assert list(frame.columns) == ["id", "split", "y", "group", "group_name", "seed", "pred", "score_c0", "score_c1"]
    assert len(frame) == 20 and list(frame.loc[frame["seed"] == 10, "pred"]) == list(PRED)
    assert list(frame.loc[frame["seed"] == 2, "group_name"]) == [VOCABULARY.names[g] for g in GROUP]


def test_metrics_from_predictions_are_keyed_by_seed_in_numeric_order():
    recomputed = metrics_from_predictions(_frame({10: _scores(PRED), 2: _scores(BETTER)}), COUNTED)
    assert list(recomputed["seeds"]) == ["2", "10"]
    assert {key: value for key, value in recomputed["seeds"]["10"].items() if key != "calibration"} == metrics()
    assert recomputed["acc_avg"] == aggregate_seeds([metrics(), metrics(pred=BETTER)])["acc_avg"]
    unseeded = metrics_from_predictions(_frame({None: _scores(PRED)}), COUNTED)
    assert list(unseeded["seeds"]) == ["none"] and unseeded["acc_wg"]["mean"] == metrics()["acc_wg"]


def test_evaluation_is_written_with_predictions_that_recompute_its_metrics(tmp_path):
    frame = _frame({0: _scores(PRED), 1: _scores(BETTER)})
    written = metrics_from_predictions(frame, COUNTED)
    write_evaluation(tmp_path / "run.json", written, frame, COUNTED)
    assert predictions_path(tmp_path / "run.json") == tmp_path / "run.predictions.parquet"
    read, vocabulary = read_predictions(tmp_path / "run.predictions.parquet")
    assert vocabulary == COUNTED and metrics_from_predictions(read, vocabulary) == written
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.json", "run.predictions.parquet"]
    with pytest.raises(GcctlError, match="not found"):
        read_predictions(tmp_path / "absent.parquet")


def _predictions(correct_rate, *, seeds=(0, 1, 2), n=300, seed=0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    group = 2 * y + (np.arange(n) // 2) % 2
    blocks = []
    for s in seeds:
        right = rng.random(n) < np.where(group == 3, correct_rate - 0.2, correct_rate)
        blocks.append(pd.DataFrame({"id": [f"{i:04d}" for i in range(n)], "y": y, "group": group,
                                    "seed": pd.array([s] * n, dtype="Int64"), "pred": np.where(right, y, 1 - y)}))
    return pd.concat(blocks, ignore_index=True)


def test_bootstrap_intervals_hold_the_estimate_and_are_a_function_of_the_predictions():
    from gcctl.metrics import bootstrap_intervals

    frame = _predictions(0.85)
    intervals = bootstrap_intervals(frame)
    assert intervals == bootstrap_intervals(frame)  # fixed draws: a report is reproducible
    for key in ("acc_wg", "acc_avg"):
        per_seed = [metrics(*(rows[c].to_numpy() for c in ("pred", "y", "group")))[key] for _, rows in frame.groupby("seed")]
        low, high = intervals[key]["over_seeds"]
        assert low < np.mean(per_seed) < high and high - low < 0.3
        for s, value in zip("012", per_seed):
            assert intervals[key]["per_seed"][s][0] <= value <= intervals[key]["per_seed"][s][1]
    perfect = _predictions(1.2)  # every sample right: no resample can say otherwise
    assert bootstrap_intervals(perfect)["acc_wg"]["over_seeds"] == [1.0, 1.0]


def test_a_paired_comparison_finds_a_real_gap_and_none_between_a_run_and_itself():
    from gcctl.metrics import paired_comparison

    better, worse = _predictions(0.95, seed=1), _predictions(0.75, seed=2)
    gap = paired_comparison(better, worse)
    assert gap["acc_avg"]["difference"] > 0.1 and gap["acc_avg"]["interval"][0] > 0 and gap["acc_avg"]["p_value"] < 0.01
    same = paired_comparison(worse, worse)
    assert same["acc_wg"] == {"difference": 0.0, "interval": [0.0, 0.0], "p_value": 1.0}
    with pytest.raises(GcctlError, match="scored on different samples"):
        paired_comparison(better, _predictions(0.9, n=200))


# ---------------------------------------------------------------------------- calibration


def _simulated(n: int, rng: np.random.Generator, sharpen: float = 1.0):
    """Two-class logits whose softmax is calibrated (a sample is right with the probability it is given), then
    multiplied by `sharpen` (> 1: overconfident); labels drawn accordingly."""
    confidence = rng.uniform(0.5, 1.0, size=n)
    y = rng.integers(0, 2, size=n)
    right = rng.uniform(size=n) < confidence
    predicted = np.where(right, y, 1 - y)
    margin = np.log(confidence / (1 - confidence))  # logit gap that gives that confidence
    logits = np.zeros((n, 2))
    logits[np.arange(n), predicted] = margin
    return sharpen * logits, y


def test_a_calibrated_classifier_has_an_ece_near_zero_and_an_overconfident_one_does_not():
    rng = np.random.default_rng(0)
    logits, y = _simulated(20000, rng)
    assert expected_calibration_error(softmax(logits), y) < 0.015
    sharp, y = _simulated(20000, rng, sharpen=4.0)
    assert expected_calibration_error(softmax(sharp), y) > 0.1


def test_the_brier_score_by_hand():
    probabilities = np.array([[0.8, 0.2], [0.4, 0.6]])
    # (0.2² + 0.2²) for the first (label 0), (0.6² + 0.6²) for the second (label 0)
    assert brier_score(probabilities, np.array([0, 0])) == pytest.approx((0.08 + 0.72) / 2)


def test_temperature_scaling_recovers_the_sharpening_of_a_calibrated_model():
    logits, y = _simulated(20000, np.random.default_rng(1), sharpen=3.0)
    assert fit_temperature(logits, y) == pytest.approx(3.0, rel=0.1)


def test_calibration_is_per_group_with_its_worst_and_comes_from_the_predictions_alone():
    probabilities = softmax(_scores(PRED) * 2.0)
    figures = calibration_metrics(probabilities, Y, GROUP, COUNTED)
    assert figures["ece_worst_group"] == max(g["ece"] for g in figures["per_group"].values())
    assert set(figures["per_group"]) == {COUNTED.names[g] for g in np.unique(GROUP)}
    recomputed = metrics_from_predictions(_frame({0: _scores(PRED) * 2.0}), COUNTED)
    assert recomputed["seeds"]["0"]["calibration"] == figures
    assert recomputed["calibration"]["brier"]["mean"] == figures["brier"]
