"""How a head's hyperparameters are chosen: on the validation split, by grouped k-fold CV, or fixed.

``stats.plan_selection`` decides. Validation chooses only when it holds >= 2 clips of every class and >= 20
in all; below that one clip decides the choice. Then the choice is made by k-fold CV over the clips the
head is finally fit on (train + val, or the shots of a few-shot fit), folds stratified by label and grouped
by source video (``stats.grouped_stratified_folds``: windows of one video are never on both sides, or a
candidate that memorises a video would win). Where a class has one video even CV cannot score it: the
kind's default is used, and the record carries one warning naming the classes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sequences import FrameSequences
from ..stats import DEFAULT_FOLDS, SelectionPlan, grouped_stratified_folds, plan_selection

__all__ = ["Fold", "Pool", "as_groups", "pool_and_plan", "pooled_choice", "selection_record"]

Fold = tuple[np.ndarray, np.ndarray]  # (train indices, validation indices) into the pool
# (candidates, X_train, y_train, X_val, y_val) -> (best, {"name=value": top-1} in candidate order)
Scorer = Callable[..., tuple[Any, dict[str, float]]]


@dataclass
class Pool:
    """The clips a head is finally fit on, with their class indices and groups (videos)."""

    X: Any
    y: np.ndarray
    groups: np.ndarray


def _concat(a: Any, b: Any) -> Any:
    return FrameSequences.concat([a, b]) if isinstance(a, FrameSequences) else np.concatenate([a, b])


def pool_and_plan(
    classes: list[str],
    train: Pool,
    val: Pool | None,
    *,
    refit: bool,
    seed: int,
    k: int = DEFAULT_FOLDS,
) -> tuple[Pool, SelectionPlan, list[Fold] | None]:
    """The pool (train + val when the head is refit on both, else train), the plan, and its folds for "cv"."""
    pool = train
    if refit and val is not None:
        both = np.concatenate([train.groups, val.groups])
        pool = Pool(_concat(train.X, val.X), np.concatenate([train.y, val.y]), both)
    names = np.asarray(classes, dtype=object)
    y_val = names[val.y].tolist() if val is not None else []
    plan = plan_selection(y_val, names[pool.y].tolist(), pool.groups, k=k)
    folds = grouped_stratified_folds(pool.y, pool.groups, plan.k, seed=seed) if plan.how == "cv" else None
    return pool, plan, folds


def pooled_choice(candidates: Sequence[Any], score: Scorer, X: Any, y: np.ndarray, folds: Sequence[Fold]):
    """Each candidate scored over ``folds`` by ``score`` (one fold = one train/val split), its accuracy pooled
    over every held-out clip; best = first with the highest pooled accuracy. Returns (best, pooled scores)."""
    correct: np.ndarray | None = None
    names: list[str] = []
    n = 0
    for tr, va in folds:
        _, scores = score(candidates, X[tr], y[tr], X[va], y[va])
        names = list(scores)
        hits = np.round(np.array(list(scores.values())) * len(va))  # clips right in this fold
        correct = hits if correct is None else correct + hits
        n += len(va)
    assert correct is not None
    pooled = correct / n
    return candidates[int(np.argmax(pooled))], dict(zip(names, pooled.tolist()))


def _hparams_text(hparams: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in hparams.items())


def selection_record(
    plan: SelectionPlan, folds: list[Fold] | None, n_val: int, n_pool: int, val_scores: dict[str, float], hparams
) -> tuple[dict[str, Any], list[str]]:
    """What the record says about the choice (``how``, ``k``, ``n`` clips chosen on, ``reason``, ``classes``,
    ``score``, ``fold_sizes``), and the warning lines. A kind that scored nothing had nothing to choose."""
    how, reason = plan.how, plan.reason
    if how != "fixed" and not val_scores:
        how, reason = "fixed", "one candidate: nothing to choose"
    record: dict[str, Any] = {
        "how": how,
        "k": plan.k if how == "cv" else None,
        "n": {"val": n_val, "cv": n_pool}.get(how, 0),
        "reason": reason,
        "classes": list(plan.classes),
        "score": max(val_scores.values()) if val_scores else None,
        "fold_sizes": [int(len(va)) for _, va in folds] if how == "cv" and folds else None,
    }
    warnings = []
    if plan.how == "fixed":
        warnings.append(
            f"hyperparameters not chosen: {plan.reason} ({', '.join(plan.classes)}); "
            f"used the fixed {_hparams_text(hparams)}"
        )
    return record, warnings


def as_groups(groups: Sequence[Hashable] | None, n: int, prefix: str) -> np.ndarray:
    """Each clip's group as a string; none given: every clip its own video."""
    if groups is None:
        return np.array([f"{prefix}{i}" for i in range(n)], dtype=object)
    g = np.asarray([str(x) for x in groups], dtype=object)
    if len(g) != n:
        raise ValueError(f"{len(g)} groups for {n} clips")
    return g
