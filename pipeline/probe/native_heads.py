"""Native head files: a head as named numpy arrays (``.npz``, loaded with ``allow_pickle=False``) plus its
architecture in the JSON sidecar (``"model": {"kind": ...}``), predicted with numpy alone.

Why: loading a ``.skops`` head imports scikit-learn broadly (skops builds its trusted-type list from every
estimator), which costs seconds on every ``vidprobe predict``; an ``.npz`` file is read by numpy without
running code and without scikit-learn. The predictors repeat scikit-learn's arithmetic step by step (same
dtypes, same order of operations), so a saved head gives the probabilities of the estimator it came from.

A model kind is one entry of ``NATIVE_KINDS``: ``accepts`` (is this fitted estimator mine?),
``to_arrays`` (estimator -> arrays and JSON settings) and ``from_arrays`` (arrays and settings -> a
predictor with ``classes`` and ``predict_proba(X) -> (N, K)``). Other heads (e.g. torch ones) add theirs
with ``register_native_kind``; this module imports nothing beyond numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import HeadError

__all__ = [
    "NATIVE_KINDS",
    "NativeKind",
    "NativePredictor",
    "KNNPredictor",
    "LinearPredictor",
    "MLPPredictor",
    "native_kind_of",
    "predictor_from_arrays",
    "register_native_kind",
    "to_native",
]


class NativePredictor(Protocol):
    classes: list[str]

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class NativeKind:
    """How one model kind becomes arrays and comes back as a predictor."""

    accepts: Callable[[Any], bool]  # fitted estimator -> is it this kind
    to_arrays: Callable[[Any], tuple[dict[str, np.ndarray], dict[str, Any]]]  # -> (arrays, JSON settings)
    from_arrays: Callable[[Mapping[str, np.ndarray], Mapping[str, Any], list[str]], NativePredictor]


NATIVE_KINDS: dict[str, NativeKind] = {}


def register_native_kind(name: str, kind: NativeKind) -> None:
    """Make a model kind savable as ``.npz`` (``save_head``) and loadable (``load_head``)."""
    NATIVE_KINDS[name] = kind


def native_kind_of(estimator: Any) -> str | None:
    """The registered kind that accepts this estimator, or None."""
    return next((name for name, k in NATIVE_KINDS.items() if k.accepts(estimator)), None)


def to_native(estimator: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays to save and the sidecar's ``model`` entry (with its ``kind``); HeadError if no kind accepts it."""
    name = native_kind_of(estimator)
    if name is None:
        raise HeadError(
            f"a {type(estimator).__name__} head has no native (.npz) form; save it as .skops instead "
            f"(native kinds: {', '.join(NATIVE_KINDS)})"
        )
    arrays, settings = NATIVE_KINDS[name].to_arrays(estimator)
    if "classes" in arrays:  # the file's own entry: the class names, written by save_head
        raise HeadError(f"native kind {name!r}: array name 'classes' is reserved for the class names")
    return arrays, {"kind": name, **settings}


def predictor_from_arrays(arrays: Mapping[str, np.ndarray], model: Mapping[str, Any], classes: Sequence[str]):
    """The predictor a sidecar's ``model`` entry describes, built from the file's arrays."""
    kind = model.get("kind") if isinstance(model, Mapping) else None
    if kind not in NATIVE_KINDS:
        raise HeadError(f"unknown model kind {kind!r} (known: {', '.join(NATIVE_KINDS)})")
    try:
        return NATIVE_KINDS[kind].from_arrays(arrays, model, [str(c) for c in classes])
    except KeyError as exc:
        raise HeadError(f"{kind} head: array {exc.args[0]!r} missing") from None


# -- shared arithmetic (scikit-learn's, step by step) ----------------------------------------------


def _steps(estimator: Any) -> list[Any]:
    return [s for _, s in estimator.steps] if hasattr(estimator, "steps") else [estimator]


def _as_float(X: np.ndarray) -> np.ndarray:
    """A float copy like scikit-learn's input check: float32 stays float32, anything else becomes float64."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise HeadError(f"head input must be (N, D), got shape {X.shape}")
    return X.astype(X.dtype if X.dtype in (np.float32, np.float64) else np.float64, copy=True)


def _prepare(X: np.ndarray, arrays: Mapping[str, np.ndarray], how: str, dim: int) -> np.ndarray:
    """StandardScaler (``standardize``), Normalizer l2 (``l2``) or nothing (``none``), in the input's dtype."""
    Z = _as_float(X)
    if Z.shape[1] != dim:
        raise HeadError(f"head expects {dim}-d features, got {Z.shape[1]}-d")
    if how == "standardize":
        Z -= arrays["mean"]
        Z /= arrays["scale"]
    elif how == "l2":
        norms = np.sqrt(np.einsum("ij,ij->i", Z, Z))
        norms[norms == 0.0] = 1.0  # a zero row stays zero (scikit-learn's _handle_zeros_in_scale)
        Z /= norms[:, None]
    elif how != "none":
        raise HeadError(f"unknown input transform {how!r}")
    return Z


def _input_arrays(step: Any) -> tuple[str, dict[str, np.ndarray]]:
    from sklearn.preprocessing import Normalizer, StandardScaler

    if isinstance(step, StandardScaler):
        mean = step.mean_ if step.with_mean else np.zeros(step.n_features_in_)
        scale = step.scale_ if step.with_std else np.ones(step.n_features_in_)
        return "standardize", {"mean": np.asarray(mean), "scale": np.asarray(scale)}
    if isinstance(step, Normalizer) and step.norm == "l2":
        return "l2", {}
    raise HeadError(f"no native form for the input step {type(step).__name__}")


def _is_input_step(step: Any) -> bool:
    from sklearn.preprocessing import Normalizer, StandardScaler

    return isinstance(step, StandardScaler) or (isinstance(step, Normalizer) and step.norm == "l2")


def _softmax(Z: np.ndarray) -> np.ndarray:
    Z = Z - Z.max(axis=1, keepdims=True)
    np.exp(Z, out=Z)
    Z /= Z.sum(axis=1, keepdims=True)
    return Z


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _two_column(p: np.ndarray) -> np.ndarray:
    """Binary heads give P(second class); scikit-learn returns ``[1 - p, p]``."""
    return np.vstack([1 - p, p]).T


def _split_head(estimator: Any, final: type) -> tuple[list[Any], Any] | None:
    """(input steps, model) of ``[StandardScaler | Normalizer l2 ->] final``, else None."""
    steps = _steps(estimator)
    if not isinstance(steps[-1], final) or not all(_is_input_step(s) for s in steps[:-1]) or len(steps) > 2:
        return None
    return steps[:-1], steps[-1]


def _parts(estimator: Any, final: type) -> tuple[str, dict[str, np.ndarray], Any]:
    """Input transform name, its arrays, and the final model of an accepted estimator."""
    split = _split_head(estimator, final)
    if split is None:
        raise HeadError(f"no native form for {type(estimator).__name__}")
    inputs, model = split
    how, arrays = _input_arrays(inputs[0]) if inputs else ("none", {})
    return how, arrays, model


# -- linear: logreg and zeroshot -----------------------------------------------------------------


class LinearPredictor:
    """``softmax(prepare(X) W^T + b)``; one weight row and two classes: scikit-learn's sigmoid form."""

    def __init__(self, arrays: Mapping[str, np.ndarray], model: Mapping[str, Any], classes: list[str]) -> None:
        self.classes = classes
        self.W, self.b = np.asarray(arrays["W"]), np.asarray(arrays["b"])
        self.input = str(model.get("input", "none"))
        self._arrays = dict(arrays)
        rows = self.W.shape[0] if self.W.ndim == 2 else -1
        if rows != (1 if len(classes) == 2 else len(classes)) or self.b.shape != (rows,):
            raise HeadError(f"linear head: weights {self.W.shape} and bias {self.b.shape} for {len(classes)} classes")

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return _prepare(X, self._arrays, self.input, self.W.shape[1]) @ self.W.T + self.b

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = self.decision_function(X)
        return _two_column(_sigmoid(z[:, 0])) if z.shape[1] == 1 else _softmax(z)


def _linear_accepts(est: Any) -> bool:
    from sklearn.linear_model import LogisticRegression

    return _split_head(est, LogisticRegression) is not None


def _linear_arrays(est: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression

    how, arrays, lr = _parts(est, LogisticRegression)
    arrays.update(W=np.asarray(lr.coef_), b=np.asarray(lr.intercept_))
    return arrays, {"input": how}


register_native_kind("linear", NativeKind(_linear_accepts, _linear_arrays, LinearPredictor))


# -- mlp ---------------------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda a: np.maximum(a, 0, out=a),
    "tanh": lambda a: np.tanh(a, out=a),
    "logistic": lambda a: _sigmoid(a),
    "identity": lambda a: a,
}


class MLPPredictor:
    """scikit-learn's ``MLPClassifier`` forward pass: (prepare) -> [X W_i + b_i, activation]... -> output."""

    def __init__(self, arrays: Mapping[str, np.ndarray], model: Mapping[str, Any], classes: list[str]) -> None:
        self.classes = classes
        self.input = str(model.get("input", "none"))
        n = int(model["layers"])
        self.W = [np.asarray(arrays[f"W{i}"]) for i in range(n)]
        self.b = [np.asarray(arrays[f"b{i}"]) for i in range(n)]
        self.activation, self.output = str(model["activation"]), str(model["output"])
        if self.activation not in _ACTIVATIONS or self.output not in ("softmax", "logistic"):
            raise HeadError(f"mlp head: unknown activation {self.activation!r} or output {self.output!r}")
        self._arrays = dict(arrays)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        a = _prepare(X, self._arrays, self.input, self.W[0].shape[0])
        for i, (W, b) in enumerate(zip(self.W, self.b)):
            a = a @ W
            a += b
            if i < len(self.W) - 1:
                a = _ACTIVATIONS[self.activation](a)
        if self.output == "logistic":
            p = _sigmoid(a)
            return _two_column(p[:, 0]) if p.shape[1] == 1 else p
        return _softmax(a)


def _mlp_accepts(est: Any) -> bool:
    from sklearn.neural_network import MLPClassifier

    return _split_head(est, MLPClassifier) is not None


def _mlp_arrays(est: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from sklearn.neural_network import MLPClassifier

    how, arrays, mlp = _parts(est, MLPClassifier)
    for i, (W, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        arrays[f"W{i}"], arrays[f"b{i}"] = np.asarray(W), np.asarray(b)
    settings = {"input": how, "layers": len(mlp.coefs_), "activation": mlp.activation, "output": mlp.out_activation_}
    return arrays, settings


register_native_kind("mlp", NativeKind(_mlp_accepts, _mlp_arrays, MLPPredictor))


# -- knn -----------------------------------------------------------------------------------------------


class KNNPredictor:
    """scikit-learn's brute-force cosine ``KNeighborsClassifier`` with distance weights.

    Distance = clip(1 - cos, 0, 2); the k nearest rows (argpartition, then sorted) vote with weight
    1/distance; where some neighbours are at distance 0, only those vote (weight 1 each).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], model: Mapping[str, Any], classes: list[str]) -> None:
        self.classes = classes
        self.X, self.y = np.asarray(arrays["X"]), np.asarray(arrays["y"]).astype(np.intp)
        self.k = int(model["k"])
        if self.X.ndim != 2 or self.y.shape != (len(self.X),) or not 1 <= self.k <= len(self.X):
            raise HeadError(f"knn head: {self.X.shape} training rows, {self.y.shape} labels, k={self.k}")
        if model.get("weights") != "distance" or self.y.min() < 0 or self.y.max() >= len(classes):
            raise HeadError(f"knn head: weights={model.get('weights')!r} or labels outside the {len(classes)} classes")
        self._Xn = self._normalise(self.X.astype(self.X.dtype if self.X.dtype == np.float32 else np.float64))

    @staticmethod
    def _normalise(X: np.ndarray) -> np.ndarray:
        norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        norms[norms == 0.0] = 1.0
        return X / norms[:, None]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        Q = _as_float(X)
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


register_native_kind("knn", NativeKind(_knn_accepts, _knn_arrays, KNNPredictor))
