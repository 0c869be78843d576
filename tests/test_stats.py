"""Intervals that cover, paired tests that match the textbook, folds that keep videos whole (issue 25)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.probe.stats import (
    MIN_VAL_CLIPS,
    MIN_VAL_PER_CLASS,
    cluster_bootstrap_interval,
    compare_to_best,
    grouped_stratified_folds,
    mcnemar_exact,
    mean_class_interval,
    plan_selection,
    score_interval,
    wilson_interval,
)

DRAWS = 400


def _videos(rng: np.random.Generator, n_videos: int, clips: int, p: float, spread: float = 8.0):
    """0/1 correct per clip of ``n_videos`` videos: each video's difficulty ~ Beta with mean ``p``
    (concentration ``spread``: small = strongly correlated clips), its clips Bernoulli of it."""
    d = rng.beta(p * spread, (1 - p) * spread, n_videos)
    correct = (rng.random((n_videos, clips)) < d[:, None]).astype(float).ravel()
    return correct, np.repeat(np.arange(n_videos), clips)


def test_wilson_covers_the_true_accuracy() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(DRAWS):
        n, p = int(rng.integers(30, 400)), float(rng.uniform(0.55, 0.95))
        lo, hi = wilson_interval(int(rng.binomial(n, p)), n)
        hits += lo <= p <= hi
    assert hits / DRAWS >= 0.93


def test_wilson_edges() -> None:
    assert all(np.isnan(wilson_interval(0, 0)))
    lo, hi = wilson_interval(20, 20)
    assert lo < 1 and hi == 1  # all right still leaves room below
    assert wilson_interval(50, 100, 0.99)[0] < wilson_interval(50, 100, 0.95)[0]


def test_clustered_bootstrap_covers_the_true_accuracy_where_clips_are_correlated() -> None:
    rng = np.random.default_rng(1)
    hits = naive_hits = 0
    for i in range(DRAWS):
        n_videos, p = int(rng.integers(30, 120)), float(rng.uniform(0.6, 0.9))
        correct, groups = _videos(rng, n_videos, 5, p, spread=4.0)
        lo, hi = cluster_bootstrap_interval(correct, groups, n_boot=400, seed=i)
        hits += lo <= p <= hi
        nlo, nhi = wilson_interval(int(correct.sum()), len(correct))  # clips taken as independent
        naive_hits += nlo <= p <= nhi
    assert hits / DRAWS >= 0.93
    assert naive_hits / DRAWS < 0.90  # why the bootstrap is needed: clips of one video are not independent


def test_mean_class_interval_covers_the_true_mean_class_accuracy() -> None:
    rng = np.random.default_rng(2)
    K, hits = 6, 0
    for i in range(DRAWS // 2):
        p = rng.uniform(0.5, 0.95, K)
        parts = [_videos(rng, int(rng.integers(8, 20)), 3, float(pk)) for pk in p]
        correct = np.concatenate([c for c, _ in parts])
        groups = np.concatenate([g + 1000 * k for k, (_, g) in enumerate(parts)])
        labels = np.concatenate([np.full(len(c), k) for k, (c, _) in enumerate(parts)])
        r = mean_class_interval(correct, labels, groups, n_boot=400, seed=i)
        hits += r["lo"] <= p.mean() <= r["hi"]
    assert hits / (DRAWS // 2) >= 0.93


def test_score_interval_picks_the_method_by_grouping() -> None:
    correct = np.array([1, 0, 1, 1, 0, 1, 1, 1], float)
    single = score_interval(correct)
    assert single["method"] == "wilson" and single["n"] == 8 and single["value"] == 0.75
    assert (single["lo"], single["hi"]) == pytest.approx(wilson_interval(6, 8))
    assert score_interval(correct, list("abcdefgh"))["method"] == "wilson"
    grouped = score_interval(correct, list("aabbccdd"))
    assert grouped["method"] == "bootstrap" and grouped["groups"] == 4
    assert grouped["lo"] <= 0.75 <= grouped["hi"]
    perfect = score_interval(np.ones(8), list("aabbccdd"))  # no spread to resample: Wilson over the videos
    assert perfect["hi"] == 1 and perfect["lo"] == pytest.approx(wilson_interval(4, 4)[0])


def test_mean_class_counts_every_class_in_the_evaluated_set() -> None:
    y = np.array(["a", "a", "b", "b", "c", "c"])
    correct = np.array([1, 1, 1, 0, 0, 0], float)  # "c": a class the head never saw scores 0
    r = mean_class_interval(correct, y)
    assert r["value"] == pytest.approx((1 + 0.5 + 0) / 3) and r["classes"] == 3
    assert r["lo"] <= r["value"] <= r["hi"]
    assert mean_class_interval(correct, y, ["v1", "v1", "v2", "v3", "v4", "v4"])["single_group_classes"] == 2


@pytest.mark.parametrize(("a", "b"), [(0, 0), (3, 0), (7, 2), (12, 11), (30, 14), (1, 40), (2600, 2400)])
def test_mcnemar_matches_the_exact_binomial_test(a: int, b: int) -> None:
    from scipy.stats import binomtest

    both, neither = 17, 5
    ra = np.array([1] * a + [0] * b + [1] * both + [0] * neither, bool)
    rb = np.array([0] * a + [1] * b + [1] * both + [0] * neither, bool)
    expected = 1.0 if a + b == 0 else binomtest(a, a + b, 0.5).pvalue
    assert mcnemar_exact(ra, rb) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_exact(ra, rb) == pytest.approx(mcnemar_exact(rb, ra), rel=1e-12)


@pytest.mark.parametrize("grouped", [False, True])
def test_compare_to_best_marks_ties_and_clear_losses(grouped: bool) -> None:
    rng = np.random.default_rng(4)
    best, groups = _videos(rng, 1000, 3 if grouped else 1, 0.85)
    rows = {"same": best.copy(), "best": best, "worse": best * (rng.random(len(best)) > 0.2)}
    out = compare_to_best(rows, groups if grouped else None)
    assert out["same"]["best"] and out["same"]["tie"]  # the first of equal rows is the best
    assert not out["best"]["best"] and out["best"]["tie"] and out["best"]["diff"] == 0
    assert not out["worse"]["tie"] and out["worse"]["diff"] < 0
    assert out["worse"]["method"] == ("sign-flip" if grouped else "mcnemar")


def _grouped_labels(rng: np.random.Generator, videos_per_class: list[int]):
    labels, groups = [], []
    for c, m in enumerate(videos_per_class):
        for v in range(m):
            clips = int(rng.integers(1, 6))
            labels += [f"class{c}"] * clips
            groups += [f"c{c}v{v}"] * clips
    return np.array(labels), np.array(groups)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folds_keep_videos_whole_and_validate_every_class(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels, groups = _grouped_labels(rng, [5, 7, 12, 3, 40])
    k = 5
    folds = grouped_stratified_folds(labels, groups, k, seed)
    assert len(folds) == k
    seen = np.concatenate([val for _, val in folds])
    assert sorted(seen.tolist()) == list(range(len(labels)))  # every clip validated exactly once
    for train, val in folds:
        assert not set(groups[train]) & set(groups[val])
        assert len(train) + len(val) == len(labels)
        for c in set(labels):
            n_videos = len(set(groups[labels == c]))
            if n_videos >= k:
                assert c in set(labels[val])
            if n_videos >= 2:
                assert c in set(labels[train])
    again = grouped_stratified_folds(labels, groups, k, seed)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_folds_refuse_more_folds_than_videos() -> None:
    with pytest.raises(ValueError, match="groups"):
        grouped_stratified_folds(["a", "a", "b"], ["v1", "v1", "v2"], 3)


def test_plan_selection() -> None:
    rng = np.random.default_rng(5)
    pool, groups = _grouped_labels(rng, [6, 9, 4])
    big_val = [f"class{c}" for c in range(3)] * (MIN_VAL_CLIPS // 3 + 1)
    assert plan_selection(big_val, pool, groups).how == "val"
    thin = [f"class{c}" for c in range(3)] * (MIN_VAL_PER_CLASS - 1)
    plan = plan_selection(thin, pool, groups, k=5)
    assert plan.how == "cv" and plan.k == 4  # the fewest videos any class has
    assert plan_selection(big_val[: MIN_VAL_CLIPS - 1], pool, groups).how == "cv"
    lonely_pool = np.concatenate([pool, ["class9"]])
    plan = plan_selection(thin, lonely_pool, np.concatenate([groups, ["only"]]))
    assert plan.how == "fixed" and plan.classes == ("class9",) and "one video" in plan.reason


def test_sign_flip_test_is_exact_with_few_videos_and_holds_its_level() -> None:
    from pipeline.probe.stats import sign_flip_test

    groups = np.repeat(np.arange(6), 4)
    a = np.ones(24, bool)
    b = a.copy()
    b[[0, 4, 8]] = False  # one clip wrong in 3 of 6 videos: 2 of the 2^3 sign patterns are as extreme
    assert sign_flip_test(a, b, groups) == 0.25
    assert sign_flip_test(a, a, groups) == 1.0
    # one clip per video: McNemar's exact test
    rng = np.random.default_rng(2)
    x, y = rng.random(40) > 0.3, rng.random(40) > 0.5
    assert np.isclose(sign_flip_test(x, y, np.arange(40)), mcnemar_exact(x, y))
    # two equally good rows on correlated clips (12 videos x 5 clips): "not a tie" in <= 7 % of 400 draws
    rejections = 0
    for seed in range(400):
        r = np.random.default_rng(seed)
        skill = np.repeat(r.uniform(0.3, 0.95, 12), 5)
        rejections += sign_flip_test(r.random(60) < skill, r.random(60) < skill, np.repeat(np.arange(12), 5)) < 0.05
    assert rejections <= 28
