"""Native head files: a head as named numpy arrays (``.npz``, loaded with ``allow_pickle=False``) plus its
architecture in the JSON sidecar (``"model": {"kind": ...}``), predicted with numpy alone; and the
scikit-learn arithmetic that the built-in kinds' predictors share.

Why: loading a ``.skops`` head imports scikit-learn broadly (skops builds its trusted-type list from every
estimator), which costs seconds on every ``vidprobe predict``; an ``.npz`` file is read by numpy without
running code and without scikit-learn. The predictors repeat scikit-learn's arithmetic step by step (same
dtypes, same order of operations), so a saved head gives the probabilities of the estimator it came from.

A model kind is one entry of ``NATIVE_KINDS``: ``accepts`` (is this fitted estimator mine?),
``to_arrays`` (estimator -> arrays and JSON settings) and ``from_arrays`` (arrays and settings -> a
predictor with ``classes`` and ``predict_proba(X) -> (N, K)``). Each head kind's module registers its own
with ``register_native_kind`` (``linear`` serves logreg and zeroshot); a kind not registered yet is
looked for among the head kinds. This module imports nothing beyond numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ...errors import HeadError

__all__ = [
    "NATIVE_KINDS",
    "NativeKind",
    "NativePredictor",
    "as_float",
    "native_kind_of",
    "predictor_from_arrays",
    "prepare",
    "register_native_kind",
    "sigmoid",
    "sklearn_parts",
    "softmax",
    "split_head",
    "to_native",
    "two_column",
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


def _load_head_kinds() -> None:
    """Import every head kind, so that each registers its native kind."""
    from .registry import head_kind, head_names

    for name in head_names():
        head_kind(name)


def native_kind_of(estimator: Any) -> str | None:
    """The registered kind that accepts this estimator, or None."""
    _load_head_kinds()
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
    _load_head_kinds()
    if kind not in NATIVE_KINDS:
        raise HeadError(f"unknown model kind {kind!r} (known: {', '.join(NATIVE_KINDS)})")
    try:
        return NATIVE_KINDS[kind].from_arrays(arrays, model, [str(c) for c in classes])
    except KeyError as exc:
        raise HeadError(f"{kind} head: array {exc.args[0]!r} missing") from None


# -- shared arithmetic (scikit-learn's, step by step) ----------------------------------------------


def _steps(estimator: Any) -> list[Any]:
    return [s for _, s in estimator.steps] if hasattr(estimator, "steps") else [estimator]


def as_float(X: np.ndarray) -> np.ndarray:
    """A float copy like scikit-learn's input check: float32 stays float32, anything else becomes float64."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise HeadError(f"head input must be (N, D), got shape {X.shape}")
    return X.astype(X.dtype if X.dtype in (np.float32, np.float64) else np.float64, copy=True)


def prepare(X: np.ndarray, arrays: Mapping[str, np.ndarray], how: str, dim: int) -> np.ndarray:
    """StandardScaler (``standardize``), Normalizer l2 (``l2``) or nothing (``none``), in the input's dtype."""
    Z = as_float(X)
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


def softmax(Z: np.ndarray) -> np.ndarray:
    Z = Z - Z.max(axis=1, keepdims=True)
    np.exp(Z, out=Z)
    Z /= Z.sum(axis=1, keepdims=True)
    return Z


def sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def two_column(p: np.ndarray) -> np.ndarray:
    """Binary heads give P(second class); scikit-learn returns ``[1 - p, p]``."""
    return np.vstack([1 - p, p]).T


def split_head(estimator: Any, final: type) -> tuple[list[Any], Any] | None:
    """(input steps, model) of ``[StandardScaler | Normalizer l2 ->] final``, else None."""
    steps = _steps(estimator)
    if not isinstance(steps[-1], final) or not all(_is_input_step(s) for s in steps[:-1]) or len(steps) > 2:
        return None
    return steps[:-1], steps[-1]


def sklearn_parts(estimator: Any, final: type) -> tuple[str, dict[str, np.ndarray], Any]:
    """Input transform name, its arrays, and the final model of an accepted estimator."""
    split = split_head(estimator, final)
    if split is None:
        raise HeadError(f"no native form for {type(estimator).__name__}")
    inputs, model = split
    how, arrays = _input_arrays(inputs[0]) if inputs else ("none", {})
    return how, arrays, model
