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


def write_video(path: Path, frames: np.ndarray, fps: int = 24, gop: int | None = None) -> Path:
    """Encode ``frames`` (T,H,W,3 uint8) into ``path``; codec chosen by the suffix (see FORMATS)."""
    codec, pix_fmt = FORMATS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if gop:
            stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "20"}
        elif codec == "libvpx-vp9":
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = int(16000 * seconds)
        t = np.arange(samples) / 16000
        data = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        chunk = 1024
        for s in range(0, samples - chunk, chunk):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, s : s + chunk]), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = s
            frame.time_base = Fraction(1, 16000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
