"""Blocked cosine top-k neighbours, and the kNN head's choice of k from one pass over the validation split.

scikit-learn's brute ``KNeighborsClassifier`` predicts once per candidate k (six passes of val x train
distances for the default ``ks``); here the ``max(ks)`` nearest training rows of every validation row are
found once — train and queries both in blocks, a running top-k per query, never an N x N matrix — and every
k is scored from them with scikit-learn's own rule (``weights="distance"``: weight 1 / (1 - cosine), an
exact match outweighing everything, the lowest class index winning a tie), so the choice and the
validation scores are the ones scikit-learn's predictions give (tested). The fitted head stays a
``KNeighborsClassifier`` (its file format is unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["cosine_topk", "predict_from_neighbours", "select_k"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm == 0, 1, norm)


def cosine_topk(
    train: np.ndarray, queries: np.ndarray, k: int, *, query_block: int = 2048, train_block: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine distances) of the ``k`` nearest training rows of each query, nearest first: (Q, k) each.
    Memory: one (query_block, train_block) float32 block of similarities plus the running top-k."""
    T, Q = _unit(train), _unit(queries)
    k = min(k, len(T))
    idx = np.empty((len(Q), k), np.int64)
    dist = np.empty((len(Q), k), np.float32)
    for q0 in range(0, len(Q), query_block):
        q = Q[q0 : q0 + query_block]
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.zeros((len(q), 0), np.int64)
        for t0 in range(0, len(T), train_block):
            s = q @ T[t0 : t0 + train_block].T
            kk = min(k, s.shape[1])
            part = (
                np.argpartition(-s, kk - 1, axis=1)[:, :kk]
                if kk < s.shape[1]
                else np.tile(np.arange(s.shape[1]), (len(q), 1))
            )
            cand_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
            cand_i = np.concatenate([best_i, part + t0], axis=1)
            if cand_s.shape[1] > k:
                keep = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
                cand_s, cand_i = np.take_along_axis(cand_s, keep, axis=1), np.take_along_axis(cand_i, keep, axis=1)
            best_s, best_i = cand_s, cand_i
        order = np.argsort(-best_s, axis=1, kind="stable")
        idx[q0 : q0 + len(q)] = np.take_along_axis(best_i, order, axis=1)
        dist[q0 : q0 + len(q)] = np.clip(1 - np.take_along_axis(best_s, order, axis=1), 0, 2)
    return idx, dist


def predict_from_neighbours(
    y_train: np.ndarray, idx: np.ndarray, dist: np.ndarray, k: int, n_classes: int
) -> np.ndarray:
    """Class indices predicted by the ``k`` nearest (``weights="distance"`` as scikit-learn weighs them)."""
    d = dist[:, :k].astype(np.float64)
    with np.errstate(divide="ignore"):
        w = 1.0 / d
    inf = np.isinf(w)
    rows = inf.any(axis=1)
    w[rows] = inf[rows]  # an exact match: only the exact matches vote
    votes = np.zeros((len(idx), n_classes))
    np.add.at(votes, (np.arange(len(idx))[:, None], y_train[idx[:, :k]]), w)
    return votes.argmax(axis=1)


def select_k(
    ks: Sequence[int], X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray
) -> tuple[int, dict[str, float]]:
    """The k (first of the best) by validation top-1, and each k's score, from one neighbour search."""
    classes, yi = np.unique(np.asarray(y_train), return_inverse=True)
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    yv = np.array([lookup.get(c, -1) for c in np.asarray(y_val).tolist()])
    idx, dist = cosine_topk(X_train, X_val, max(ks))
    scores: dict[str, float] = {}
    best, best_acc = int(ks[0]), -1.0
    for k in ks:
        acc = float(np.mean(predict_from_neighbours(yi, idx, dist, min(k, len(yi)), len(classes)) == yv))
        scores[f"k={k:g}"] = acc
        if acc > best_acc + 1e-12:
            best, best_acc = int(k), acc
    return best, scores
