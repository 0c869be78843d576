"""Heads: cheap scikit-learn classifiers on pooled clip features, saved with a JSON sidecar.

A head file is useless without knowing how its inputs were made, so the sidecar records the encoder
spec and weights identity, sampling and pooling, label names, versions and metrics. ``predict`` on new
videos rebuilds exactly that extraction from the sidecar.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, HeadError

HEAD_KINDS = ("logreg", "mlp")
DEFAULT_CS = tuple(float(c) for c in np.logspace(-3, 3, 7))
MLP_CS = (1.0, 100.0, 10000.0)  # weight decay alpha = 1/C: 1, 1e-2, 1e-4


def _estimator(kind: str, C: float, seed: int, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logreg":
        clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    elif kind == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(256,), alpha=1.0 / C, max_iter=min(max_iter, 300), random_state=seed)
    else:
        raise ConfigError(f"head={kind!r}: allowed values are {', '.join(HEAD_KINDS)}")
    # Standardising makes one C grid fit every encoder, whatever its feature scale.
    return make_pipeline(StandardScaler(), clf)


@dataclass
class FitResult:
    estimator: Any
    classes: list[str]
    C: float
    val_scores: dict[str, float] = field(default_factory=dict)  # C (as text) -> validation top-1


def fit_head(
    kind: str,
    X_train: np.ndarray,
    y_train: list[str],
    X_val: np.ndarray | None = None,
    y_val: list[str] | None = None,
    *,
    Cs: tuple[float, ...] = DEFAULT_CS,
    seed: int = 0,
    max_iter: int = 1000,
) -> FitResult:
    """Choose C on the validation split (if given), then refit on train + val with the best C."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    if kind not in HEAD_KINDS:
        raise ConfigError(f"head={kind!r}: allowed values are {', '.join(HEAD_KINDS)}")
    if len(set(y_train)) < 2:
        raise HeadError(f"training needs at least 2 classes; the train split has {sorted(set(y_train))}")
    grid = Cs if kind == "logreg" else MLP_CS  # an MLP fit costs ~50 logreg fits: sweep a short grid
    scores: dict[str, float] = {}
    best_C = grid[len(grid) // 2]
    # Small problems: multi-threaded BLAS only adds sync cost, and under CPU contention its spinning
    # threads made a 180 x 2560 fit 70x slower (17 s vs 0.24 s measured). Large ones keep all threads.
    blas_threads = 1 if X_train.size < 4_000_000 else None
    with warnings.catch_warnings(), threadpool_limits(limits=blas_threads, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        if X_val is not None and y_val is not None and len(y_val) and len(grid) > 1:
            best = -1.0
            for C in grid:
                est = _estimator(kind, C, seed, max_iter).fit(X_train, y_train)
                acc = float(np.mean(est.predict(X_val) == np.asarray(y_val)))
                scores[f"{C:g}"] = acc
                if acc > best + 1e-12:
                    best, best_C = acc, C
            X_all = np.concatenate([X_train, X_val])
            y_all = list(y_train) + list(y_val)
        else:
            X_all, y_all = X_train, list(y_train)
        est = _estimator(kind, best_C, seed, max_iter).fit(X_all, y_all)
    return FitResult(est, [str(c) for c in est.classes_], float(best_C), scores)


def _versions() -> dict[str, str]:
    import sklearn

    from . import __version__

    return {"vidprobe": __version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__, "python": platform.python_version()}


def sidecar_path(head_path: str | Path) -> Path:
    return Path(head_path).with_suffix(".json")


def save_head(path: str | Path, result: FitResult, meta: dict[str, Any]) -> Path:
    """Write the estimator (joblib) and its JSON sidecar next to each other; returns the sidecar path."""
    import joblib

    p = Path(path)
    if p.suffix != ".joblib":
        raise ConfigError(f"{p}: a head file must end in .joblib (its sidecar is written beside it as .json)")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    joblib.dump({"estimator": result.estimator, "classes": result.classes}, tmp)
    tmp.replace(p)
    side = {**meta, "classes": result.classes, "C": result.C, "val_scores": result.val_scores, "versions": _versions(), "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    sidecar_path(p).write_text(json.dumps(side, indent=2, sort_keys=True), encoding="utf-8")
    return sidecar_path(p)


@dataclass
class LoadedHead:
    estimator: Any
    classes: list[str]
    meta: dict[str, Any]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(X)


def load_head(path: str | Path) -> LoadedHead:
    """Load a head and its sidecar; HeadError names the file when either is missing or unreadable."""
    import joblib

    p = Path(path)
    side = sidecar_path(p)
    if not p.is_file():
        raise HeadError(f"{p}: no such head file; train one with `vidprobe train STORE -o {p}`")
    if not side.is_file():
        raise HeadError(f"{side}: sidecar missing; a head cannot be used without knowing its encoder and pooling")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        blob = joblib.load(p)
    except Exception as exc:  # joblib raises many types for a damaged file
        raise HeadError(f"{p}: cannot load head ({type(exc).__name__}: {exc})") from None
    return LoadedHead(blob["estimator"], list(blob["classes"]), meta)
