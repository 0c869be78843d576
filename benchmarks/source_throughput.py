"""Extraction throughput by source kind, side by side on the same videos: local files, local WebDataset
shards (written with the ``webdataset`` package in video2dataset's layout), the same shards served over
localhost HTTP (``tests/servers.py``: a server honouring Range requests) and JPEG frame folders (every
frame of each video dumped with PyAV).

``python benchmarks/source_throughput.py`` encodes ``--videos N`` real H.264 videos (``--seconds`` s,
``--size WxH``, 25 fps, GOP 25), writes them as the four sources, and for each measures two things, best
of ``--rounds`` runs, the sources interleaved within each round and each round starting at the next source,
so the machine's drift and the first run's warm-up hit all alike:

* decode: the frames sampling asks for (``--num-frames`` uniform), read by ``extract.readers.open_reader``
  and resized to 224 px, in one process as a decoder process reads them (inside
  ``data.webdataset.shards_kept_open``: a shard opened once for its samples), the reader's own cost, no
  encoder; for the HTTP shards also the server's requests per sample;
* extract: a whole extraction with the offline encoder (``effnet-lite0``) into a fresh store.

It prints per source frames/s and the ratio to local files (issue 27's target for local and HTTP shards: >= 0.9x); the
last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from media import pattern_frames, write_video  # noqa: E402
from servers import RangeServer  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.data.manifest import load_manifest  # noqa: E402
from pipeline.data.sampling import sample_timestamps  # noqa: E402
from pipeline.data.webdataset import shards_kept_open  # noqa: E402
from pipeline.encoders import create_encoder  # noqa: E402
from pipeline.extract.entry import extract  # noqa: E402
from pipeline.extract.readers import open_reader  # noqa: E402
from pipeline.versions import cpu_model  # noqa: E402

FPS = 25


def make_sources(base: Path, n: int, seconds: float, width: int, height: int) -> dict[str, str]:
    """The same videos as files, shards (8 samples each) and JPEG frame folders; source name -> argument."""
    import av
    import webdataset as wds

    files = []
    for i in range(n):
        frames = pattern_frames(int(seconds * FPS), height=height, width=width, kind=i % 2, seed=i)
        files.append(write_video(base / "files" / f"class{i % 2}" / f"v{i:03d}.mp4", frames, fps=FPS, gop=FPS))
    (base / "shards").mkdir()
    for s in range(0, n, 8):
        with wds.TarWriter(str(base / "shards" / f"{s // 8:05d}.tar")) as sink:
            for i, f in enumerate(files[s : s + 8], start=s):
                sink.write({"__key__": f"{i:08d}", "mp4": f.read_bytes(), "json": b'{"label": "%d"}' % (i % 2)})
    for f in files:
        folder = base / "frames" / f.parent.name / f.stem
        folder.mkdir(parents=True)
        with av.open(str(f)) as src:
            for j, frame in enumerate(src.decode(video=0), start=1):
                _save_jpeg(frame, folder / f"{j:05d}.jpg")
    last = (n - 1) // 8
    return {
        "files": str(base / "files"),
        "shards": str(base / "shards" / (f"{{00000..{last:05d}}}.tar" if last else "00000.tar")),
        "frames": str(base / "frames"),
    }


def _save_jpeg(frame, path: Path) -> None:
    import av

    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("mjpeg", options={"qmin": "2", "qmax": "2"})
        stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuvj420p"
        img = frame.reformat(format="yuvj420p")
        img.pts = None
        for packet in [*stream.encode(img), *stream.encode(None)]:
            out.mux(packet)


def decode_rate(source: str, cfg, served=lambda: 0) -> tuple[float, int]:
    """(frames/s of reading the sampled frames of every item of ``source``, resized to 224 px, the requests
    ``served()`` counts meanwhile)."""
    manifest = load_manifest(source)
    start, frames, before = time.perf_counter(), 0, served()
    with shards_kept_open():  # as a decoder process reads a shard's samples, one after another
        for item in manifest.items:
            with open_reader(item.location, frame_rate=FPS) as reader:
                times = sample_timestamps(cfg.sampling, 0.0, reader.info.duration)
                for chunk in reader.iter_frames(times, size=lambda h, w: (224, 224)):
                    frames += len(chunk.timestamps)
    return frames / (time.perf_counter() - start), served() - before


def extract_rate(source: str, store: Path, cfg, encoder) -> float:
    (summary,) = extract(load_manifest(source), store, cfg, encoders=[encoder], progress=False)
    assert summary.failed == 0, summary.failures
    return summary.frames / summary.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--num-frames", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    cfg = load_config(None, [f"sampling.num_frames={args.num_frames}", f"sampling.frame_rate={FPS}"])
    encoder = create_encoder("effnet-lite0", device="cpu")
    best: dict[str, dict[str, float]] = {"decode": {}, "extract": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sources = make_sources(Path(tmp), args.videos, args.seconds, width, height)
        server = RangeServer(Path(tmp)).__enter__()
        shards = Path(sources["shards"]).relative_to(tmp).as_posix()
        sources = {
            "files": sources["files"],
            "shards": sources["shards"],
            "http-shards": server.url(shards),
            "frames": sources["frames"],
        }
        names = list(sources)
        requests: list[float] = []  # the HTTP server's requests per sample while the HTTP shards decode
        for r in range(args.rounds):  # each round starts at another source: warm-up hits all alike
            for name in names[r % len(names) :] + names[: r % len(names)]:
                source = sources[name]
                decoded, served = decode_rate(source, cfg, lambda: sum(server.requests.values()))
                if name == "http-shards":
                    requests.append(served / args.videos)
                rates = {
                    "decode": decoded,
                    "extract": extract_rate(source, Path(tmp) / f"store-{name}-{r}", cfg, encoder),
                }
                for what, rate in rates.items():
                    best[what][name] = max(best[what].get(name, 0.0), rate)
        server.__exit__()
    print(
        f"{args.videos} videos {width}x{height}, {args.seconds:g} s at {FPS} fps, {args.num_frames} uniform frames; "
        f"CPU: {cpu_model()}; best of {args.rounds}"
    )
    ratios = {what: {k: v / rates["files"] for k, v in rates.items()} for what, rates in best.items()}
    for what, rates in best.items():
        line = " | ".join(f"{k} {v:.1f} frames/s ({ratios[what][k]:.2f}x)" for k, v in rates.items())
        print(f"{what:8s} {line}")
    print(f"http-shards decode: {min(requests):.2f} requests per sample (a HEAD per shard, then ranged GETs)")
    print(
        json.dumps(
            {
                "videos": args.videos,
                "size": args.size,
                "num_frames": args.num_frames,
                "cpu": cpu_model(),
                "frames_per_s": best,
                "ratio_to_files": ratios,
                "shards_extract_ratio": round(ratios["extract"]["shards"], 3),
                "http_shards_extract_ratio": round(ratios["extract"]["http-shards"], 3),
                "http_shards_decode_ratio": round(ratios["decode"]["http-shards"], 3),
                "http_shards_decode_requests_per_sample": round(min(requests), 3),
            }
        )
    )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
