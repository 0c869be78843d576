"""Per-clip frame sequences for the temporal heads: padded embeddings, clip-relative times and a mask.

Pooled heads see one vector per clip; ``attn`` and ``gru`` see every cached frame. Clips may hold
different frame counts (``fps`` / ``every_n`` sampling), so a batch is zero-padded to its longest clip
and ``mask`` marks the real frames. A frame's position is its *clip-relative* time in [0, 1]
(``relative_times``): the heads learn embeddings of that, not of frame indices, so a head trained on
8 uniform frames reads 16, or frames sampled at 1 fps, without a new table. No torch here: prediction
builds these with numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SEQUENCE_POOL = "frames"  # what a temporal head's sidecar records as its "pool": it reads every frame


def relative_times(timestamps: np.ndarray) -> np.ndarray:
    """Sampled timestamps mapped to [0, 1] between the clip's first and last sampled frame (one frame: 0.5).
    The sampled span, not the clip's start/end, because whole-video clips have no recorded end; uniform
    sampling then puts frame i of T at i / (T - 1) whatever the video's length.
    """
    ts = np.asarray(timestamps, np.float64)
    if len(ts) < 2 or not np.isfinite(ts).all() or ts.max() <= ts.min():
        return np.full(len(ts), 0.5) if len(ts) < 2 else np.linspace(0.0, 1.0, len(ts))
    return (ts - ts.min()) / (ts.max() - ts.min())


@dataclass
class FrameSequences:
    """N clips as padded arrays; row indexing (``seqs[idx]``) works like a feature matrix's."""

    x: np.ndarray  # (N, T, D) float32 embeddings, zero past each clip's length
    t: np.ndarray  # (N, T) float32 clip-relative times in [0, 1]
    mask: np.ndarray  # (N, T) bool: True where a real frame is
    times: np.ndarray  # (N, T) float64 timestamps in seconds (explanations report them)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    @property
    def lengths(self) -> np.ndarray:
        return self.mask.sum(axis=1)

    def __getitem__(self, idx: Any) -> FrameSequences:
        idx = np.asarray(idx) if not isinstance(idx, slice) else idx
        return FrameSequences(self.x[idx], self.t[idx], self.mask[idx], self.times[idx])

    @classmethod
    def from_clips(cls, clips: Sequence[tuple[np.ndarray, np.ndarray]], dim: int | None = None) -> FrameSequences:
        """From (frames (T_i, D), timestamps (T_i,)) pairs."""
        n = len(clips)
        T = max((len(f) for f, _ in clips), default=0)
        D = int(clips[0][0].shape[1]) if clips else int(dim or 0)
        x = np.zeros((n, T, D), np.float32)
        t = np.zeros((n, T), np.float32)
        times = np.zeros((n, T), np.float64)
        mask = np.zeros((n, T), bool)
        for i, (frames, ts) in enumerate(clips):
            k = len(frames)
            x[i, :k] = frames
            t[i, :k] = relative_times(ts)
            times[i, :k] = ts
            mask[i, :k] = True
        return cls(x, t, mask, times)

    @classmethod
    def concat(cls, parts: Sequence[FrameSequences]) -> FrameSequences:
        """Rows of several batches, padded to the longest."""
        T = max(p.x.shape[1] for p in parts)

        def pad(a: np.ndarray) -> np.ndarray:
            return np.pad(a, [(0, 0), (0, T - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

        return cls(*(np.concatenate([pad(getattr(p, k)) for p in parts]) for k in ("x", "t", "mask", "times")))


HeadInput = np.ndarray | FrameSequences  # what a head reads: pooled rows, or frame sequences (attn, gru)


def store_sequences(store: Any, indices: Sequence[int] | np.ndarray | None = None) -> FrameSequences:
    """The frame sequences of a store's clips (all, or ``indices``), through the reader's ``frames(i)``."""
    idx = range(len(store)) if indices is None else [int(i) for i in indices]
    return FrameSequences.from_clips([(store.frames(i), store.timestamps(i)) for i in idx], dim=store.dim)


__all__ = ["SEQUENCE_POOL", "FrameSequences", "HeadInput", "relative_times", "store_sequences"]
