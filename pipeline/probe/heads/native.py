"""Native head files: a head as named numpy arrays (``.npz``, loaded with ``allow_pickle=False``) plus its
architecture in the JSON sidecar (``"model": {"kind": ...}``), predicted with numpy alone; and the
scikit-learn arithmetic that the built-in kinds' predictors share.

Why: loading a ``.skops`` head imports scikit-learn broadly (skops builds its trusted-type list from every
estimator), which costs seconds on every ``vidprobe predict``; an ``.npz`` file is read by numpy without
running code and without scikit-learn. The predictors repeat scikit-learn's arithmetic step by step (same
dtypes, same order of operations), so a saved head gives the probabilities of the estimator it came from.

A model kind is one entry of ``NATIVE_KINDS``: ``accepts`` (is this fitted estimator mine?),
``to_arrays`` (estimator -> arrays and JSON settings), ``from_arrays`` (arrays and settings -> a
predictor with ``classes`` and ``predict_proba(X) -> (N, K)``) and ``schema`` (the arrays it reads, as
``ArraySpec``s: dtype kind, shape relations, finite values). Each head kind's module registers its own
with ``register_native_kind`` (``linear`` serves logreg and zeroshot); a kind not registered yet is
looked for among the head kinds. This module imports nothing beyond numpy.

Why a schema: a head file whose checksum matches can still hold NaN weights, a zero scale or a
wrong-shaped array (written by another tool, or damaged before it was signed). ``check_arrays`` refuses
it when it is loaded or saved, naming the array and the cause, instead of predicting NaN or failing in
the middle of a product.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ...errors import HeadError

__all__ = [
    "NATIVE_KINDS",
    "ArraySpec",
    "NativeKind",
    "NativePredictor",
    "as_float",
    "check_arrays",
    "check_classes",
    "check_native",
    "input_schema",
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
class ArraySpec:
    """What one saved array must be. ``shape``: one entry per axis, an int or a name that must be the same
    length wherever it appears (``"D"``: the feature width; None: any shape); ``dtype``: the numpy dtype
    kinds allowed (``"f"`` floats, ``"iu"`` integers); floats must be finite; ``positive``: every value > 0
    (a divisor, such as a standardisation's scale)."""

    shape: tuple[int | str, ...] | None = None
    dtype: str = "f"
    positive: bool = False


Schema = dict[str, ArraySpec]  # array name -> its spec; "*": every array not named


def _numeric_arrays(model: Mapping[str, Any], classes: list[str]) -> Schema:
    """The default schema (a kind that declares none): any number of numeric arrays, floats finite."""
    return {"*": ArraySpec(dtype="fiub")}


@dataclass(frozen=True)
class NativeKind:
    """How one model kind becomes arrays and comes back as a predictor, and which arrays it reads."""

    accepts: Callable[[Any], bool]  # fitted estimator -> is it this kind
    to_arrays: Callable[[Any], tuple[dict[str, np.ndarray], dict[str, Any]]]  # -> (arrays, JSON settings)
    from_arrays: Callable[[Mapping[str, np.ndarray], Mapping[str, Any], list[str]], NativePredictor]
    schema: Callable[[Mapping[str, Any], list[str]], Schema] = _numeric_arrays  # (model, classes) -> specs


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
    """The predictor a sidecar's ``model`` entry describes, built from the file's arrays (checked first)."""
    kind = model.get("kind") if isinstance(model, Mapping) else None
    _load_head_kinds()
    if kind not in NATIVE_KINDS:
        raise HeadError(f"unknown model kind {kind!r} (known: {', '.join(NATIVE_KINDS)})")
    names = [str(c) for c in classes]
    check_native(arrays, model, names)
    try:
        return NATIVE_KINDS[kind].from_arrays(arrays, model, names)
    except KeyError as exc:
        raise HeadError(f"{kind} head: array {exc.args[0]!r} missing") from None


def check_native(arrays: Mapping[str, np.ndarray], model: Mapping[str, Any], classes: list[str]) -> None:
    """``check_arrays`` against the schema of the kind ``model`` names; HeadError naming the kind and array."""
    kind = str(model.get("kind"))
    try:
        schema = NATIVE_KINDS[kind].schema(model, classes)
    except (KeyError, TypeError, ValueError) as exc:  # the sidecar's model entry lacks what the schema reads
        raise HeadError(f"{kind} head: the sidecar's model entry is unusable ({type(exc).__name__}: {exc})") from None
    problem = check_arrays(arrays, schema)
    if problem:
        raise HeadError(f"{kind} head: {problem}; retrain it or restore the file")


def check_arrays(arrays: Mapping[str, np.ndarray], schema: Schema) -> str | None:
    """Why ``arrays`` break ``schema`` (the first problem, naming the array), or None."""
    sizes: dict[str, tuple[int, str]] = {}  # dimension name -> (length, the array that fixed it)
    for name in [n for n in schema if n != "*"] + [n for n in arrays if n not in schema]:
        spec = schema.get(name, schema.get("*"))
        if spec is None:
            continue  # an array the kind does not read
        if name not in arrays:
            return f"array {name!r} missing"
        problem = _array_problem(name, np.asarray(arrays[name]), spec, sizes)
        if problem:
            return problem
    return None


_DTYPE_WORDS = {"f": "floats", "i": "integers", "u": "integers", "b": "booleans"}


def _array_problem(name: str, a: np.ndarray, spec: ArraySpec, sizes: dict[str, tuple[int, str]]) -> str | None:
    if a.dtype.kind not in spec.dtype:
        words = " or ".join(dict.fromkeys(_DTYPE_WORDS[k] for k in spec.dtype))
        return f"array {name!r} holds {a.dtype} values, expected {words}"
    if spec.shape is not None:
        if a.ndim != len(spec.shape):
            return f"array {name!r} has shape {a.shape}, expected {_shown(spec.shape, sizes)}"
        for n, want in zip(a.shape, spec.shape):
            if isinstance(want, str) and want not in sizes:
                sizes[want] = (n, name)
            expected = sizes[want][0] if isinstance(want, str) else want
            if n != expected:
                why = f" ({want} = {expected} from array {sizes[want][1]!r})" if isinstance(want, str) else ""
                return f"array {name!r} has shape {a.shape}, expected {_shown(spec.shape, sizes)}{why}"
    if a.dtype.kind == "f":
        bad = int((~np.isfinite(a)).sum())
        if bad:
            return f"array {name!r} holds {bad} NaN or infinite value(s)"
    if spec.positive and a.size and not (a > 0).all():
        return f"array {name!r} holds {int((a <= 0).sum())} value(s) <= 0 (it divides the inputs)"
    return None


def _shown(shape: tuple[int | str, ...], sizes: dict[str, tuple[int, str]]) -> str:
    """``(4, 8)``: a named axis shown by its length once it is known."""
    return (
        "("
        + ", ".join(str(sizes[d][0] if isinstance(d, str) and d in sizes else d) for d in shape)
        + (",)" if len(shape) == 1 else ")")
    )


def check_classes(classes: np.ndarray) -> str | None:
    """Why a head file's ``classes`` array is unusable (not distinct text names), or None."""
    if classes.dtype.kind != "U" or classes.ndim != 1:
        return f"array 'classes' must be a list of class names, got {classes.dtype} values of shape {classes.shape}"
    if not len(classes):
        return "array 'classes' holds no class name"
    if len(set(classes.tolist())) != len(classes):
        return "array 'classes' names a class twice"
    return None


def input_schema(model: Mapping[str, Any]) -> Schema:
    """The arrays of a head's input transform (``prepare``): a standardisation's mean and scale over ``D``."""
    how = model.get("input", "none")
    if how == "standardize":
        return {"mean": ArraySpec(("D",)), "scale": ArraySpec(("D",), positive=True)}
    if how in ("l2", "none"):
        return {}
    raise HeadError(f"unknown input transform {how!r}")


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
