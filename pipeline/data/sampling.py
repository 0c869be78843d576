"""Which instants of a video to embed: pure functions from time windows (and frame tables) to timestamps.

Kept free of av/torch so they are trivially testable and reusable by any decoder. Times are seconds
from the video's first frame (the decoder subtracts the stream's start offset); the decoder maps each
requested time to the frame on screen then and records that frame's own presentation time.

Two steps: ``clip_windows`` turns one manifest item into its clip windows (one for most strategies,
K for ``multiclip``, many for ``sliding``), then ``sample_timestamps`` picks the frames of one window.
Window bounds are rounded to microseconds so a window's key (video, start, end) in the store is the
same on every run: resume compares them exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import DEFAULT_FRAME_RATE, MAX_FRAMES_PER_CLIP, MAX_WINDOWS_PER_VIDEO, SAMPLING_STRATEGIES, SamplingConfig
from ..errors import ConfigError, allowed_values

KEY_DECIMALS = 6  # window bounds in the store are rounded to microseconds (stable resume keys)
MIN_WINDOW = 0.01  # seconds: shortest clip_length / stride accepted (a window is at least a frame or so)


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


def _key(x: float) -> float:
    return round(float(x), KEY_DECIMALS)


def multiclip_windows(start: float, end: float, num_clips: int, clip_length: float = 0.0) -> list[tuple[float, float]]:
    """K windows of ``clip_length`` s spread evenly from the first to the last possible start.
    ``clip_length`` 0 means duration / K, i.e. K back-to-back segments. A window longer than the
    video becomes the whole video; identical windows collapse into one (a short video has fewer clips).
    """
    if num_clips < 1:
        raise ConfigError(f"num_clips={num_clips}: must be >= 1")
    if 0 < clip_length < MIN_WINDOW:
        raise ConfigError(f"clip_length={clip_length}: must be 0 (duration / K) or >= {MIN_WINDOW} s")
    span = end - start
    length = span / num_clips if clip_length <= 0 else min(float(clip_length), span)
    room = span - length
    if num_clips == 1:
        starts = [start + room / 2]
    else:
        starts = [start + room * k / (num_clips - 1) for k in range(num_clips)]
    out: list[tuple[float, float]] = []
    for s in starts:
        w = (_key(s), _key(min(s + length, end)))
        if w not in out:
            out.append(w)
    return out


def sliding_windows(start: float, end: float, clip_length: float, stride: float = 0.0) -> list[tuple[float, float]]:
    """Windows of ``clip_length`` s every ``stride`` s (0 = ``clip_length``) that fit inside [start, end].
    A tail shorter than a window is not embedded, so a span shorter than one window gives none."""
    if clip_length < MIN_WINDOW or 0 < stride < MIN_WINDOW:
        raise ConfigError(
            f"clip_length={clip_length}, stride={stride}: must be >= {MIN_WINDOW} s (stride 0 = clip_length)"
        )
    step = float(stride) if stride > 0 else float(clip_length)
    count = int(np.floor((end - start - clip_length) / step + 1e-9)) + 1
    return [(_key(start + i * step), _key(start + i * step + clip_length)) for i in range(count)]


def clip_windows(
    cfg: SamplingConfig, duration: float | None, start: float | None = None, end: float | None = None
) -> list[tuple[float, float]]:
    """The clip windows of one manifest item (its requested [start, end], open ends from ``duration``);
    more than ``MAX_WINDOWS_PER_VIDEO``, or no sliding window at all, is refused (the video fails, naming
    the setting)."""
    s, e = clip_window(duration, start, end)
    if cfg.strategy == "multiclip":
        return multiclip_windows(s, e, cfg.num_clips, cfg.clip_length)
    if cfg.strategy == "sliding":
        windows = sliding_windows(s, e, cfg.clip_length, cfg.stride)
        if not windows:
            raise ConfigError(
                f"sampling.strategy=sliding: its {e - s:.3f} s are shorter than one window of "
                f"sampling.clip_length={cfg.clip_length:g} s, and a tail shorter than a window is dropped: "
                "no clip; lower sampling.clip_length to include it"
            )
        if len(windows) > MAX_WINDOWS_PER_VIDEO:
            raise ConfigError(
                f"sampling.strategy=sliding: {len(windows)} windows of {cfg.clip_length:g} s in this {e - s:.1f} s "
                f"video exceed the cap of {MAX_WINDOWS_PER_VIDEO} per video; raise sampling.stride"
            )
        return windows
    return [(s, e)]


def uniform_timestamps(start: float, end: float, num_frames: int) -> np.ndarray:
    """TSN-style: split the window into ``num_frames`` equal segments and take each segment's centre."""
    if num_frames < 1:
        raise ConfigError(f"num_frames={num_frames}: must be >= 1")
    step = (end - start) / num_frames
    return start + step * (np.arange(num_frames, dtype=np.float64) + 0.5)


def _cap(times: np.ndarray, max_frames: int) -> np.ndarray:
    """Keep the span: pick ``max_frames`` of ``times`` evenly rather than truncating the clip's tail."""
    if max_frames and len(times) > max_frames:
        return times[np.linspace(0, len(times) - 1, max_frames).round().astype(int)]
    return times


def fps_timestamps(start: float, end: float, fps: float, max_frames: int = 0) -> np.ndarray:
    """Every 1/fps seconds from ``start`` (exclusive of ``end``); at least one frame; optional cap."""
    if fps <= 0:
        raise ConfigError(f"fps={fps}: must be > 0")
    count = max(1, int(np.ceil((end - start) * fps - 1e-9)))
    if max_frames and count > max_frames:  # the capped pick of _cap, without materialising every time first
        return start + np.linspace(0, count - 1, max_frames).round() / fps
    return start + np.arange(count, dtype=np.float64) / fps


def _in_window(table: np.ndarray, start: float, end: float) -> np.ndarray:
    t = np.asarray(table, dtype=np.float64)
    return t[(t >= start - 1e-9) & (t < end - 1e-9)]


def every_n_timestamps(frame_times: np.ndarray, start: float, end: float, n: int, max_frames: int = 0) -> np.ndarray:
    """Every ``n``-th frame (presentation order) whose time lies in [start, end), from the first one.
    ``frame_times`` are the presentation times of all frames (variable frame rate is handled exactly).
    A window holding no frame start gets the frame on screen at ``start``.
    """
    if n < 1:
        raise ConfigError(f"every_n={n}: must be >= 1")
    inside = _in_window(frame_times, start, end)
    if inside.size == 0:
        return np.array([start], dtype=np.float64)
    return _cap(inside[::n], max_frames)


def keyframe_timestamps(keyframe_times: np.ndarray, start: float, end: float, max_frames: int = 0) -> np.ndarray:
    """The keyframes in [start, end); if none, the keyframe nearest the window's centre."""
    inside = _in_window(keyframe_times, start, end)
    if inside.size == 0:
        return snap_to_keyframes(np.array([(start + end) / 2]), keyframe_times)
    return _cap(inside, max_frames)


def snap_to_keyframes(times: np.ndarray, keyframe_times: np.ndarray) -> np.ndarray:
    """Each time replaced by the nearest keyframe time (ties go to the earlier keyframe)."""
    keys = np.unique(np.asarray(keyframe_times, dtype=np.float64))
    t = np.asarray(times, dtype=np.float64)
    if keys.size == 0:
        raise ConfigError("seek_mode=keyframe: the video has no keyframes to snap to")
    right = np.clip(np.searchsorted(keys, t, side="left"), 0, keys.size - 1)
    left = np.clip(right - 1, 0, keys.size - 1)
    pick_left = np.abs(t - keys[left]) <= np.abs(keys[right] - t)
    return np.where(pick_left, keys[left], keys[right])


def needs_frame_table(cfg: SamplingConfig) -> bool:
    """``every_n`` counts frames, so it needs every frame's presentation time (a demux pass, no decoding)."""
    return cfg.strategy == "every_n"


def needs_keyframe_table(cfg: SamplingConfig) -> bool:
    """Keyframe sampling and keyframe seeking need exact keyframe presentation times."""
    return cfg.strategy == "keyframes" or cfg.seek_mode == "keyframe"


def sample_timestamps(
    cfg: SamplingConfig,
    start: float,
    end: float,
    frame_times: np.ndarray | None = None,
    keyframe_times: np.ndarray | None = None,
) -> np.ndarray:
    """Timestamps for one clip window under ``cfg`` (before keyframe snapping; see ``snap_to_keyframes``).
    More than ``MAX_FRAMES_PER_CLIP`` is refused (the clip fails, naming the setting), never cut silently."""
    times = _sample(cfg, start, end, frame_times, keyframe_times)
    if len(times) > MAX_FRAMES_PER_CLIP:
        raise ConfigError(
            f"sampling.strategy={cfg.strategy}: this {end - start:.1f} s clip would take {len(times)} frames, more "
            f"than the cap of {MAX_FRAMES_PER_CLIP} per clip; set sampling.max_frames (<= {MAX_FRAMES_PER_CLIP})"
        )
    return times


def _sample(
    cfg: SamplingConfig,
    start: float,
    end: float,
    frame_times: np.ndarray | None,
    keyframe_times: np.ndarray | None,
) -> np.ndarray:
    s = cfg.strategy
    if s in ("uniform", "multiclip", "sliding"):
        return uniform_timestamps(start, end, cfg.num_frames)
    if s == "fps":
        return fps_timestamps(start, end, cfg.fps, cfg.max_frames)
    if s == "every_n":
        if frame_times is None:
            raise ConfigError("sampling.strategy=every_n needs the video's frame times")
        return every_n_timestamps(frame_times, start, end, cfg.every_n, cfg.max_frames)
    if s == "keyframes":
        if keyframe_times is None:
            raise ConfigError("sampling.strategy=keyframes needs the video's keyframe times")
        return keyframe_timestamps(keyframe_times, start, end, cfg.max_frames)
    raise ConfigError(f"sampling.strategy={s!r}: {allowed_values(SAMPLING_STRATEGIES)}")


def sampling_identity(cfg: SamplingConfig) -> dict[str, Any]:
    """Exactly the sampling settings that change which frames are embedded (store provenance).
    Settings a strategy ignores are left out, and equivalent spellings are normalised (a sliding
    stride of 0 means the clip length), so two configs that embed the same frames compare equal.
    """
    s = cfg.strategy
    out: dict[str, Any] = {"strategy": s}
    if s in ("uniform", "multiclip", "sliding"):
        out["num_frames"] = cfg.num_frames
    if s == "fps":
        out["fps"] = cfg.fps
    if s == "every_n":
        out["every_n"] = cfg.every_n
    if s in ("fps", "every_n", "keyframes"):
        out["max_frames"] = cfg.max_frames
    if s == "multiclip":
        out.update(num_clips=cfg.num_clips, clip_length=cfg.clip_length)
    if s == "sliding":
        out.update(clip_length=cfg.clip_length, stride=cfg.stride if cfg.stride > 0 else cfg.clip_length)
    if s != "keyframes":  # keyframe sampling decodes keyframes whatever the seek mode
        out["seek_mode"] = cfg.seek_mode
    if cfg.frame_rate != DEFAULT_FRAME_RATE:  # frame folders' times (left out at its default: older stores)
        out["frame_rate"] = cfg.frame_rate
    return out
