"""Feature-store read speed, size and float16 accuracy, measured side by side in one run.

Writes a real store of N clips × T frames × D dims (default 10k × 8 × 512) with ``ShardWriter``
(512 clips per shard, as extraction does) once per storage option (float32/float16 × none/lzf/gzip),
then times what ``vidprobe train`` does first: ``open_store(path).pooled(mean)``, the full (N, D)
pooled matrix. Reads are timed warm (page cache) and cold (shard files evicted with
posix_fadvise DONTNEED first). The float16 cost is measured against the float32 store: per-value
error, cosine of pooled vectors, and a logistic-regression probe trained on each.

The embeddings are synthetic but shaped like real ones: clips of K classes, frames of a clip
correlated, every frame L2-normalised (as CLIP embeddings are). Float noise compresses poorly, as
real embeddings do. Target: the full pooled read < 2 s. Every read checks the shards' SHA-256
checksums (issue 13); each option is also read with ``FeatureStore.check_checksums`` off, side by side,
to show what checking costs (target: the checked full pooled read within 1.3x of the unchecked one).
The last line printed is one JSON object holding every figure.

    python benchmarks/store_read.py [--clips 10000 --frames 8 --dim 512 --repeat 3]
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.probe.pooling import get_pool  # noqa: E402
from pipeline.store import ShardWriter, create_or_open, open_store  # noqa: E402
from pipeline.store.tools import compact_store  # noqa: E402

OPTIONS = [
    ("float32", "none"),
    ("float32", "lzf"),
    ("float32", "gzip"),
    ("float16", "none"),
    ("float16", "lzf"),
    ("float16", "gzip"),
]


def synthetic(n: int, t: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)).astype(np.float32)
    y = rng.integers(0, classes, n)
    clip = 0.15 * centers[y] + rng.normal(size=(n, d)).astype(np.float32)  # hard enough that a probe errs (~60% top-1)
    frames = clip[:, None, :] + 0.8 * rng.normal(size=(n, t, d)).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=-1, keepdims=True)
    return frames.astype(np.float32), y


def write_store(path: Path, frames: np.ndarray, y: np.ndarray, dtype: str, compression: str) -> float:
    prov = {
        "encoder": "synthetic",
        "weights_id": "none",
        "dim": frames.shape[2],
        "preprocess": {},
        "sampling": {"strategy": "uniform", "num_frames": frames.shape[1]},
        "dtype": dtype,
    }
    ts = np.arange(frames.shape[1], dtype=np.float64) / 2
    t0 = time.perf_counter()
    store = create_or_open(path, prov)
    with ShardWriter(store, shard_size=512, compression=compression) as w:
        for i in range(len(frames)):
            w.add(
                f"videos/c{y[i]:02d}/clip{i:06d}.mp4",
                None,
                None,
                f"c{y[i]:02d}",
                "train" if i % 2 else "test",
                frames[i],
                ts,
            )
    return time.perf_counter() - t0


def evict(path: Path) -> None:
    for p in (path / "shards").glob("*.h5"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_read(path: Path, cold: bool, check: bool = True) -> tuple[float, float, float, np.ndarray]:
    """(total, metadata index, embeddings, pooled matrix) seconds for open_store(path).pooled(mean)."""
    if cold:
        evict(path)
    pool = get_pool("mean")
    t0 = time.perf_counter()
    store = open_store(path)
    store.check_checksums = check
    store.use_cache = False  # what reading the shards costs (benchmarks/store_scale.py measures the caches)
    store.index()
    t1 = time.perf_counter()
    store.table()
    t2 = time.perf_counter()
    X = store.pooled(pool)
    t3 = time.perf_counter()
    return t3 - t0, t1 - t0, t2 - t1, X


def probe(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Test-half predictions of a logistic regression fitted on the first half."""
    from sklearn.linear_model import LogisticRegression

    half = len(X) // 2
    return LogisticRegression(C=1.0, max_iter=300).fit(X[:half], y[:half]).predict(X[half:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=10000)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3, help="reads per option; the median is reported")
    ap.add_argument("--workdir", help="where to write the stores (default: a temporary folder, removed)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vidprobe-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    n, t, d = args.clips, args.frames, args.dim
    out: dict = {
        "clips": n,
        "frames_per_clip": t,
        "dim": d,
        "raw_float32_bytes": n * t * d * 4,
        "load_avg_start": os.getloadavg()[0],
        "options": {},
    }
    print(
        f"store of {n} clips x {t} frames x {d} dims ({n * t * d * 4 / 2**20:.0f} "
        f"MiB as float32), shards of 512 clips; load avg {os.getloadavg()[0]:.1f}"
    )
    frames, y = synthetic(n, t, d, args.classes)
    pooled_ref = None
    uncompressed: dict[str, np.ndarray] = {}
    try:
        print(
            f"{'storage':16s} {'size MiB':>9s} {'ratio':>6s} {'write s':>8s} "
            f"{'read warm s':>12s} {'(index':>7s} {'emb':>6s} {'pool)':>6s} {'read cold s':>12s} "
            f"{'unchecked warm s':>17s} {'checked/unchecked':>18s}"
        )
        for dtype, comp in OPTIONS:
            path = work / f"{dtype}-{comp}"
            shutil.rmtree(path, ignore_errors=True)
            write_s = write_store(path, frames, y, dtype, comp)
            size = sum(p.stat().st_size for p in (path / "shards").glob("*.h5"))
            warm, unchecked = [], []
            for _ in range(args.repeat):  # alternated, so a change in the machine's load hits both alike
                warm.append(time_read(path, cold=False))
                unchecked.append(time_read(path, cold=False, check=False)[0])
            warm.sort(key=lambda r: r[0])
            total, idx_s, emb_s, X = warm[len(warm) // 2]
            plain = sorted(unchecked)[len(unchecked) // 2]
            cold_s = time_read(path, cold=True)[0]
            if dtype == "float32" and comp == "none":
                pooled_ref = X
            key = f"{dtype}/{comp}"
            out["options"][key] = {
                "size_bytes": size,
                "ratio_vs_raw_float32": size / out["raw_float32_bytes"],
                "write_s": write_s,
                "read_pooled_warm_s": total,
                "index_s": idx_s,
                "embeddings_s": emb_s,
                "pool_s": total - idx_s - emb_s,
                "read_pooled_cold_s": cold_s,
                "read_pooled_warm_unchecked_s": plain,
                "checked_over_unchecked": total / plain,
            }
            if comp == "none":
                uncompressed[dtype] = X
            out["options"][key]["same_values_as_uncompressed"] = bool(np.array_equal(X, uncompressed[dtype]))
            print(
                f"{key:16s} {size / 2**20:9.1f} {size / out['raw_float32_bytes']:6.2f} {write_s:8.2f} "
                f"{total:12.3f} {idx_s:7.3f} {emb_s:6.3f} {total - idx_s - emb_s:6.3f} {cold_s:12.3f} "
                f"{plain:17.3f} {total / plain:17.2f}x"
            )
            if key == "float32/none":
                t0 = time.perf_counter()
                compact_store(path)
                compact_s = time.perf_counter() - t0
                total_c = sorted(time_read(path, cold=False)[0] for _ in range(args.repeat))[args.repeat // 2]
                cold_c = time_read(path, cold=True)[0]
                out["compacted_float32"] = {
                    "compact_s": compact_s,
                    "read_pooled_warm_s": total_c,
                    "read_pooled_cold_s": cold_c,
                }
                print(
                    f"{'  compacted':16s} {'':9s} {'':6s} {compact_s:8.2f} {total_c:12.3f} {'':7s} "
                    f"{'':6s} {'':6s} {cold_c:12.3f}   (one shard; compact time in the write column)"
                )
            shutil.rmtree(path, ignore_errors=True)

        # float16 accuracy, against the exact float32 values
        f16 = frames.astype(np.float16).astype(np.float32)
        err = np.abs(f16 - frames)
        big = np.abs(frames) > 1e-3
        rel = err[big] / np.abs(frames[big])
        p16 = f16.mean(axis=1)
        p32 = frames.mean(axis=1)
        cos = np.sum(p16 * p32, axis=1) / (np.linalg.norm(p16, axis=1) * np.linalg.norm(p32, axis=1))
        assert pooled_ref is not None and np.allclose(pooled_ref, p32, atol=1e-6)
        pred32, pred16 = probe(p32, y), probe(p16, y)
        y_test = y[len(y) // 2 :]
        acc32, acc16 = float(np.mean(pred32 == y_test)), float(np.mean(pred16 == y_test))
        disagree = float(np.mean(pred32 != pred16))
        out["float16_accuracy"] = {
            "max_abs_error": float(err.max()),
            "mean_abs_error": float(err.mean()),
            "max_rel_error_values_gt_1e-3": float(rel.max()),
            "value_abs_max": float(np.abs(frames).max()),
            "pooled_cosine_min": float(cos.min()),
            "pooled_cosine_mean": float(cos.mean()),
            "probe_top1_float32": acc32,
            "probe_top1_float16": acc16,
            "probe_predictions_differing": disagree,
        }
        print(
            f"float16 cost: max |error| {err.max():.2e} (values up to {np.abs(frames).max():.3f}), mean "
            f"{err.mean():.2e}, max relative {rel.max():.2e} (2^-11 = {2**-11:.2e}); pooled cosine min {cos.min():.7f} "
            f"mean {cos.mean():.8f}; logistic probe top-1 float32 {acc32:.4f} vs float16 {acc16:.4f}, {disagree:.2%} "
            "of test predictions differ"
        )
        target = out["options"]["float32/none"]["read_pooled_warm_s"]
        out["target_read_pooled_s"] = 2.0
        out["target_met"] = bool(max(target, out["options"]["float32/none"]["read_pooled_cold_s"]) < 2.0)
        ratio = out["options"]["float32/none"]["checked_over_unchecked"]
        out["target_checksum_ratio"] = 1.3
        out["checksum_target_met"] = bool(ratio <= 1.3)
        out["load_avg_end"] = os.getloadavg()[0]
        print(
            f"full pooled read of the float32 store: {target:.3f} s warm, "
            f"{out['options']['float32/none']['read_pooled_cold_s']:.3f} s cold (target < 2 s: "
            f"{'met' if out['target_met'] else 'NOT met'}); with checksums checked {ratio:.2f}x the unchecked read "
            f"(target <= 1.3x: {'met' if out['checksum_target_met'] else 'NOT met'}); "
            f"load avg at end {out['load_avg_end']:.1f}"
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
