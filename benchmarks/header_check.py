"""What checking a Matroska/WebM header's duration against its frames costs (`python benchmarks/header_check.py`).

A Matroska index (cues) lists keyframes only, so the real end of the frames is read by one seek to the
last cued keyframe and a demux (no decoding) of its packets to the end of the file
(``VideoReader._demuxed_end``). This measures, on a 60 s 1280x720 H.264 MKV per GOP length (made first,
not timed), the median over ``--repeats`` of:

* opening a ``VideoReader`` (metadata, cues, the check) with the check, and with it turned off;
* the check alone (``_demuxed_end``);
* a full demux pass of every packet, for reference (what the check avoids);
* an 8-frame uniform decode (``iter_frames``) after the open, what the check adds to.

Timings depend on the load: the JSON records the load average and the CPU model. The last line printed is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import av  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.extract.decode import VideoReader  # noqa: E402
from pipeline.versions import cpu_model  # noqa: E402

SECONDS, FPS, WIDTH, HEIGHT = 60, 25, 1280, 720


def make(path: Path, gop: int) -> Path:
    """A 60 s 720p H.264 MKV of a moving gradient (frames made one at a time: bounded memory)."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        s.codec_context.gop_size = gop
        s.options = {"preset": "ultrafast", "crf": "23", "keyint_min": str(gop), "sc_threshold": "0"}
        for i in range(SECONDS * FPS):
            img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
            img[..., 0] = (xx + 4 * i) % 256
            img[..., 1] = (yy + 2 * i) % 256
            img[..., 2] = (i * 3) % 256
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def median_s(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def open_reader(path: Path, check: bool) -> None:
    if check:
        with VideoReader(path) as r:
            assert r.info.duration is not None and abs(r.info.duration - SECONDS) < 0.1 and not r.warnings
        return
    real = VideoReader._demuxed_end
    VideoReader._demuxed_end = lambda self, fps: None  # type: ignore[method-assign]
    try:
        with VideoReader(path):
            pass
    finally:
        VideoReader._demuxed_end = real  # type: ignore[method-assign]


def check_only(path: Path) -> None:
    with VideoReader(path) as r:
        t0 = time.perf_counter()
        r._demuxed_end(r.info.fps)
        check_only.seconds.append(time.perf_counter() - t0)  # type: ignore[attr-defined]


def full_demux(path: Path) -> None:
    with av.open(str(path)) as c:
        for _ in c.demux(c.streams.video[0]):
            pass


def decode8(path: Path) -> None:
    with VideoReader(path) as r:
        t = np.linspace(0, r.info.duration, 8, endpoint=False)
        for _ in r.iter_frames(t, size=lambda h, w: (224, 224)):
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--gops", type=int, nargs="+", default=[30, 250])
    args = ap.parse_args()
    out: dict = {"cpu": cpu_model(), "load": os.getloadavg()[0], "seconds": SECONDS, "size": f"{WIDTH}x{HEIGHT}"}
    with tempfile.TemporaryDirectory() as tmp:
        for gop in args.gops:
            path = make(Path(tmp) / f"gop{gop}.mkv", gop)
            check_only.seconds = []  # type: ignore[attr-defined]
            for _ in range(args.repeats):
                check_only(path)
            row = {
                "open_with_check_ms": 1e3 * median_s(lambda: open_reader(path, True), args.repeats),
                "open_without_check_ms": 1e3 * median_s(lambda: open_reader(path, False), args.repeats),
                "check_ms": 1e3 * statistics.median(check_only.seconds),  # type: ignore[attr-defined]
                "full_demux_ms": 1e3 * median_s(lambda: full_demux(path), args.repeats),
                "decode8_ms": 1e3 * median_s(lambda: decode8(path), args.repeats),
                "mbytes": path.stat().st_size / 1e6,
            }
            out[f"gop{gop}"] = row
            print(
                f"GOP {gop}: open {row['open_with_check_ms']:.1f} ms with the check, "
                f"{row['open_without_check_ms']:.1f} ms without (check alone {row['check_ms']:.1f} ms); "
                f"full demux {row['full_demux_ms']:.1f} ms; 8-frame decode {row['decode8_ms']:.1f} ms "
                f"({row['mbytes']:.1f} MB)"
            )
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
