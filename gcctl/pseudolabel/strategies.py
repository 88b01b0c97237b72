"""Pseudo group labelling strategies that need no text tower: `val-probe`, `kmeans`, `erm-error`, `oracle`.

Each returns, for every train sample, its inferred within-class group index and a confidence in [0, 1]
(how sure the strategy is of that index), plus notes for the report on how its output was named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from gcctl.errors import GcctlError
from gcctl.metrics import best_assignment
from gcctl.pseudolabel.data import LabelingData
from gcctl.pseudolabel.probe import fit_probe

_KMEANS_RESTARTS = 4
_KMEANS_MAX_ITER = 100
# JTT needs an ERM that underfits and so leans on the easiest, strongest feature (it stops training early).
# Strong L2 on the raw features is the linear analogue of early-stopped gradient descent from zero: it keeps
# the weights along the features' high-variance directions, as the first gradient steps do.
_ERM_L2 = 0.1
_UNMATCHABLE = 1e9  # a centroid distance no real pair reaches


@dataclass
class Inference:
    within: np.ndarray  # [N] within-class group index of every train sample
    confidence: np.ndarray  # [N] the strategy's confidence in that index
    notes: dict = field(default_factory=dict)

    @property
    def named_by_size(self) -> bool:
        """Whether some class's groups were named by size alone (no validation group to match them to), so their
        names do not say which spurious value a group shows."""
        return "size" in self.notes.get("clusters_matched_by", {}).values()


def _empty(data: LabelingData) -> tuple[np.ndarray, np.ndarray]:
    n = len(data.train_y)
    return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.float64)


def _val_of(data: LabelingData, label: int) -> tuple[torch.Tensor, np.ndarray]:
    mask = data.val_y == label
    return data.val_features[torch.from_numpy(mask).to(data.device)], data.val_within[mask]


def _train_of(data: LabelingData, label: int) -> tuple[np.ndarray, torch.Tensor]:
    rows = np.flatnonzero(data.train_y == label)
    return rows, data.train_features[torch.from_numpy(rows).to(data.device)]


def val_probe(data: LabelingData) -> Inference:
    """Per class, a softmax regression of the within-class group on that class's validation features
    (group-balanced, so it assumes equal group priors), applied to the class's train samples."""
    within, confidence = _empty(data)
    for label, name in enumerate(data.class_names):
        if not data.has_val_groups(label):
            raise GcctlError(
                f"val-probe needs validation samples of at least two groups of class '{name}', and the validation "
                "split has none or one; use --strategy zeroshot-attr or kmeans, or a store with validation groups"
            )
        val_features, val_within = _val_of(data, label)
        probe = fit_probe(val_features, torch.from_numpy(val_within).to(data.device), data.groups_per_class, balanced=True)
        rows, features = _train_of(data, label)
        best, index = probe.probabilities(features).max(dim=1)
        within[rows], confidence[rows] = index.cpu().numpy(), best.cpu().numpy()
    return Inference(within, confidence, {"model": "per-class softmax regression on validation features"})


def oracle(data: LabelingData) -> Inference:
    """The store's true train groups, for comparison."""
    return Inference(data.vocabulary.within(data.train_truth), np.ones(len(data.train_y)))


def _by_size(sizes: np.ndarray) -> np.ndarray:
    """Without validation groups only sizes tell partitions apart: the largest takes within-index 0, and so on."""
    match = np.empty(len(sizes), dtype=np.int64)
    match[np.argsort(-sizes, kind="stable")] = np.arange(len(sizes))
    return match


def _match_to_val_groups(data: LabelingData, label: int, partitions: list[torch.Tensor]) -> np.ndarray:
    """The within-class group of each partition (the features of some of a class's train samples): partitions and
    the class's validation groups are paired one-to-one so that the total distance between centroids is least.
    An empty partition, or a group without validation samples, is paired only when nothing else is left."""
    val_features, val_within = _val_of(data, label)
    k = data.groups_per_class
    score = np.zeros((k, k))  # rows past the partitions stay 0: they absorb the groups left over
    for row, part in enumerate(partitions):
        for w in range(k):
            members = torch.from_numpy(val_within == w).to(data.device)
            if len(part) and bool(members.any()):
                score[row, w] = -float((part.mean(dim=0) - val_features[members].mean(dim=0)).norm())
            else:
                score[row, w] = -_UNMATCHABLE
    return best_assignment(score)[: len(partitions)]


def _name_partitions(data: LabelingData, label: int, partitions: list[torch.Tensor]) -> tuple[np.ndarray, str]:
    """The within-class group of each partition, and how it was found."""
    if data.has_val_groups(label):
        return _match_to_val_groups(data, label, partitions), "validation"
    return _by_size(np.array([len(part) for part in partitions])), "size"


def _kmeans_once(x: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """k-means++ seeding then Lloyd's iterations; returns centroids, assignments and inertia."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    centroids = x[first : first + 1].clone()
    for _ in range(1, k):
        nearest = torch.cdist(x, centroids).min(dim=1).values.square()
        pick = int(torch.multinomial((nearest + 1e-12).cpu(), 1, generator=generator))
        centroids = torch.cat([centroids, x[pick : pick + 1]])
    assign = torch.cdist(x, centroids).argmin(dim=1)
    for _ in range(_KMEANS_MAX_ITER):
        for j in range(k):
            members = x[assign == j]
            if len(members):  # an emptied cluster keeps its centroid
                centroids[j] = members.mean(dim=0)
        updated = torch.cdist(x, centroids).argmin(dim=1)
        if torch.equal(updated, assign):
            break
        assign = updated
    inertia = float((x - centroids[assign]).square().sum())
    return centroids, assign, inertia


def kmeans_clusters(x: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids and assignments of the best of a few seeded k-means++ runs (least inertia)."""
    runs = [_kmeans_once(x, k, generator) for _ in range(_KMEANS_RESTARTS)]
    centroids, assign, _ = min(runs, key=lambda run: run[2])
    return centroids, assign


def _soft_assignment(x: torch.Tensor, centroids: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Posteriors of an isotropic Gaussian mixture with equal weights, its variance fitted to the clusters."""
    squared = torch.cdist(x, centroids).square()
    variance = (squared.gather(1, assign[:, None]).mean() / x.shape[1]).clamp_min(1e-12)
    return torch.softmax(-squared / (2 * variance), dim=1)


def _nearest_val_group(data: LabelingData, label: int, centroids: torch.Tensor) -> np.ndarray:
    """Over-clustering names each cluster after the validation group whose centroid is nearest (many to one)."""
    val_features, val_within = _val_of(data, label)
    present = np.unique(val_within)
    group_centroids = torch.stack([val_features[torch.from_numpy(val_within == w).to(data.device)].mean(dim=0) for w in present])
    return present[torch.cdist(centroids, group_centroids).argmin(dim=1).cpu().numpy()]


def kmeans(data: LabelingData, clusters_per_group: int = 1) -> Inference:
    """Per class, k-means into as many clusters as the class has groups, matched one-to-one to groups by their
    centroids' distance to the validation groups' centroids (or by size without validation groups).

    With `clusters_per_group` > 1 the class is over-clustered and every cluster takes its nearest validation
    group: a group split by a nuisance factor (position, colour) then no longer costs another group its cluster.
    """
    if clusters_per_group < 1:
        raise GcctlError(f"--clusters-per-group {clusters_per_group} must be at least 1")
    within, confidence = _empty(data)
    generator = torch.Generator().manual_seed(data.seed)
    k = data.groups_per_class * clusters_per_group
    matched_by = {}
    for label, name in enumerate(data.class_names):
        rows, features = _train_of(data, label)
        if len(rows) < k:
            raise GcctlError(f"class '{name}' has {len(rows)} train samples, fewer than the {k} clusters asked for; use fewer clusters")
        centroids, assign = kmeans_clusters(features, k, generator)
        if clusters_per_group == 1:
            match, matched_by[name] = _name_partitions(data, label, [features[assign == j] for j in range(k)])
        elif data.has_val_groups(label):
            match, matched_by[name] = _nearest_val_group(data, label, centroids), "nearest validation group"
        else:
            raise GcctlError(f"--clusters-per-group {clusters_per_group} names clusters after validation groups, and class "
                             f"'{name}' has fewer than two in the validation labels; use --clusters-per-group 1")
        # A sample's confidence in its group: the mixture posterior of all the clusters named after that group.
        naming = F.one_hot(torch.from_numpy(match).to(data.device), data.groups_per_class).float()
        group_posterior = _soft_assignment(features, centroids, assign) @ naming
        within[rows] = match[assign.cpu().numpy()]
        confidence[rows] = group_posterior.gather(1, torch.from_numpy(within[rows]).to(data.device)[:, None]).squeeze(1).cpu().numpy()
    return Inference(within, confidence, {"clusters_matched_by": matched_by})


def _fit_erm(features: torch.Tensor, y: torch.Tensor, num_classes: int):
    return fit_probe(features, y, num_classes, l2=_ERM_L2, standardize=False)


def _out_of_fold_probabilities(data: LabelingData) -> np.ndarray:
    """Class probabilities of every train sample from an ERM probe fitted on the other half of the train split,
    so a sample's own label never shapes its prediction (an ERM that memorised it would never err on it)."""
    rng = np.random.default_rng(data.seed)
    fold = rng.permutation(len(data.train_y)) % 2
    y = torch.from_numpy(data.train_y).to(data.device)
    probabilities = np.zeros((len(y), data.num_classes))
    for held_out in (0, 1):
        fit_rows = torch.from_numpy(np.flatnonzero(fold != held_out)).to(data.device)
        rows = np.flatnonzero(fold == held_out)
        probe = _fit_erm(data.train_features[fit_rows], y[fit_rows], data.num_classes)
        probabilities[rows] = probe.probabilities(data.train_features[torch.from_numpy(rows).to(data.device)]).cpu().numpy()
    return probabilities


def _train_erm_probabilities(data: LabelingData) -> np.ndarray:
    """Class probabilities of the labelled (validation) samples from an ERM probe fitted on the train split."""
    probe = _fit_erm(data.erm_features[:], torch.from_numpy(data.erm_y).to(data.device), data.num_classes)
    return probe.probabilities(data.train_features[:]).cpu().numpy()


def erm_error(data: LabelingData) -> Inference:
    """JTT's rule on a linear probe: per class, the samples the ERM probe misclassifies form one group and the
    others another (two groups per class, whatever the vocabulary's G), matched to groups like clusters. The
    ERM is fitted out of fold on the train split, or, labelling the validation split, on the train split."""
    probabilities = _out_of_fold_probabilities(data) if data.erm_features is None else _train_erm_probabilities(data)
    wrong = probabilities.argmax(axis=1) != data.train_y
    confidence = probabilities.max(axis=1)
    within, _ = _empty(data)
    matched_by = {}
    for label, name in enumerate(data.class_names):
        rows, features = _train_of(data, label)
        misclassified = torch.from_numpy(wrong[rows]).to(data.device)
        (right_group, wrong_group), matched_by[name] = _name_partitions(data, label, [features[~misclassified], features[misclassified]])
        within[rows] = np.where(wrong[rows], wrong_group, right_group)
    return Inference(within, confidence, {"clusters_matched_by": matched_by, "misclassified": int(wrong.sum())})
