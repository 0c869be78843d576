"""One fit over several seeds, and what the seeds' scores say together (mean ± std).

``vidprobe train --repeats K`` and the benchmark's ``repeats:`` refit over K seeded grouped splits (split
seeds seed, seed+1, …); the few-shot curves refit over their draws' seeds. Both go through ``over_seeds``.
A test interval says how far the score could move with other test clips; the spread over repeats says
how far it moves with another split and another head seed: the two answer different questions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["SCORES", "mean_std", "over_seeds", "repeat_note", "repeat_seeds", "seed_summary"]

SCORES = ("top1", "mean_class_acc")  # what a repeat summary aggregates, from each record's test metrics


def repeat_seeds(seed: int, repeats: int) -> list[int]:
    """The split seeds of ``repeats`` fits: seed, seed+1, …, seed+repeats-1."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: must be >= 1")
    return [seed + i for i in range(repeats)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def seed_summary(seeds: Sequence[int], scores: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """``{"seeds", "<score>": {"values", "mean", "std"}}`` over the seeds whose fit scored (``scores[i]``
    holds the test metrics of seed i, None where the fit failed or had no test clips)."""
    kept = [(s, m) for s, m in zip(seeds, scores) if m]
    out: dict[str, Any] = {"seeds": [s for s, _ in kept], "repeats": len(seeds)}
    for key in SCORES:
        values = [float(m[key]) for _, m in kept]
        mean, std = mean_std(values) if values else (float("nan"), float("nan"))
        out[key] = {"values": values, "mean": mean, "std": std}
    return out


def over_seeds(
    fit: Callable[[int], Any], seeds: Sequence[int], scores: Callable[[Any], dict[str, Any] | None]
) -> tuple[list[Any], dict[str, Any]]:
    """Run ``fit(seed)`` for each seed; return the fits and ``seed_summary`` of ``scores(fit)`` over them."""
    fits = [fit(s) for s in seeds]
    return fits, seed_summary(seeds, [scores(f) for f in fits])


def repeat_note(split_source: str) -> str | None:
    """What a repeat changes where the split is not vidprobe's to make (None where it makes the split)."""
    if split_source.startswith("random"):
        return None
    if split_source.startswith("manifest+carved-val"):
        return "the manifest fixes train and test: repeats change only the carved validation split and the head seed"
    return "the manifest fixes the split: repeats change only the head seed"
