"""``mlp``: scikit-learn MLP (one hidden layer), weight decay chosen on val, early stopping; its ``mlp`` file form."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...config import rule
from ...errors import HeadError
from .fitting import FitResult, TrainingSet, fit_sklearn
from .native import (
    ArraySpec,
    NativeKind,
    input_schema,
    prepare,
    register_native_kind,
    sigmoid,
    sklearn_parts,
    softmax,
    split_head,
    two_column,
)
from .registry import HeadKind, register_head

__all__ = ["MLPPredictor", "MlpSettings"]


@dataclass
class MlpSettings:
    hidden: int = field(default=256, metadata=rule(min=1, max=8192))  # hidden units
    # weight decays tried on val (each a fit, per CV fold)
    alphas: tuple[float, ...] = field(default=(1.0, 1e-2, 1e-4), metadata=rule(min=0, nonempty=True, most=16))
    max_iter: int = field(default=1000, metadata=rule(min=1, max=10_000))


def fit(cfg: MlpSettings, data: TrainingSet) -> FitResult:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(data.y) + (len(data.y_val) if data.refit and data.y_val is not None else 0)

    def make(alpha: float):  # early stopping holds out 10% of the rows; below ~100 that means nothing
        return make_pipeline(
            StandardScaler(),
            MLPClassifier(
                hidden_layer_sizes=(cfg.hidden,),
                alpha=alpha,
                max_iter=min(cfg.max_iter, 300),
                early_stopping=n >= 100,
                n_iter_no_change=10,
                random_state=data.seed,
            ),
        )

    return fit_sklearn(data, "alpha", list(cfg.alphas), make)


# -- file form: ``mlp`` ------------------------------------------------------------------------------

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda a: np.maximum(a, 0, out=a),
    "tanh": lambda a: np.tanh(a, out=a),
    "logistic": lambda a: sigmoid(a),
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
        a = prepare(X, self._arrays, self.input, self.W[0].shape[0])
        for i, (W, b) in enumerate(zip(self.W, self.b)):
            a = a @ W
            a += b
            if i < len(self.W) - 1:
                a = _ACTIVATIONS[self.activation](a)
        if self.output == "logistic":
            p = sigmoid(a)
            return two_column(p[:, 0]) if p.shape[1] == 1 else p
        return softmax(a)


def _mlp_accepts(est: Any) -> bool:
    from sklearn.neural_network import MLPClassifier

    return split_head(est, MLPClassifier) is not None


def _mlp_arrays(est: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from sklearn.neural_network import MLPClassifier

    how, arrays, mlp = sklearn_parts(est, MLPClassifier)
    for i, (W, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        arrays[f"W{i}"], arrays[f"b{i}"] = np.asarray(W), np.asarray(b)
    settings = {"input": how, "layers": len(mlp.coefs_), "activation": mlp.activation, "output": mlp.out_activation_}
    return arrays, settings


def _mlp_schema(model: Mapping[str, Any], classes: list[str]) -> dict[str, ArraySpec]:
    """``W0 (D, H1), b0 (H1,), W1 (H1, H2), ...``, the last layer with one output per class (one for two)."""
    n = int(model["layers"])
    dims: list[int | str] = ["D", *(f"H{i}" for i in range(1, n)), 1 if len(classes) == 2 else len(classes)]
    schema = {}
    for i in range(n):
        schema[f"W{i}"], schema[f"b{i}"] = ArraySpec((dims[i], dims[i + 1])), ArraySpec((dims[i + 1],))
    return {**schema, **input_schema(model)}


register_native_kind("mlp", NativeKind(_mlp_accepts, _mlp_arrays, MLPPredictor, _mlp_schema))
register_head(HeadKind("mlp", MlpSettings, fit, cv_folds=3))
