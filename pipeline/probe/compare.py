"""Every full-data fit of a benchmark against the best fit of its task, on the same test clips.

Two fits are paired when they scored the same clips (same dataset, same split seed, same clip keys: stores
of one dataset made with different encoders hold the same clips): ``stats.compare_to_best`` then tests each
against the most accurate one (exact McNemar where every clip is its own video, else an exact sign-flip test over
videos). A fit whose p-value is >= 0.05 is "≈ best": these test clips cannot tell it from the best.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.splits import video_group
from .stats import compare_to_best

__all__ = ["COMPARE_KEY", "mark_ties"]

COMPARE_KEY = "_clips"  # a row's link to its per-clip results while the grid runs (never written out)


def mark_ties(rows: list[dict[str, Any]]) -> None:
    """Give each scored full-data row ``best``, ``p_vs_best`` and ``tie_best`` (in place), and drop every
    row's per-clip link (``COMPARE_KEY``: {"test_clips": clip keys, "correct": 0/1 per clip})."""
    tasks: dict[tuple, list[tuple[dict[str, Any], np.ndarray]]] = {}
    for r in rows:
        clips = r.pop(COMPARE_KEY, None)
        if clips is None or r.get("shots") is not None or r.get("status") != "ok":
            continue
        keys = [tuple(k) for k in clips["test_clips"]]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        sig = (r["dataset"], r["seed"], tuple(keys[i] for i in order))
        tasks.setdefault(sig, []).append((r, np.asarray(clips["correct"], dtype=bool)[order]))
    for (_, _, keys), members in tasks.items():
        groups = [video_group(str(k[0])) for k in keys]
        verdict = compare_to_best({str(i): c for i, (_, c) in enumerate(members)}, groups)
        for i, (r, _) in enumerate(members):
            v = verdict[str(i)]
            r.update(best=v["best"], p_vs_best=round(v["p"], 4), tie_best=v["tie"])
