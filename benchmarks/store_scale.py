"""A million clips on one machine: streaming pooled reads, their cache, and training, measured side by side.

Builds synthetic stores with the project's own ``ShardWriter`` (512 clips per shard, float16, as extraction
writes them): by default 100k and 1M clips x 8 frames x 256 dims, plus the 200k x 8 x 512 store of issue 11.
For each store, in fresh processes (so peak RSS is the read's own):

* first read: ``open_store(p).pooled(get_pool("mean"))`` with no cache — time (open + clip index + pooling)
  and peak RSS, against the (N, D') pooled matrix it returns;
* cached read: the same call again in a new process (clip index and pooled matrix from ``cache/``), and of it
  the spot check (``cache.SPOT_ROWS`` random rows pooled again from their frames before the cache is served);
* ``--old`` stores: the pre-streaming read (all frames as float32, then a Python call per clip), side by side.

Targets (issue 11): peak RSS <= 1.5 x pooled + 0.5 GB; time growth <= 12x for 10x the clips; cached read
>= 5x faster than the first; on 200k x 8 x 512, first read >= 3x faster than 12.3 s and peak RSS <= 1 GB.
``--train``: ``vidprobe train STORE --head logreg --pool mean`` on the largest store (its printed time).
Stores live under ``--workdir`` (default /tmp/vidprobe-scale) and are deleted at the end unless ``--keep``.
Reads are warm (the stores were just written; the page cache holds them). The last line is one JSON object.

    python benchmarks/store_scale.py                                  # 100k, 1M, 200k x 512 (+ --train)
    python benchmarks/store_scale.py --sizes 100000 --wide 200000     # what fits a busy machine
    python benchmarks/store_scale.py --quick                          # 2k and 20k, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.store.cache import SPOT_ROWS  # noqa: E402
from pipeline.versions import cpu_model  # noqa: E402

OLD_FIGURE = {"seconds": 12.3, "peak_rss_gb": 4.1}  # issue 11, 200k x 8 x 512 float16, before streaming
GB = 1e9


def build(path: Path, n: int, t: int, d: int, classes: int = 50, seed: int = 0) -> float:
    """Write n clips (K classes, frames of a clip correlated, L2-normalised) with ShardWriter; seconds."""
    from pipeline.store import ShardWriter, create_or_open

    if path.exists():
        shutil.rmtree(path)
    prov = {
        "encoder": "synthetic",
        "weights_id": "none",
        "dim": d,
        "preprocess": {},
        "sampling": {"strategy": "uniform", "num_frames": t},
        "dtype": "float16",
    }
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)).astype(np.float32)
    ts = np.arange(t, dtype=np.float64) / 2
    splits = ("train", "train", "train", "val", "test")
    t0 = time.perf_counter()
    store = create_or_open(path, prov)
    with ShardWriter(store, shard_size=512) as w:
        for lo in range(0, n, 512):
            m = min(512, n - lo)
            y = rng.integers(0, classes, m)
            clip = 0.15 * centers[y] + rng.standard_normal((m, d), dtype=np.float32)
            fr = clip[:, None, :] + 0.8 * rng.standard_normal((m, t, d), dtype=np.float32)
            fr /= np.linalg.norm(fr, axis=-1, keepdims=True)
            for j in range(m):
                i = lo + j
                w.add(f"videos/c{y[j]:02d}/clip{i:07d}.mp4", None, None, f"c{y[j]:02d}", splits[i % 5], fr[j], ts)
    return time.perf_counter() - t0


def reused(path: Path, n: int) -> float | None:
    """0.0 if ``path`` holds a finished store of ``n`` clips (a ``--keep`` run's), else None (build it)."""
    from pipeline.store import open_store

    try:
        store = open_store(path)
        store.use_cache = False
        return 0.0 if len(store.index().video) == n and not store.unfinished_paths() else None
    except Exception:  # no store, or a broken one: build it afresh
        return None


def child(mode: str, path: str) -> None:
    """One read in this (fresh) process; prints one JSON line."""
    from pipeline.probe.pooling import get_pool
    from pipeline.store import open_store

    pool = get_pool("mean")
    t0 = time.perf_counter()
    store = open_store(path)
    store.use_cache = mode != "old"  # the old read had no cache: it builds the clip index from the shards too
    store.index()
    t1 = time.perf_counter()
    if mode == "old":  # before issue 11: every frame as float32, then one Python call per clip
        table = store.table()
        X = np.stack([pool(table.frames(i)) for i in range(len(table))]).astype(np.float32)
    else:
        X = store.pooled(pool)
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    spot = None
    if mode == "cached":  # of the cached read, what pooling a few random rows again before serving them costs
        ts = time.perf_counter()
        store._spot_check(pool, X)
        spot = time.perf_counter() - ts
    print(
        json.dumps(
            {"index_s": t1 - t0, "pool_s": t2 - t1, "total_s": t2 - t0, "peak_rss": rss, "nbytes": X.nbytes}
            | {"spot_check_s": spot}
        )
    )


def run_child(mode: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"{mode} read of {path} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_read(path: Path) -> dict:
    shutil.rmtree(path / "cache", ignore_errors=True)
    # The deletion's own cost (ext4 mounted with discard trims the freed blocks at the next journal commit, which
    # the first read's fsync of its new cache would otherwise wait for) is not the read's: settle it first.
    os.sync()
    return run_child("first", path)


def measure(path: Path, old: bool, repeat: int = 1) -> dict:
    """First read (the fastest of ``repeat``, each in a fresh process with no cache), cached read (the fastest of
    ``repeat`` too), old read."""
    runs = [first_read(path) for _ in range(max(1, repeat))]
    r: dict = {"first": min(runs, key=lambda x: x["total_s"]), "first_all_s": [x["total_s"] for x in runs]}
    r["cached"] = min((run_child("cached", path) for _ in range(max(1, repeat))), key=lambda x: x["total_s"])
    if old:
        r["old"] = run_child("old", path)
    first, cached = r["first"], r["cached"]
    pooled_gb = first["nbytes"] / GB
    r["pooled_gb"] = pooled_gb
    r["rss_limit_gb"] = 1.5 * pooled_gb + 0.5
    r["rss_ok"] = first["peak_rss"] / GB <= r["rss_limit_gb"]
    r["cached_speedup"] = first["total_s"] / cached["total_s"]
    r["cached_ok"] = r["cached_speedup"] >= 5
    if old:
        r["speedup_vs_old"] = r["old"]["total_s"] / first["total_s"]
    return r


def train(path: Path, work: Path) -> dict:
    head = work / "scale-head.skops"
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", str(path), "-o", str(head), "--head", "logreg", "--pool", "mean"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    wall = time.perf_counter() - t0
    lines = out.stdout.strip().splitlines()
    print("\n".join(f"    {x}" for x in lines))
    if out.returncode:
        print(out.stderr[-2000:])
    return {"returncode": out.returncode, "wall_s": wall, "output": lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="clip counts of the 8 x 256 stores, comma-separated")
    ap.add_argument("--wide", type=int, default=200000, help="clips of the 8 x 512 store (0: skip it)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="sizes 2000,20000 and a 5000-clip wide store: a smoke test")
    ap.add_argument("--no-old", action="store_true", help="skip the pre-streaming read of the wide store")
    ap.add_argument(
        "--train", action="store_true", help="also run `vidprobe train` (logreg, mean) on the largest store"
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="first reads per store, the fastest reported (a busy machine is noisy)"
    )
    ap.add_argument("--workdir", default="/tmp/vidprobe-scale")
    ap.add_argument("--keep", action="store_true", help="keep the stores (default: deleted at the end)")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="time the stores a --keep run left in --workdir instead of rebuilding them (implies --keep)",
    )
    ap.add_argument("--child", nargs=2, metavar=("MODE", "STORE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    sizes = [2000, 20000] if args.quick else [int(x) for x in args.sizes.split(",") if x]
    wide = 5000 if args.quick else args.wide
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_avg_start": os.getloadavg()[0],
        "frames": args.frames,
        "dim": args.dim,
        "stores": {},
    }
    print(f"CPU: {result['cpu']} ({result['cores']} cores), load average {result['load_avg_start']:.1f}")
    made: list[Path] = []
    try:
        plan = [(n, args.frames, args.dim, False) for n in sizes]
        if wide:
            plan.append((wide, 8, 512, not args.no_old))
        for n, t, d, old in plan:
            path = work / f"store-{n}x{t}x{d}"
            if not args.reuse:
                made.append(path)
            print(f"\n{n} clips x {t} x {d} float16: {'reusing or ' if args.reuse else ''}writing ...", flush=True)
            wrote = reused(path, n) if args.reuse else None
            if wrote is None:
                wrote = build(path, n, t, d)
            size = sum(p.stat().st_size for p in (path / "shards").glob("*.h5"))
            r = measure(path, old, args.repeat)
            r.update(clips=n, frames=t, dim=d, write_s=wrote, disk_gb=size / GB)
            result["stores"][f"{n}x{t}x{d}"] = r
            f, c = r["first"], r["cached"]
            made_by = (
                f"  reused {size / GB:.2f} GB"
                if args.reuse and not wrote
                else f"  wrote {size / GB:.2f} GB in {wrote:.0f} s"
            )
            print(
                made_by + f"\n"
                f"  first read  {f['total_s']:7.2f} s (index {f['index_s']:.2f} s + pooling {f['pool_s']:.2f} s), "
                f"peak RSS {f['peak_rss'] / GB:.2f} GB for a {r['pooled_gb']:.2f} GB pooled matrix "
                f"(limit {r['rss_limit_gb']:.2f} GB: {'ok' if r['rss_ok'] else 'OVER'})\n"
                f"  cached read {c['total_s']:7.2f} s (index {c['index_s']:.2f} s + pooled {c['pool_s']:.2f} s, of "
                f"which {1000 * c['spot_check_s']:.1f} ms pool {SPOT_ROWS} random rows again): "
                f"{r['cached_speedup']:.1f}x faster ({'ok' if r['cached_ok'] else 'below 5x'})"
            )
            if old:
                o = r["old"]
                print(
                    f"  old read    {o['total_s']:7.2f} s, peak RSS {o['peak_rss'] / GB:.2f} GB "
                    f"(streaming is {r['speedup_vs_old']:.1f}x faster; issue 11 measured {OLD_FIGURE['seconds']} s, "
                    f"{OLD_FIGURE['peak_rss_gb']} GB at 200k)"
                )
            if d == 512:
                r["target_3x_ok"] = f["total_s"] <= OLD_FIGURE["seconds"] / 3
                r["target_1gb_ok"] = f["peak_rss"] / GB <= 1.0
        if len(sizes) >= 2:
            lo, hi = min(sizes), max(sizes)
            a, b = (
                result["stores"][f"{lo}x{args.frames}x{args.dim}"],
                result["stores"][f"{hi}x{args.frames}x{args.dim}"],
            )
            growth = b["first"]["total_s"] / a["first"]["total_s"]
            allowed = 12 * (hi / lo) / 10
            result["growth"] = {
                "clips_ratio": hi / lo,
                "time_ratio": growth,
                "allowed": allowed,
                "ok": growth <= allowed,
            }
            print(f"\ngrowth {lo} -> {hi} clips: first read {growth:.1f}x (allowed {allowed:.0f}x)")
        if args.train and sizes:
            path = work / f"store-{max(sizes)}x{args.frames}x{args.dim}"
            print(f"\nvidprobe train {path} --head logreg --pool mean:")
            result["train"] = train(path, work)
    finally:
        if not args.keep:
            for p in made:
                shutil.rmtree(p, ignore_errors=True)
            for p in work.glob("scale-head*"):
                p.unlink(missing_ok=True)
    result["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
