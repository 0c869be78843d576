"""Multinomial logistic regression by full-batch L-BFGS in torch, and the CLIP-protocol sweep over C.

Objective: scikit-learn's own convention, so a C means the same thing in both libraries::

    minimise over W (K, D), b (K,):   C * sum_i CE(W x_i + b, y_i) + 0.5 * ||W||_F^2     (b not penalised)

Like scikit-learn's lbfgs solver we minimise the same problem divided by C*n (``mean CE +
||W||^2 / (2 C n)``), so ``tol`` is the same stopping rule in both: max |gradient| <= tol. Two classes
use the symmetric multinomial form (two weight vectors, both penalised), which equals scikit-learn's
binary fit at ``2 * C``; for three or more classes the optima are identical (tested).

Why torch: float32 matrix products, the loss and gradient in two matmuls without autograd, data kept
on the device between fits (CPU or CUDA through the same code), and warm starts along the C path, so
each fit starts from the previous solution. ``SklearnSolver`` runs scikit-learn's L-BFGS behind the
same interface: the reference the torch solver is cross-checked and benchmarked against.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..config import SOLVERS
from ..errors import ConfigError, HeadError, check_choice

# CLIP's range (1e-6 .. 1e6); the sweep stops climbing once larger C keeps scoring worse (``patience``).
DEFAULT_COARSE_CS: tuple[float, ...] = tuple(float(10.0**e) for e in range(-6, 7))
DEFAULT_REFINE: tuple[float, ...] = (0.5, 0.25)  # log10 steps of the fine search around the best C
DEFAULT_PATIENCE = 2
DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 1000
# Below this many multiply-adds per matmul a CPU fit runs on one thread: for small problems thread
# start-up and barriers cost more than they save (docs/performance.md#small-fits-run-on-one-thread).
_SINGLE_THREAD_BELOW = 1 << 26


@contextlib.contextmanager
def _cpu_threads(n: int | None):
    import torch

    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class LinearFit:
    """One solution: ``softmax(X @ W.T + b)`` gives class probabilities."""

    W: np.ndarray  # (K, D)
    b: np.ndarray  # (K,)
    C: float
    n_iter: int
    converged: bool
    seconds: float = 0.0

    def logits(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.W.T.astype(np.float64) + self.b.astype(np.float64)


class Solver(Protocol):
    name: str

    def fit(self, C: float, init: LinearFit | None = None, tol: float | None = None) -> LinearFit: ...


def _check_C(C: float) -> float:
    if not (isinstance(C, (int, float)) and math.isfinite(C) and C > 0):
        raise ConfigError(f"C={C!r}: must be a positive finite number")
    return float(C)


class TorchSolver:
    """Full-batch L-BFGS (strong-Wolfe line search) on one fixed training set; call ``fit`` per C.
    X is moved to ``device`` once; ``init`` warm-starts a fit from an earlier solution.
    """

    name = "torch"

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray,
        n_classes: int,
        *,
        device: str = "auto",
        dtype: str = "float32",
        tol: float = DEFAULT_TOL,
        max_iter: int = DEFAULT_MAX_ITER,
        history_size: int = 10,
    ) -> None:
        import torch

        from ..encoders.base import resolve_device

        check_choice(dtype, ("float32", "float64"), "dtype")
        self.device = resolve_device(device)
        self.dtype = getattr(torch, dtype)
        self.X = torch.as_tensor(np.ascontiguousarray(X), device=self.device).to(self.dtype)
        self.y = torch.as_tensor(np.asarray(y), device=self.device).long()
        self.n, self.D = self.X.shape
        self.K = int(n_classes)
        self.tol, self.max_iter, self.history_size = float(tol), int(max_iter), int(history_size)
        self._rows = torch.arange(self.n, device=self.device)
        small = self.device.type == "cpu" and self.n * self.D * self.K < _SINGLE_THREAD_BELOW
        self._threads = 1 if small else None

    def _loss_grad(self, W, b, lam: float):
        """Mean cross-entropy + lam/2 ||W||^2 and its gradient by hand: two matmuls, one exp, in place.
        Logits are laid out (K, n): W @ X.T and the gradient Z @ X are the fastest matmul shapes here.
        """
        import torch

        z = torch.addmm(b[:, None], W, self.X.T)  # (K, n) logits
        z.sub_(z.amax(dim=0, keepdim=True))
        z_y = z[self.y, self._rows]
        z.exp_()
        s = z.sum(dim=0, keepdim=True)
        loss = (torch.log(s).squeeze(0) - z_y).mean() + 0.5 * lam * torch.dot(W.view(-1), W.view(-1))
        z.div_(s)  # softmax over classes
        z[self.y, self._rows] -= 1.0  # d CE / d logits (times n)
        gW = torch.addmm(W, z, self.X, beta=lam, alpha=1.0 / self.n)  # (K, D)
        return loss, gW, z.sum(dim=1).div_(self.n)

    def fit(self, C: float, init: LinearFit | None = None, tol: float | None = None) -> LinearFit:
        """Solve at C (from ``init`` if given) until max |gradient| <= ``tol`` (default: the solver's)."""
        with _cpu_threads(self._threads):
            return self._fit(C, init, self.tol if tol is None else float(tol))

    def _fit(self, C: float, init: LinearFit | None, tol: float) -> LinearFit:
        import torch

        C = _check_C(C)
        t0 = time.perf_counter()
        lam = 1.0 / (C * self.n)
        W = torch.zeros(self.K, self.D, dtype=self.dtype, device=self.device)
        b = torch.zeros(self.K, dtype=self.dtype, device=self.device)
        if init is not None:
            W.copy_(torch.as_tensor(init.W, dtype=self.dtype))
            b.copy_(torch.as_tensor(init.b, dtype=self.dtype))
        W.requires_grad_(True)
        b.requires_grad_(True)
        # Stop on the gradient (as scikit-learn) or when float arithmetic makes no more progress.
        opt = torch.optim.LBFGS(
            [W, b],
            lr=1.0,
            max_iter=self.max_iter,
            max_eval=int(self.max_iter * 1.5) + 10,
            tolerance_grad=tol,
            tolerance_change=1e-12,
            history_size=self.history_size,
            line_search_fn="strong_wolfe",
        )

        def closure():
            with torch.no_grad():
                loss, gW, gb = self._loss_grad(W, b, lam)
                W.grad, b.grad = gW, gb
            return loss

        opt.step(closure)
        n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
        # converged = stopped before max_iter (scikit-learn's meaning): gradient small, or no more progress possible
        return LinearFit(
            W.detach().cpu().numpy().astype(np.float32),
            b.detach().cpu().numpy().astype(np.float32),
            C,
            n_iter,
            n_iter < self.max_iter,
            time.perf_counter() - t0,
        )


class SklearnSolver:
    """scikit-learn's ``LogisticRegression(solver="lbfgs")`` behind the ``Solver`` interface.
    ``warm=False`` (default) ignores ``init`` — every fit starts from zero, as the CLIP protocol's
    scikit-learn sweep does; ``warm=True`` starts from ``init`` like ``warm_start=True``.
    """

    name = "sklearn"

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray,
        n_classes: int,
        *,
        tol: float = DEFAULT_TOL,
        max_iter: int = DEFAULT_MAX_ITER,
        warm: bool = False,
        **_: object,
    ) -> None:
        self.X = np.ascontiguousarray(X, dtype=np.float64)  # scikit-learn converts anyway; do it once
        self.y = np.asarray(y)
        self.K = int(n_classes)
        self.tol, self.max_iter, self.warm = float(tol), int(max_iter), bool(warm)
        if sorted(np.unique(self.y).tolist()) != list(range(self.K)):
            raise HeadError(f"SklearnSolver needs every one of the {self.K} classes in its training set")

    def fit(self, C: float, init: LinearFit | None = None, tol: float | None = None) -> LinearFit:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        C = _check_C(C)
        t0 = time.perf_counter()
        binary = (
            self.K == 2
        )  # scikit-learn fits one vector u; the symmetric 2-class form at C is u at 2C, W = [-u/2, u/2]
        lr = LogisticRegression(
            C=2 * C if binary else C,
            tol=self.tol if tol is None else float(tol),
            max_iter=self.max_iter,
            solver="lbfgs",
            warm_start=self.warm,
        )
        if self.warm and init is not None:
            W0, b0 = init.W.astype(np.float64), init.b.astype(np.float64)
            lr.coef_, lr.intercept_ = ((W0[1:] - W0[:1]), (b0[1:] - b0[:1])) if binary else (W0, b0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            lr.fit(self.X, self.y)
        W, b = lr.coef_, lr.intercept_
        if binary:
            W, b = np.concatenate([-W, W]) / 2, np.concatenate([-b, b]) / 2
        n_iter = int(np.max(lr.n_iter_))
        return LinearFit(
            W.astype(np.float32), b.astype(np.float32), C, n_iter, n_iter < self.max_iter, time.perf_counter() - t0
        )


def make_solver(name: str, X: np.ndarray, y: np.ndarray, n_classes: int, **kwargs) -> Solver:
    """``name`` = torch (default, CPU or CUDA) | sklearn (reference)."""
    check_choice(name, SOLVERS, "solver")
    if name == "sklearn":
        return SklearnSolver(X, y, n_classes, **{k: v for k, v in kwargs.items() if k in ("tol", "max_iter", "warm")})
    return TorchSolver(X, y, n_classes, **kwargs)


def score(fit: LinearFit, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of a solution on (X, y); y are class indices."""
    z = fit.logits(X)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = np.asarray(y)
    return float(np.mean(z.argmax(axis=1) == y)), float(-logp[np.arange(len(y)), y].mean())


@dataclass
class SweepResult:
    C: float  # chosen
    fit: LinearFit  # the training-split fit at C
    scores: dict[float, tuple[float, float]] = field(
        default_factory=dict
    )  # C -> (val accuracy, val loss), in order tried
    fits: int = 0
    iterations: int = 0
    seconds: float = 0.0


def sweep_C(
    solver: Solver,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    coarse: Sequence[float] = DEFAULT_COARSE_CS,
    refine: Sequence[float] = DEFAULT_REFINE,
    patience: int = DEFAULT_PATIENCE,
    tol: float | None = None,
) -> SweepResult:
    """Coarse-to-fine search of C on a validation split (the CLIP linear-probe protocol).

    Coarse: C in increasing order, each fit warm-started from the previous one; stop climbing after
    ``patience`` consecutive values score worse than the best so far (0 = try every value). Fine: for
    each log10 step in ``refine`` try best*10^(+-step), warm-started from the nearest fitted C. Best =
    highest validation accuracy, ties broken by lower validation cross-entropy. The solver does not
    change the search: the same C values are tried in the same order whatever ``solver`` is.

    ``tol``: gradient tolerance of these candidate fits (default: the solver's). Ranking C values by
    validation accuracy does not need each candidate solved to the last digit; the caller refits the
    chosen C at full tolerance (``pipeline.probe.heads.logreg`` does: 10x looser during the search, then 1e-4).
    """
    grid = sorted({_check_C(c) for c in coarse})
    if not grid:
        raise ConfigError("Cs: the coarse grid of C values is empty")
    t0 = time.perf_counter()
    result: dict[float, tuple[LinearFit, tuple[float, float]]] = {}

    def key(c: float) -> tuple[float, float]:
        acc, loss = result[c][1]
        return (acc, -loss)

    def run(c: float, init: LinearFit | None) -> None:
        fit = solver.fit(c, init, tol)
        result[c] = (fit, score(fit, X_val, y_val))

    prev: LinearFit | None = None
    worse = 0
    for c in grid:
        run(c, prev)
        prev = result[c][0]
        best = max(result, key=key)
        worse = 0 if best == c else worse + 1
        if patience and worse >= patience:
            break
    for step in refine:
        centre = max(result, key=key)
        for c in (centre * 10.0**-step, centre * 10.0**step):
            if any(math.isclose(c, done, rel_tol=1e-9) for done in result):
                continue
            nearest = min(result, key=lambda d: abs(math.log10(d) - math.log10(c)))
            run(c, result[nearest][0])
    best = max(result, key=key)
    fits = [f for f, _ in result.values()]
    return SweepResult(
        best,
        result[best][0],
        {c: s for c, (_, s) in result.items()},
        len(fits),
        sum(f.n_iter for f in fits),
        time.perf_counter() - t0,
    )
