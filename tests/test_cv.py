"""The C sweep scored by grouped k-fold CV: the same choice as fitting every fold at every C from scratch."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.probe.cv import sweep_C_cv
from pipeline.probe.logreg import TorchSolver, sweep_C
from pipeline.probe.stats import grouped_stratified_folds


def _videos(K: int = 4, videos: int = 12, clips: int = 3, D: int = 8, seed: int = 0):
    """Clips of one video share a video offset (correlated), so grouping matters."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(K, D))
    y = np.repeat(np.arange(K), videos * clips)
    g = np.repeat(np.arange(K * videos), clips)
    offset = 1.2 * rng.normal(size=(K * videos, D))
    X = mu[y] + offset[g] + 1.0 * rng.normal(size=(len(y), D))
    return X.astype(np.float64), y, g


def _pooled(fits, X, y, folds):
    correct = loss = 0.0
    for fit, (_, val) in zip(fits, folds):
        z = fit.logits(X[val])
        z -= z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        correct += np.sum(z.argmax(1) == y[val])
        loss += -logp[np.arange(len(val)), y[val]].sum()
    return correct / len(y), loss / len(y)


@pytest.mark.parametrize("workers", [1, 2])
def test_cv_sweep_chooses_what_fitting_every_fold_from_scratch_chooses(workers: int) -> None:
    X, y, g = _videos()
    K = 4
    folds = grouped_stratified_folds(y, g, 4, seed=0)
    seen: list[np.ndarray] = []

    def make(Xt, yt):
        seen.append(Xt)
        return TorchSolver(Xt, yt, K, dtype="float64", tol=1e-8, max_iter=2000)

    res = sweep_C_cv(make, X, y, folds, coarse=(1e-2, 1e-1, 1, 10), tol=1e-8, workers=workers)
    assert [len(s) for s in seen] == [len(tr) for tr, _ in folds]  # one solver per fold, on its training rows
    for s, (tr, _) in zip(seen, folds):
        np.testing.assert_array_equal(s, X[tr])
    exhaustive = {}
    for C in res.scores:  # every fold from zero at every C the sweep tried
        fits = [TorchSolver(X[tr], y[tr], K, dtype="float64", tol=1e-8, max_iter=2000).fit(C) for tr, _ in folds]
        exhaustive[C] = _pooled(fits, X, y, folds)
    for C, (acc, loss) in res.scores.items():
        assert acc == pytest.approx(exhaustive[C][0], abs=1e-12)
        assert loss == pytest.approx(exhaustive[C][1], rel=1e-5)
    best = max(exhaustive, key=lambda c: (exhaustive[c][0], -exhaustive[c][1]))
    chosen = res.C
    assert chosen == best
    assert res.fits == len(folds) * len(res.scores)


def test_cv_sweep_tries_the_same_cs_as_the_single_split_sweep_would_on_the_same_scores() -> None:
    """Same search: with one fold, the CV sweep's trace is the single-split sweep's."""
    X, y, g = _videos(seed=1)
    folds = grouped_stratified_folds(y, g, 3, seed=1)
    tr, va = folds[0]
    single = sweep_C(TorchSolver(X[tr], y[tr], 4, dtype="float64"), X[va], y[va])
    fake_two = [folds[0], folds[0]]  # two identical folds pool to the single split's scores
    cv = sweep_C_cv(lambda a, b: TorchSolver(a, b, 4, dtype="float64"), X, y, fake_two)
    assert list(cv.scores) == list(single.scores) and cv.C == single.C


def test_cv_sweep_needs_two_folds() -> None:
    X, y, g = _videos()
    with pytest.raises(ConfigError, match="2 folds"):
        sweep_C_cv(lambda a, b: TorchSolver(a, b, 4), X, y, grouped_stratified_folds(y, g, 2)[:1])


@pytest.mark.slow
def test_benchmark_runs_small_and_ends_with_one_json_line() -> None:
    """A tiny run of benchmarks/logreg_cv.py (no timing asserted)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    args = ["--classes", "4", "--dim", "8", "--per-class", "12", "4", "4", "--repeats", "1"]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "logreg_cv.py"), *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    ).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    row = figures["runs"][0]
    assert row["cv"]["fits"] == 5 * len(row["cv"]["scores"]) and row["cv"]["C"] == row["cv_w2"]["C"]
