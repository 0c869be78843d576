"""What bf16 costs in accuracy: the demo tasks' linear probe from a bf16 store vs a fp32 store, side by side.

``python benchmarks/bf16_probe_accuracy.py`` renders the demo's two tasks (``what``: which photo;
``how``: which camera motion; ``pipeline.demo.videos``), extracts each twice with the offline encoder
(``effnet-lite0``), once with ``extract.precision=fp32`` and once with ``bf16`` (bf16 weights and inputs,
what ``precision: auto`` picks on a CPU with AMX-BF16 or AVX512-BF16), and trains the same logreg head
(CLIP protocol, same split, same seed) on each store for the demo's poolings. It prints per task and
pooling the test top-1 of both, their difference (issue 14's must-show: within 1 point), how often the
two heads agree on the test clips, and the cosine between the bf16 and fp32 embeddings of each frame.

Sizes: ``--per-class N`` videos per class for both tasks (default: the demo's own, 12 for what and 30 for
how: 252 videos x 8 frames = 2016 frames per precision), ``--num-frames T`` frames per clip, ``--pools``.
On a CPU without native bf16 (e.g. AMD EPYC AVX2: effnet-lite0 bf16 ~1.1 img/s on 2 cores) the full size
takes over half an hour; there use a documented subset, e.g. ``--per-class 6 --num-frames 4``. The last
line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.data.manifest import load_manifest  # noqa: E402
from pipeline.data.splits import SplitSpec  # noqa: E402
from pipeline.demo.run import DEMO_POOLS  # noqa: E402
from pipeline.demo.videos import DEFAULT_PER_CLASS, build_demo_videos  # noqa: E402
from pipeline.encoders import create_encoder  # noqa: E402
from pipeline.encoders.base import cpu_bf16_support  # noqa: E402
from pipeline.extract.entry import extract  # noqa: E402
from pipeline.probe.train import fit_on_store, store_splits  # noqa: E402
from pipeline.store import open_store  # noqa: E402
from pipeline.versions import cpu_model  # noqa: E402


def _aligned(a, b) -> list[int]:
    """Row of ``b`` holding each clip of ``a`` (the two stores hold the same clips, maybe in another order)."""
    index = {k: i for i, k in enumerate(b.table().keys())}
    wanted = a.table().keys()  # a ClipTable's list of clip keys
    return [index[k] for k in wanted]


def _frame_cosines(a, b, order: list[int]) -> np.ndarray:
    """Cosine per frame between two stores of the same clips."""
    ta, tb = a.table(), b.table()
    fa = np.concatenate([ta.frames(i) for i in range(len(order))]).astype(np.float64)
    fb = np.concatenate([tb.frames(j) for j in order]).astype(np.float64)
    return np.sum(fa * fb, axis=1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-class", type=int, help="videos per class for both tasks (default: the demo's 12 / 30)")
    ap.add_argument("--num-frames", type=int, default=8, help="frames per clip (default 8, the demo's)")
    ap.add_argument("--pools", default=",".join(DEMO_POOLS), help=f"poolings (default {','.join(DEMO_POOLS)})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="keep videos and stores here (default: a temporary folder)")
    args = ap.parse_args()
    pools = [p for p in args.pools.split(",") if p]
    per_class = args.per_class or dict(DEFAULT_PER_CLASS)
    with tempfile.TemporaryDirectory(prefix="vidprobe-bf16-") as tmp:
        work = Path(args.workdir or tmp)
        manifests = build_demo_videos(work / "data", per_class=per_class, seed=args.seed, progress=False)
        rates: dict[str, float] = {}
        stores: dict[tuple[str, str], Path] = {}
        for precision in ("fp32", "bf16"):
            cfg = load_config(None, [f"sampling.num_frames={args.num_frames}", f"extract.precision={precision}"])
            encoder = create_encoder(cfg.encoder, device="cpu", precision=precision)
            frames, seconds = 0, 0.0
            for task, csv_path in manifests.items():
                path = work / "features" / f"{task}-{precision}"
                t = time.perf_counter()
                (summary,) = extract(load_manifest(csv_path), path, cfg, encoders=[encoder], progress=False)
                seconds += time.perf_counter() - t
                frames += summary.frames
                stores[(task, precision)] = path
                print(f"extracted {task} {precision}: {summary.frames} frames in {summary.seconds:.0f} s", flush=True)
            rates[precision] = frames / seconds if seconds else 0.0
        rows = []
        for task in manifests:
            s32, s16 = open_store(stores[(task, "fp32")]), open_store(stores[(task, "bf16")])
            assert s16.provenance["precision"] == "bf16" and s32.provenance["precision"] == "fp32"
            order = _aligned(s32, s16)
            cos = _frame_cosines(s32, s16, order)
            split = SplitSpec(seed=args.seed)
            test = store_splits(s32, split).test
            for pool in pools:
                r32, o32 = fit_on_store(s32, "logreg", pool, split=split)
                r16, o16 = fit_on_store(s16, "logreg", pool, split=split)
                X32 = s32.pooled(_pool(pool), test.tolist())
                X16 = s16.pooled(_pool(pool), [order[i] for i in test])
                agree = float(np.mean(r32.estimator.predict(X32) == r16.estimator.predict(X16)))
                t32, t16 = o32["test"]["top1"], o16["test"]["top1"]
                rows.append(
                    {
                        "task": task,
                        "pool": pool,
                        "n_test": int(len(test)),
                        "top1_fp32": t32,
                        "top1_bf16": t16,
                        "diff_points": round(100 * (t16 - t32), 2),
                        "agreement": agree,
                        "min_frame_cosine": float(cos.min()),
                        "mean_frame_cosine": float(cos.mean()),
                    }
                )
    cpu = cpu_model()
    print(f"CPU: {cpu} ({os.cpu_count()} cores), native bf16: {', '.join(cpu_bf16_support()) or 'none'}")
    print(f"extraction: fp32 {rates['fp32']:.1f} frames/s, bf16 {rates['bf16']:.1f} frames/s (whole pipeline)")
    print(f"{'task':5s} {'pool':8s} {'n':>4s} {'fp32':>6s} {'bf16':>6s} {'diff pt':>8s} {'agree':>6s} {'min cos':>8s}")
    for r in rows:
        print(
            f"{r['task']:5s} {r['pool']:8s} {r['n_test']:4d} {r['top1_fp32']:6.3f} {r['top1_bf16']:6.3f} "
            f"{r['diff_points']:8.2f} {r['agreement']:6.3f} {r['min_frame_cosine']:8.5f}"
        )
    worst = max(abs(r["diff_points"]) for r in rows)
    print(
        json.dumps(
            {
                "benchmark": "bf16_probe_accuracy",
                "cpu": cpu,
                "cores": os.cpu_count(),
                "native_bf16": list(cpu_bf16_support()),
                "loadavg": os.getloadavg()[0],
                "per_class": per_class,
                "num_frames": args.num_frames,
                "extract_frames_per_s": rates,
                "rows": rows,
                "max_abs_diff_points": worst,
                "within_1_point": worst <= 1.0,
            }
        )
    )


def _pool(name: str):
    from pipeline.probe.pooling import get_pool

    return get_pool(name)


if __name__ == "__main__":
    main()
