"""``predict`` against ``extract`` on the same short clips, side by side (``python benchmarks/predict_throughput.py``).

Makes 200 short real clips as ``extract_throughput.py`` does (2 s, 320x240, a real photo panned by a camera,
H.264), then per round, one after the other with one encoder built once (so only the pipelines differ):
``extract`` of the clips into a fresh store (decoder processes, batches, HDF5 shards), and ``predict`` of the
same clips with a logreg head trained on a store of 20 of them (the same decoder processes and batches, then
pooling, the head and a CSV row per clip), the order swapped every round. Prints clips/s of each and the
ratio predict / extract (best round of each);
the last line printed is one JSON object with every figure. Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from extract_throughput import short_clips  # noqa: E402

from pipeline.config import Config  # noqa: E402
from pipeline.data.manifest import Manifest  # noqa: E402
from pipeline.extract.entry import extract  # noqa: E402
from pipeline.extract.local import cpu_count  # noqa: E402
from pipeline.probe.predict import predict_sources  # noqa: E402
from pipeline.probe.train import train_head  # noqa: E402
from pipeline.versions import cpu_model  # noqa: E402


def _extract(work: Path, manifest, cfg: Config, encoder, times: list[float], r: int) -> None:
    store = work / f"store{r}"
    shutil.rmtree(store, ignore_errors=True)
    started = time.perf_counter()
    (summary,) = extract(manifest, store, cfg, encoders=[encoder], progress=False)
    times.append(time.perf_counter() - started)
    assert summary.done == len(manifest.items), summary


def _predict(work: Path, manifest, cfg: Config, encoder, times: list[float], r: int) -> None:
    preds = work / f"preds{r}.csv"
    preds.unlink(missing_ok=True)
    started = time.perf_counter()
    out = predict_sources(work / "head.npz", [manifest.root], output=preds, encoder=encoder)
    times.append(time.perf_counter() - started)
    assert out["predicted"] == len(manifest.items), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=200, help="short clips to extract and predict (default 200)")
    ap.add_argument("--frames", type=int, default=8, help="frames sampled per clip (uniform; default 8)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is kept (default 2)")
    ap.add_argument("--encoder", default="effnet-lite0", help="encoder spec (default effnet-lite0, offline)")
    ap.add_argument("--device", default="cpu", help="where the encoder runs (default cpu)")
    ap.add_argument("--workdir", help="keep the clips here (default: a temporary folder)")
    args = ap.parse_args(argv)

    from pipeline.encoders import create_encoder

    work = Path(args.workdir or tempfile.mkdtemp(prefix="vidprobe-predict-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = short_clips(work, args.clips, distinct=20)
    cfg = Config()
    cfg.encoder, cfg.extract.device = args.encoder, args.device
    cfg.sampling.num_frames = args.frames
    encoder = create_encoder(args.encoder, device=args.device)
    print(
        f"{args.clips} clips x {args.frames} frames, {args.encoder} ({encoder.precision}) on {args.device}; "
        f"{cpu_model()}, {cpu_count()} cores",
        flush=True,
    )
    few = Manifest(manifest.root, manifest.items[:20])  # the head: trained on 20 of the clips, untimed
    extract(few, work / "train", cfg, encoders=[encoder], progress=False)
    train_head(work / "train", work / "head.npz")
    extract_s: list[float] = []
    predict_s: list[float] = []
    for r in range(args.rounds):
        runs = [(_extract, extract_s), (_predict, predict_s)]
        for run, times in runs if r % 2 == 0 else runs[::-1]:  # neither always goes first
            run(work, manifest, cfg, encoder, times, r)
        print(f"round {r + 1}: extract {extract_s[-1]:.1f} s, predict {predict_s[-1]:.1f} s", flush=True)
    ext, pre = args.clips / min(extract_s), args.clips / min(predict_s)
    print(
        f"extract {ext:.2f} clips/s ({ext * args.frames:.1f} frames/s), "
        f"predict {pre:.2f} clips/s ({pre * args.frames:.1f} frames/s): ratio {pre / ext:.3f} (target >= 0.9)"
    )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "clips": args.clips,
        "frames_per_clip": args.frames,
        "encoder": args.encoder,
        "precision": encoder.precision,
        "device": args.device,
        "cpu": cpu_model(),
        "cores": cpu_count(),
        "load_average": os.getloadavg()[0],
        "extract_s": extract_s,
        "predict_s": predict_s,
        "extract_clips_per_s": ext,
        "predict_clips_per_s": pre,
        "ratio": pre / ext,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
