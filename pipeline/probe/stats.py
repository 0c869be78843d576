"""Numbers you can trust at small sizes: intervals of accuracy, paired comparisons, and how to choose
hyperparameters when validation is thin.

Clips cut from one source video are not independent (same scene, same person), so every resampling here
is over *groups* (videos, ``data.splits.video_group``), never over clips. Where every group holds one clip
the exact or closed-form method is used instead (Wilson, McNemar): they are right at any n, where a
bootstrap over 20 clips is not.

Pure functions of numpy arrays; seeded; the bootstrap is vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

__all__ = [
    "DEFAULT_FOLDS",
    "DEFAULT_LEVEL",
    "DEFAULT_N_BOOT",
    "EXACT_SIGN_FLIPS",
    "MIN_VAL_CLIPS",
    "MIN_VAL_PER_CLASS",
    "SelectionPlan",
    "cluster_bootstrap_interval",
    "compare_to_best",
    "grouped_stratified_folds",
    "mcnemar_exact",
    "mean_class_interval",
    "plan_selection",
    "score_interval",
    "sign_flip_test",
    "wilson_interval",
]

DEFAULT_LEVEL = 0.95
DEFAULT_N_BOOT = 2000  # percentile ends move by ~0.1 point between seeds at 2000 resamples
DEFAULT_FOLDS = 5
# A validation split chooses hyperparameters only with at least MIN_VAL_PER_CLASS clips of every class
# (one clip per class makes each class's accuracy 0 or 1: C is then chosen by a handful of coin flips)
# and MIN_VAL_CLIPS clips in all (below that one clip moves accuracy by more than 5 points); else k-fold CV.
MIN_VAL_PER_CLASS = 2
MIN_VAL_CLIPS = 20
_BLOCK = 1 << 22  # resampled group indices held at once (32 MiB of int64)

Interval = tuple[float, float]


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level={level!r}: must be in (0, 1)")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson_interval(correct: int, n: int, level: float = DEFAULT_LEVEL) -> Interval:
    """Wilson score interval of a proportion: keeps its coverage near 0 and 1 and at small n, where the
    normal (Wald) interval collapses to a point. n=0 gives (nan, nan)."""
    if n <= 0:
        return (math.nan, math.nan)
    z2 = _z(level) ** 2
    p = correct / n
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _codes(values: Sequence[Hashable] | np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes 0..G-1 of any labels (strings, ints), and G."""
    uniq, inv = np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)
    return inv.reshape(-1), len(uniq)


def _ratio_resamples(s: np.ndarray, n: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) resampled ratios sum(s) / sum(n) over units drawn with replacement, rescaled by
    sqrt(G / (G - 1)) around the observed ratio (Rao & Wu): a plain bootstrap's spread is (G-1)/G of the
    variance, which matters at the 5 to 20 videos a class has in small sets. One unit: no spread."""
    G = len(s)
    ratio = s.sum() / n.sum()
    if G < 2:
        return np.full(n_boot, ratio)
    out = np.empty(n_boot)
    step = max(1, _BLOCK // G)
    for b0 in range(0, n_boot, step):
        idx = rng.integers(0, G, size=(min(step, n_boot - b0), G))
        out[b0 : b0 + len(idx)] = s[idx].sum(axis=1) / n[idx].sum(axis=1)
    return ratio + math.sqrt(G / (G - 1)) * (out - ratio)


def _unit_sums(values: np.ndarray, unit: np.ndarray, n_units: int) -> tuple[np.ndarray, np.ndarray]:
    return np.bincount(unit, weights=values, minlength=n_units), np.bincount(unit, minlength=n_units).astype(float)


def _percentile(draws: np.ndarray, level: float, unit_range: bool) -> Interval:
    """The central ``level`` of the draws; kept inside [0, 1] for a statistic that is (the rescaling can
    push a draw past 1 when nearly every video is right)."""
    lo, hi = (float(q) for q in np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]))
    return (max(0.0, lo), min(1.0, hi)) if unit_range else (lo, hi)


def _check_lengths(*arrays: Any) -> int:
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"arrays of different lengths: {sorted(lengths)}")
    return lengths.pop()


def cluster_bootstrap_interval(
    values_per_clip: np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    *,
    strata: Sequence[Hashable] | np.ndarray | None = None,
    level: float = DEFAULT_LEVEL,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> Interval:
    """Percentile interval of a mean over clips, resampling whole groups (videos) with replacement.

    ``strata=None``: the statistic is the mean over all clips (top-1 when values are 0/1 correct).
    ``strata=labels``: the mean over strata of each stratum's clip mean — mean-class accuracy — and
    groups are resampled *within* each class, so every class stays in every resample with its own
    number of videos (the test set's design), instead of dropping out of some resamples and changing
    what is averaged. A video whose clips carry several labels counts as one unit per label. A class
    with a single video keeps it in every resample: it adds no spread, so the interval is too narrow
    when many classes have one test video (``mean_class_interval`` reports how many).
    """
    values = np.asarray(values_per_clip, dtype=float)
    _check_lengths(values, groups, *(() if strata is None else (strata,)))
    if len(values) == 0:
        return (math.nan, math.nan)
    g, G = _codes(groups)
    k, K = (np.zeros(len(values), int), 1) if strata is None else _codes(strata)
    pairs, unit = np.unique(k.astype(np.int64) * G + g, return_inverse=True)  # (class, group) units
    unit, n_units = unit.reshape(-1), len(pairs)
    s, n = _unit_sums(values, unit, n_units)
    unit_stratum = np.zeros(n_units, int)
    unit_stratum[unit] = k
    rng = np.random.default_rng(seed)
    draws = np.zeros(n_boot)
    for c in range(K):
        mine = unit_stratum == c
        draws += _ratio_resamples(s[mine], n[mine], n_boot, rng)
    return _percentile(draws / K, level, bool(np.all((values >= 0) & (values <= 1))))


def _all_singletons(groups: Sequence[Hashable] | np.ndarray | None, n: int) -> bool:
    return groups is None or _codes(groups)[1] == n


def score_interval(
    correct: np.ndarray,
    groups: Sequence[Hashable] | np.ndarray | None = None,
    *,
    level: float = DEFAULT_LEVEL,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Top-1 as ``{"value", "n", "groups", "lo", "hi", "method"}``: Wilson when every clip is its own video
    (``groups=None`` or all distinct), else the clustered bootstrap over videos. A bootstrap with every
    video all right (or all wrong) has no spread; it then falls back to Wilson over the videos."""
    c = np.asarray(correct, dtype=float)
    n = len(c)
    value = float(c.mean()) if n else math.nan
    n_groups = n if groups is None else _codes(groups)[1]
    out: dict[str, Any] = {"value": value, "n": n, "groups": n_groups}
    if _all_singletons(groups, n):
        lo, hi = wilson_interval(int(c.sum()), n, level)
        return {**out, "lo": lo, "hi": hi, "method": "wilson"}
    assert groups is not None
    lo, hi = cluster_bootstrap_interval(c, groups, level=level, n_boot=n_boot, seed=seed)
    if value in (0.0, 1.0):
        lo, hi = wilson_interval(round(value * n_groups), n_groups, level)
    return {**out, "lo": lo, "hi": hi, "method": "bootstrap"}


def mean_class_interval(
    correct: np.ndarray,
    y_true: Sequence[Hashable] | np.ndarray,
    groups: Sequence[Hashable] | np.ndarray | None = None,
    *,
    level: float = DEFAULT_LEVEL,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean-class accuracy over every class present in ``y_true`` (a class the head never saw is in it and
    scores 0), with the class-stratified clustered bootstrap of ``cluster_bootstrap_interval``.

    Always a bootstrap: there is no closed form for an average of K recalls that keeps Wilson's behaviour
    near 0 and 1. ``single_group_classes`` counts the classes with one test video (no spread; see above).
    """
    c = np.asarray(correct, dtype=float)
    n = _check_lengths(c, y_true)
    if groups is None:
        groups = np.arange(n)
    k, K = _codes(y_true)
    recalls = np.bincount(k, weights=c, minlength=K) / np.maximum(np.bincount(k, minlength=K), 1)
    g, n_groups = _codes(groups)
    per_class_groups = np.array([len(np.unique(g[k == i])) for i in range(K)])
    lo, hi = cluster_bootstrap_interval(c, groups, strata=y_true, level=level, n_boot=n_boot, seed=seed)
    if n and float(c.mean()) in (0.0, 1.0):  # every clip right (or wrong): no spread; Wilson over videos, as top-1
        lo, hi = wilson_interval(round(float(c.mean()) * n_groups), n_groups, level)
    return {
        "value": float(recalls.mean()) if n else math.nan,
        "n": n,
        "groups": n_groups,
        "classes": K,
        "single_group_classes": int(np.sum(per_class_groups == 1)),
        "lo": lo,
        "hi": hi,
        "method": "bootstrap",
    }


def _half_binomial_cdf(k: int, m: int) -> float:
    """P(X <= k) for X ~ binomial(m, 1/2), summed in log space (no scipy; exact to ~1e-12 at any m)."""
    i = np.arange(k)
    log_terms = np.concatenate([[0.0], np.cumsum(np.log(m - i) - np.log(i + 1))]) - m * math.log(2)
    top = log_terms.max()
    return float(math.exp(top) * np.exp(log_terms - top).sum())


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: the binomial(b + c, 1/2) test on the discordant pairs (clips one
    row gets right and the other wrong). Exact at any n, where the chi-square form needs b + c >= 25."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    _check_lengths(a, b)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    m = only_a + only_b
    if m == 0:
        return 1.0
    return min(1.0, 2 * _half_binomial_cdf(min(only_a, only_b), m))


EXACT_SIGN_FLIPS = 16  # up to this many videos that differ, every sign pattern is enumerated (65,536)


def sign_flip_test(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    *,
    n_perm: int = 20000,
    seed: int = 0,
) -> float:
    """Two-sided p of "a and b are equally accurate", flipping the sign of each video's difference.

    Under the null a video's (a - b) is as likely negative as positive, whatever the correlation of its
    clips, so the test holds its level with a handful of videos, where a bootstrap's does not. Exact up to
    EXACT_SIGN_FLIPS videos that differ; beyond, ``n_perm`` random patterns. With one clip per video it is
    McNemar's exact test.
    """
    a, b = np.asarray(correct_a, float), np.asarray(correct_b, float)
    _check_lengths(a, b, groups)
    g, G = _codes(groups)
    d = _unit_sums(a - b, g, G)[0]
    d = d[np.abs(d) > 1e-12]
    if not len(d):
        return 1.0
    observed = abs(d.sum()) - 1e-9
    if len(d) <= EXACT_SIGN_FLIPS:
        bits = (np.arange(1 << len(d))[:, None] >> np.arange(len(d))) & 1
        return float(np.mean(np.abs((1 - 2 * bits) @ d) >= observed))
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(n_perm, len(d)))
    return float((1 + np.sum(np.abs(signs @ d) >= observed)) / (1 + n_perm))


def compare_to_best(
    rows: dict[str, np.ndarray],
    groups: Sequence[Hashable] | np.ndarray | None = None,
    *,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Each row (name -> per-clip 0/1 correct, all on the same test clips) against the most accurate one:
    ``{"diff": acc - best acc, "p", "tie": p >= 1 - level, "best", "method"}``.

    Paired, because both rows score the same clips: clip difficulty cancels, so a paired test sees differences that
    two separate intervals (which overlap) hide. McNemar's exact test where every clip is its own video; where
    videos give several clips their results are correlated and McNemar's p would be too small, so the sign-flip test
    over videos (exact for few videos, where a bootstrap's p is too small). No correction for the number of rows,
    and the best is picked after looking: a "tie" is the honest label, a "not a tie" is a first screen, not proof.
    The first row of the highest accuracy is the best.
    """
    if not rows:
        return {}
    names = list(rows)
    n = _check_lengths(*rows.values())
    acc = {k: float(np.mean(rows[k])) if n else math.nan for k in names}
    best = max(names, key=lambda k: acc[k])
    singletons = _all_singletons(groups, n)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == best:
            out[name] = {"diff": 0.0, "p": 1.0, "tie": True, "best": True, "method": None}
            continue
        if singletons:
            p, method = mcnemar_exact(rows[name], rows[best]), "mcnemar"
        else:
            assert groups is not None
            p, method = sign_flip_test(rows[name], rows[best], groups, seed=seed), "sign-flip"
        out[name] = {"diff": acc[name] - acc[best], "p": p, "tie": p >= 1 - level, "best": False, "method": method}
    return out


def _group_labels(label_codes: np.ndarray, group_codes: np.ndarray, G: int) -> np.ndarray:
    """Each group's most common label (ties to the lowest code): the class a video is stratified by."""
    counts = np.zeros((G, int(label_codes.max()) + 1 if len(label_codes) else 1), int)
    np.add.at(counts, (group_codes, label_codes), 1)
    return counts.argmax(axis=1)


def grouped_stratified_folds(
    labels: Sequence[Hashable] | np.ndarray, groups: Sequence[Hashable] | np.ndarray, k: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """k folds of (train indices, validation indices): a group (video) is never on both sides, and each
    class's videos are dealt over the folds so that every fold validates every class that has >= k videos.

    Per class (a video counts for its most common label), its videos in a seeded random order, largest
    first, each go to the fold holding the fewest of that class's clips (ties: fewest clips in all, then
    the lowest fold). An empty fold always holds the fewest, so the first k videos of a class land in k
    different folds. scikit-learn's ``StratifiedGroupKFold`` balances class proportions greedily over all
    groups at once and does not promise that. ``plan_selection`` picks a k that every class can fill.
    """
    if k < 2:
        raise ValueError(f"k={k}: cross-validation needs at least 2 folds")
    n = _check_lengths(labels, groups)
    y, _ = _codes(labels)
    g, G = _codes(groups)
    if k > G:
        raise ValueError(f"k={k} folds but only {G} groups")
    group_label = _group_labels(y, g, G)
    size = np.bincount(g, minlength=G)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(G, int)
    total = np.zeros(k, int)
    for c in np.unique(group_label):
        mine = rng.permutation(np.flatnonzero(group_label == c))
        mine = mine[np.argsort(-size[mine], kind="stable")]
        held = np.zeros(k, int)
        for grp in mine:
            f = min(range(k), key=lambda i: (held[i], total[i], i))
            fold_of[grp] = f
            held[f] += size[grp]
            total[f] += size[grp]
    clip_fold = fold_of[g]
    idx = np.arange(n)
    return [(idx[clip_fold != f], idx[clip_fold == f]) for f in range(k)]


@dataclass(frozen=True)
class SelectionPlan:
    """How a head's hyperparameters are chosen: ``how`` = "val" (the validation split), "cv" (``k`` folds
    of ``grouped_stratified_folds`` over the pool) or "fixed" (defaults: ``classes`` have too few videos
    for any CV). ``reason`` is one sentence for logs and reports."""

    how: Literal["val", "cv", "fixed"]
    reason: str
    k: int = 0
    classes: tuple[str, ...] = ()


def plan_selection(
    y_val: Sequence[Hashable] | np.ndarray,
    y_pool: Sequence[Hashable] | np.ndarray,
    groups_pool: Sequence[Hashable] | np.ndarray,
    *,
    k: int = DEFAULT_FOLDS,
) -> SelectionPlan:
    """Choose on validation when it is big enough (every class of the pool has >= MIN_VAL_PER_CLASS val
    clips and there are >= MIN_VAL_CLIPS in all), else by k-fold CV over the pool (what the head may be
    fit on: train + val), k reduced to the fewest videos any class has, else fixed defaults.

    CV needs >= 2 videos in every class: with one, the fold that validates the class trains without it
    and scores it 0 for any hyperparameter. Those classes are named in the "fixed" plan.
    """
    val = [str(v) for v in y_val]
    pool = np.asarray(y_pool, dtype=object).astype(str)
    _check_lengths(pool, groups_pool)
    classes = sorted(set(pool.tolist()))
    counts = {c: val.count(c) for c in classes}
    thin = [c for c in classes if counts[c] < MIN_VAL_PER_CLASS]
    if classes and not thin and len(val) >= MIN_VAL_CLIPS:
        return SelectionPlan("val", f"validation has {len(val)} clips, >= {MIN_VAL_PER_CLASS} of every class")
    why = (
        f"validation has {len(val)} clips (< {MIN_VAL_CLIPS})"
        if not thin
        else f"validation has < {MIN_VAL_PER_CLASS} clips of {len(thin)} of {len(classes)} classes"
    )
    g = np.asarray(groups_pool, dtype=object).astype(str)
    videos = {c: len(set(g[pool == c].tolist())) for c in classes}
    fewest = min(videos.values(), default=0)
    if fewest >= 2:
        k_used = min(k, fewest)
        return SelectionPlan("cv", f"{why}: {k_used}-fold CV grouped by video", k=k_used)
    lonely = tuple(c for c in classes if videos[c] < 2)
    return SelectionPlan("fixed", f"{why}, and {len(lonely)} classes have one video: no CV possible", classes=lonely)
