"""The C sweep of ``logreg.sweep_C`` scored by k-fold cross-validation instead of one validation split.

Used where validation is too thin to choose C (``stats.plan_selection`` says "cv"). The search is the
same coarse-to-fine one — same grid, order, patience and refinement, the same rule (highest accuracy, ties
to the lower cross-entropy) — but a C's score is the pooled validation accuracy over all folds: every
clip of the pool is predicted once, by the fold that held it out (= the fold-size-weighted mean).

Cost: one solver per fold, each warm-started along the C path from its *own* previous fit, as
``sweep_C`` does; k folds cost about k single-split sweeps of work. ``workers`` > 1 fits the folds of one C
concurrently (torch releases the GIL inside its kernels): k independent fits parallelise across cores far
better than one fit's matrix products do at these sizes.

Not done, and why: starting fold f from another fold's fit at the same C (directly, or shifted by that
fold's step along the path) cuts iterations by 10-30 %, but that fit was trained on fold f's validation
clips, and a fit stopped at the sweep's loose tolerance keeps what it learnt there: the pooled validation
score rose by up to 8 points above the converged value (the wrong C chosen). A batched (block-diagonal)
L-BFGS over the folds does the same multiply-adds and couples their line searches; the iterations, not the
products, are the cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import ConfigError
from .logreg import (
    DEFAULT_COARSE_CS,
    DEFAULT_PATIENCE,
    DEFAULT_REFINE,
    LinearFit,
    Solver,
    SweepResult,
    _check_C,
)

__all__ = ["sweep_C_cv"]

Fold = tuple[np.ndarray, np.ndarray]  # (train indices, validation indices)


def _pooled_score(fits: list[LinearFit], X: np.ndarray, y: np.ndarray, folds: Sequence[Fold]) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over every held-out clip, each scored by the fold that held it out."""
    correct, loss, n = 0.0, 0.0, 0
    for fit, (_, val) in zip(fits, folds):
        z = fit.logits(X[val])
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        yv = y[val]
        correct += float(np.sum(z.argmax(axis=1) == yv))
        loss += float(-logp[np.arange(len(yv)), yv].sum())
        n += len(yv)
    return correct / n, loss / n


class _FoldPath:
    """Every fold's fits along the C path, and the pooled validation score of each C tried."""

    def __init__(self, solvers: list[Solver], X: np.ndarray, y: np.ndarray, folds: Sequence[Fold], tol, pool):
        self.solvers, self.X, self.y, self.folds, self.tol, self.pool = solvers, X, y, folds, tol, pool
        self.fits: dict[float, list[LinearFit]] = {}
        self.scores: dict[float, tuple[float, float]] = {}

    def key(self, c: float) -> tuple[float, float]:
        acc, loss = self.scores[c]
        return (acc, -loss)

    def best(self) -> float:
        return max(self.scores, key=self.key)

    def run(self, c: float, start: float | None) -> None:
        """Fit every fold at ``c``, warm-started from the fits at ``start`` (None: from zero)."""
        prev: list[LinearFit | None] = list(self.fits[start]) if start is not None else [None] * len(self.solvers)
        jobs = list(zip(self.solvers, prev))
        fits = list(self.pool.map(lambda job: job[0].fit(c, job[1], self.tol), jobs))
        self.fits[c] = fits
        self.scores[c] = _pooled_score(fits, self.X, self.y, self.folds)


def _search(path: _FoldPath, grid: list[float], refine: Sequence[float], patience: int) -> None:
    """``sweep_C``'s coarse climb (stopped by ``patience``) and refinement, on pooled CV scores."""
    start: float | None = None
    worse = 0
    for c in grid:
        path.run(c, start)
        start = c
        worse = 0 if path.best() == c else worse + 1
        if patience and worse >= patience:
            break
    for step in refine:
        centre = path.best()
        for c in (centre * 10.0**-step, centre * 10.0**step):
            if any(math.isclose(c, done, rel_tol=1e-9) for done in path.scores):
                continue
            path.run(c, min(path.scores, key=lambda d: abs(math.log10(d) - math.log10(c))))


def sweep_C_cv(
    make_solver_fn: Callable[[np.ndarray, np.ndarray], Solver],
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[Fold],
    *,
    coarse: Sequence[float] = DEFAULT_COARSE_CS,
    refine: Sequence[float] = DEFAULT_REFINE,
    patience: int = DEFAULT_PATIENCE,
    tol: float | None = None,
    workers: int = 1,
) -> SweepResult:
    """``logreg.sweep_C``'s search of C, each C scored over ``folds`` (from ``stats.grouped_stratified_folds``).

    ``make_solver_fn(X_train, y_train)`` builds one fold's solver (the caller fixes the class count, device
    and tolerances); ``X``, ``y`` are the pool the folds index, ``y`` class indices. The result's ``fit`` is
    the first fold's fit at the chosen C (a warm start for the caller's refit on the whole pool);
    ``scores`` are pooled over the folds; ``fits``/``iterations`` count every fold's fits. ``workers``:
    folds fitted at once (give each solver one thread then); the result does not depend on it.
    """
    grid = sorted({_check_C(c) for c in coarse})
    if not grid:
        raise ConfigError("Cs: the coarse grid of C values is empty")
    if len(folds) < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {len(folds)}")
    t0 = time.perf_counter()
    y = np.asarray(y)
    solvers = [make_solver_fn(X[tr], y[tr]) for tr, _ in folds]
    with ThreadPoolExecutor(max(1, min(workers, len(folds)))) as pool:
        path = _FoldPath(solvers, X, y, folds, tol, pool)
        _search(path, grid, refine, patience)
    best = path.best()
    every = [f for fits in path.fits.values() for f in fits]
    return SweepResult(
        best,
        path.fits[best][0],
        dict(path.scores),
        len(every),
        sum(f.n_iter for f in every),
        time.perf_counter() - t0,
    )
