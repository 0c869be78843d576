"""Head files: the head (format from the suffix) and its JSON sidecar, loaded without running code from the file.

* ``.npz`` (default): the estimator's arrays in its native form (``pipeline.probe.heads.native``), its
  architecture in the sidecar's ``model`` entry; loaded by numpy with ``allow_pickle=False`` and predicted
  without scikit-learn, so ``vidprobe predict`` needs neither scikit-learn nor skops;
* ``.skops``: ``skops.io``, whose loader builds only audited scikit-learn/numpy types and refuses others;
* ``.joblib`` (pickle): written only when asked for, loaded only with ``trust=True``.

The sidecar records the encoder, sampling, pooling, labels, settings, metrics and the head file's
sha256, so ``predict`` can rebuild the extraction and a swapped file is caught; a sidecar without that
checksum is refused unless the caller trusts the pair (``trust``). Its size follows the classes and the
test clips, never classes squared (the test metrics hold the confusion matrix's nonzero cells). The arrays
of a head are checked against its kind's schema (``native.check_arrays``: dtypes, shapes, finite values)
when it is saved and when it is loaded, whatever its format.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, HeadError
from ...versions import versions
from ..sequences import HeadInput
from ..temporal.predictor import TemporalHead
from .fitting import FitResult
from .native import check_classes, check_native, native_kind_of, predictor_from_arrays, to_native

__all__ = ["HEAD_FORMATS", "LoadedHead", "head_format", "load_head", "load_head_meta", "save_head", "sidecar_path"]
HEAD_FORMATS = {".npz": "npz", ".skops": "skops", ".joblib": "joblib"}


def sidecar_path(head_path: str | Path) -> Path:
    return Path(head_path).with_suffix(".json")


def head_format(path: str | Path) -> str:
    p = Path(path)
    if p.suffix not in HEAD_FORMATS:
        raise ConfigError(
            f"{p}: a head file must end in .npz (default: plain arrays), .skops (scikit-learn objects, audited "
            "types) or .joblib (pickle; loading it needs --trust)"
        )
    return HEAD_FORMATS[p.suffix]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_head(path: str | Path, result: FitResult, meta: dict[str, Any]) -> Path:
    """Write the head (format from the suffix) and its JSON sidecar beside it; returns the sidecar path."""
    p = Path(path)
    fmt = head_format(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    blob = {"estimator": result.estimator, "classes": list(result.classes)}
    if isinstance(result.estimator, TemporalHead) and fmt != "npz":
        raise HeadError(f"{p}: a {result.estimator.arch['kind']} head is saved as plain arrays; name the file NAME.npz")
    native = _native_form(p, result.estimator, result.classes, fmt)  # checked: a fit that diverged to NaN
    model = None
    if fmt == "npz":
        assert native is not None
        arrays, model = native
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays, classes=np.array([str(c) for c in result.classes]))  # type: ignore[arg-type]
    elif fmt == "skops":
        import skops.io as sio

        sio.dump(blob, tmp)
    else:
        import joblib

        joblib.dump(blob, tmp)
    tmp.replace(p)
    side = {
        **meta,
        "format": fmt,
        **({"model": model} if model is not None else {}),
        "head_sha256": _sha256(p),
        "classes": result.classes,
        "hparams": result.hparams,
        "val_scores": [[k, v] for k, v in result.val_scores.items()],  # in the order tried
        "fit_info": result.info,
        "versions": versions("vidprobe", "scikit-learn", "skops", "numpy", "python"),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    sidecar_path(p).write_text(json.dumps(side, indent=2, sort_keys=True, default=str), encoding="utf-8")
    return sidecar_path(p)


def _check_arrays(p: Path, arrays: dict[str, np.ndarray], model: dict[str, Any], classes: list, prefix: str) -> None:
    """``native.check_native`` naming the file: a head that diverged to NaN is not written, a damaged one
    not loaded."""
    try:
        check_native(arrays, model, [str(c) for c in classes])
    except HeadError as exc:
        raise HeadError(f"{p}: {prefix}{exc}") from None


def _native_form(
    p: Path, estimator: Any, classes: list, fmt: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The head's native arrays and ``model`` entry, built once and checked against its kind's schema before
    anything is written (None: a scikit-learn head of no native kind, saved as .skops/.joblib unchecked)."""
    if fmt != "npz" and native_kind_of(estimator) is None:
        return None
    arrays, model = to_native(estimator)  # .npz of no native kind: HeadError naming the formats to use
    _check_arrays(p, arrays, model, classes, "not written: ")
    return arrays, model


def _check_estimator(p: Path, estimator: Any, classes: list) -> None:
    """The schema check of a scikit-learn head (.skops, .joblib) through its native form, where it has one."""
    if native_kind_of(estimator) is not None:
        _check_arrays(p, *to_native(estimator), classes, "")


@dataclass
class LoadedHead:
    estimator: Any
    classes: list[str]
    meta: dict[str, Any]
    path: Path | None = None

    def predict_proba(self, X: HeadInput) -> np.ndarray:
        """The estimator's probabilities; HeadError where any is not finite (weights that overflow, or
        inputs that are not finite), never NaN passed on as a score."""
        proba = self.estimator.predict_proba(X)
        bad = ~np.isfinite(proba).all(axis=1)
        if bad.any():
            raise HeadError(
                f"{self.path or 'head'}: gives non-finite probabilities for {int(bad.sum())} of {len(bad)} clip(s) "
                "(weights that overflow, or inputs that are NaN or infinite); retrain it or check the inputs"
            )
        return proba


def load_head_meta(path: str | Path, *, trust: bool = False) -> dict[str, Any]:
    """The checks of ``load_head`` that need no scikit-learn (which a .skops file imports broadly): head
    file and sidecar exist, the sidecar parses and its sha256 matches, pickle is trusted."""
    p = Path(path)
    side = sidecar_path(p)
    if not p.is_file():
        raise HeadError(f"{p}: no such head file; train one with `vidprobe train STORE -o {p}`")
    fmt = head_format(p)
    if not side.is_file():
        raise HeadError(f"{side}: sidecar missing; a head cannot be used without knowing its encoder and pooling")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HeadError(f"{side}: unreadable sidecar ({exc})") from None
    if not isinstance(meta, dict):
        raise HeadError(f"{side}: the sidecar must be a JSON object; retrain the head or restore the pair")
    recorded = meta.get("head_sha256")
    if not recorded and not trust:
        raise HeadError(
            f"{side}: no head_sha256, so {p.name} cannot be checked against it (every sidecar `vidprobe train` "
            "writes has one); retrain, or load the pair only if you trust where it came from, with --trust"
        )
    if recorded and recorded != _sha256(p):
        raise HeadError(
            f"{p}: file does not match its sidecar's sha256 (replaced or damaged); retrain or restore the pair"
        )
    if fmt == "joblib" and not trust:
        raise HeadError(
            f"{p}: joblib (pickle) files can run code when loaded; load it only if you trust where it came from, "
            "with --trust"
        )
    return meta


def load_head(path: str | Path, *, trust: bool = False, meta: dict[str, Any] | None = None) -> LoadedHead:
    """Load a head and its sidecar without running code from the file (unless ``trust``).

    ``.npz``: numpy arrays only (``allow_pickle=False``), rebuilt as the numpy predictor that the
    sidecar's ``model`` entry names; no scikit-learn is imported. ``.skops``: only types on skops' trusted
    list (scikit-learn, numpy, builtins) are built; anything else is refused naming the types. ``.joblib``
    is pickle, which runs code while loading: refused unless ``trust=True``. HeadError names the file for
    every refusal or damage. ``meta``: what ``load_head_meta`` already returned for this file (its checks
    are then not repeated: a large kNN head is not read and hashed twice).
    """
    p = Path(path)
    if meta is None:
        meta = load_head_meta(p, trust=trust)
    fmt = head_format(p)
    if fmt == "npz":
        predictor = _load_npz(p, meta)
        return LoadedHead(predictor, list(predictor.classes), meta, p)
    try:
        if fmt == "skops":
            import skops.io as sio

            untrusted = sio.get_untrusted_types(file=p)
            if untrusted and not trust:
                raise HeadError(
                    f"{p}: refusing to load types that are not on the trusted list: {', '.join(untrusted)}; "
                    "load it only if you trust where it came from, with --trust"
                )
            blob = sio.load(p, trusted=untrusted or None)
        else:
            import joblib

            blob = joblib.load(p)
        estimator, classes = blob["estimator"], [str(c) for c in blob["classes"]]
    except HeadError:
        raise
    except Exception as exc:  # damaged or foreign files raise many types
        raise HeadError(f"{p}: cannot load head ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if not callable(getattr(estimator, "predict_proba", None)):
        raise HeadError(
            f"{p}: holds a {type(estimator).__name__}, not a classifier with predict_proba; "
            "retrain it with `vidprobe train`"
        )
    _check_estimator(p, estimator, classes)
    return LoadedHead(estimator, classes, meta, p)


def _load_npz(p: Path, meta: dict[str, Any]):
    """The numpy predictor of an .npz head; every damage is a HeadError naming the file."""
    model = meta.get("model")
    if not isinstance(model, dict):
        raise HeadError(
            f"{sidecar_path(p)}: no 'model' entry describing the .npz head; retrain it with `vidprobe train`"
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        classes = arrays.pop("classes")
        problem = check_classes(classes)
        if problem:
            raise HeadError(problem)
        return predictor_from_arrays(arrays, model, classes.tolist())
    except HeadError as exc:
        raise HeadError(f"{p}: {exc}") from None
    except Exception as exc:  # not a zip, object arrays (pickle refused), bad shapes
        raise HeadError(f"{p}: cannot load head ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
