"""Which instants of a clip to embed: pure functions from a time window to frame timestamps.

Kept free of av/torch so they are trivially testable and reusable by any decoder. Times are seconds
from the video's first frame; the decoder maps each requested time to the frame on screen then.
"""
from __future__ import annotations

import numpy as np

from .config import SamplingConfig
from .errors import ConfigError


def clip_window(duration: float | None, start: float | None, end: float | None) -> tuple[float, float]:
    """The (start, end) seconds actually covered: open ends filled from the video's duration."""
    s = 0.0 if start is None else float(start)
    if end is None:
        if duration is None or duration <= 0:
            raise ConfigError("clip has no end time and the video's duration is unknown")
        e = float(duration)
    else:
        e = float(end) if duration is None or duration <= 0 else min(float(end), float(duration))
    if e <= s:
        raise ConfigError(f"clip window [{s:.3f}, {e:.3f}] s is empty (video duration {duration})")
    return s, e


def uniform_timestamps(start: float, end: float, num_frames: int) -> np.ndarray:
    """TSN-style: split the window into ``num_frames`` equal segments and take each segment's centre."""
    if num_frames < 1:
        raise ConfigError(f"num_frames={num_frames}: must be >= 1")
    step = (end - start) / num_frames
    return start + step * (np.arange(num_frames, dtype=np.float64) + 0.5)


def fps_timestamps(start: float, end: float, fps: float, max_frames: int = 0) -> np.ndarray:
    """Every 1/fps seconds from ``start`` (exclusive of ``end``); at least one frame; optional cap."""
    if fps <= 0:
        raise ConfigError(f"fps={fps}: must be > 0")
    count = max(1, int(np.ceil((end - start) * fps - 1e-9)))
    times = start + np.arange(count, dtype=np.float64) / fps
    if max_frames and count > max_frames:
        # Keep the span: pick max_frames of them evenly rather than truncating the clip's tail.
        times = times[np.linspace(0, count - 1, max_frames).round().astype(int)]
    return times


def sample_timestamps(cfg: SamplingConfig, start: float, end: float) -> np.ndarray:
    """Timestamps for one clip window under ``cfg``."""
    if cfg.strategy == "uniform":
        return uniform_timestamps(start, end, cfg.num_frames)
    if cfg.strategy == "fps":
        return fps_timestamps(start, end, cfg.fps, cfg.max_frames)
    raise ConfigError(f"sampling.strategy={cfg.strategy!r}: allowed values are uniform, fps")
