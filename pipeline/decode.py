"""PyAV decoding of exactly the frames sampling asks for, resized in the decoder.

Frames come back as uint8 ``(T, H, W, 3)`` with the presentation time (seconds from the video's first
frame) of each returned frame, so the store records what was really embedded. Resizing happens in
FFmpeg's swscale while converting to RGB, which is far cheaper than resizing full-size RGB arrays.
Every failure becomes a ``DecodeError`` whose message names the file and the cause.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DecodeError

FrameSize = Callable[[int, int], "tuple[int, int]"]  # (height, width) -> (height, width) to resize to
FrameCrop = Callable[[np.ndarray], np.ndarray]  # uint8 (N,H,W,3) -> (N,h,w,3)

_INTERPOLATION = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "area": "AREA", "lanczos": "LANCZOS"}


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream (duration may be estimated)."""

    duration: float | None
    fps: float | None
    width: int
    height: int
    start_offset: float  # presentation time of the stream's start, subtracted from every frame time
    codec: str


@dataclass
class DecodedClip:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    timestamps: np.ndarray  # float64 (T,), seconds from the video's start, of the frames actually returned


def _open(path: Path):
    import av

    if not path.exists():
        raise DecodeError(f"{path}: file not found")
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except PermissionError:
        raise DecodeError(f"{path}: permission denied") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DecodeError(f"{path}: cannot open as a video ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise DecodeError(f"{path}: no video stream (audio-only or not a video file)")
    return container


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _info(container, stream) -> VideoInfo:
    tb = float(stream.time_base) if stream.time_base else 1e-6
    offset = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    duration = None
    if stream.duration:
        duration = float(stream.duration * tb)
    elif container.duration:
        duration = float(container.duration) / 1e6  # AV_TIME_BASE
    fps = float(stream.average_rate) if stream.average_rate else (float(stream.guessed_rate) if stream.guessed_rate else None)
    ctx = stream.codec_context
    return VideoInfo(duration, fps, int(ctx.width or 0), int(ctx.height or 0), offset, ctx.name or "")


def probe(path: str | Path) -> VideoInfo:
    """Container metadata of the first video stream (no frames decoded)."""
    p = Path(path)
    container = _open(p)
    try:
        return _info(container, container.streams.video[0])
    finally:
        container.close()


def _to_rgb(frame, size: FrameSize | None, interpolation: str) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    h, w = size(frame.height, frame.width)
    if (h, w) == (frame.height, frame.width):
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", width=w, height=h, interpolation=_INTERPOLATION.get(interpolation, "BICUBIC"))


def decode_at(
    path: str | Path,
    times: Callable[[VideoInfo], np.ndarray],
    *,
    size: FrameSize | None = None,
    crop: FrameCrop | None = None,
    interpolation: str = "bicubic",
    threads: int = 0,
) -> DecodedClip:
    """Decode the frames on screen at the times ``times(info)`` returns (seconds, ascending).

    ``times`` receives the probed ``VideoInfo`` so clip windows can be filled in from the real duration.
    Each requested time maps to the last frame whose presentation time is <= it (the first frame if the
    time precedes every frame); decoding stops right after the last needed frame.
    """
    import av

    p = Path(path)
    container = _open(p)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.thread_count = threads
        info = _info(container, stream)
        if info.duration is None:
            info = _with_scanned_duration(container, stream, info)
        wanted = np.asarray(times(info), dtype=np.float64)
        if wanted.size == 0:
            raise DecodeError(f"{p}: sampling asked for no frames")
        order = np.argsort(wanted, kind="stable")
        tb = float(stream.time_base)
        first = float(wanted[order[0]])
        if first > 1.0:  # seek to the keyframe before the first wanted time instead of decoding from 0
            container.seek(int((first + info.start_offset) / tb), stream=stream, backward=True, any_frame=False)
        out: list[np.ndarray | None] = [None] * len(wanted)
        out_t = np.zeros(len(wanted), dtype=np.float64)
        idx = 0
        prev = prev_t = prev_arr = None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            t = float(frame.pts * tb) - info.start_offset
            cur_arr = None
            while idx < len(order) and t > wanted[order[idx]] + 1e-6:
                if prev is not None:  # the frame on screen at the wanted time
                    if prev_arr is None:
                        prev_arr = _to_rgb(prev, size, interpolation)
                    out[order[idx]], out_t[order[idx]] = prev_arr, prev_t
                else:  # wanted time precedes the first frame
                    if cur_arr is None:
                        cur_arr = _to_rgb(frame, size, interpolation)
                    out[order[idx]], out_t[order[idx]] = cur_arr, t
                idx += 1
            if idx == len(order):
                break
            prev, prev_t, prev_arr = frame, t, cur_arr
        if idx < len(order):  # times at/after the last frame map to the last frame
            if prev is None:
                raise DecodeError(f"{p}: no decodable video frames")
            if prev_arr is None:
                prev_arr = _to_rgb(prev, size, interpolation)
            for j in order[idx:]:
                out[j], out_t[j] = prev_arr, prev_t
        frames = out
        stacked = np.stack(frames)
        if crop is not None:
            stacked = crop(stacked)
        return DecodedClip(np.ascontiguousarray(stacked), out_t)
    except DecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        raise DecodeError(f"{p}: decoding failed ({_reason(exc)})") from None
    finally:
        container.close()


def _with_scanned_duration(container, stream, info: VideoInfo) -> VideoInfo:
    """Headers without a duration: demux packets (no decoding) to find the last presentation time."""
    tb = float(stream.time_base)
    last = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            end = float((packet.pts + (packet.duration or 0)) * tb)
            last = end if last is None else max(last, end)
    container.seek(0, stream=stream, backward=True, any_frame=False)
    duration = None if last is None else last - info.start_offset
    return VideoInfo(duration, info.fps, info.width, info.height, info.start_offset, info.codec)
