"""``logreg``: the CLIP linear-probe protocol, and the ``linear`` file form that zeroshot shares.

Standardise, multinomial logistic regression, C chosen by a coarse-to-fine sweep on the validation split
(where it is too thin, the same sweep scored by grouped k-fold CV: ``pipeline.probe.cv``), refit on
train+val (``pipeline.probe.logreg``: torch L-BFGS with warm starts by default; ``solver="sklearn"`` runs
scikit-learn's L-BFGS instead). The candidate fits of the search stop at a 10x looser gradient tolerance
(``sweep_tol``); the chosen C is refit to scikit-learn's default tolerance (``tol`` = 1e-4).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...config import SOLVERS, rule
from ...errors import ConfigError, HeadError
from ..cv import sweep_C_cv
from ..logreg import (
    DEFAULT_COARSE_CS,
    DEFAULT_MAX_ITER,
    DEFAULT_PATIENCE,
    DEFAULT_REFINE,
    DEFAULT_TOL,
    make_solver,
    sweep_C,
)
from .fitting import FitResult, TrainingSet
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

__all__ = ["LinearPredictor", "LogregSettings", "linear_classifier"]
DEFAULT_C = 1.0  # used when neither validation nor CV can choose (scikit-learn's default)


@dataclass
class LogregSettings:
    # coarse grid of C (scikit-learn's convention)
    Cs: tuple[float, ...] = field(default=DEFAULT_COARSE_CS, metadata=rule(gt=0, finite=True, nonempty=True, most=64))
    # log10 steps of the fine search
    refine: tuple[float, ...] = field(default=DEFAULT_REFINE, metadata=rule(gt=0, most=8))
    # stop climbing C after this many worse values (0 = all)
    patience: int = field(default=DEFAULT_PATIENCE, metadata=rule(min=0, note="(0 = try every C)"))
    solver: str = field(default="torch", metadata=rule(choices=SOLVERS))  # torch (CPU/CUDA) | sklearn
    tol: float = field(default=DEFAULT_TOL, metadata=rule(gt=0))  # gradient tolerance of the final fit
    sweep_tol: float = field(default=10 * DEFAULT_TOL, metadata=rule(gt=0))  # looser, for the C search's fits
    max_iter: int = field(default=DEFAULT_MAX_ITER, metadata=rule(min=1, max=100_000))
    device: str = field(default="auto", metadata=rule(device=True))  # of the torch solver: auto | cpu | cuda[:K]

    def _check(self, prefix: str) -> None:
        if self.sweep_tol < self.tol:
            raise ConfigError(
                f"sweep_tol={self.sweep_tol:g}: must be >= tol={self.tol:g} "
                "(the search may be looser than the final fit, not tighter)"
            )


def fit(cfg: LogregSettings, data: TrainingSet) -> FitResult:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    X_tr, y_tr, X_va, y_va = np.asarray(data.X), data.y, data.X_val, data.y_val
    K = len(data.classes)
    opts = dict(device=cfg.device, tol=cfg.tol, max_iter=cfg.max_iter)
    scaler = StandardScaler().fit(X_tr)  # one C grid then fits every encoder, whatever its feature scale
    solver = make_solver(cfg.solver, scaler.transform(X_tr).astype(np.float32), y_tr, K, **opts)
    info: dict[str, Any] = {"solver": cfg.solver, "device": str(getattr(solver, "device", "cpu"))}
    if X_va is not None:
        sweep = sweep_C(
            solver,
            scaler.transform(X_va).astype(np.float32),
            y_va,
            coarse=cfg.Cs,
            refine=cfg.refine,
            patience=cfg.patience,
            tol=cfg.sweep_tol,
        )
        C, fitted = sweep.C, sweep.fit
        val_scores = {f"C={c:.4g}": acc for c, (acc, _) in sweep.scores.items()}
        info.update(fits=sweep.fits, iterations=sweep.iterations)
        if data.refit:  # the CLIP protocol: refit on train+val at the chosen C, warm-started from the train fit
            X_all = np.concatenate([X_tr, X_va])
            scaler = StandardScaler().fit(X_all)
            y_all = np.concatenate([y_tr, y_va])
            solver = make_solver(cfg.solver, scaler.transform(X_all).astype(np.float32), y_all, K, **opts)
        if data.refit or cfg.sweep_tol > cfg.tol:  # few-shot (no refit): still finish the chosen fit to full tolerance
            fitted = solver.fit(C, fitted)
            info.update(fits=info["fits"] + 1, iterations=info["iterations"] + fitted.n_iter)
    elif data.folds:
        C, fitted, val_scores = _choose_by_cv(cfg, data, scaler.transform(X_tr).astype(np.float32), opts, info)
        fitted = solver.fit(C, fitted)  # every row at the chosen C, warm-started from a fold's fit
        info.update(fits=info["fits"] + 1, iterations=info["iterations"] + fitted.n_iter)
    else:
        C, val_scores = DEFAULT_C, {}
        fitted = solver.fit(C)
        info.update(fits=1, iterations=fitted.n_iter)
    info.update(converged=bool(fitted.converged), seconds=time.perf_counter() - t0)
    est = make_pipeline(scaler, linear_classifier(fitted.W, fitted.b, data.classes, C))
    return FitResult(est, list(data.classes), {"C": float(C)}, val_scores, info)


def _choose_by_cv(cfg: LogregSettings, data: TrainingSet, Z: np.ndarray, opts: dict[str, Any], info: dict[str, Any]):
    """``cv.sweep_C_cv`` over ``data.folds`` of the standardised rows ``Z``: (C, a fold's fit at C, scores)."""
    assert data.folds is not None
    K = len(data.classes)
    sweep = sweep_C_cv(
        lambda Xf, yf: make_solver(cfg.solver, Xf, yf, K, **opts),
        Z,
        data.y,
        data.folds,
        coarse=cfg.Cs,
        refine=cfg.refine,
        patience=cfg.patience,
        tol=cfg.sweep_tol,
    )
    info.update(fits=sweep.fits, iterations=sweep.iterations, cv_folds=len(data.folds))
    return sweep.C, sweep.fit, {f"C={c:.4g}": acc for c, (acc, _) in sweep.scores.items()}


def linear_classifier(W: np.ndarray, b: np.ndarray, classes: Sequence[str], C: float = 1.0):
    """A fitted scikit-learn ``LogisticRegression`` whose ``predict_proba`` is softmax(X W^T + b).

    Two classes: scikit-learn uses one vector and a sigmoid; sigmoid((w1-w0)x + b1-b0) is the same softmax.
    """
    from sklearn.linear_model import LogisticRegression

    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    if W.shape[0] != len(classes) or len(classes) < 2:
        raise HeadError(f"linear head: {W.shape[0]} weight rows for {len(classes)} classes")
    lr = LogisticRegression(C=C)
    if len(classes) == 2:
        W, b = W[1:] - W[:1], b[1:] - b[:1]
    lr.coef_, lr.intercept_ = W, b
    lr.classes_ = np.array(list(classes))
    lr.n_features_in_ = int(W.shape[1])
    lr.n_iter_ = np.zeros(1, dtype=np.int32)
    return lr


# -- file form: ``linear`` (logreg and zeroshot) ---------------------------------------------------


class LinearPredictor:
    """``softmax(prepare(X) W^T + b)``; one weight row and two classes: scikit-learn's sigmoid form."""

    def __init__(self, arrays: Mapping[str, np.ndarray], model: Mapping[str, Any], classes: list[str]) -> None:
        self.classes = classes
        self.W, self.b = np.asarray(arrays["W"]), np.asarray(arrays["b"])
        self.input = str(model.get("input", "none"))
        self._arrays = dict(arrays)  # shapes and values checked against _linear_schema on load

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return prepare(X, self._arrays, self.input, self.W.shape[1]) @ self.W.T + self.b

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = self.decision_function(X)
        return two_column(sigmoid(z[:, 0])) if z.shape[1] == 1 else softmax(z)


def _linear_accepts(est: Any) -> bool:
    from sklearn.linear_model import LogisticRegression

    return split_head(est, LogisticRegression) is not None


def _linear_arrays(est: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression

    how, arrays, lr = sklearn_parts(est, LogisticRegression)
    arrays.update(W=np.asarray(lr.coef_), b=np.asarray(lr.intercept_))
    return arrays, {"input": how}


def _linear_schema(model: Mapping[str, Any], classes: list[str]) -> dict[str, ArraySpec]:
    rows = 1 if len(classes) == 2 else len(classes)  # two classes: scikit-learn's one row
    return {"W": ArraySpec((rows, "D")), "b": ArraySpec((rows,)), **input_schema(model)}


register_native_kind("linear", NativeKind(_linear_accepts, _linear_arrays, LinearPredictor, _linear_schema))
register_head(HeadKind("logreg", LogregSettings, fit))
