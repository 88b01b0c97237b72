"""One-to-one matching of clusters (or inferred groups) to groups, maximising a total score."""

from __future__ import annotations

import itertools

import numpy as np

# 8! = 40320 permutations are scored at once; beyond that the matching is greedy.
_EXHAUSTIVE_UP_TO = 8


def best_assignment(score: np.ndarray) -> np.ndarray:
    """`match[i]` = the column matched to row i of the square `score`, maximising Σ score[i, match[i]].

    Exact for up to 8 rows (every group count of a real benchmark); greedy on the largest entries beyond.
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
