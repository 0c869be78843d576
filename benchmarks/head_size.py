"""A head's sidecar and `vidprobe predict` time against its number of classes (`python benchmarks/head_size.py`).

Sets itself up first (not timed): renders two short H.264 clips, extracts them with a tiny open_clip model
built from a JSON config (random weights, 32-d: a 10,000-class logreg on 1280-d effnet features would take
hours to fit on two cores) to get a real store's provenance, then writes two stores with that provenance
and synthetic embeddings, 2 clips per class (one train, one test): 10 classes and ``--classes`` (10,000)
classes. A logreg head (``.npz``) is trained on each by ``train_head``.

Then, side by side for the two heads: the sidecar's and the head file's size, ``load_head`` in this
process (median of 5), and ``vidprobe predict HEAD one.mp4 --json`` end to end in a fresh process (median
of ``--repeats``, the two heads alternating) with that process's peak RSS. Targets (issue 28): the
10,000-class sidecar under 5 MB, and its predict under 2x the 10-class head's. The last line printed is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from predict_latency import _render  # noqa: E402  (this folder is on sys.path when run as a script)

from pipeline.versions import cpu_model  # noqa: E402

TINY = {  # a tiny open_clip ViT: 32-d embeddings
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# predict in a fresh process, reporting its own peak RSS on stderr (Linux's VmHWM, in KiB: unlike ru_maxrss it
# starts afresh at exec, so the parent's memory does not count)
PREDICT = (
    "import sys\nfrom pipeline.cli import main\nrc = main(sys.argv[1:])\n"
    "hwm = next(ln for ln in open('/proc/self/status') if ln.startswith('VmHWM'))\n"
    "print('MAXRSS', hwm.split()[1], file=sys.stderr)\nsys.exit(rc)"
)


def setup(work: Path, sizes: list[int]) -> tuple[dict[int, Path], Path]:
    """Heads of ``sizes`` classes trained on stores with a real extraction's provenance; one clip to predict."""
    import numpy as np

    from pipeline.cli import main
    from pipeline.probe.heads.settings import HeadConfig
    from pipeline.probe.train import train_head
    from pipeline.store import ShardWriter, create_or_open, open_store

    (work / "tiny.json").write_text(json.dumps(TINY))
    for j, photo in enumerate(("chelsea", "coffee")):
        _render(work / "videos" / photo / "v0.mp4", photo, seed=j, frames=24)
    one = _render(work / "one.mp4", "chelsea", seed=7, frames=24)
    args = ["-q", f"encoder=openclip:{work / 'tiny.json'}", "sampling.num_frames=2", "extract.num_workers=1"]
    if main(["extract", str(work / "videos"), "-o", str(work / "base"), *args]) != 0:
        raise SystemExit("setup: extraction failed")
    prov = open_store(work / "base").provenance
    prov = {k: v for k, v in prov.items() if k not in ("created", "schema_version")}
    rng = np.random.default_rng(0)
    heads = {}
    for k in sizes:
        store = create_or_open(work / f"store{k}", prov)
        centres = rng.normal(size=(k, int(prov["dim"]))).astype(np.float32)
        with ShardWriter(store) as w:
            for c in range(k):
                for j, split in enumerate(("train", "test")):
                    frames = centres[c] + 0.3 * rng.normal(size=(2, centres.shape[1])).astype(np.float32)
                    w.add(f"c{c}/v{j}.mp4", None, None, f"class{c:05d}", split, frames, np.array([0.0, 1.0]))
        heads[k] = work / f"head{k}.npz"
        t = time.perf_counter()
        train_head(work / f"store{k}", heads[k], head=HeadConfig(max_iter=50))
        print(f"  trained the {k}-class head in {time.perf_counter() - t:.1f} s", flush=True)
    return heads, one


def _predict(head: Path, video: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of ``vidprobe predict HEAD VIDEO --json`` in a fresh process."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT, "predict", str(head), str(video), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"predict {head.name}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    rss = next(int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("MAXRSS"))
    return wall, rss // 1024


def _load_seconds(head: Path) -> float:
    from pipeline.probe.heads.files import load_head

    times = []
    for _ in range(5):
        t = time.perf_counter()
        load_head(head)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=10_000, help="classes of the large head (default 10000)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process predicts per head (median; default 3)")
    args = ap.parse_args()
    sizes = [10, args.classes]
    with tempfile.TemporaryDirectory(prefix="vidprobe-head-size-") as tmp:
        work = Path(tmp)
        print("setting up (render clips, extract with a tiny open_clip model, train two logreg heads) ...", flush=True)
        heads, one = setup(work, sizes)
        side = {k: h.with_suffix(".json").stat().st_size for k, h in heads.items()}
        npz = {k: h.stat().st_size for k, h in heads.items()}
        load = {k: _load_seconds(h) for k, h in heads.items()}
        runs: dict[int, list[tuple[float, int]]] = {k: [] for k in sizes}
        for _ in range(max(1, args.repeats)):
            for k in sizes:
                runs[k].append(_predict(heads[k], one))
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    rss = {k: max(r for _, r in v) for k, v in runs.items()}
    small, large = sizes
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print(f"{'classes':>8s} {'sidecar':>11s} {'head .npz':>11s} {'load_head':>10s} {'predict':>9s} {'peak RSS':>9s}")
    for k in sizes:
        print(
            f"{k:8d} {side[k] / 1e6:8.3f} MB {npz[k] / 1e6:8.3f} MB {load[k]:8.3f} s {wall[k]:7.2f} s {rss[k]:6d} MiB"
        )
    ratio = wall[large] / wall[small]
    print(f"predict {large} / {small} classes: {ratio:.2f}x (target < 2x); sidecar {side[large] / 1e6:.2f} MB (< 5 MB)")
    print(
        json.dumps(
            {
                "benchmark": "head_size",
                "cpu": cpu_model(),
                "cores": os.cpu_count(),
                "repeats": args.repeats,
                **{f"sidecar_bytes_{k}": side[k] for k in sizes},
                **{f"head_bytes_{k}": npz[k] for k in sizes},
                **{f"load_head_s_{k}": round(load[k], 4) for k in sizes},
                **{f"predict_wall_s_{k}": round(wall[k], 3) for k in sizes},
                **{f"predict_peak_rss_mib_{k}": rss[k] for k in sizes},
                "predict_ratio": round(ratio, 3),
                "sidecar_under_5mb": side[large] < 5_000_000,
                "predict_under_2x": ratio < 2,
            }
        )
    )


if __name__ == "__main__":
    main()
