"""Metrics on plain Python lists, each small enough to check by hand.

Undefined values (no items, no positives) are None rather than NaN, so summary.json stays valid JSON.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Sequence


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def accuracy(correct: Sequence[bool]) -> float | None:
    """Fraction of True."""
    return _ratio(sum(bool(c) for c in correct), len(correct))


def grouped_accuracy(correct: Sequence[bool], groups: Sequence[Hashable]) -> dict[str, dict[str, float | int | None]]:
    """{group: {"accuracy", "n"}} with groups in sorted order."""
    by: dict[Hashable, list[bool]] = defaultdict(list)
    for c, g in zip(correct, groups):
        by[g].append(bool(c))
    return {str(g): {"accuracy": accuracy(v), "n": len(v)} for g, v in sorted(by.items(), key=lambda kv: str(kv[0]))}


def macro_accuracy(correct: Sequence[bool], classes: Sequence[Hashable]) -> float | None:
    """Mean over classes of each class's accuracy: every class weighs the same, however many items."""
    per = grouped_accuracy(correct, classes)
    vals = [v["accuracy"] for v in per.values()]
    return sum(vals) / len(vals) if vals else None


def binary_metrics(predicted: Sequence[bool], actual: Sequence[bool]) -> dict[str, float | int | None]:
    """Accuracy, precision, recall, F1 and the ratio of positive predictions, with the four counts."""
    tp = sum(p and a for p, a in zip(predicted, actual))
    fp = sum(p and not a for p, a in zip(predicted, actual))
    tn = sum(not p and not a for p, a in zip(predicted, actual))
    fn = sum(not p and a for p, a in zip(predicted, actual))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = tp + fp + tn + fn
    return {"accuracy": _ratio(tp + tn, n), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": _ratio(tp + fp, n), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n}


def confusion_matrix(gold: Sequence[Hashable], predicted: Sequence[Hashable], labels: Sequence[Hashable]) -> list[list[int]]:
    """Rows are gold labels, columns predicted labels, both in `labels` order. Pairs with a label not in
    `labels` are left out."""
    index = {lab: i for i, lab in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted):
        if g in index and p in index:
            m[index[g]][index[p]] += 1
    return m


def mean_absolute_error(gold: Sequence[float], predicted: Sequence[float]) -> float | None:
    return _ratio(sum(abs(g - p) for g, p in zip(gold, predicted)), len(gold))


def quadratic_weighted_kappa(gold: Sequence[int], predicted: Sequence[int], num_classes: int) -> float | None:
    """Cohen's kappa with weights (i-j)^2/(K-1)^2: 1 - sum(w*O) / sum(w*E), where O is the confusion
    matrix and E the outer product of its marginals divided by the number of items."""
    n = len(gold)
    if n == 0 or num_classes < 2:
        return None
    labels = list(range(num_classes))
    o = confusion_matrix(gold, predicted, labels)
    rows = [sum(r) for r in o]
    cols = [sum(o[i][j] for i in labels) for j in labels]
    num = den = 0.0
    for i in labels:
        for j in labels:
            w = (i - j) ** 2 / (num_classes - 1) ** 2
            num += w * o[i][j]
            den += w * rows[i] * cols[j] / n
    return 1 - num / den if den else None


def roc_auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve as the probability that a random positive scores above a random
    negative (ties count half), computed from average ranks (Mann-Whitney U)."""
    pairs = sorted(zip(scores, positive), key=lambda x: x[0])
    n_pos = sum(1 for _, p in pairs if p)
    n_neg = len(pairs) - n_pos
    if not n_pos or not n_neg:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + 1 + j) / 2  # ranks i+1..j share their mean
        rank_sum += avg_rank * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def one_vs_rest_auc(probabilities: Sequence[Sequence[float]], gold: Sequence[int]) -> dict[str, float | None]:
    """For each class c, the AUC of p(c) separating items of class c from the others."""
    k = len(probabilities[0]) if probabilities else 0
    return {str(c): roc_auc([p[c] for p in probabilities], [g == c for g in gold]) for c in range(k)}


def binary_auc(probabilities: Sequence[Sequence[float]], gold: Sequence[int], positive_from: int) -> float | None:
    """AUC of the summed probability of classes >= `positive_from` (e.g. KL 2-4 vs 0-1: positive_from=2)."""
    return roc_auc([sum(p[positive_from:]) for p in probabilities], [g >= positive_from for g in gold])
