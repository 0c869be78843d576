"""Temporal pooling: a clip's (T, D) frame embeddings → one (D',) vector for the head.

Pooling is chosen at training time, not extraction time, because the store keeps every frame. The
order-blind poolings (mean, max, meanmax, meanstd) cannot tell a clip from its reverse; ``segK``
(means of K consecutive segments, concatenated) and ``tdiff`` (mean plus late-minus-early difference)
keep temporal order, which is what motion-direction tasks need.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from ..errors import ConfigError

Pool = Callable[[np.ndarray], np.ndarray]


def _segments(x: np.ndarray, k: int) -> list[np.ndarray]:
    # np.array_split keeps every frame; with T < K the last segments repeat the nearest frame.
    if len(x) >= k:
        return np.array_split(x, k)
    idx = np.floor(np.arange(k) * len(x) / k).astype(int)
    return [x[i : i + 1] for i in idx]


def mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0)


def max_(x: np.ndarray) -> np.ndarray:
    return x.max(axis=0)


def meanmax(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x.mean(axis=0), x.max(axis=0)])


def meanstd(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x.mean(axis=0), x.std(axis=0)])


def center(x: np.ndarray) -> np.ndarray:
    """The middle frame only: the CLIP paper's video protocol."""
    return x[(len(x) - 1) // 2]


def tdiff(x: np.ndarray) -> np.ndarray:
    first, second = _segments(x, 2)
    return np.concatenate([x.mean(axis=0), second.mean(axis=0) - first.mean(axis=0)])


def segments(k: int) -> Pool:
    def pool(x: np.ndarray) -> np.ndarray:
        return np.concatenate([s.mean(axis=0) for s in _segments(x, k)])

    pool.__name__ = f"seg{k}"
    return pool


POOLS: dict[str, Pool] = {
    "mean": mean,
    "max": max_,
    "meanmax": meanmax,
    "meanstd": meanstd,
    "center": center,
    "tdiff": tdiff,
}


def get_pool(name: str) -> Pool:
    """Pooling by name: mean, max, meanmax, meanstd, center, tdiff, or segK (K = 2..64)."""
    if name in POOLS:
        return POOLS[name]
    m = re.fullmatch(r"seg(\d+)", name)
    if m and 2 <= int(m.group(1)) <= 64:
        return segments(int(m.group(1)))
    raise ConfigError(f"pool={name!r}: allowed values are {', '.join(POOLS)}, segK (e.g. seg2, seg4)")


def is_order_aware(name: str) -> bool:
    """True for poolings whose output changes when the clip is played backwards (tdiff, segK)."""
    return name == "tdiff" or bool(re.fullmatch(r"seg\d+", name))


def pool_names() -> list[str]:
    return [*POOLS, "seg2", "seg4"]
