"""How inferred train groups agree with the true ones: accuracy, per-group precision and recall, the confusion
matrix and the counts per inferred group; as a dict (for JSON), a rich table and a PNG."""

from __future__ import annotations

import os

import numpy as np
from rich.table import Table

from gcctl.datasets.groups import GroupVocabulary
from gcctl.groups.matching import best_assignment


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None


def agreement(truth: np.ndarray, inferred: np.ndarray, vocabulary: GroupVocabulary) -> dict:
    """Compare two group labellings of the same samples, both numbered by the store's `vocabulary`.

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


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def agreement_table(summary: dict) -> Table:
    """Per group: true and inferred counts, precision and recall; accuracy in the title."""
    result = summary["agreement"]
    table = Table(
        title=(f"{summary['strategy']} pseudo groups vs true groups: accuracy {_percent(result['accuracy'])}% "
               f"({_percent(result['accuracy_up_to_relabelling'])}% up to relabelling), "
               f"{summary['fallback']} of {result['n']} below confidence {summary['options']['min_confidence']:g}")
    )
    table.add_column("group")
    for column in ("true n", "inferred n", "precision %", "recall %"):
        table.add_column(column, justify="right")
    for name, stats in result["per_group"].items():
        table.add_row(name, str(stats["true_n"]), str(stats["inferred_n"]), _percent(stats["precision"]), _percent(stats["recall"]))
    return table


def plot_confusion(summary: dict, path: str | os.PathLike) -> None:
    """The confusion matrix as a PNG: colour = share of the true group's samples, text = counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.array(summary["agreement"]["confusion"]["matrix"])
    names = summary["agreement"]["confusion"]["groups"]
    share = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.7 * len(names)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(confusion):
        axes.text(column, row, str(count), ha="center", va="center", fontsize=8, color="white" if share[row, column] > 0.5 else "black")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(names)), names, fontsize=8)
    axes.set_xlabel("inferred group")
    axes.set_ylabel("true group")
    axes.set_title(f"{summary['strategy']}: accuracy {_percent(summary['agreement']['accuracy'])}%")
    figure.colorbar(image, ax=axes, label="share of the true group")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=120)
    plt.close(figure)
