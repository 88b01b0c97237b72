"""The one vocabulary of evaluation metrics; no other module defines a metric.

- `acc_avg`: sample-weighted accuracy.
- `acc_wg`: worst-group accuracy.
- `acc_mean_group`: unweighted mean of the group accuracies (SubpopBench's "adjusted accuracy").
- `acc_adj_avg`: group accuracies weighted by the TRAIN split's group proportions (group_DRO / WILDS
  Waterbirds convention), so a test split with balanced groups still reflects the training distribution.
- `acc_balanced`: mean per-class recall.
- `per_group`: {group name: {"acc", "n"}}.

Groups with no sample in the evaluated split are left out of every group-based metric and of `per_group`;
whether such a split is acceptable at all is the caller's decision.
"""

from __future__ import annotations

import numpy as np

from gcctl.datasets.groups import GroupVocabulary

METRIC_KEYS = ("acc_avg", "acc_wg", "acc_mean_group", "acc_adj_avg", "acc_balanced")


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
    if train_weights.sum() == 0:
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
        "per_group": {
            groups.names[g]: {"acc": float(acc), "n": int(group_n[g])} for g, acc in zip(present, group_acc)
        },
    }


def _mean_std(values: list[float]) -> dict:
    # Population std (ddof=0): defined for one seed (0.0) and the convention of DFR/SubpopBench tables.
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def aggregate_seeds(per_seed: list[dict]) -> dict:
    """Mean and std over seeds of every metric of `compute_metrics`, including each group's accuracy.

    All seeds must have been evaluated on the same split, so a group's `n` is the same in each.
    """
    if not per_seed:
        raise ValueError("aggregate_seeds needs at least one seed's metrics")
    aggregated = {key: _mean_std([m[key] for m in per_seed]) for key in METRIC_KEYS}
    aggregated["per_group"] = {
        name: {"acc": _mean_std([m["per_group"][name]["acc"] for m in per_seed]), "n": stats["n"]}
        for name, stats in per_seed[0]["per_group"].items()
    }
    return aggregated
