"""Real encoded test videos made with PyAV (no fixtures checked in)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# container suffix -> (codec, pixel format)
FORMATS = {
    ".mp4": ("libx264", "yuv420p"),
    ".webm": ("libvpx-vp9", "yuv420p"),
    ".mkv": ("libx264", "yuv420p"),
    ".avi": ("mpeg4", "yuv420p"),
    ".mov": ("libx264", "yuv420p"),
}


def pattern_frames(n: int, height: int = 96, width: int = 128, kind: int = 0, seed: int = 0) -> np.ndarray:
    """Frames whose content depends on ``kind`` (stripes orientation/colour) with a moving bar and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((n, height, width, 3), np.uint8)
    colours = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (220, 200, 40)]
    base_c = np.array(colours[kind % len(colours)], np.float32)
    for i in range(n):
        stripes = ((xx if kind % 2 == 0 else yy) // (6 + 4 * kind)) % 2
        img = stripes[..., None] * base_c + (1 - stripes[..., None]) * (255 - base_c) * 0.4
        bar = (xx + 3 * i) % width < 10
        img[bar] = 255
        img += rng.normal(0, 6, img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: int = 24,
    gop: int | None = None,
    *,
    bframes: int = 0,
    pts_ms: list[int] | None = None,
    rotation: int | None = None,
    container_options: dict | None = None,
) -> Path:
    """Encode ``frames`` (T,H,W,3 uint8) into ``path``; codec chosen by the suffix (see FORMATS).

    bframes: H.264 B-frames (x264 veryfast; 0 = ultrafast, none). pts_ms: explicit presentation times in
    milliseconds (variable frame rate, start offsets). rotation: display-matrix rotation, degrees
    counter-clockwise. container_options: muxer options (e.g. Matroska ``live`` writes no duration).
    """
    codec, pix_fmt = FORMATS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if gop:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = (
                {"preset": "veryfast", "bf": str(bframes), "crf": "20", "sc_threshold": "0"}
                if bframes
                else {"preset": "ultrafast", "crf": "20"}
            )
            if gop:
                stream.options = {**stream.options, "keyint_min": str(gop)}
        elif codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def index_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames whose brightness encodes their index (step 7, mod 256) plus a corner mark: identifiable."""
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        out[i] = (i * 7) % 256
        out[i, :8, :8] = 255 - (i * 7) % 256
    return out


def reference_decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of ``path`` decoded front to back (the slow, obviously right way): (times, frames)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        tb, off = float(s.time_base), s.start_time or 0
        times, frames = [], []
        for f in c.decode(s):
            times.append(float((f.pts - off) * tb))
            frames.append(f.to_ndarray(format="rgb24"))
    order = np.argsort(times)
    return np.array(times)[order], np.stack(frames)[order]


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = int(16000 * seconds)
        t = np.arange(samples) / 16000
        data = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        chunk = 1024
        for s in range(0, samples - chunk, chunk):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data[:, s : s + chunk]), format="fltp", layout="mono"
            )
            frame.sample_rate = 16000
            frame.pts = s
            frame.time_base = Fraction(1, 16000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def patch_avi_frame_count(data: bytes, factor: float) -> bytes:
    """An AVI's bytes with the frame counts of its header (avih dwTotalFrames, strh dwLength, and the OpenDML
    dmlh count where one is written) scaled by ``factor``: a header that lies about the length (the idx1
    index and the frames stay true)."""
    import struct

    out = bytearray(data)
    for tag, offset in ((b"avih", 16), (b"strh", 32), (b"dmlh", 0)):
        at = out.find(tag)
        if at < 0:
            assert tag == b"dmlh", f"no {tag!r} chunk"
            continue
        field = at + 8 + offset
        true = struct.unpack_from("<I", out, field)[0]
        if tag == b"dmlh" and true == 0:  # written only for OpenDML files (over 1 GiB)
            continue
        struct.pack_into("<I", out, field, max(1, round(true * factor)))
    return bytes(out)


def patch_mkv_duration(data: bytes, factor: float, *, drop_cues: bool = False) -> bytes:
    """A Matroska/WebM file's bytes with its Segment Info Duration (EBML ID 0x4489, an 8-byte big-endian
    float) scaled by ``factor``: a header that lies about the length (the cues and the frames stay true).
    ``drop_cues``: the Cues element's ID (0x1C53BB6B) made unknown, so demuxers skip it (no index)."""
    import struct

    out = bytearray(data.replace(b"\x1c\x53\xbb\x6b", b"\x1c\x53\xbb\x6c") if drop_cues else data)
    at = out.find(b"\x44\x89\x88")  # the ID, then the size byte of an 8-byte element
    assert at >= 0, "no 8-byte Duration element"
    true = struct.unpack_from(">d", out, at + 3)[0]
    struct.pack_into(">d", out, at + 3, true * factor)
    return bytes(out)
