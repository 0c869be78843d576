"""The demo's two tasks over several demo seeds: every pooling x logreg of ``vidprobe demo`` against the heads that
read the frames (attn, gru), as the mean test top-1 over the seeds.

Each seed is a whole demo set (``vidprobe demo --seed S``): its own rendered videos and splits, extracted
with the default encoder (effnet-lite0, 8 frames per clip) into ``--out``/demoS through the library
(``build_demo_videos`` + ``extract``); a set already there is reused (the build stamp and the store's
identity decide, as for ``make demo``). Heads are fitted exactly as the demo fits its rows
(``fit_on_store``: hyperparameters on val, refit on train+val, scored on test, head seed = demo seed).

Timings are wall seconds on this machine; on a shared machine they are noisy (say so next to any figure).
The last line is one JSON object with every figure printed.

    python benchmarks/demo_temporal.py                      # seeds 0 1 2
    python benchmarks/demo_temporal.py --seeds 0 --tasks how
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.splits import SplitSpec  # noqa: E402
from pipeline.demo.run import DEMO_POOLS, TEMPORAL_DEMO_HEADS  # noqa: E402
from pipeline.probe.sequences import SEQUENCE_POOL  # noqa: E402
from pipeline.probe.train import fit_on_store, pooled_features  # noqa: E402
from pipeline.versions import cpu_model  # noqa: E402


def build_stores(out: Path, seed: int) -> dict[str, Path]:
    """The demo's feature stores for one seed (built once, then reused)."""
    from pipeline.config import load_config
    from pipeline.data.manifest import load_manifest
    from pipeline.demo.videos import build_demo_videos, build_time
    from pipeline.encoders import create_encoder
    from pipeline.extract.entry import extract

    built = build_time(out / "data")
    manifests = build_demo_videos(out / "data", seed=seed, progress=False)
    if build_time(out / "data") != built:  # new videos: the old ones' features must not be reused
        shutil.rmtree(out / "features", ignore_errors=True)
    cfg = load_config(None, ["encoder=effnet-lite0"])
    encoder = None
    stores = {}
    for task, csv_path in manifests.items():
        encoder = encoder or create_encoder(cfg.encoders[0], device=cfg.extract.device, precision=cfg.extract.precision)
        extract(load_manifest(csv_path), out / "features" / task, cfg, encoders=[encoder], progress=False)
        stores[task] = out / "features" / task
    return stores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo-bench-out", help="where the demo sets are built (and reused)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tasks", nargs="+", default=["how", "what"], choices=["how", "what"])
    args = ap.parse_args()
    from pipeline.store import open_store

    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (shared machines are noisy)"
    )
    rows = [(pool, "logreg") for pool in DEMO_POOLS] + [(SEQUENCE_POOL, h) for h in TEMPORAL_DEMO_HEADS]
    top1: dict[str, dict[str, list[float]]] = {t: {f"{h}/{p}": [] for p, h in rows} for t in args.tasks}
    secs: dict[str, dict[str, list[float]]] = {t: {f"{h}/{p}": [] for p, h in rows} for t in args.tasks}
    for seed in args.seeds:
        t0 = time.perf_counter()
        paths = build_stores(Path(args.out) / f"demo{seed}", seed)
        print(f"seed {seed}: demo stores ready ({time.perf_counter() - t0:.0f} s)")
        for task in args.tasks:
            store = open_store(paths[task])
            for pool, head in rows:
                X = pooled_features(store, pool)
                t0 = time.perf_counter()
                _, rec = fit_on_store(store, head, pool, split=SplitSpec(seed=seed), X_all=X)
                key = f"{head}/{pool}"
                top1[task][key].append(float(rec["test"]["top1"]))
                secs[task][key].append(time.perf_counter() - t0)
                print(f"  seed {seed} {task:4s} {key:14s} test top-1 {rec['test']['top1']:.3f}  {rec['hparams']}")
    out: dict = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)}
    out["seeds"] = args.seeds
    for task in args.tasks:
        print(f"{task}-task, mean test top-1 over seeds {args.seeds}:")
        for key, accs in top1[task].items():
            print(
                f"  {key:14s} {np.mean(accs):.3f}  (each: {', '.join(f'{a:.3f}' for a in accs)}; "
                f"fit {np.mean(secs[task][key]):.1f} s)"
            )
        means = {k: round(float(np.mean(v)), 4) for k, v in top1[task].items()}
        best_pool = max((k for k in means if k.startswith("logreg/")), key=lambda k: means[k])
        out[task] = {"mean_top1": means, "per_seed_top1": top1[task], "best_pooling": best_pool}
        for head in TEMPORAL_DEMO_HEADS:
            out[task][f"{head}_minus_best_pooling"] = round(means[f"{head}/{SEQUENCE_POOL}"] - means[best_pool], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
