"""Fitting a head: labels to indices, validation rows, then the kind's own ``fit`` (``HeadKind.fit``).

Every fitted head is an estimator with ``classes`` and ``predict_proba``; the built-in pooled kinds are
plain scikit-learn estimators (a torch logreg solution is copied into a ``LogisticRegression``; a
zero-shot head *is* a linear classifier on L2-normalised features).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import HeadError
from ..sequences import FrameSequences, HeadInput
from .registry import head_kind
from .selection import Fold, Pool, as_groups, pool_and_plan, pooled_choice, selection_record
from .settings import HeadConfig

__all__ = [
    "FitResult",
    "TrainingSet",
    "fit_head",
    "fit_progress",
    "fit_sklearn",
    "progress_shown",
    "quiet_fits",
    "select_on_val",
]
PROGRESS_DELAY_S = 3.0  # a fit shows its progress bar once it has run this long (short fits stay silent)
_QUIET = contextvars.ContextVar("vidprobe_quiet_fits", default=False)


@contextlib.contextmanager
def quiet_fits(quiet: bool = True) -> Iterator[None]:
    """No fit progress bars inside (``-q``, ``--json``): the CLI sets it around a command's fits."""
    token = _QUIET.set(quiet)
    try:
        yield
    finally:
        _QUIET.reset(token)


def progress_shown() -> bool:
    """False inside ``quiet_fits``: the pooling before a fit stays quiet too."""
    return not _QUIET.get()


def fit_progress(total: int, desc: str, unit: str):
    """A progress bar on stderr for a fit that may run long (a temporal sweep's epochs, an sklearn sweep's
    fits): shown only after ``PROGRESS_DELAY_S``, and like the project's other bars not when stderr is not a
    terminal, nor inside ``quiet_fits``. Call ``update``; ``close`` (or ``with``) when done."""
    from tqdm.auto import tqdm

    disable = True if _QUIET.get() else None  # None: tqdm disables itself when stderr is not a TTY
    return tqdm(total=total, desc=desc, unit=unit, delay=PROGRESS_DELAY_S, leave=False, disable=disable)


@dataclass
class FitResult:
    estimator: Any
    classes: list[str]
    hparams: dict[str, Any]  # what selection chose (C, alpha, k) or built (templates)
    val_scores: dict[str, float] = field(default_factory=dict)  # "name=value" -> validation top-1
    info: dict[str, Any] = field(default_factory=dict)  # fits, solver iterations, seconds, device
    selection: dict[str, Any] | None = None  # how the choice was made (``selection.selection_record``)
    warnings: list[str] = field(default_factory=list)  # one line each, for the caller to show

    @property
    def C(self) -> float | None:
        return self.hparams.get("C")


@dataclass
class TrainingSet:
    """What a kind's ``fit`` reads: the classes, the training rows with their class indices, the validation
    rows (None: nothing to select on), and for a kind that is not trained (zeroshot) the encoder.

    ``folds`` (with no validation rows): choose by cross-validation over these (train, val) index pairs of
    ``X``, then fit on all of ``X``. Neither val nor folds: use the kind's default (nothing to choose on)."""

    classes: list[str]
    X: Any = None  # HeadInput: (N, D) float32 rows, or FrameSequences for a temporal kind
    y: Any = None  # (N,) class indices
    X_val: Any = None
    y_val: Any = None
    seed: int = 0
    refit: bool = True  # False: few-shot, keep the train-only fit
    encoder: Any = None
    encoder_spec: str | None = None
    folds: list[Fold] | None = None


def _val_rows(classes: list[str], X_val, y_val, groups) -> Pool | None:
    """Validation rows whose label the head can predict (a label absent from train cannot be chosen for)."""
    if X_val is None or y_val is None or not len(y_val):
        return None
    index = {c: i for i, c in enumerate(classes)}
    keep = np.array([y in index for y in y_val], bool)
    if not keep.any():
        return None
    X_keep = X_val[np.flatnonzero(keep)] if isinstance(X_val, FrameSequences) else np.asarray(X_val)[keep]
    g = as_groups(groups, len(y_val), "val#")[keep]
    return Pool(X_keep, np.array([index[y] for y, k in zip(y_val, keep) if k]), g)


def fit_head(
    config: HeadConfig | str,
    X_train: HeadInput,
    y_train: Sequence[str],
    X_val: HeadInput | None = None,
    y_val: Sequence[str] | None = None,
    *,
    seed: int = 0,
    refit: bool = True,
    classes: Sequence[str] | None = None,
    encoder: Any = None,
    encoder_spec: str | None = None,
    groups: Sequence[Hashable] | None = None,
    groups_val: Sequence[Hashable] | None = None,
) -> FitResult:
    """Fit one head: hyperparameter chosen on (X_val, y_val) when it is big enough, else by k-fold CV grouped
    by ``groups`` (each clip's source video; None: every clip its own), else fixed (``selection``); then
    refit on train+val.

    ``refit=False`` keeps the train-only fit (few-shot: the k shots are the whole training set; val only
    chooses). A kind that is not trained (``zeroshot``) needs ``classes`` and the ``encoder`` (or
    ``encoder_spec``) whose text tower embeds the prompts. ``FitResult.selection`` says how the choice was
    made, ``FitResult.warnings`` what the caller should show.
    """
    cfg = HeadConfig.from_dict(config) if isinstance(config, str) else config.validate()
    kind = head_kind(cfg.kind)
    if not kind.trained:
        data = TrainingSet(list(classes or []), encoder=encoder, encoder_spec=encoder_spec)
        return kind.fit(cfg.settings, data)
    y_train = [str(y) for y in y_train]
    labels = sorted(set(y_train))
    if len(labels) < 2:
        raise HeadError(f"training needs at least 2 classes; the train split has {labels}")
    index = {c: i for i, c in enumerate(labels)}
    val = _val_rows(labels, X_val, [str(y) for y in y_val] if y_val is not None else None, groups_val)
    if not kind.temporal:
        X_train = np.asarray(X_train, np.float32)
    train = Pool(X_train, np.array([index[y] for y in y_train]), as_groups(groups, len(y_train), "train#"))
    pool, plan, folds = pool_and_plan(labels, train, val, refit=refit, seed=seed, k=kind.cv_folds)
    if plan.how == "val":
        assert val is not None
        data = TrainingSet(labels, train.X, train.y, val.X, val.y, seed, refit)
    else:  # chosen by CV over the pool (or fixed), then fit on all of it
        data = TrainingSet(labels, pool.X, pool.y, seed=seed, refit=refit, folds=folds)
    result = kind.fit(cfg.settings, data)
    n_val = len(val.y) if val is not None else 0
    result.selection, result.warnings = selection_record(
        plan, folds, n_val, len(pool.y), result.val_scores, result.hparams
    )
    return result


def select_on_val(candidates: Sequence[Any], make, X_tr, y_tr, X_va, y_va, name: str) -> tuple[Any, dict[str, float]]:
    """Fit ``make(value)`` per candidate on train, score on val; best = first with the highest top-1."""
    scores: dict[str, float] = {}
    best, best_acc = candidates[0], -1.0
    for v in candidates:
        est = make(v).fit(X_tr, y_tr)
        acc = float(np.mean(est.predict(X_va) == y_va))
        scores[f"{name}={v:g}"] = acc
        if acc > best_acc + 1e-12:
            best, best_acc = v, acc
    return best, scores


def fit_sklearn(
    data: TrainingSet, name: str, candidates: list[Any], make: Callable[[Any], Any], select: Callable | None = None
) -> FitResult:
    """A scikit-learn head with one hyperparameter ``name``: each candidate ``make(value)`` scored on val, or
    pooled over ``data.folds`` (a fold scored by ``select(candidates, X_tr, y_tr, X_va, y_va) -> (best,
    scores)`` when given), the best refit on train+val (or on all the rows the folds cover)."""
    t0 = time.perf_counter()
    labels = np.array(data.classes)
    X_tr, y_tr = np.asarray(data.X), labels[data.y]
    X_va, y_va = data.X_val, labels[data.y_val] if data.X_val is not None else None
    scores: dict[str, float] = {}
    # Small problems: multi-threaded BLAS only adds sync cost, and under CPU contention its spinning
    # threads slow small fits many times over (docs/performance.md). Large ones keep all threads.
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    rounds = 0 if len(candidates) < 2 else 1 if X_va is not None else len(data.folds or [])
    bar = fit_progress(rounds * len(candidates) + 1, f"{name} sweep", "fit")
    chooser = select or (lambda c, Xt, yt, Xv, yv: select_on_val(c, make, Xt, yt, Xv, yv, name))

    def score(c, *rows):  # one round of candidates: on val, or on one fold
        out = chooser(c, *rows)
        bar.update(len(c))
        return out

    with (
        bar,
        warnings.catch_warnings(),
        threadpool_limits(limits=1 if X_tr.size < 4_000_000 else None, user_api="blas"),
    ):
        warnings.simplefilter("ignore", ConvergenceWarning)
        if len(candidates) < 2:
            best = candidates[0]
        elif X_va is not None:
            best, scores = score(candidates, X_tr, y_tr, X_va, y_va)
        elif data.folds:
            best, scores = pooled_choice(candidates, score, X_tr, y_tr, data.folds)
        else:
            best = candidates[len(candidates) // 2]
        if data.refit and X_va is not None:
            X_tr, y_tr = np.concatenate([X_tr, X_va]), np.concatenate([y_tr, y_va])
        est = make(best).fit(X_tr, y_tr)
        bar.update(1)
    for step in getattr(est, "steps", [("", est)]):  # optimiser state: not needed to predict, not skops-trusted
        if hasattr(step[1], "_optimizer"):
            step[1]._optimizer = None
    per_candidate = len(data.folds) if data.folds and X_va is None else 1
    info = {"fits": len(scores) * per_candidate + 1, "seconds": time.perf_counter() - t0}
    return FitResult(est, list(data.classes), {name: type(candidates[0])(best)}, scores, info)
