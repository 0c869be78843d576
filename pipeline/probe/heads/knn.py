"""``knn``: cosine k-nearest neighbours (brute force, distance weights), k chosen on val; its ``knn`` file form."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...config import rule
from ...errors import HeadError
from .fitting import FitResult, TrainingSet, fit_sklearn
from .native import ArraySpec, NativeKind, as_float, register_native_kind
from .registry import HeadKind, register_head

__all__ = ["KNNPredictor", "KnnSettings"]


@dataclass
class KnnSettings:
    # neighbour counts tried on val
    ks: tuple[int, ...] = field(default=(1, 3, 5, 10, 20, 50), metadata=rule(min=1, nonempty=True, most=64))


def _knn(k: int):
    from sklearn.neighbors import KNeighborsClassifier

    # brute force: exact cosine neighbours, and no tree object in the saved file
    return KNeighborsClassifier(n_neighbors=int(k), metric="cosine", algorithm="brute", weights="distance")


def fit(cfg: KnnSettings, data: TrainingSet) -> FitResult:
    from ..knn_topk import select_k  # one blocked neighbour search scores every k

    n = len(data.y)
    candidates = [k for k in cfg.ks if k <= n] or [n]
    return fit_sklearn(data, "k", candidates, _knn, select=lambda ks, *rows: select_k([int(k) for k in ks], *rows))


# -- file form: ``knn`` ------------------------------------------------------------------------------


class KNNPredictor:
    """scikit-learn's brute-force cosine ``KNeighborsClassifier`` with distance weights.

    Distance = clip(1 - cos, 0, 2); the k nearest rows (argpartition, then sorted) vote with weight
    1/distance; where some neighbours are at distance 0, only those vote (weight 1 each).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], model: Mapping[str, Any], classes: list[str]) -> None:
        self.classes = classes
        self.X, self.y = np.asarray(arrays["X"]), np.asarray(arrays["y"]).astype(np.intp)
        self.k = int(model["k"])
        if not 1 <= self.k <= len(self.X):  # shapes and values: _knn_schema, checked on load
            raise HeadError(f"knn head: k={self.k} for {len(self.X)} training rows")
        if model.get("weights") != "distance" or self.y.min() < 0 or self.y.max() >= len(classes):
            raise HeadError(f"knn head: weights={model.get('weights')!r} or labels outside the {len(classes)} classes")
        self._Xn = self._normalise(self.X.astype(self.X.dtype if self.X.dtype == np.float32 else np.float64))

    @staticmethod
    def _normalise(X: np.ndarray) -> np.ndarray:
        norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        norms[norms == 0.0] = 1.0
        return X / norms[:, None]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        Q = as_float(X)
        if Q.shape[1] != self.X.shape[1]:
            raise HeadError(f"head expects {self.X.shape[1]}-d features, got {Q.shape[1]}-d")
        D = np.clip(1.0 - self._normalise(Q) @ self._Xn.T, 0.0, 2.0)
        rows = np.arange(len(D))[:, None]
        ind = np.argpartition(D, self.k - 1, axis=1)[:, : self.k]
        ind = ind[rows, np.argsort(D[rows, ind])]
        with np.errstate(divide="ignore"):
            w = 1.0 / D[rows, ind]
        inf = np.isinf(w)
        exact = inf.any(axis=1)
        w[exact] = inf[exact]
        proba = np.zeros((len(D), len(self.classes)))
        labels = self.y[ind]
        for i in range(self.k):
            proba[np.arange(len(D)), labels[:, i]] += w[:, i]
        proba /= proba.sum(axis=1, keepdims=True)
        return proba


def _knn_accepts(est: Any) -> bool:
    from sklearn.neighbors import KNeighborsClassifier

    return (
        isinstance(est, KNeighborsClassifier)
        and est.metric == "cosine"
        and est.weights == "distance"
        and getattr(est, "_fit_method", None) == "brute"
        and not getattr(est, "outputs_2d_", False)
    )


def _knn_arrays(est: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {"X": np.asarray(est._fit_X), "y": np.asarray(est._y, dtype=np.int64)}
    return arrays, {"k": int(est.n_neighbors), "metric": "cosine", "weights": "distance"}


def _knn_schema(model: Mapping[str, Any], classes: list[str]) -> dict[str, ArraySpec]:
    return {"X": ArraySpec(("N", "D")), "y": ArraySpec(("N",), dtype="iu")}


register_native_kind("knn", NativeKind(_knn_accepts, _knn_arrays, KNNPredictor, _knn_schema))
register_head(HeadKind("knn", KnnSettings, fit))
