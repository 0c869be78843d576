"""Temporal pooling: a clip's (T, D) frame embeddings → one (D',) vector for the head.

Pooling is chosen at training time, not extraction time, because the store keeps every frame. The
order-blind poolings (mean, max, meanmax, meanstd) cannot tell a clip from its reverse; ``segK``
(means of K consecutive segments, concatenated), ``tdiff`` (mean plus late-minus-early difference) and
``trend`` (mean plus the least-squares slope over the clip) keep temporal order, which is what
motion-direction tasks need.

Each pooling is a ``Pooling``: called on one clip's (T, D) frames it returns (D',); its ``batch(frames,
offsets)`` pools every clip of a block at once — (F, D) frames, clip i owning rows ``offsets[i]:offsets[i+1]``
→ (N, D') — with numpy reductions instead of a Python call per clip. The store's streaming reader calls
``batch`` shard by shard when the object has one (and the per-clip call otherwise), and keys its
pooled-feature cache by ``name``; it never imports this module (the store comes first in the stages).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from ..errors import ConfigError

ClipFn = Callable[[np.ndarray], np.ndarray]
BatchFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

__all__ = ["Pooling", "Pool", "POOLS", "get_pool", "is_order_aware", "segment_bounds"]


class Pooling:
    """A named pooling: ``pool(x)`` for one (T, D) clip, ``pool.batch(frames, offsets)`` for many."""

    def __init__(self, name: str, clip: ClipFn, batch: BatchFn):
        self.name = name
        self.__name__ = name
        self._clip, self._batch = clip, batch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._clip(x)

    def batch(self, frames: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(F, D) frames of N clips (``offsets`` (N+1,), every clip at least one frame) → (N, D') float32."""
        offsets = np.asarray(offsets, dtype=np.int64)
        if len(offsets) < 2:
            return np.zeros((0, 0), np.float32)
        return np.asarray(self._batch(np.asarray(frames, dtype=np.float32), offsets), dtype=np.float32)

    def __repr__(self) -> str:
        return f"Pooling({self.name!r})"


Pool = Pooling


def _segments(x: np.ndarray, k: int) -> list[np.ndarray]:
    # np.array_split keeps every frame; with T < K the last segments repeat the nearest frame.
    if len(x) >= k:
        return np.array_split(x, k)
    idx = np.floor(np.arange(k) * len(x) / k).astype(int)
    return [x[i : i + 1] for i in idx]


def segment_bounds(lengths: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Local (start, end), each (N, K), of the K segments of clips with these frame counts, as ``_segments`` cuts."""
    t = np.asarray(lengths, dtype=np.int64)[:, None]
    i = np.arange(k, dtype=np.int64)[None, :]
    q, r = t // k, t % k
    start = np.where(t >= k, i * q + np.minimum(i, r), (i * t) // k)
    end = np.where(t >= k, start + q + (i < r), start + 1)
    return start, end


def _segment_means(x: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Means of rows ``x[starts[j]:ends[j]]`` (non-empty) for each j: one reduction, not a loop."""
    starts, ends = starts.reshape(-1), ends.reshape(-1)
    lengths = (ends - starts).astype(np.float32)[:, None]
    if len(starts) and np.all(ends[:-1] == starts[1:]):  # segments tile a range
        lo, hi = int(starts[0]), int(ends[-1])
        n = int(ends[0] - starts[0])
        if np.all(ends - starts == n):  # equal lengths (uniform sampling): a reshape, much faster than reduceat
            sums = x[lo:hi].reshape(len(starts), n, x.shape[1]).sum(axis=1)
            return (sums / np.float32(n)).astype(np.float32, copy=False)
        sums = np.add.reduceat(x[lo:hi], starts - lo, axis=0)
    else:  # overlapping or repeated segments (T < K): differences of a float64 running sum
        c = np.zeros((len(x) + 1, x.shape[1]), np.float64)
        np.cumsum(x, axis=0, out=c[1:])
        sums = c[ends] - c[starts]
    return (sums / lengths).astype(np.float32, copy=False)


def _lengths(offsets: np.ndarray) -> np.ndarray:
    return np.diff(offsets)


def mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0)


def _mean_b(f: np.ndarray, off: np.ndarray) -> np.ndarray:
    return _segment_means(f, off[:-1], off[1:])


def max_(x: np.ndarray) -> np.ndarray:
    return x.max(axis=0)


def _max_b(f: np.ndarray, off: np.ndarray) -> np.ndarray:
    return (
        np.maximum.reduceat(f[: off[-1]], off[:-1] - off[0], axis=0)
        if off[0] == 0
        else _max_b(f[off[0] :], off - off[0])
    )


def meanmax(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x.mean(axis=0), x.max(axis=0)])


def _meanmax_b(f: np.ndarray, off: np.ndarray) -> np.ndarray:
    return np.concatenate([_mean_b(f, off), _max_b(f, off)], axis=1)


def meanstd(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x.mean(axis=0), x.std(axis=0)])


def _meanstd_b(f: np.ndarray, off: np.ndarray) -> np.ndarray:
    m = _mean_b(f, off)
    dev = f[off[0] : off[-1]] - np.repeat(m, _lengths(off), axis=0)  # as np.std: mean of squared deviations
    var = _segment_means(dev * dev, off[:-1] - off[0], off[1:] - off[0])
    return np.concatenate([m, np.sqrt(var)], axis=1)


def center(x: np.ndarray) -> np.ndarray:
    """The middle frame only: the CLIP paper's video protocol."""
    return x[(len(x) - 1) // 2]


def _center_b(f: np.ndarray, off: np.ndarray) -> np.ndarray:
    return f[off[:-1] + (_lengths(off) - 1) // 2]


def tdiff(x: np.ndarray) -> np.ndarray:
    first, second = _segments(x, 2)
    return np.concatenate([x.mean(axis=0), second.mean(axis=0) - first.mean(axis=0)])


def _seg_means_b(f: np.ndarray, off: np.ndarray, k: int) -> np.ndarray:
    """(N, K, D) segment means."""
    s, e = segment_bounds(_lengths(off), k)
    base = off[:-1, None]
    return _segment_means(f, s + base, e + base).reshape(len(off) - 1, k, f.shape[1])


def _tdiff_b(f: np.ndarray, off: np.ndarray) -> np.ndarray:
    seg = _seg_means_b(f, off, 2)
    return np.concatenate([_mean_b(f, off), seg[:, 1] - seg[:, 0]], axis=1)


def _slope_weights(lengths: np.ndarray) -> np.ndarray:
    """Per frame of clips with these frame counts, its weight in the least-squares slope over positions 0..1:
    ``12 (j - (L - 1) / 2) / (L (L + 1))`` for frame j of L (0 for a one-frame clip)."""
    L = np.repeat(np.asarray(lengths, dtype=np.int64), lengths)
    j = np.arange(len(L)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (12.0 * (j - (L - 1) / 2) / (L * (L + 1))).astype(np.float32)


def trend(x: np.ndarray) -> np.ndarray:
    """Mean plus the least-squares slope over the clip (frame positions spread over 0..1): the change the
    whole clip's frames fit, where ``tdiff`` takes the difference of two half means."""
    slope = (_slope_weights(np.array([len(x)]))[:, None] * x).sum(axis=0)
    return np.concatenate([x.mean(axis=0), slope])


def _trend_b(f: np.ndarray, off: np.ndarray) -> np.ndarray:
    lengths = _lengths(off)
    weighted = f[off[0] : off[-1]] * _slope_weights(lengths)[:, None]
    slope = _segment_means(weighted, off[:-1] - off[0], off[1:] - off[0]) * lengths[:, None].astype(np.float32)
    return np.concatenate([_mean_b(f, off), slope], axis=1)


def segments(k: int) -> Pooling:
    def pool(x: np.ndarray) -> np.ndarray:
        return np.concatenate([s.mean(axis=0) for s in _segments(x, k)])

    return Pooling(f"seg{k}", pool, lambda f, off: _seg_means_b(f, off, k).reshape(len(off) - 1, -1))


POOLS: dict[str, Pooling] = {
    "mean": Pooling("mean", mean, _mean_b),
    "max": Pooling("max", max_, _max_b),
    "meanmax": Pooling("meanmax", meanmax, _meanmax_b),
    "meanstd": Pooling("meanstd", meanstd, _meanstd_b),
    "center": Pooling("center", center, _center_b),
    "tdiff": Pooling("tdiff", tdiff, _tdiff_b),
    "trend": Pooling("trend", trend, _trend_b),
}


def get_pool(name: str) -> Pooling:
    """Pooling by name: mean, max, meanmax, meanstd, center, tdiff, trend, or segK (K = 2..64)."""
    if name in POOLS:
        return POOLS[name]
    m = re.fullmatch(r"seg(\d+)", name)
    if m and 2 <= int(m.group(1)) <= 64:
        return segments(int(m.group(1)))
    raise ConfigError(f"pool={name!r}: allowed values are {', '.join(POOLS)}, segK (e.g. seg2, seg4)")


def is_order_aware(name: str) -> bool:
    """True for poolings whose output changes when the clip is played backwards (tdiff, trend, segK)."""
    return name in ("tdiff", "trend") or bool(re.fullmatch(r"seg\d+", name))
