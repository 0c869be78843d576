"""Extraction throughput against its own ceilings, in one run (``python benchmarks/extract_throughput.py``).

Makes its own H.264 test videos (720p and 360p, GOP 30 and 250; a real photo panned by a moving camera,
with sensor-like noise, encoded with x264 ``superfast`` so B-frames and CABAC are in play), then measures
on this machine, side by side:

1. per workload (dense = ``fps`` sampling, sparse = 8 uniform frames per clip):
   decode-only frames/s (the engine's decoder processes, one per core, frames discarded),
   encode-only frames/s (the encoder on already decoded frames, every core),
   end-to-end frames/s (``pipeline.extract.local`` with default settings, ``precision: auto``, into a
   fresh store; and with fp32 where auto chose bf16), each stage's CPU seconds per frame alone, and
   end-to-end against the bound ``cores / (decode CPU-s + encode CPU-s per frame)`` (a real upper bound
   when both stages share the CPU; 1/(1/decode + 1/encode) is not one) and against min(decode, encode)
   (the bound when the encoder runs on a GPU); which native bf16 support (AMX-BF16, AVX512-BF16) the
   CPU has, and the encoder alone in fp32 and bf16 (effnet-lite0, open_clip ViT-B-32 with random
   weights) side by side with their cosine;
2. one 60 s 720p GOP-30 clip: 8 sampled frames (exact, and ``seek_mode: keyframe``) vs decoding all its
   frames, and the same on the long-GOP clip;
3. peak RSS of an extraction of 100 vs 1000 short clips (each run in its own process; main process
   peak from getrusage, whole process tree from /proc samples).

Default sizes keep the run to a few minutes on a 2-core CPU; ``--full`` uses the issue's sizes (10-60 s
videos of every kind, longer workloads). The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import Config, SamplingConfig, load_config  # noqa: E402
from pipeline.data.manifest import Manifest, VideoItem  # noqa: E402
from pipeline.data.sampling import snap_to_keyframes, uniform_timestamps  # noqa: E402
from pipeline.extract.decode import VideoReader  # noqa: E402
from pipeline.extract.entry import extract  # noqa: E402
from pipeline.extract.local import cpu_count, resolve_runtime  # noqa: E402
from pipeline.extract.workers import ClipTask, DecodePool, Failed, Frames  # noqa: E402
from pipeline.versions import cpu_model  # noqa: E402

RENDER_VERSION = 1


# -- test videos -------------------------------------------------------------------------------------


def _photo(height: int, width: int) -> np.ndarray:
    from PIL import Image
    from skimage import data as skdata

    img = Image.fromarray(skdata.coffee())  # a real photo: texture and edges like real footage
    return np.asarray(img.resize((int(width * 1.6), int(height * 1.6)), Image.Resampling.BICUBIC))


def make_video(path: Path, seconds: float, height: int, width: int, gop: int, fps: int = 30, seed: int = 0) -> Path:
    """A camera panning over a photo, with noise, H.264 (x264 superfast: B-frames, CABAC), given GOP."""
    import av

    if path.exists():
        return path
    big = _photo(height, width)
    rng = np.random.default_rng(seed)
    noise = rng.integers(-5, 6, size=(5, height, width, 3), dtype=np.int16)
    H, W = big.shape[:2]
    tmp = path.with_suffix(".tmp" + path.suffix)
    with av.open(str(tmp), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = gop
        s.options = {"preset": "superfast", "crf": "23", "keyint_min": str(gop), "sc_threshold": "0"}
        for i in range(int(seconds * fps)):
            x = int((W - width) * (0.5 + 0.5 * np.sin(i / 90 + seed)))
            y = int((H - height) * (0.5 + 0.5 * np.cos(i / 130 + seed)))
            frame = np.clip(big[y : y + height, x : x + width].astype(np.int16) + noise[i % 5], 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    tmp.rename(path)
    return path


def video_set(root: Path, full: bool) -> dict[str, Path]:
    """name -> path. Default: the 60 s 720p GOP-30 clip the issue asks about, plus shorter others."""
    specs = {  # name: (seconds, height, width, gop)
        "720p_gop30_60s": (60, 720, 1280, 30),
        "720p_gop250_20s": (20, 720, 1280, 250),
        "360p_gop30_20s": (20, 360, 640, 30),
        "360p_gop250_20s": (20, 360, 640, 250),
    }
    if full:
        specs.update(
            {
                "720p_gop250_60s": (60, 720, 1280, 250),
                "720p_gop30_10s": (10, 720, 1280, 30),
                "360p_gop30_60s": (60, 360, 640, 30),
                "360p_gop250_60s": (60, 360, 640, 250),
                "360p_gop30_10s": (10, 360, 640, 30),
            }
        )
    out = {}
    for i, (name, (sec, h, w, gop)) in enumerate(specs.items()):
        out[name] = make_video(root / f"{name}-v{RENDER_VERSION}.mp4", sec, h, w, gop, seed=i)
    return out


def short_clips(root: Path, n: int, distinct: int = 10) -> Manifest:
    """``n`` short clips (2 s, 320x240): ``distinct`` real files, hard-linked under ``n`` names."""
    src = [make_video(root / f"short{i}-v{RENDER_VERSION}.mp4", 2, 240, 320, 30, seed=100 + i) for i in range(distinct)]
    folder = root / f"short_x{n}"
    if not (folder / f"c{n - 1:05d}.mp4").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i in range(n):
            os.link(src[i % distinct], folder / f"c{i:05d}.mp4")
    return Manifest(
        folder.resolve(), [VideoItem(f"c{i:05d}.mp4", str(folder.resolve()), label=f"l{i % 2}") for i in range(n)]
    )


# -- workloads ---------------------------------------------------------------------------------------


def workload(videos: dict[str, Path], kind: str, full: bool) -> tuple[Manifest, SamplingConfig]:
    """dense: every video whole at a fixed fps. sparse: 10 s windows (staggered sets), 8 frames each."""
    root = Path(next(iter(videos.values()))).parent.resolve()
    items = []
    if kind == "dense":
        for p in videos.values():
            items.append(VideoItem(p.name, str(root)))
        return Manifest(root, items), SamplingConfig(strategy="fps", fps=2.0 if not full else 8.0)
    offsets = (0.0, 5.0) if not full else (0.0, 1.25, 2.5, 3.75, 5.0, 6.25, 7.5, 8.75)
    for p in videos.values():
        with VideoReader(p) as r:
            duration = r.info.duration
        for off in offsets:
            s = off
            while s + 10.0 <= duration + 1e-6:
                items.append(VideoItem(p.name, str(root), start=s, end=s + 10.0))
                s += 10.0
    return Manifest(root, items), SamplingConfig(strategy="uniform", num_frames=8)


def _cpu_now() -> float:
    """CPU seconds of this process (all threads) and its live descendants (decoder processes, which the
    forkserver starts: not our children, so getrusage(RUSAGE_CHILDREN) would miss them)."""
    return sum(cpu for _, cpu in _tree_stats(os.getpid()).values())


def decode_only(
    manifest: Manifest, sampling: SamplingConfig, preprocess, workers: int, keep: bool
) -> tuple[float, int, list[np.ndarray], float]:
    """(frames/s, frames, kept frames, CPU seconds per frame of the whole decode stage)."""
    tasks = [ClipTask(i, str(it.abspath), it.start, it.end) for i, it in enumerate(manifest.items)]
    kept, frames = [], 0
    t0 = time.perf_counter()
    with DecodePool(
        sampling, preprocess, num_workers=workers, threads=1, timeout=600, chunk=32, max_messages=16
    ) as pool:
        c0 = None
        for msg in pool.messages(tasks):
            if isinstance(msg, Frames):
                if c0 is None:  # from the first frames on: worker start-up is not a per-frame cost
                    c0, n0 = _cpu_now(), frames + len(msg.frames)
                frames += len(msg.frames)
                if keep:
                    kept.append(msg.frames)
            elif isinstance(msg, Failed):
                raise RuntimeError(msg.error)
        wall, c1 = time.perf_counter() - t0, _cpu_now()  # before the workers exit
    return frames / wall, frames, kept, (c1 - c0) / max(frames - n0, 1) if c0 is not None else float("nan")


def encode_only(encoder, frames: list[np.ndarray] | np.ndarray, batch: int, threads: int) -> tuple[float, float]:
    """(frames/s, CPU seconds per frame) of the encoder alone on already decoded frames."""
    import torch

    allf = np.concatenate(frames) if isinstance(frames, list) else frames
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        encoder.encode(allf[:batch])  # warm-up (allocator, oneDNN kernels)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(allf), batch):
            encoder.encode(allf[i : i + batch])
        return len(allf) / (time.perf_counter() - t0), (time.process_time() - c0) / len(allf)
    finally:
        torch.set_num_threads(old)


def precision_pair(spec: str, frames: np.ndarray, batch: int, threads: int, budget_s: float = 20.0) -> dict:
    """The encoder's fp32 and bf16 (weights and inputs) rates side by side, and bf16 vs fp32 cosine.

    Same random weights for both (seeded) when the spec has none. bf16 without native support can be
    10x+ slower, so frames are capped to what fits ``budget_s`` at the measured first-batch rate.
    """
    import warnings

    import torch

    from pipeline.encoders import create_encoder

    out: dict = {"spec": spec}
    embs = {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the slow-bf16 warning: this is what we measure
            enc = create_encoder(spec, device="cpu", precision=prec)
        x = frames  # the encoder resizes/crops frames not already at its input size
        t0 = time.perf_counter()
        enc.encode(x[:batch])
        first = (time.perf_counter() - t0) / min(batch, len(x))
        n = int(max(batch, min(len(x), budget_s / max(first, 1e-6)) // batch * batch))
        rate, cpu = encode_only(enc, x[:n], batch, threads)
        embs[prec] = enc.encode(x[: min(len(x), 16)])
        out[prec] = {"img_per_s": rate, "cpu_s_per_img": cpu, "frames": n}
        del enc
    a, b = embs["fp32"], embs["bf16"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    out["bf16_over_fp32"] = out["bf16"]["img_per_s"] / out["fp32"]["img_per_s"]
    out["min_cosine_bf16_fp32"] = float(cos.min())
    return out


def end_to_end(
    manifest: Manifest, sampling: SamplingConfig, encoder, cfg: Config, store: Path
) -> tuple[float, int, dict]:
    shutil.rmtree(store, ignore_errors=True)
    cfg = Config(cfg.encoder, sampling, cfg.extract)
    (summary,) = extract(manifest, store, cfg, encoders=[encoder], progress=False)
    if summary.failed:
        raise RuntimeError(f"end-to-end run had failures: {summary.failures[:3]}")
    return summary.frames / summary.seconds, summary.frames, summary.to_dict()


# -- sparse vs full decode -----------------------------------------------------------------------------


def sparse_vs_full(path: Path, preprocess, repeats: int = 2) -> dict[str, float]:
    def timed(times_fn, keyframes_only=False) -> tuple[float, int]:
        best, decoded = float("inf"), 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            with VideoReader(path, threads=1) as r:
                wanted = times_fn(r)
                sum(  # drain the iterator: the decoding is what is timed
                    len(c.frames)
                    for c in r.iter_frames(wanted, size=preprocess.frame_size, keyframes_only=keyframes_only)
                )
                decoded = r.stats.decoded
            best = min(best, time.perf_counter() - t0)
        return best, decoded

    full_s, full_dec = timed(lambda r: r.frame_times())
    sparse_s, sparse_dec = timed(lambda r: uniform_timestamps(0, r.info.duration, 8))
    key_s, key_dec = timed(
        lambda r: snap_to_keyframes(uniform_timestamps(0, r.info.duration, 8), r.keyframe_times()), True
    )
    return {
        "full_s": full_s,
        "full_decoded": full_dec,
        "sparse8_s": sparse_s,
        "sparse8_decoded": sparse_dec,
        "keyframe8_s": key_s,
        "keyframe8_decoded": key_dec,
        "sparse_speedup": full_s / sparse_s,
        "keyframe_speedup": full_s / key_s,
    }


# -- peak RSS in separate processes -------------------------------------------------------------------


def _tree_stats(root_pid: int) -> dict[int, tuple[int, float]]:
    """(RSS bytes, CPU seconds) of ``root_pid`` and each of its descendants, from /proc (no psutil)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid, pages, cpu = int(fields[1]), int(fields[21]), (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        stats[int(entry)] = (pages * os.sysconf("SC_PAGE_SIZE"), cpu)
    out, stack = {}, [root_pid]
    while stack:
        pid = stack.pop()
        out[pid] = stats.get(pid, (0, 0.0))
        stack.extend(children.get(pid, []))
    return out


def _tree_rss(root_pid: int) -> dict[int, int]:
    return {pid: rss for pid, (rss, _) in _tree_stats(root_pid).items()}


def rss_run(workdir: Path, n: int, device: str) -> dict[str, float]:
    out = workdir / f"rss_{n}.json"
    cmd = [sys.executable, __file__, "--_rss-child", str(n), "--workdir", str(workdir), "--device", device]
    proc = subprocess.Popen(cmd, cwd=REPO)
    peak_tree = peak_other = 0
    while proc.poll() is None:
        sizes = _tree_rss(proc.pid)
        peak_tree = max(peak_tree, sum(sizes.values()))
        peak_other = max([peak_other] + [v for pid, v in sizes.items() if pid != proc.pid])
        time.sleep(0.05)
    if proc.returncode:
        raise RuntimeError(f"RSS child for {n} clips failed with exit code {proc.returncode}")
    child = json.loads(out.read_text())
    return {
        "clips": n,
        "main_peak_mb": child["main_peak_mb"],
        "other_process_peak_mb": peak_other / 2**20,
        "tree_peak_mb": peak_tree / 2**20,
        "seconds": child["seconds"],
    }


def rss_child(n: int, workdir: Path, device: str) -> None:
    manifest = short_clips(workdir, n)
    store = workdir / f"rss_store_{n}"
    shutil.rmtree(store, ignore_errors=True)
    cfg = load_config(None, ["sampling.num_frames=1", f"extract.device={device}"])
    (summary,) = extract(manifest, store, cfg, progress=False)
    assert summary.done == n, summary.failures[:3]
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux (exact peak)
    (workdir / f"rss_{n}.json").write_text(json.dumps({"main_peak_mb": me, "seconds": summary.seconds}))


# -- main ----------------------------------------------------------------------------------------------


def _fmt_row(cells, widths) -> str:
    return " | ".join(str(c).rjust(w) for c, w in zip(cells, widths))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the encoder runs (default cpu)")
    ap.add_argument("--encoder", default="effnet-lite0", help="encoder spec (default effnet-lite0, offline)")
    ap.add_argument("--full", action="store_true", help="the issue's full sizes (more and longer videos; much slower)")
    ap.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "vidprobe-bench"),
        help="where test videos are made (and reused by later runs) and scratch stores go",
    )
    ap.add_argument("--rounds", type=int, default=1, help="interleaved measurement rounds per workload (default 1)")
    ap.add_argument("--skip-rss", action="store_true", help="skip the 100 vs 1000 clips peak-RSS runs")
    ap.add_argument("--skip-precision", action="store_true", help="skip the fp32 vs bf16 encoder comparison")
    ap.add_argument(
        "--precision-encoders",
        nargs="*",
        default=["effnet-lite0", "openclip:ViT-B-32"],
        help="encoders for the fp32 vs bf16 comparison (default effnet-lite0, openclip:ViT-B-32 random weights)",
    )
    ap.add_argument("--_rss-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args._rss_child:
        rss_child(args._rss_child, workdir, args.device)
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "extract_throughput: error: --device cuda but CUDA is not available on this machine "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); "
            "run it on a GPU machine or use --device cpu",
            file=sys.stderr,
        )
        return 2
    from pipeline.encoders import create_encoder

    t_start = time.perf_counter()
    cpus = cpu_count()
    load = os.getloadavg()[0]
    print(f"machine: {cpus} CPU cores, device {args.device}, load average {load:.2f}; torch {torch.__version__}")
    t0 = time.perf_counter()
    videos = video_set(workdir, args.full)
    print(f"test videos ready in {time.perf_counter() - t0:.1f} s: {', '.join(videos)}")
    encoder = create_encoder(args.encoder, device=args.device)
    cfg = load_config(None, [f"encoder={args.encoder}", f"extract.device={args.device}"])
    rt = resolve_runtime(cfg.extract, args.device, cpus)
    print(
        f"engine defaults (auto): batch {rt.batch_size}, decoder processes {rt.num_workers}, FFmpeg threads each "
        f"{rt.decode_threads}, torch threads {rt.torch_threads or 'torch default'}"
    )
    results: dict = {
        "machine": {
            "cpus": cpus,
            "device": args.device,
            "load_avg_start": load,
            "encoder": args.encoder,
            "full": args.full,
        },
        "defaults": rt.__dict__,
    }
    shared = args.device == "cpu"

    from pipeline.encoders.base import cpu_bf16_support

    bf16 = cpu_bf16_support()
    results["machine"].update(cpu=cpu_model(), bf16_support=list(bf16) or "none", auto_precision=encoder.precision)
    print(
        f"CPU {results['machine']['cpu']}; native bf16: {', '.join(bf16) or 'none'} -> precision auto = "
        f"{encoder.precision}"
    )

    print(
        f"\n1. throughput (frames/s of sampled frames; "
        f"mean of {args.rounds} interleaved rounds of decode-only, encode-only, end-to-end)"
    )
    print(
        "   bound = cores / (decode CPU-s + encode CPU-s per frame), each stage measured alone; "
        "also min(decode, encode)"
    )
    widths = (8, 7, 8, 8, 8, 8, 8, 8, 9)
    print(_fmt_row(("workload", "frames", "decode", "encode", "bound", "min", "e2e", "e2e/bnd", "e2e fp32"), widths))
    fp32_encoder = None
    if shared and encoder.precision != "fp32":
        fp32_encoder = create_encoder(args.encoder, device=args.device, precision="fp32")
    kept_frames = None
    for kind in ("dense", "sparse"):
        manifest, sampling = workload(videos, kind, args.full)
        rounds = []  # stages interleaved, so slow drifts of machine load hit all three alike
        frames = None
        for _r in range(args.rounds):
            dec, n, kept, dec_cpu = decode_only(
                manifest, sampling, encoder.preprocess_cfg, workers=cpus, keep=frames is None
            )
            frames = frames if frames is not None else kept
            enc, enc_cpu = encode_only(encoder, frames, rt.batch_size, rt.torch_threads)
            e2e, _, _ = end_to_end(manifest, sampling, encoder, cfg, workdir / f"e2e_{kind}")
            e2e32 = (
                end_to_end(manifest, sampling, fp32_encoder, cfg, workdir / f"e2e_{kind}")[0] if fp32_encoder else e2e
            )
            rounds.append(
                {
                    "decode_fps": dec,
                    "encode_fps": enc,
                    "e2e_fps": e2e,
                    "e2e_fp32_fps": e2e32,
                    "decode_cpu_s_per_frame": dec_cpu,
                    "encode_cpu_s_per_frame": enc_cpu,
                    "load_avg": os.getloadavg()[0],
                }
            )
        if kept_frames is None:
            kept_frames = np.concatenate(frames)[:: max(1, n // 256)]
        del frames
        keys = (
            "decode_fps",
            "encode_fps",
            "e2e_fps",
            "e2e_fp32_fps",
            "decode_cpu_s_per_frame",
            "encode_cpu_s_per_frame",
        )
        dec, enc, e2e, e2e32, dec_cpu, enc_cpu = (float(np.mean([x[k] for x in rounds])) for k in keys)
        # Not 1/(1/decode + 1/encode): neither stage alone need fill every core (measured 1.58x above it).
        bound = cpus / (dec_cpu + enc_cpu) if shared else min(dec, enc)
        row = {
            "clips": len(manifest.items),
            "frames": n,
            "decode_fps": dec,
            "encode_fps": enc,
            "bound_fps": bound,
            "min_stage_fps": min(dec, enc),
            "decode_cpu_s_per_frame": dec_cpu,
            "encode_cpu_s_per_frame": enc_cpu,
            "e2e_fps": e2e,
            "e2e_over_bound": e2e / bound,
            "e2e_over_min_stage": e2e / min(dec, enc),
            "bound_rule": "cores/(decode_cpu_s+encode_cpu_s)" if shared else "min(decode, encode)",
            "precision": encoder.precision,
            "e2e_fp32_fps": e2e32,
            "e2e_auto_over_fp32": e2e / e2e32,
            "rounds": rounds,
            "sampling": sampling.__dict__,
        }
        results[kind] = row
        print(
            _fmt_row(
                (
                    kind,
                    n,
                    f"{dec:.1f}",
                    f"{enc:.1f}",
                    f"{bound:.1f}",
                    f"{min(dec, enc):.1f}",
                    f"{e2e:.1f}",
                    f"{e2e / bound:.2f}",
                    f"{e2e32:.1f}",
                ),
                widths,
            )
        )
    del fp32_encoder

    if shared and not args.skip_precision:
        print(
            f"\n1b. encoder alone, fp32 vs bf16 weights+inputs ({len(kept_frames)} decoded frames at most; "
            "bf16 capped by time)"
        )
        pairs = {}
        for spec in args.precision_encoders:
            try:
                r = pairs[spec] = precision_pair(spec, kept_frames, rt.batch_size, rt.torch_threads)
            except Exception as exc:  # e.g. open_clip missing: report, keep the rest
                pairs[spec] = {"spec": spec, "error": f"{type(exc).__name__}: {exc}"}
                print(f"  {spec}: skipped ({type(exc).__name__}: {exc})")
                continue
            print(
                f"  {spec}: fp32 {r['fp32']['img_per_s']:.1f} img/s, bf16 {r['bf16']['img_per_s']:.1f} img/s "
                f"({r['bf16_over_fp32']:.2f}x), min cosine bf16 vs fp32 {r['min_cosine_bf16_fp32']:.5f}"
            )
        results["precision"] = pairs

    print("\n2. sparse vs full decode (one process, 1 FFmpeg thread, frames resized to the encoder input)")
    svf = {}
    for name in ("720p_gop30_60s", "720p_gop250_20s"):
        r = sparse_vs_full(videos[name], encoder.preprocess_cfg)
        svf[name] = r
        print(
            f"  {name}: all {r['full_decoded']} frames {r['full_s']:.2f} s | 8 frames exact {r['sparse8_s']:.3f} s "
            f"({r['sparse8_decoded']} decoded, {r['sparse_speedup']:.1f}x faster) | 8 frames seek_mode=keyframe "
            f"{r['keyframe8_s']:.3f} s ({r['keyframe8_decoded']} decoded, {r['keyframe_speedup']:.1f}x faster)"
        )
    results["sparse_vs_full"] = svf

    if not args.skip_rss:
        print("\n3. peak RSS, extraction of N short clips (2 s 320x240, 1 frame each), each in its own process")
        rss = {n: rss_run(workdir, n, args.device) for n in (100, 1000)}
        for n, r in rss.items():
            print(
                f"  {n:5d} clips: main process {r['main_peak_mb']:.0f} MiB, "
                f"largest other process (decoder, forkserver) {r['other_process_peak_mb']:.0f} MiB, "
                f"whole tree {r['tree_peak_mb']:.0f} MiB ({r['seconds']:.1f} s)"
            )
        growth_main = rss[1000]["main_peak_mb"] / rss[100]["main_peak_mb"] - 1
        growth_tree = rss[1000]["tree_peak_mb"] / rss[100]["tree_peak_mb"] - 1
        print(f"  1000 vs 100 clips: main process {growth_main * 100:+.1f}%, whole tree {growth_tree * 100:+.1f}%")
        results["rss"] = {"100": rss[100], "1000": rss[1000], "growth_main": growth_main, "growth_tree": growth_tree}

    results["machine"]["load_avg_end"] = os.getloadavg()[0]
    results["seconds"] = time.perf_counter() - t_start
    print(f"\ndone in {results['seconds']:.0f} s (load average at end {results['machine']['load_avg_end']:.2f})")
    print(json.dumps(results, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
