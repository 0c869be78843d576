"""The one clip key: (video path, start, end), open ends as -1.0 and NaN treated as open.

Resume, de-duplication, job sharding and the store's reader all compare clips by this key, so it is
defined once, here, where both the manifest and the store can use it.
"""

from __future__ import annotations

import math

__all__ = ["Key", "clip_key"]

Key = tuple[str, float, float]


def clip_key(video: str, start: float | None, end: float | None) -> Key:
    """Identity of a clip: its path and requested window (open ends, None or NaN, as -1)."""
    return (video, _end(start), _end(end))


def _end(x: float | None) -> float:
    return -1.0 if x is None or math.isnan(x) else float(x)
