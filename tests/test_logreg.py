"""The torch L-BFGS logistic regression against scikit-learn's, and the C sweep they share."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.probe.logreg import SklearnSolver, TorchSolver, score, sweep_C


def _problem(K: int, n: int = 400, D: int = 16, seed: int = 0, noise: float = 1.5):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(K, D))
    y = rng.integers(0, K, n)
    return (mu[y] + noise * rng.normal(size=(n, D))).astype(np.float32), y


def _proba(fit, X):
    z = fit.logits(X)
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _objective(fit, X, y) -> float:
    """The solver's objective (mean CE + ||W||^2 / (2 C n)) in float64, whatever precision fit it."""
    W, b, X = fit.W.astype(np.float64), fit.b.astype(np.float64), X.astype(np.float64)
    z = X @ W.T + b
    z -= z.max(1, keepdims=True)
    ce = np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]
    return float(ce.mean() + 0.5 / (fit.C * len(y)) * (W**2).sum())


@pytest.mark.parametrize("K", [2, 5])
@pytest.mark.parametrize("C", [0.01, 1.0])
def test_same_optimum_as_scikit_learn(K: int, C: float) -> None:
    """Same objective (C * sum CE + 0.5 ||W||^2, intercept free): converged to tight tolerance, the
    solutions agree to float precision — for K=2 via the symmetric form at C == scikit-learn's binary at 2C."""
    X, y = _problem(K)
    ours = TorchSolver(X, y, K, dtype="float64", tol=1e-9, max_iter=5000).fit(C)
    ref = SklearnSolver(X, y, K, tol=1e-9, max_iter=5000).fit(C)
    assert ours.converged and ref.converged
    # Same optimum: the objective agrees to ~1e-11 everywhere. W and the probabilities only to where each
    # L-BFGS path stopped (scipy's also stops on relative change): at K=5, C=1 (|W| ~ 1.4, weakest
    # regularisation) they differed by 1.87e-5 and 1.4e-5 on AMD AVX2, too near the old 2e-5 for a
    # path that another CPU's float64 rounding may bend; 1e-4 still catches any wrong objective.
    assert abs(_objective(ours, X, y) - _objective(ref, X, y)) <= 1e-9
    np.testing.assert_allclose(ours.W, ref.W, atol=1e-4)
    np.testing.assert_allclose(_proba(ours, X), _proba(ref, X), atol=1e-4)
    if K == 2:
        np.testing.assert_allclose(ours.W[0], -ours.W[1], atol=1e-5)  # symmetric two-class form


def test_float32_default_tolerance_is_as_close_to_the_optimum_as_scikit_learns() -> None:
    X, y = _problem(5)
    exact = _proba(SklearnSolver(X, y, 5, tol=1e-10, max_iter=5000).fit(1.0), X)
    ours = TorchSolver(X, y, 5).fit(1.0)  # float32, tol=1e-4 (scikit-learn's default)
    sk = _proba(SklearnSolver(X, y, 5).fit(1.0), X)
    assert ours.converged
    assert np.abs(_proba(ours, X) - exact).max() <= max(2 * np.abs(sk - exact).max(), 1e-3)


def test_warm_start_saves_iterations() -> None:
    X, y = _problem(5, n=600)
    solver = TorchSolver(X, y, 5, tol=1e-6)
    previous = solver.fit(0.1)
    cold, warm = solver.fit(0.3), solver.fit(0.3, previous)
    assert warm.n_iter < cold.n_iter
    # Both stop where max |gradient| <= 1e-6 in float32, so they reach the same optimum only up to what
    # the CPU's kernels round (warm vs cold probabilities differ by ~0.9e-3 on AMD AVX2, 1.01e-3 on Intel
    # AVX-512): compare the objective (1e-5 relative: 100x its float32 spread, 1000x below the 1.3e-2
    # a C=0.1 start is away) and the predictions wherever the top two classes are not a near tie.
    f_cold, f_warm = _objective(cold, X, y), _objective(warm, X, y)
    assert abs(f_warm - f_cold) <= 1e-5 * f_cold
    p = np.sort(_proba(cold, X), axis=1)
    clear = p[:, -1] - p[:, -2] > 1e-2
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(warm.logits(X).argmax(1)[clear], cold.logits(X).argmax(1)[clear])


def test_sweep_is_the_same_search_for_both_solvers() -> None:
    X, y = _problem(4, n=800, seed=1, noise=2.5)
    (Xt, yt), (Xv, yv) = (X[:500], y[:500]), (X[500:], y[500:])
    coarse = [1e-4, 1e-3, 1e-2, 1e-1, 1, 10]
    a = sweep_C(TorchSolver(Xt, yt, 4), Xv, yv, coarse=coarse)
    b = sweep_C(SklearnSolver(Xt, yt, 4), Xv, yv, coarse=coarse)
    assert abs(np.log10(a.C) - np.log10(b.C)) <= 0.5 + 1e-9  # same C, or a neighbour on the fine grid
    assert abs(score(a.fit, Xv, yv)[0] - score(b.fit, Xv, yv)[0]) <= 0.02
    tried = list(a.scores)
    n_coarse = sum(1 for c in tried if c in coarse)
    assert tried[:n_coarse] == coarse[:n_coarse]  # coarse grid climbed in order, then refinements
    assert all(c not in coarse for c in tried[n_coarse:]) and a.fits == len(tried)


def test_patience_stops_the_climb() -> None:
    X, y = _problem(3, n=300, noise=3.0)
    r = sweep_C(TorchSolver(X, y, 3), X[:100], y[:100], coarse=[10.0**e for e in range(-6, 7)], refine=(), patience=2)
    best = max(r.scores, key=lambda c: (r.scores[c][0], -r.scores[c][1]))
    tried = list(r.scores)
    assert tried[-1] <= best * 100 + 1e-9 and len(tried) < 13


def test_bad_C_is_refused() -> None:
    X, y = _problem(3)
    with pytest.raises(ConfigError, match="C="):
        TorchSolver(X, y, 3).fit(0.0)
    with pytest.raises(ConfigError, match="empty"):
        sweep_C(TorchSolver(X, y, 3), X, y, coarse=[])
