"""Train/val/test assignment of stored clips.

Manifests may carry splits (``train``/``val``/``test``); where they don't, a seeded stratified split is
made here, and the same seed reproduces it at evaluation time, so a head is never scored on clips it
saw. Clips of one *group* stay on one side of every split: a group is a video (its windows are
near-duplicates), or for UCF101-style names (``v_Class_g08_c03.avi``) the group ``g08`` — clips cut from
one long recording, which UCF101's own splits also keep together.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from ..config import build, check_settings, rule
from ..errors import ConfigError
from .manifest import DATASET_SPLITS, FORMATS


@dataclass
class SplitsFrom:
    """Train/val/test taken from another manifest or official split folder (e.g. UCF101 split 2 over a store
    extracted with split 1). Listed videos need not exist any more: the store already holds their features."""

    source: str
    split: int = field(default=1, metadata=rule(choices=DATASET_SPLITS))  # UCF101/HMDB51 split number
    format: str = field(default="auto", metadata=rule(choices=FORMATS))
    root: str | None = None  # the folder (or folder URL) the store's paths are relative to


@dataclass
class SplitSpec:
    """How one fit splits a store's clips: the one definition ``train``, ``evaluate``, ``benchmark`` and the CLI
    share. Its keys are recorded flat in the head sidecar (as they always were), so ``evaluate`` reproduces it."""

    seed: int = 0  # seed of the split made where the manifest has none (and of the head)
    val_fraction: float = field(default=0.2, metadata=rule(gt=0, lt=1))  # carved from train where there is no val
    test_fraction: float = field(default=0.2, metadata=rule(min=0, lt=1))  # held out where the manifest has no splits
    shots: int | None = field(default=None, metadata=rule(min=1))  # few-shot: training clips per class
    shot_seed: int = 0  # seed of the few-shot draw
    splits_from: SplitsFrom | None = None

    def validate(self) -> SplitSpec:
        check_settings(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, prefix: str = "") -> SplitSpec:
        """Its keys out of a larger mapping (a head sidecar, a benchmark file); absent or null keys keep the default."""
        names = [f.name for f in dataclasses.fields(cls)]
        return build(cls, {k: d[k] for k in names if d.get(k) is not None}, prefix=prefix)


_UCF_GROUP = re.compile(r"^(v_.+_g\d+)_c\d+$", re.IGNORECASE)


def video_group(video: str) -> str:
    """The unit a split must not cut through: UCF101's recording group, else the video itself."""
    if video.rsplit("/", 1)[-1][:2].lower() != "v_":  # cheap test first: a million clips pass through here
        return video
    p = PurePosixPath(video)
    m = _UCF_GROUP.match(p.stem)
    return str(p.parent / m.group(1)) if m else video


@dataclass
class Splits:
    train: np.ndarray  # indices into the clip table
    val: np.ndarray
    test: np.ndarray
    source: str  # "manifest", "manifest+carved-val" or "random(seed=...)"
    labels: Sequence[str] = ()  # every clip's label (what ``missing`` is computed from)

    def missing(self) -> dict[str, list[str]]:
        """Per non-empty split, the classes that have clips elsewhere but none there.

        A class with too few videos cannot be on every side while its videos stay whole; the caller names it.
        """
        sides = {"train": self.train, "val": self.val, "test": self.test}
        present = {name: {self.labels[i] for i in idx} for name, idx in sides.items() if len(idx)}
        every = set().union(*present.values())
        gaps = {name: sorted(every - have) for name, have in present.items()}
        return {name: classes for name, classes in gaps.items() if classes}


def _stratified_groups(
    labels: list[str], groups: list[str], idx: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Move ~fraction of each label's groups (videos) out of ``idx``; returns (kept, moved)."""
    by_label: dict[str, set[str]] = {}  # a set: a list's `in` made this quadratic in the number of videos
    for i in idx:
        by_label.setdefault(labels[i], set()).add(groups[i])
    chosen: set[str] = set()
    for label in sorted(by_label):
        vids = sorted(by_label[label])
        n = len(vids)
        k = int(round(n * fraction))
        if n >= 2:
            k = min(max(k, 1), n - 1)  # each side keeps at least one video of the class when possible
        else:
            k = 0
        chosen.update(rng.permutation(vids)[:k].tolist())
    moved = [i for i in idx if groups[i] in chosen]
    kept = [i for i in idx if groups[i] not in chosen]
    return np.array(kept, dtype=int), np.array(moved, dtype=int)


def make_splits(
    labels: list[str],
    splits: list[str],
    videos: list[str],
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    require_train: bool = True,
) -> Splits:
    """Use the manifest's splits where present, carving what is missing from ``train`` by label.

    ``require_train=False`` accepts a manifest with test clips only (zero-shot needs no training clips).
    """
    SplitSpec(seed=seed, val_fraction=val_fraction, test_fraction=test_fraction).validate()
    labeled = np.array([i for i, lab in enumerate(labels) if lab], dtype=int)
    if labeled.size == 0:
        raise ConfigError(
            "the store has no labeled clips; extract from a folder-per-class or a manifest with a label column"
        )
    rng = np.random.default_rng(seed)
    videos = [video_group(v) for v in videos]
    split_arr = np.array(splits, dtype=object)
    has = {s for s in split_arr[labeled]}
    if has & {"train", "val", "test"}:
        train = labeled[split_arr[labeled] == "train"]
        val = labeled[split_arr[labeled] == "val"]
        test = labeled[split_arr[labeled] == "test"]
        source = "manifest"
        if train.size == 0:
            if require_train:
                raise ConfigError("the manifest's splits name no 'train' clips")
            return Splits(train, val, test, source, labels)
        if val.size == 0:
            train, val = _stratified_groups(labels, videos, train, val_fraction, rng)
            source = "manifest+carved-val"
        return Splits(train, val, test, source, labels)
    rest, test = (
        _stratified_groups(labels, videos, labeled, test_fraction, rng)
        if test_fraction > 0
        else (labeled, np.array([], int))
    )
    train, val = _stratified_groups(labels, videos, rest, val_fraction / max(1e-9, 1 - test_fraction), rng)
    return Splits(train, val, test, f"random(seed={seed})", labels)


def few_shot(labels: Sequence[str], videos: Sequence[str], train: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """``shots`` training clips per class, drawn with ``seed``, each from a different group where possible.

    A class with fewer clips keeps all of them (the returned size says how many were used).
    """
    SplitSpec(shots=shots, shot_seed=seed).validate()
    rng = np.random.default_rng([seed, shots])
    chosen: list[int] = []
    by_label: dict[str, list[int]] = {}
    for i in train:
        by_label.setdefault(labels[i], []).append(int(i))
    for label in sorted(by_label):
        idx = rng.permutation(by_label[label])
        first, seen = [], set()
        for i in idx:  # one clip per group first, then any
            g = video_group(videos[i])
            if g not in seen:
                seen.add(g)
                first.append(int(i))
        taken = set(first)
        chosen += (first + [int(i) for i in idx if int(i) not in taken])[:shots]
    return np.array(sorted(chosen), dtype=int)


def short_of_shots(labels: Sequence[str], train: np.ndarray, shots: int) -> dict[str, int]:
    """Classes whose training clips number fewer than ``shots``, with how many they have (what ``few_shot`` used)."""
    counts: dict[str, int] = {}
    for i in train:
        counts[labels[i]] = counts.get(labels[i], 0) + 1
    return {label: n for label, n in sorted(counts.items()) if n < shots}


def resplit(keys: Sequence[tuple[str, float, float]], assignment: Mapping[tuple[str, float, float], str]) -> list[str]:
    """Split of each stored clip taken from another manifest (e.g. UCF101 split 2 over a store made with
    split 1): clips the manifest does not list get "" and take part in no split."""
    return [assignment.get(k, "") for k in keys]
