"""Classification metrics on pooled clip features: top-1, top-5 (None for 5 classes or fewer, where it
is 1.0 by construction), mean per-class accuracy, a per-class report (precision, recall, F1, support),
the confusion matrix (its nonzero cells ``[true, predicted, count]``), and a 95 % interval on top-1 and on
mean-class accuracy (``stats.score_interval``, ``stats.mean_class_interval``: over source videos when
``groups`` is given)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .stats import mean_class_interval, score_interval


def topk_accuracy(proba: np.ndarray, y_idx: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the k highest scores (k capped at the class count)."""
    if len(y_idx) == 0:
        return float("nan")
    k = min(k, proba.shape[1])
    top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y_idx[:, None], axis=1)))


def confusion(y_idx: np.ndarray, pred_idx: np.ndarray) -> list[list[int]]:
    """The confusion matrix's nonzero cells, ``[true, predicted, count]`` (indices into the head's classes),
    sorted: sized by the clips scored, never classes x classes (10,000 classes would be 10^8 cells)."""
    if not len(y_idx):
        return []
    cells, counts = np.unique(np.stack([y_idx, pred_idx], axis=1), axis=0, return_counts=True)
    return [[int(t), int(p), int(n)] for (t, p), n in zip(cells, counts)]


def _true_and_predicted(
    proba: np.ndarray, y_true: Sequence[str], classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Class index of each label (-1: a label the head never saw) and of each top-scored class."""
    index = {c: i for i, c in enumerate(classes)}
    y_idx = np.array([index.get(y, -1) for y in y_true], dtype=int)
    return y_idx, np.argmax(proba, axis=1) if len(proba) else np.zeros(0, int)


def clip_correct(proba: np.ndarray, y_true: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Per clip, whether the top-scored class is the true one (a label the head never saw: False)."""
    y_idx, pred = _true_and_predicted(proba, y_true, classes)
    return pred == y_idx


def _class_report(pred: np.ndarray, y_idx: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    report: dict[str, dict[str, float]] = {}
    for i, c in enumerate(classes):
        mask = y_idx == i
        predicted = pred == i
        tp = int(np.sum(predicted & mask))
        precision = tp / int(predicted.sum()) if predicted.any() else 0.0
        recall = tp / int(mask.sum()) if mask.any() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[c] = {"precision": precision, "recall": recall, "f1": f1, "support": int(mask.sum())}
    return report


def metrics(
    proba: np.ndarray, y_true: list[str], classes: list[str], groups: Sequence[str] | None = None
) -> dict[str, Any]:
    """Metrics of probabilities ``proba`` (N, C) over ``classes`` against string labels.

    Labels unseen in training count as wrong (they cannot be predicted) rather than being dropped: in top-1
    and in mean-class accuracy, which averages over every class of ``y_true`` (``unseen_classes`` names
    them). ``groups``: each clip's source video (``data.splits.video_group``); clips of one video are not
    independent, so the intervals resample videos (None: every clip its own video).
    """
    y_idx, pred = _true_and_predicted(proba, y_true, classes)
    correct = pred == y_idx
    known = y_idx >= 0
    labels = np.asarray(y_true, dtype=object)
    # accuracy (= recall) of each class present in y_true, those the head never saw included (0)
    per_class = {str(c): float(np.mean(correct[labels == c])) for c in dict.fromkeys(y_true)}
    mean_class = mean_class_interval(correct, y_true, groups) if len(y_true) else None
    return {
        "n": int(len(y_true)),
        "top1": float(np.mean(correct)) if len(y_true) else float("nan"),
        # with 5 classes or fewer every true class is in the top 5: None (omitted), as CLIP_benchmark does
        "top5": topk_accuracy(proba, y_idx, 5) if len(classes) > 5 else None,
        "mean_class_acc": mean_class["value"] if mean_class else float("nan"),
        "per_class": per_class,
        "unseen_classes": sorted(set(y_true) - set(classes)),
        "absent_classes": [c for c in classes if c not in per_class],  # the head's classes with no clip here
        "report": _class_report(pred, y_idx, classes),
        "confusion": confusion(y_idx[known], pred[known]),
        "top1_ci": score_interval(correct, groups),
        "mean_class_ci": mean_class,
    }
