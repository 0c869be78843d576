"""Several encoders over one decode vs one pass per encoder (``python benchmarks/multi_encoder.py``).

On the dense workload of ``benchmarks/extract_throughput.py`` (its own H.264 720p/360p videos, every
video whole at 2 sampled frames/s), for each pair of encoders, side by side in one run (rounds
interleaved, so drifts of machine load hit both alike):

* separate: ``extract`` once per encoder, each into its own fresh store (every clip decoded twice);
* one pass: ``extract`` with both (each clip decoded once, resized once per distinct input, one
  forward per model), into two fresh stores.

Pairs: ``effnet+vit`` (effnet-lite0 and open_clip ViT-B-32 with random weights: two different models,
two resizes) and ``joint+pre`` (ViT-B-32's joint embedding and its ``#pre`` features: one model, one
forward). Models are built once, before timing; the times are whole runs (store creation, decoder
start-up, decode, encode, write). The target (issue 12): one pass <= 0.75 x the separate passes.
The last line printed is one JSON object with every figure.
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

from extract_throughput import video_set, workload  # noqa: E402

from pipeline.config import Config, load_config  # noqa: E402
from pipeline.extract.entry import extract  # noqa: E402
from pipeline.extract.local import cpu_count  # noqa: E402
from pipeline.versions import cpu_model  # noqa: E402

PAIRS = {
    "effnet+vit": ("effnet-lite0", "openclip:ViT-B-32"),
    "joint+pre": ("openclip:ViT-B-32", "openclip:ViT-B-32#pre"),
}
TARGET = 0.75


def _cfg(specs: tuple[str, ...], device: str, sampling) -> Config:
    cfg = load_config(None, [f"extract.device={device}"])
    cfg.encoder = specs[0] if len(specs) == 1 else tuple(specs)
    cfg.sampling = sampling
    return cfg.validate()


def _run(manifest, sampling, encoders: list, device: str, out: Path) -> tuple[float, int]:
    """Seconds and frames stored of one extraction of ``encoders`` (one pass) into fresh stores."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summaries = extract(
        manifest, out, _cfg(tuple(e.spec for e in encoders), device, sampling), encoders=encoders, progress=False
    )
    seconds = time.perf_counter() - t0
    if any(s.failed for s in summaries):
        raise RuntimeError(f"a run had failures: {[s.failures[:2] for s in summaries]}")
    return seconds, sum(s.frames for s in summaries)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the encoders run (default cpu)")
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS), help="encoder pairs to measure")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of separate vs one pass (default 1)")
    ap.add_argument("--quick", action="store_true", help="the two 360p videos only (a smoke test; noisy figures)")
    ap.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "vidprobe-bench"),
        help="where test videos are made (kept between runs) and stores written",
    )
    args = ap.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("multi_encoder: error: --device cuda but CUDA is not available here; use --device cpu", file=sys.stderr)
        return 2
    from pipeline.encoders import create_encoders

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    cpu = cpu_model()
    print(f"machine: {cpu}, {cpu_count()} cores, device {args.device}, load average {load:.2f}")
    videos = video_set(workdir, full=False)
    if args.quick:
        videos = {k: v for k, v in videos.items() if k.startswith("360p")}
    manifest, sampling = workload(videos, "dense", full=False)
    print(f"dense workload: {len(manifest.items)} videos ({', '.join(videos)}), sampling fps={sampling.fps}")
    results: dict = {
        "benchmark": "multi_encoder",
        "cpu": cpu,
        "cores": cpu_count(),
        "device": args.device,
        "load_avg_start": load,
        "quick": args.quick,
        "rounds": args.rounds,
        "target_ratio": TARGET,
        "pairs": {},
    }
    print(
        f"\n{'pair':>11} | {'frames':>6} | {'separate s':>10} | {'one pass s':>10} | {'ratio':>5} | target <= {TARGET}"
    )
    for name in args.pairs:
        specs = PAIRS[name]
        with_pair = create_encoders(specs, device=args.device)  # shares the model where it can (joint+pre)
        alone = [create_encoders([s], device=args.device)[0] for s in specs]
        separate, together, frames = [], [], 0
        for _round in range(args.rounds):
            t_sep = 0.0
            for i, enc in enumerate(alone):
                seconds, n = _run(manifest, sampling, [enc], args.device, workdir / f"sep-{name}-{i}")
                t_sep += seconds
                frames = n
            seconds, _ = _run(manifest, sampling, with_pair, args.device, workdir / f"one-{name}")
            separate.append(t_sep)
            together.append(seconds)
        sep, one = sum(separate) / len(separate), sum(together) / len(together)
        ratio = one / sep
        results["pairs"][name] = {
            "specs": list(specs),
            "frames_per_store": frames,
            "separate_s": round(sep, 2),
            "one_pass_s": round(one, 2),
            "ratio": round(ratio, 3),
            "meets_target": ratio <= TARGET,
            "separate_rounds_s": [round(x, 2) for x in separate],
            "one_pass_rounds_s": [round(x, 2) for x in together],
        }
        print(
            f"{name:>11} | {frames:>6} | {sep:>10.1f} | {one:>10.1f} | {ratio:>5.2f} | "
            f"{'yes' if ratio <= TARGET else 'no'}"
        )
        del with_pair, alone
    results["load_avg_end"] = os.getloadavg()[0]
    print(f"\nload average at the end {results['load_avg_end']:.2f} (figures under load are noisy)")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
