"""How long `vidprobe predict` takes to answer, each run in a fresh process (`python benchmarks/predict_latency.py`).

Sets itself up first (not timed): renders short H.264 clips of two photographs panned by a moving camera,
extracts them into a tiny store with the offline encoder (``effnet-lite0``) and trains a logreg head
(``.npz``) on it. Then, each in a new Python process, median of ``--repeats`` runs:

* ``python -c pass``: the interpreter's own start;
* ``vidprobe predict HEAD missing.mp4``: a mistake (must answer in well under a second, torch never imported);
* ``vidprobe predict HEAD one.mp4``: one 8-frame clip, end to end (target: <= 5 s on 2 cores);
* ``vidprobe predict HEAD`` with 4 clips: the model is built once, so the extra clips cost only their
  decode and encode;
* a breakdown of one clip, by a child that runs predict's own steps with timers: vidprobe imports, head
  load, decoder start, ``import torch``, model build, waiting for decoded frames, encode, head; plus the
  clip decoded alone (not overlapped), for reference.

Timings depend on the load: the JSON records the load average and the CPU model. ``--quick``: one repeat.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.versions import cpu_model  # noqa: E402

BREAKDOWN = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from pipeline import cli  # noqa: F401  (what `vidprobe` imports first)
from pipeline.config import ExtractConfig, SamplingConfig
from pipeline.probe.heads.files import load_head
from pipeline.probe.pooling import get_pool
t1 = time.perf_counter()
head = load_head(sys.argv[1])
t2 = time.perf_counter()
from pipeline.encoders.base import Preprocess
from pipeline.extract.clips import VideoDecoder
meta = head.meta
sampling = SamplingConfig(**meta["sampling"])
decoder = VideoDecoder([(sys.argv[2], None, None)], sampling, Preprocess.from_dict(meta["preprocess"]),
                       timeout=ExtractConfig().decode_timeout)
t3 = time.perf_counter()
import torch  # noqa: F401
t4 = time.perf_counter()
from pipeline.encoders import create_encoder
encoder = create_encoder(meta["encoder"])
t5 = time.perf_counter()
encode_s = 0.0
def encode(frames):
    global encode_s
    s = time.perf_counter()
    out = encoder.encode(frames)
    encode_s += time.perf_counter() - s
    return out
((_, clips),) = decoder.embedded(encode)
decoder.close()
t6 = time.perf_counter()
proba = head.predict_proba(np.stack([get_pool(meta["pool"])(c.frames) for _, _, c in clips]))
t7 = time.perf_counter()
s = time.perf_counter()
reference = VideoDecoder([(sys.argv[2], None, None)], sampling, encoder.preprocess_cfg, timeout=None)
list(reference.embedded(lambda f: f.numpy().copy()))  # a copy: the batch is in a reused buffer
reference.close()
decode_alone = time.perf_counter() - s
print(json.dumps({
    "import_vidprobe_s": t1 - t0, "head_load_s": t2 - t1, "decoder_start_s": t3 - t2, "import_torch_s": t4 - t3,
    "model_build_s": t5 - t4, "wait_for_frames_s": (t6 - t5) - encode_s, "encode_s": encode_s, "head_s": t7 - t6,
    "total_in_process_s": t7 - t0, "decode_alone_in_process_s": decode_alone, "frames": int(len(clips[0][2].frames)),
}))
"""


def _render(path: Path, photo: str, seed: int, frames: int = 48, size: tuple[int, int] = (320, 240)) -> Path:
    """A camera panning across a real photograph, H.264 at 12 fps."""
    import av
    import numpy as np
    from skimage import data as skdata

    img = np.asarray(getattr(skdata, photo)())
    img = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
    rng = np.random.default_rng(seed)
    w, h = size
    x0, y0 = int(rng.integers(0, img.shape[1] - w - frames)), int(rng.integers(0, img.shape[0] - h))
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            frame = np.ascontiguousarray(img[y0 : y0 + h, x0 + i : x0 + i + w, :3])
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def setup(work: Path) -> dict[str, Path]:
    """Clips, a store extracted with the offline encoder, and an .npz head trained on it (not timed)."""
    from pipeline.cli import main

    for k, photo in enumerate(("chelsea", "coffee")):
        for j in range(4):
            _render(work / "videos" / photo / f"v{j}.mp4", photo, seed=10 * k + j)
    clips = [_render(work / f"new{j}.mp4", ("chelsea", "coffee")[j % 2], seed=100 + j) for j in range(4)]
    quiet = ["-q", "sampling.num_frames=8", "extract.num_workers=1"]
    if main(["extract", str(work / "videos"), "-o", str(work / "store"), *quiet]) != 0:
        raise SystemExit("setup: extraction failed")
    if main(["train", str(work / "store"), "-o", str(work / "head.npz"), "--test-fraction", "0.25"]) != 0:
        raise SystemExit("setup: training failed")
    return {"head": work / "head.npz", "one": clips[0], "clips": clips}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _wall(cmd: list[str], expect: int, cpu: list[float] | None = None) -> float:
    """Wall seconds of ``cmd`` in a new process; its CPU seconds (with its own children) go to ``cpu``."""
    c, t = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if cpu is not None:
        cpu.append(_children_cpu() - c)
    if proc.returncode != expect:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}, expected {expect}: {proc.stderr.strip()[-500:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per measurement (median reported; default 3)")
    ap.add_argument("--quick", action="store_true", help="one run of each (smoke test)")
    args = ap.parse_args()
    repeats = 1 if args.quick else max(1, args.repeats)
    py = sys.executable
    vp = [py, "-m", "pipeline", "predict"]
    with tempfile.TemporaryDirectory(prefix="vidprobe-predict-") as tmp:
        work = Path(tmp)
        print("setting up (render clips, extract a tiny store, train an .npz head) ...", flush=True)
        s = setup(work)
        load_before = os.getloadavg()
        runs: dict[str, list[float]] = {"python_start": [], "missing": [], "one_clip": [], "four_clips": []}
        cpu: dict[str, list[float]] = {k: [] for k in runs}
        parts: list[dict[str, float]] = []
        for _ in range(repeats):
            runs["python_start"].append(_wall([py, "-c", "pass"], 0, cpu["python_start"]))
            runs["missing"].append(_wall([*vp, str(s["head"]), str(work / "missing.mp4")], 3, cpu["missing"]))
            runs["one_clip"].append(_wall([*vp, str(s["head"]), str(s["one"])], 0, cpu["one_clip"]))
            runs["four_clips"].append(_wall([*vp, str(s["head"]), *map(str, s["clips"])], 0, cpu["four_clips"]))
            proc = subprocess.run(
                [py, "-c", BREAKDOWN, str(s["head"]), str(s["one"])], cwd=REPO, capture_output=True, text=True
            )
            if proc.returncode:
                raise SystemExit(f"breakdown child failed: {proc.stderr.strip()[-800:]}")
            parts.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    breakdown = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    cpu = cpu_model()
    print(f"CPU: {cpu}, {os.cpu_count()} cores; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"median of {repeats} fresh-process run(s): wall s, CPU s (process and its decoder worker)")
    notes = {"missing": "(target < 1 s)", "one_clip": "(target <= 5 s)", "four_clips": "(model built once)"}
    names = {
        "python_start": "python -c pass",
        "missing": "vidprobe predict HEAD missing.mp4",
        "one_clip": "vidprobe predict HEAD one.mp4",
        "four_clips": "vidprobe predict HEAD 4 clips",
    }
    for k, name in names.items():
        print(f"  {name:36s} {med[k]:6.2f} {med_cpu[k]:6.2f}   {notes.get(k, '')}")
    print("breakdown of one clip (predict's own steps in a fresh process; decoding overlaps the torch import):")
    for k, v in breakdown.items():
        if k != "frames":
            print(f"  {k:28s} {v:6.2f}")
    print(
        json.dumps(
            {
                "benchmark": "predict_latency",
                "cpu": cpu,
                "cores": os.cpu_count(),
                "loadavg_before": load_before[0],
                "loadavg_after": load_after[0],
                "repeats": repeats,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE (set by vidprobe)"),
                **{f"{k}_wall_s": round(v, 3) for k, v in med.items()},
                **{f"{k}_cpu_s": round(v, 3) for k, v in med_cpu.items()},
                "breakdown_s": {k: round(v, 3) if k != "frames" else int(v) for k, v in breakdown.items()},
                "target_missing_lt_1s": med["missing"] < 1.0,
                "target_one_clip_le_5s": med["one_clip"] <= 5.0,
            }
        )
    )


if __name__ == "__main__":
    main()
