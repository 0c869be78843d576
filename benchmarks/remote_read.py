"""Videos at URLs: bytes fetched and extraction throughput over localhost HTTP (``python benchmarks/remote_read.py``).

Side by side in one run, on this machine:

1. one 60 s 720p GOP-30 H.264 video (``extract_throughput.make_video``: a panned photo with noise) read
   through ``VideoReader`` from an HTTP server on localhost that honours Range requests
   (``tests/servers.py``): the fraction of the file's bytes fetched for 8 uniform frames (target <= 40 %),
   the number of requests, and the same 8 frames compared with a local decode (equal, or it says so);
2. extraction (``pipeline.extract.entry.extract``, default settings, effnet-lite0 on CPU, 8 uniform frames
   per video) of the same videos (10 s, 360p) from local files and from localhost HTTP (the server in its
   own process) into fresh stores: videos/s each, alternated, best of ``--repeats``, and their ratio
   (target >= 0.9).

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]

from extract_throughput import make_video  # noqa: E402
from servers import RangeServer  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.data.manifest import Manifest, VideoItem  # noqa: E402
from pipeline.data.remote import RemoteOptions  # noqa: E402
from pipeline.data.sampling import uniform_timestamps  # noqa: E402
from pipeline.encoders import create_encoder  # noqa: E402
from pipeline.extract.decode import VideoReader  # noqa: E402
from pipeline.extract.entry import extract  # noqa: E402
from pipeline.versions import cpu_model  # noqa: E402


def sparse_read(server: RangeServer, rel: str, path: Path, block: int) -> dict:
    """Bytes and requests to decode 8 uniform frames of one video over HTTP, and whether they equal a local decode."""
    server.requests.clear()
    server.bytes.clear()
    frames = []
    for source in (server.url(rel), path):
        with VideoReader(source, remote=RemoteOptions(block_size=block)) as reader:
            times = uniform_timestamps(0.0, reader.info.duration or 0.0, 8)
            frames.append(np.concatenate([c.frames for c in reader.iter_frames(times, size=lambda h, w: (224, 224))]))
    size = path.stat().st_size
    return {
        "file_bytes": size,
        "block_size": block,
        "fetched_bytes": int(server.bytes[rel]),
        "fetched_fraction": round(server.bytes[rel] / size, 4),
        "requests": int(server.requests[rel]),
        "frames_equal_local": bool(np.array_equal(frames[0], frames[1])),
    }


def throughput(root: Path, rels: list[str], work: Path, repeats: int) -> dict:
    """Videos/s extracting ``rels`` from local files and over HTTP, alternated, best of ``repeats``; the server
    runs in its own process (as a real one would: it must not take this process's GIL)."""
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "servers.py"), str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        base = server.stdout.readline().strip() if server.stdout else ""
        encoder = create_encoder("effnet-lite0", device="cpu")
        cfg = load_config(None, ["sampling.num_frames=8"])
        sources = {
            "local": Manifest(root, [VideoItem(r, str(root)) for r in rels]),
            "http": Manifest(Path.cwd(), [VideoItem(base + r, "", url=base + r) for r in rels]),
        }
        best = {k: float("inf") for k in sources}
        for i in range(repeats):
            for name, manifest in sources.items():
                store = work / f"store-{name}-{i}"
                t0 = time.perf_counter()
                (summary,) = extract(manifest, store, cfg, encoders=[encoder], progress=False)
                best[name] = min(best[name], time.perf_counter() - t0)
                assert summary.done == len(rels) and summary.failed == 0, (name, summary.failures)
                shutil.rmtree(store)
    finally:
        server.terminate()
        server.wait()
    out = {f"{k}_videos_per_s": round(len(rels) / v, 3) for k, v in best.items()}
    out["http_vs_local"] = round(best["local"] / best["http"], 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vidprobe-bench"), help="video cache folder")
    ap.add_argument("--videos", type=int, default=16, help="videos in the throughput comparison (10 s, 360p)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=RemoteOptions().block_size)
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        long_rel = "long/720p-gop30-60s.mp4"
        (root / "long").mkdir(parents=True)
        shutil.copy(make_video(cache / "remote-720p-gop30-60s.mp4", 60, 720, 1280, 30), root / long_rel)
        rels = []
        for i in range(args.videos):
            rel = f"short/v{i}.mp4"
            (root / "short").mkdir(exist_ok=True)
            shutil.copy(make_video(cache / f"remote-360p-10s-{i}.mp4", 10, 360, 640, 30, seed=200 + i), root / rel)
            rels.append(rel)
        with RangeServer(root) as server:
            read = sparse_read(server, long_rel, root / long_rel, args.block_size)
            print(f"8 of 1800 frames over HTTP: {read['fetched_fraction']:.1%} of the file's bytes fetched "
                  f"({read['requests']} requests of {read['block_size']} B blocks); "
                  f"frames equal to a local decode: {read['frames_equal_local']}")  # fmt: skip
        speed = throughput(root, rels, Path(tmp), args.repeats)
        print(f"extraction, 8 frames/video: local {speed['local_videos_per_s']} videos/s, "
              f"HTTP {speed['http_videos_per_s']} videos/s ({speed['http_vs_local']}x)")  # fmt: skip
    result = {"cpu": cpu_model(), "sparse_read": read, "throughput": speed, "videos": args.videos}
    result["targets_met"] = read["fetched_fraction"] <= 0.40 and speed["http_vs_local"] >= 0.9
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
