"""Single process vs Ray Data on this machine, per-stage rates, and the scaling model for N GPU nodes.

    python benchmarks/scaleout.py [--clips 64] [--videos CSV] [--gpu-fps 4000] [--gpus-per-node 8] [--cores-per-node 64]

Both engines extract the same videos (H.264 rendered from real photos by the demo builder, 360x360,
48 frames) with effnet-lite0 and T=8 uniform frames, each as the CLI a user runs (a fresh process,
fresh store), alternately, twice each (the machine is shared: compare the runs side by side). The
store is written in shards of ``SHARD_CLIPS`` clips whose file names carry their finish time, so each
run yields its steady rate (clips/s between the first and the last shard) apart from its start-up
(time to the first shard: interpreter, model load; for Ray also the cluster and its actors).

The scaling model uses per-stage rates measured here (decode per CPU core, the driver's store writes)
and the encoder rate of one GPU: measured when this runs on a GPU (``--device cuda``), otherwise the
``--gpu-fps`` you pass (printed as an assumption). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.data.manifest import load_manifest  # noqa: E402
from pipeline.demo.videos import build_demo_videos  # noqa: E402
from pipeline.encoders import create_encoder  # noqa: E402
from pipeline.extract.clips import load_clip  # noqa: E402
from pipeline.store import ShardWriter, create_or_open  # noqa: E402

SETTINGS = ["sampling.num_frames=8"]
SHARD_CLIPS = 4  # clips per store shard file in the engine runs: their finish times give the steady rate
FRAME_BYTES = 224 * 224 * 3  # one decoded, cropped uint8 frame as it travels to an encoder


def build_manifest(cache: Path, clips: int, videos: Path | None) -> tuple[Path, Path]:
    """(CSV of ``clips`` rows, root its paths are relative to): from ``videos`` (a CSV manifest of
    yours) or from the demo videos (both tasks)."""
    if videos is not None:
        root, lines = videos.resolve().parent, videos.read_text().splitlines()
        header, rows = lines[0], lines[1:]
    else:
        per_class = max(1, -(-clips // 12))
        csvs = build_demo_videos(cache, per_class=per_class, size=360, num_frames=48, progress=False)
        root, header = cache, "path,label,split"
        rows = [line for csv in csvs.values() for line in csv.read_text().splitlines()[1:]]
    out = cache / "bench.csv"
    out.write_text(header + "\n" + "\n".join(rows[:clips]) + "\n")
    return out, root


def run_cli(manifest: Path, root: Path, store: Path, engine: str) -> dict:
    """One CLI run in a fresh process; wall time, and the steady rate from the shard files' finish times."""
    import h5py

    shutil.rmtree(store, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "extract",
        str(manifest),
        "--root",
        str(root),
        "-o",
        str(store),
        "--json",
        "-q",
        "--engine",
        engine,
        *SETTINGS,
        f"extract.shard_size={SHARD_CLIPS}",
    ]
    t_start, t0 = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{engine} run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    shards = []  # (finish time, clips) per shard file; the name is PREFIX-<time_ns>-<id>.h5
    for f in (store / "shards").glob("*.h5"):
        with h5py.File(f, "r") as h:
            shards.append((int(f.name.split("-")[-2]) / 1e9, len(h["clips/video"])))
    shards.sort()
    steady_clips = sum(n for _, n in shards[1:])
    span = shards[-1][0] - shards[0][0] if len(shards) > 1 else float("nan")
    fpc = summary["frames"] / max(summary["done"], 1)
    return {
        "wall_s": wall,
        "clips": summary["done"],
        "frames": summary["frames"],
        "first_shard_s": shards[0][0] - t_start,
        "steady_clips_per_s": steady_clips / span,
        "steady_frames_per_s": steady_clips * fpc / span,
    }


def stage_rates(manifest: Path, root: Path, device: str, batch: int) -> dict:
    """Decode on one core (FFmpeg threads=1, no workers) and encode alone, in this process."""
    import torch

    cfg = load_config(None, SETTINGS)
    items = load_manifest(str(manifest), root=str(root)).items
    encoder = create_encoder("effnet-lite0", device=device)
    t0 = time.perf_counter()
    clips = [load_clip(item, cfg.sampling, encoder.preprocess_cfg, threads=1) for item in items]
    decode_s = time.perf_counter() - t0
    frames = np.concatenate([c.frames for c in clips])
    encoder.encode(frames[:batch])  # warm-up
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()

    def encode_rate() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(frames), batch):
            encoder.encode(frames[i : i + batch])
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()
        return len(frames) / (time.perf_counter() - t0)

    threads = torch.get_num_threads()
    rate = encode_rate()
    rate_1t = None
    if encoder.device.type == "cpu" and threads > 1:  # what a Ray CPU actor (num_cpus=1) gets
        torch.set_num_threads(1)
        rate_1t = encode_rate()
        torch.set_num_threads(threads)
    return {
        "decode_clips_per_s_per_core": len(clips) / decode_s,
        "decode_frames_per_s_per_core": len(frames) / decode_s,
        "encode_frames_per_s": rate,
        "encode_frames_per_s_1_thread": rate_1t,
        "encode_device": encoder.device.type,
        "encode_threads": threads,
        "frames_per_clip": len(frames) / len(clips),
        "dim": encoder.dim,
    }


def write_rate(tmp: Path, dim: int, frames_per_clip: int, n: int = 2000) -> float:
    """Clips/s one driver stores through ShardWriter (what bounds the Ray driver)."""
    store = create_or_open(
        tmp / "write-bench", {"encoder": "bench", "weights_id": "x", "dim": dim, "preprocess": {}, "sampling": {}}
    )
    emb = np.random.default_rng(0).normal(size=(frames_per_clip, dim)).astype(np.float32)
    ts = np.arange(frames_per_clip, dtype=np.float64)
    t0 = time.perf_counter()
    with ShardWriter(store, shard_size=512) as w:
        for i in range(n):
            w.add(f"v{i}.mp4", None, None, "l", "train", emb, ts)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=64, help="videos to extract in each run")
    ap.add_argument(
        "--videos", type=Path, help="a CSV manifest of your own videos to measure on (default: rendered demo videos)"
    )
    ap.add_argument("--device", default="auto", help="device for the encoder stage measurement (auto|cpu|cuda)")
    ap.add_argument(
        "--gpu-fps", type=float, default=4000.0, help="encoder frames/s of one GPU for the model when not measured here"
    )
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--cores-per-node", type=int, default=64)
    ap.add_argument("--skip-ray", action="store_true", help="only the single-process engine (no Ray installed)")
    args = ap.parse_args()

    figures: dict = {
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg()[0],
        "clips": args.clips,
        "frames_per_clip_setting": 8,
    }
    with tempfile.TemporaryDirectory(prefix="vidprobe-scaleout-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "videos").mkdir()
        full, root = build_manifest(tmp / "videos", args.clips, args.videos)
        set_name = str(args.videos) if args.videos else "360x360 H.264 demo videos (2 s)"
        engines = ["local"] + ([] if args.skip_ray else ["ray"])

        print(
            f"# engines on this machine ({os.cpu_count()} CPUs, load {figures['load_avg_start']:.1f}): "
            f"effnet-lite0, T=8, {args.clips} clips of {set_name}; whole CLI runs, alternating"
        )
        print(
            f"{'engine':8s} {'run':>3s} {'wall s':>7s} {'clips/s':>8s} "
            f"{'first shard s':>14s} {'steady clips/s':>15s} {'steady frames/s':>16s}"
        )
        runs: dict[str, list[dict]] = {e: [] for e in engines}
        for rep in range(2):
            for engine in engines:
                r = run_cli(full, root, tmp / f"store-{engine}-{rep}", engine)
                runs[engine].append(r)
                print(
                    f"{engine:8s} {rep + 1:3d} {r['wall_s']:7.1f} {r['clips'] / r['wall_s']:8.2f} "
                    f"{r['first_shard_s']:14.1f} {r['steady_clips_per_s']:15.2f} {r['steady_frames_per_s']:16.1f}"
                )
                for key in ("wall_s", "first_shard_s", "steady_clips_per_s", "steady_frames_per_s"):
                    figures[f"{engine}_run{rep + 1}_{key}"] = round(r[key], 3)
        for engine in engines:
            figures[f"{engine}_steady_clips_per_s"] = round(
                float(np.mean([r["steady_clips_per_s"] for r in runs[engine]])), 3
            )
            figures[f"{engine}_wall_s"] = round(float(np.mean([r["wall_s"] for r in runs[engine]])), 2)
        if not args.skip_ray:
            figures["ray_over_local_steady"] = round(
                figures["ray_steady_clips_per_s"] / figures["local_steady_clips_per_s"], 3
            )
            figures["ray_over_local_whole_run"] = round(figures["local_wall_s"] / figures["ray_wall_s"], 3)
            print(
                f"ray/local throughput (mean of the runs): steady {figures['ray_over_local_steady']:.2f}x, "
                f"whole run of {args.clips} clips {figures['ray_over_local_whole_run']:.2f}x"
            )

        stages = stage_rates(full, root, args.device, batch=32)
        w_rate = write_rate(tmp, stages["dim"], int(round(stages["frames_per_clip"])))
    figures.update({k: (round(v, 2) if isinstance(v, float) else v) for k, v in stages.items()})
    figures["driver_write_clips_per_s"] = round(w_rate, 1)
    print("\n# stages alone, in one process")
    print(
        f"decode, 1 core (FFmpeg threads=1): {stages['decode_clips_per_s_per_core']:.2f} clips/s = "
        f"{stages['decode_frames_per_s_per_core']:.1f} sampled frames/s"
    )
    print(
        f"encode on {stages['encode_device']} ({stages['encode_threads']} "
        f"threads, batch 32): {stages['encode_frames_per_s']:.1f} frames/s"
    )
    if stages["encode_frames_per_s_1_thread"]:
        print(f"encode on cpu (1 thread, as in a Ray CPU actor): {stages['encode_frames_per_s_1_thread']:.1f} frames/s")
    print(
        f"driver store writes (ShardWriter, T={int(round(stages['frames_per_clip']))} "
        f"x {stages['dim']} float32): {w_rate:.0f} clips/s"
    )

    # -- the scaling model --------------------------------------------------------------------------
    measured_gpu = stages["encode_device"] == "cuda"
    gpu_fps = stages["encode_frames_per_s"] if measured_gpu else args.gpu_fps
    d = stages["decode_frames_per_s_per_core"]
    fpc = stages["frames_per_clip"]
    cores_per_gpu = gpu_fps / d
    g, c = args.gpus_per_node, args.cores_per_node
    writer_fps = w_rate * fpc
    figures.update(
        {
            "model_gpu_fps": gpu_fps,
            "model_gpu_fps_measured": measured_gpu,
            "model_decode_cores_per_gpu": round(cores_per_gpu, 1),
            "model_gpus_per_node": g,
            "model_cores_per_node": c,
            "model_object_store_MB_s_per_gpu": round(gpu_fps * FRAME_BYTES / 1e6, 1),
        }
    )
    print("\n# scaling model: throughput = min(GPUs x encode, decode cores x decode/core, one driver's writes)")
    print(
        f"GPU encode rate {gpu_fps:.0f} frames/s "
        f"({'measured here' if measured_gpu else 'ASSUMED (--gpu-fps); run this on a GPU node to measure it'})"
    )
    print(
        f"decode cores needed per GPU = {gpu_fps:.0f} / {d:.1f} = {cores_per_gpu:.1f} (decode cost depends on the "
        "videos: measure on yours with --videos); frames into each GPU's actor: "
        f"{figures['model_object_store_MB_s_per_gpu']:.0f} MB/s through Ray's object store"
    )
    print(
        f"one driver writes {writer_fps:.0f} frames/s = the store-side "
        "ceiling of one Ray job (beyond it: job shards, one Ray job each)"
    )
    print(
        f"{'nodes':>5s} {'GPUs':>5s} {'frames/s':>10s} {'bound by':>9s} {'650k clips (K700) at this decode cost':>38s}"
    )
    model_rows = []
    for n in (1, 2, 4, 8, 16, 32):
        limits = {
            "GPU": n * g * gpu_fps,
            "decode": n * max(c - g, 1) * d,
            "driver": writer_fps,
        }  # one core per encoder actor
        bound = min(limits, key=limits.get)
        fps = limits[bound]
        hours = 650_000 * fpc / fps / 3600
        model_rows.append({"nodes": n, "frames_per_s": round(fps), "bound": bound, "k700_hours": round(hours, 2)})
        print(f"{n:5d} {n * g:5d} {fps:10.0f} {bound:>9s} {hours:36.2f} h")
    figures["model"] = model_rows
    figures["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
