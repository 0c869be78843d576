"""Classification metrics on pooled clip features: top-1, top-5 (None for 5 classes or fewer, where it
is 1.0 by construction), mean per-class accuracy, a per-class report (precision, recall, F1, support)
and the confusion matrix (rows = true class)."""

from __future__ import annotations

from typing import Any

import numpy as np


def topk_accuracy(proba: np.ndarray, y_idx: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the k highest scores (k capped at the class count)."""
    if len(y_idx) == 0:
        return float("nan")
    k = min(k, proba.shape[1])
    top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y_idx[:, None], axis=1)))


def confusion(y_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_idx, pred_idx), 1)
    return cm


def metrics(proba: np.ndarray, y_true: list[str], classes: list[str]) -> dict[str, Any]:
    """Metrics of probabilities ``proba`` (N, C) over ``classes`` against string labels.

    Labels unseen in training count as wrong (they cannot be predicted) rather than being dropped.
    """
    index = {c: i for i, c in enumerate(classes)}
    y_idx = np.array([index.get(y, -1) for y in y_true], dtype=int)
    pred = np.argmax(proba, axis=1) if len(proba) else np.zeros(0, int)
    known = y_idx >= 0
    per_class = {}
    report: dict[str, dict[str, float]] = {}
    for c, i in index.items():
        mask = y_idx == i
        if mask.any():
            per_class[c] = float(np.mean(pred[mask] == i))
        predicted = pred == i
        tp = int(np.sum(predicted & mask))
        precision = tp / int(predicted.sum()) if predicted.any() else 0.0
        recall = tp / int(mask.sum()) if mask.any() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[c] = {"precision": precision, "recall": recall, "f1": f1, "support": int(mask.sum())}
    out: dict[str, Any] = {
        "n": int(len(y_true)),
        "top1": float(np.mean(pred == y_idx)) if len(y_true) else float("nan"),
        # with 5 classes or fewer every true class is in the top 5: None (omitted), as CLIP_benchmark does
        "top5": topk_accuracy(proba, y_idx, 5) if len(classes) > 5 else None,
        "mean_class_acc": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "per_class": per_class,  # accuracy (= recall) of each class present in y_true
        "report": report,
        "confusion": confusion(y_idx[known], pred[known], len(classes)).tolist(),
    }
    return out
