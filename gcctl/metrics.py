"""The one vocabulary of evaluation metrics; no other module defines a metric.

- `acc_avg`: sample-weighted accuracy.
- `acc_wg`: worst-group accuracy.
- `acc_mean_group`: unweighted mean of the group accuracies (SubpopBench's "adjusted accuracy").
- `acc_adj_avg`: group accuracies weighted by the TRAIN split's group proportions (group_DRO / WILDS
  Waterbirds convention), so a test split with balanced groups still reflects the training distribution.
- `acc_balanced`: mean per-class recall.
- `acc_worst_class`: the lowest per-class recall (needs no group label).
- `per_group`: {group name: {"acc", "n"}}.
- `calibration` (from the predictions' class scores, softmax-normalised): `ece` (expected calibration error,
  15 equal-width confidence bins, Guo et al. 2017), `brier` (multi-class Brier score, the squared distance of the
  probability vector to the one-hot label, summed over classes), each per group and at its worst group
  (`ece_worst_group`, `brier_worst_group`: the highest); lower is better.

Groups with no sample in the evaluated split are left out of every group-based metric and of `per_group`;
whether such a split is acceptable at all is the caller's decision.

Also here: the agreement of inferred (pseudo) groups with the true ones, and the predictions artifact that
`gcctl evaluate` writes beside its metrics JSON (`X.json` → `X.predictions.parquet`), from which
`metrics_from_predictions` recomputes the metrics.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from gcctl.datasets.groups import GroupVocabulary
from gcctl.errors import GcctlError
from gcctl.files import (
    atomic_path,
    check_beside,
    check_output,
    corrupt_file_error,
    json_document,
    parquet_metadata,
    refuse_directory,
    refuse_inside,
    write_json,
)

if TYPE_CHECKING:
    import pandas as pd

METRIC_KEYS = ("acc_avg", "acc_wg", "acc_mean_group", "acc_adj_avg", "acc_balanced", "acc_worst_class")
# The validation metrics that may pick a trained epoch (`--select-by`): acc_wg reads the validation group labels,
# acc_wg_pseudo the worst group of validation pseudo-groups (`gcctl train --val-groups`), acc_worst_class is
# SubpopBench's rule with class labels only.
SELECT_BY = ("acc_wg", "acc_avg", "acc_worst_class", "acc_wg_pseudo")
PSEUDO_SELECTION = "acc_wg_pseudo"


def selection_value(metrics: dict, select_by: str) -> float:
    """The figure of `select_by` in the validation metrics (computed on pseudo-groups for acc_wg_pseudo)."""
    return metrics["acc_wg" if select_by == PSEUDO_SELECTION else select_by]


def compute_metrics(
    pred: np.ndarray,
    y: np.ndarray,
    group: np.ndarray,
    groups: GroupVocabulary,
) -> dict:
    """Every metric of the vocabulary for one set of predictions; accuracies are fractions in [0, 1].

    `groups` numbers `group`, names the groups and gives the train proportions of `acc_adj_avg`.
    """
    pred, y, group = (np.asarray(a, dtype=np.int64) for a in (pred, y, group))
    if not len(y) == len(pred) == len(group) or len(y) == 0:
        raise ValueError(f"need equally long, non-empty pred/y/group; got {len(pred)}, {len(y)}, {len(group)}")
    if groups.train_counts is None:
        raise ValueError("the group vocabulary has no training counts; acc_adj_avg needs them")
    correct = (pred == y).astype(np.float64)
    n_groups, num_classes = groups.n_groups, groups.num_classes
    group_n = np.bincount(group, minlength=n_groups)
    group_correct = np.bincount(group, weights=correct, minlength=n_groups)
    present = np.flatnonzero(group_n)
    group_acc = group_correct[present] / group_n[present]
    train_weights = groups.train_counts.astype(np.float64)[present]
    if groups.train_counts.sum() == 0:
        # A test-only dataset (a domain shift such as ImageNet-V2): no training distribution to adjust to,
        # so its own group counts weigh the groups and acc_adj_avg is acc_avg.
        train_weights = group_n[present].astype(np.float64)
    elif train_weights.sum() == 0:
        raise ValueError("no group of the evaluated split occurs in the train split; acc_adj_avg is undefined")
    class_n = np.bincount(y, minlength=num_classes)
    class_correct = np.bincount(y, weights=correct, minlength=num_classes)
    classes = np.flatnonzero(class_n)
    return {
        "acc_avg": float(correct.mean()),
        "acc_wg": float(group_acc.min()),
        "acc_mean_group": float(group_acc.mean()),
        "acc_adj_avg": float(np.dot(train_weights, group_acc) / train_weights.sum()),
        "acc_balanced": float(np.mean(class_correct[classes] / class_n[classes])),
        "acc_worst_class": float(np.min(class_correct[classes] / class_n[classes])),
        "per_group": {
            groups.names[g]: {"acc": float(acc), "n": int(group_n[g])} for g, acc in zip(present, group_acc)
        },
    }


def mean_std(values: list[float]) -> dict:
    # Population std (ddof=0): defined for one seed (0.0) and the convention of DFR/SubpopBench tables.
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def aggregate_seeds(per_seed: list[dict]) -> dict:
    """Mean and std over seeds of every metric of `compute_metrics`, including each group's accuracy.

    All seeds must have been evaluated on the same split, so a group's `n` is the same in each.
    """
    if not per_seed:
        raise ValueError("aggregate_seeds needs at least one seed's metrics")
    aggregated = {key: mean_std([m[key] for m in per_seed]) for key in METRIC_KEYS}
    aggregated["per_group"] = {
        name: {"acc": mean_std([m["per_group"][name]["acc"] for m in per_seed]), "n": stats["n"]}
        for name, stats in per_seed[0]["per_group"].items()
    }
    return aggregated


# ---------------------------------------------------------------------------- agreement of inferred groups

# 8! = 40320 permutations are scored at once; beyond that the matching is greedy.
_EXHAUSTIVE_UP_TO = 8


def best_assignment(score: np.ndarray) -> np.ndarray:
    """`match[i]` = the column matched to row i of the square `score`, maximising Σ score[i, match[i]].

    Exact for up to 8 rows (every group count of a real benchmark); greedy on the largest entries beyond.
    Here because `accuracy_up_to_relabelling` is defined by it; pseudo-labelling strategies match with it too.
    """
    score = np.asarray(score, dtype=np.float64)
    n = len(score)
    if n <= _EXHAUSTIVE_UP_TO:
        permutations = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
        totals = score[np.arange(n), permutations].sum(axis=1)
        return permutations[int(np.argmax(totals))]
    match = np.full(n, -1, dtype=np.int64)
    remaining = score.copy()
    for _ in range(n):
        row, column = np.unravel_index(int(np.argmax(remaining)), remaining.shape)
        match[row] = column
        remaining[row, :] = -np.inf
        remaining[:, column] = -np.inf
    return match


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None


def agreement(truth: np.ndarray, inferred: np.ndarray, vocabulary: GroupVocabulary) -> dict:
    """How inferred groups agree with the true ones: accuracy, per-group precision and recall, the confusion
    matrix; both labellings of the same samples numbered by the store's `vocabulary`.

    `accuracy_up_to_relabelling` lets each class's inferred groups be renamed one-to-one first: it measures how
    well the samples were *separated*, whatever names they got (e.g. clusters matched by size).
    """
    n_groups, groups_per_class, group_names = vocabulary.n_groups, vocabulary.groups_per_class, vocabulary.names
    confusion = np.zeros((n_groups, n_groups), dtype=np.int64)  # rows: true group, columns: inferred
    np.add.at(confusion, (truth, inferred), 1)
    hits, true_n, inferred_n = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    separated = 0
    for start in range(0, n_groups, groups_per_class):
        block = confusion[start : start + groups_per_class, start : start + groups_per_class]
        match = best_assignment(block.T)  # inferred group i of the class → true group match[i]
        separated += int(block.T[np.arange(groups_per_class), match].sum())
    return {
        "n": int(len(truth)),
        "accuracy": float(hits.sum() / len(truth)),
        "accuracy_up_to_relabelling": float(separated / len(truth)),
        "per_group": {
            name: {
                "true_n": int(true_n[g]),
                "inferred_n": int(inferred_n[g]),
                "precision": _ratio(int(hits[g]), int(inferred_n[g])),
                "recall": _ratio(int(hits[g]), int(true_n[g])),
            }
            for g, name in enumerate(group_names)
        },
        "confusion": {"rows": "true group", "columns": "inferred group", "groups": list(group_names), "matrix": confusion.tolist()},
    }


# ---------------------------------------------------------------------------- predictions


PREDICTIONS_SUFFIX = ".predictions.parquet"
_PARQUET_METADATA_KEY = b"gcctl.predictions"


def seed_key(seed: Any) -> str:
    """How a seed names its entry in a metrics file: '0', '1', …; 'none' for a model without a known seed."""
    import pandas as pd

    return "none" if pd.isna(seed) else str(int(seed))


def predictions_frame(
    ids: Sequence[str],
    y: np.ndarray,
    group: np.ndarray,
    split: str,
    scores_by_seed: dict[int | None, np.ndarray],
    vocabulary: GroupVocabulary,
) -> "pd.DataFrame":
    """Per-sample predictions in long form, one row per (seed, sample), with columns `id`, `split`, `y`, `group`
    (index), `group_name`, `seed` (nullable integer: <NA> for a model without a known seed), `pred` (the argmax
    of the scores), then `score_<class name>` per class of `vocabulary`. Long, so `frame.groupby("seed")` gives each seed's rows
    and `frame.pivot(index="id", columns="seed", values="pred")` the wide view."""
    import pandas as pd

    group = np.asarray(group, dtype=np.int64)
    names = np.asarray(vocabulary.names, dtype=object)[group]
    blocks = []
    for seed, scores in scores_by_seed.items():
        scores = np.asarray(scores, dtype=np.float32)
        columns = {"id": np.asarray(ids).astype(str), "split": split, "y": np.asarray(y, dtype=np.int64), "group": group,
                   "group_name": names, "seed": pd.array([seed] * len(group), dtype="Int64"), "pred": scores.argmax(axis=1)}
        columns.update({f"score_{name}": scores[:, c] for c, name in enumerate(vocabulary.class_names)})
        blocks.append(pd.DataFrame(columns))
    return pd.concat(blocks, ignore_index=True)


def score_columns(vocabulary: GroupVocabulary) -> list[str]:
    return [f"score_{name}" for name in vocabulary.class_names]


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.asarray(scores, dtype=np.float64) - np.max(scores, axis=1, keepdims=True)
    exponent = np.exp(shifted)
    return exponent / exponent.sum(axis=1, keepdims=True)


def metrics_from_predictions(frame: "pd.DataFrame", vocabulary: GroupVocabulary) -> dict:
    """`aggregate_seeds` of every seed's `compute_metrics` with its `calibration`, plus `seeds`: {seed_key: metrics},
    in seed order."""
    per_seed = {}
    for seed, rows in frame.groupby("seed", sort=True, dropna=False):
        y, group = rows["y"].to_numpy(), rows["group"].to_numpy()
        per_seed[seed_key(seed)] = {
            **compute_metrics(rows["pred"].to_numpy(), y, group, vocabulary),
            "calibration": calibration_metrics(softmax(rows[score_columns(vocabulary)].to_numpy()), y, group, vocabulary),
        }
    seeds = list(per_seed.values())
    return {**aggregate_seeds(seeds), "calibration": aggregate_calibration([m["calibration"] for m in seeds]),
            "seeds": per_seed}


# ---------------------------------------------------------------------------- calibration

CALIBRATION_BINS = 15  # Guo et al. 2017's count
CALIBRATION_KEYS = ("ece", "brier", "ece_worst_group", "brier_worst_group")


def expected_calibration_error(probabilities: np.ndarray, y: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Σ over equal-width bins of the top-class confidence: |accuracy − mean confidence| × the bin's share."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y).astype(np.float64)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 cannot occur with C ≥ 1 classes.
    bin_of = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = np.bincount(bin_of, weights=correct - confidence, minlength=bins)
    return float(np.abs(gap).sum() / len(y))


def brier_score(probabilities: np.ndarray, y: np.ndarray) -> float:
    one_hot = np.eye(probabilities.shape[1])[y]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def calibration_metrics(probabilities: np.ndarray, y: np.ndarray, group: np.ndarray, vocabulary: GroupVocabulary) -> dict:
    """ECE and Brier score over the split and per group (present groups only), with their worst group."""
    y, group = np.asarray(y, dtype=np.int64), np.asarray(group, dtype=np.int64)
    per_group = {}
    for g in np.unique(group):
        members = group == g
        per_group[vocabulary.names[g]] = {"ece": expected_calibration_error(probabilities[members], y[members]),
                                          "brier": brier_score(probabilities[members], y[members])}
    return {
        "ece": expected_calibration_error(probabilities, y),
        "brier": brier_score(probabilities, y),
        "ece_worst_group": max(stats["ece"] for stats in per_group.values()),
        "brier_worst_group": max(stats["brier"] for stats in per_group.values()),
        "per_group": per_group,
    }


def aggregate_calibration(per_seed: list[dict]) -> dict:
    """Mean and std over seeds of every `calibration_metrics` figure, per group too."""
    return {
        **{key: mean_std([c[key] for c in per_seed]) for key in CALIBRATION_KEYS},
        "per_group": {name: {key: mean_std([c["per_group"][name][key] for c in per_seed]) for key in ("ece", "brier")}
                      for name in per_seed[0]["per_group"]},
    }


def fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the cross-entropy of softmax(scores / T) on
    labelled (validation) samples; predictions are unchanged, only their confidence."""
    import torch

    logits = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(y, dtype=np.int64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.exp())


def predictions_path(metrics_path: str | os.PathLike) -> Path:
    """Where the predictions of the metrics file `X.json` live: `X.predictions.parquet` beside it."""
    metrics_path = Path(metrics_path)
    return metrics_path.with_name(metrics_path.stem + PREDICTIONS_SUFFIX)


def write_evaluation(out: str | os.PathLike, metrics: dict, predictions: "pd.DataFrame", vocabulary: GroupVocabulary) -> None:
    """Write the metrics JSON `out` and its predictions Parquet, both or neither.

    The `vocabulary` (with its training counts) travels in the Parquet schema metadata, so the file alone
    recomputes the metrics (`metrics_from_predictions(*read_predictions(path))`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(predictions, preserve_index=False)
    described = json.dumps({"vocabulary": vocabulary.to_dict()})
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), _PARQUET_METADATA_KEY: described.encode()})
    with atomic_path(predictions_path(out)) as tmp:  # the JSON inside: if it fails, no Parquet is renamed into place
        pq.write_table(arrow, tmp)
        write_json(out, metrics)


def is_metrics_document(document: object) -> bool:
    """Whether a JSON document is a metrics file of `gcctl evaluate`: every metric, `per_group` and `provenance`."""
    return isinstance(document, dict) and all(key in document for key in (*METRIC_KEYS, "per_group", "provenance"))


def check_evaluation_out(out: str | os.PathLike, overwrite: bool, *, dataset_root: str | os.PathLike | None = None) -> None:
    """Refuse an evaluation --out before any work: a folder, a path among the dataset's files, or a file that is not
    an earlier evaluation's metrics (its predictions beside it likewise); an earlier evaluation is replaced only
    with `overwrite`."""
    refuse_directory(out)
    if dataset_root is not None:
        refuse_inside(out, dataset_root, "the dataset root")
    check_output(out, "evaluate", is_own=lambda path: is_metrics_document(json_document(path)), replace_own=overwrite)
    check_beside(predictions_path(out), out, "evaluate", what="predictions", replace_own=overwrite,
                 is_own=lambda path: parquet_metadata(path, _PARQUET_METADATA_KEY) is not None)


def read_predictions(path: str | os.PathLike) -> tuple["pd.DataFrame", GroupVocabulary]:
    """A predictions file of `gcctl evaluate` and its group vocabulary: `metrics_from_predictions(frame, vocabulary)`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise GcctlError(f"predictions file {path} not found; `gcctl evaluate --out X.json` writes X{PREDICTIONS_SUFFIX}")
    try:
        arrow = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:  # ArrowInvalid for a truncated file
        raise corrupt_file_error(path, error) from None
    described = (arrow.schema.metadata or {}).get(_PARQUET_METADATA_KEY)
    if described is None:
        raise GcctlError(f"{path} is not a predictions file of `gcctl evaluate`; pass the *{PREDICTIONS_SUFFIX} it wrote")
    vocabulary = GroupVocabulary.from_dict(json.loads(described).get("vocabulary", {}), str(path))
    return arrow.to_pandas(), vocabulary


# ---------------------------------------------------------------------------- intervals and paired comparisons

BOOTSTRAP_RESAMPLES = 1000
INTERVAL_LEVEL = 0.95
INTERVAL_KEYS = ("acc_wg", "acc_avg")  # the metrics given an interval and compared in pairs
_BOOTSTRAP_SEED = 0  # fixed: a report is a pure function of its predictions


def _correct_by_seed(frame: "pd.DataFrame") -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(seed keys, ids [N], correct [S, N], group [N]) with the samples in id order, the same in every seed."""
    seeds, ids, correct, group = [], None, [], None
    for seed, rows in frame.groupby("seed", sort=True, dropna=False):
        rows = rows.sort_values("id", kind="stable")
        if ids is None:
            ids, group = rows["id"].to_numpy(), rows["group"].to_numpy(dtype=np.int64)
        elif len(rows) != len(ids) or (rows["id"].to_numpy() != ids).any():
            raise GcctlError(f"seed {seed_key(seed)} of the predictions scored other samples than the first seed; "
                             "evaluate every seed on the same split")
        seeds.append(seed_key(seed))
        correct.append((rows["pred"].to_numpy() == rows["y"].to_numpy()).astype(np.float64))
    return seeds, ids, np.stack(correct), group


def _resampled_metrics(correct: np.ndarray, group: np.ndarray, resamples: int) -> dict[str, np.ndarray]:
    """acc_wg and acc_avg [resamples + 1, S]: row 0 the samples as they are, then resamples drawn with replacement
    within each group (so every group keeps its size), the same draws for every seed (and every run compared)."""
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    accuracies, sizes = [], []
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        counts = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=resamples)
        counts = np.vstack([np.ones(len(members)), counts])  # row 0: each sample once
        accuracies.append(counts @ correct[:, members].T / len(members))  # [B + 1, S]
        sizes.append(len(members))
    by_group = np.stack(accuracies, axis=-1)  # [B + 1, S, G]
    return {"acc_wg": by_group.min(axis=-1), "acc_avg": by_group @ np.asarray(sizes, dtype=np.float64) / sum(sizes)}


def _over_seeds(values: np.ndarray) -> np.ndarray:
    """[B + 1] from [B + 1, S]: row 0 the mean over the seeds, then each resample's mean over seeds drawn with
    replacement (one seed: the seed itself), so the interval spans the samples and the seeds."""
    rng = np.random.default_rng(_BOOTSTRAP_SEED + 1)
    drawn = rng.integers(0, values.shape[1], size=(len(values) - 1, values.shape[1]))
    return np.concatenate([[values[0].mean()], np.take_along_axis(values[1:], drawn, axis=1).mean(axis=1)])


def _interval(samples: np.ndarray) -> list[float]:
    tail = (1 - INTERVAL_LEVEL) / 2
    return [float(np.quantile(samples, tail)), float(np.quantile(samples, 1 - tail))]


def bootstrap_intervals(frame: "pd.DataFrame", resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """95% percentile intervals of worst-group and average accuracy from one run's predictions: per seed over
    the test samples (resampled within each group), and over seeds and samples together."""
    seeds, _, correct, group = _correct_by_seed(frame)
    resampled = _resampled_metrics(correct, group, resamples)
    return {key: {"over_seeds": _interval(_over_seeds(values)[1:]),
                  "per_seed": {seed: _interval(values[1:, s]) for s, seed in enumerate(seeds)}}
            for key, values in resampled.items()}


def paired_comparison(frame_a: "pd.DataFrame", frame_b: "pd.DataFrame", resamples: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Run A minus run B on the same test samples: for worst-group and average accuracy, the difference of their
    means over seeds, its 95% interval and a two-sided p-value from a paired bootstrap (each resample draws the
    same samples for both runs; a run's seeds are resampled as in `bootstrap_intervals`)."""
    _, ids_a, correct_a, group = _correct_by_seed(frame_a)
    _, ids_b, correct_b, _ = _correct_by_seed(frame_b)
    if len(ids_a) != len(ids_b) or (ids_a != ids_b).any():
        raise GcctlError("the two runs were scored on different samples; compare runs evaluated on the same split")
    a, b = (_resampled_metrics(correct, group, resamples) for correct in (correct_a, correct_b))
    compared = {}
    for key in INTERVAL_KEYS:
        difference = _over_seeds(a[key]) - _over_seeds(b[key])
        resampled = difference[1:]
        p_value = min(1.0, 2 * min(float(np.mean(resampled <= 0)), float(np.mean(resampled >= 0))))
        compared[key] = {"difference": float(difference[0]), "interval": _interval(resampled), "p_value": p_value}
    return compared
