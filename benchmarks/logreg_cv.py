"""C sweep by 5-fold grouped CV vs the single-split C sweep (issue 25's target: CV <= 3x the single split).

Data: ``linear_probe.make_features`` (101 classes, 512-d, 80 train + 20 val clips per class = 10,100 x 512;
50 test clips per class), the linear-probe benchmark's synthetic frozen-encoder features. Clips are cut
into "videos" of ``--clips-per-video`` consecutive clips of a class, for the folds' grouping.

Single split: the product path of ``heads._fit_logreg`` — standardise on train, ``TorchSolver``, ``sweep_C``
on val at the candidate tolerance (``--tol``, default the product's ``sweep_tol``). CV: the pool (train +
val) standardised, ``stats.grouped_stratified_folds``, ``cv.sweep_C_cv`` at the same tolerance, the same
grid, patience and refinement. The pair runs ``--repeats`` times alternating; each repeat's ratio is
reported (wall and process CPU time: this machine is shared, CPU time is the steadier one), with the load
average before each run, and the iterations (the load-free measure of work). Two pairs: one thread each
(single vs CV); and CV fitting ``--workers`` folds at once with one thread each against the faster of
single on one thread and single on ``--workers`` torch threads (the same cores, each used its best way).
Each chosen C is then refit on the pool at full tolerance (1e-4) and scored on the test clips.
The last line is one JSON object with every figure printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from linear_probe import loadavg, make_features  # noqa: E402


def _timed(fn):
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=101)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--per-class", type=int, nargs=3, default=(80, 20, 50), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tol", type=float, default=1e-3, help="candidate fits' gradient tolerance (product sweep_tol)")
    p.add_argument("--workers", type=int, default=2, help="folds fitted at once in the parallel CV run")
    p.add_argument("--clips-per-video", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from pipeline.probe.cv import sweep_C_cv
    from pipeline.probe.logreg import TorchSolver, score, sweep_C
    from pipeline.probe.stats import grouped_stratified_folds

    threadpool_limits(1)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = make_features(args.classes, args.dim, tuple(args.per_class), seed=args.seed)
    classes = sorted(set(ytr))
    index = {c: i for i, c in enumerate(classes)}
    yi_tr, yi_va, yi_te = (np.array([index[c] for c in y]) for y in (ytr, yva, yte))
    K = len(classes)
    sc = StandardScaler().fit(Xtr)
    Ztr, Zva = sc.transform(Xtr).astype(np.float32), sc.transform(Xva).astype(np.float32)
    X_pool, y_pool = np.concatenate([Xtr, Xva]), np.concatenate([yi_tr, yi_va])
    pool_sc = StandardScaler().fit(X_pool)
    Z_pool, Z_te = pool_sc.transform(X_pool).astype(np.float32), pool_sc.transform(Xte).astype(np.float32)
    order = np.argsort(y_pool, kind="stable")  # videos: runs of consecutive clips of one class
    groups = np.empty(len(y_pool), int)
    groups[order] = np.arange(len(y_pool)) // args.clips_per_video
    folds = grouped_stratified_folds(y_pool, groups, args.folds, seed=args.seed)
    figures: dict = {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "workers": args.workers,
        "torch": torch.__version__,
        "n_train": len(yi_tr),
        "n_val": len(yi_va),
        "n_pool": len(y_pool),
        "dim": Xtr.shape[1],
        "classes": K,
        "folds": args.folds,
        "tol": args.tol,
    }
    print(f"CPU: {figures['cpu']} ({os.cpu_count()} cores), torch {torch.__version__}")
    print(f"single split: train {len(yi_tr)} + val {len(yi_va)}; CV: {args.folds} folds over {len(y_pool)} clips")
    TorchSolver(Ztr[:400], yi_tr[:400], K).fit(1.0)  # warm-up: torch.optim's first use imports torch._dynamo

    def single(threads: int):
        torch.set_num_threads(threads)
        return sweep_C(TorchSolver(Ztr, yi_tr, K), Zva, yi_va, tol=args.tol)

    def cv(workers: int):
        torch.set_num_threads(1)
        make = lambda a, b: TorchSolver(a, b, K)  # noqa: E731
        return sweep_C_cv(make, Z_pool, y_pool, folds, tol=args.tol, workers=workers)

    w = args.workers
    plan = {  # name -> (run, the single-split run it is compared with)
        "single": (lambda: single(1), None),
        "cv": (lambda: cv(1), "single"),
        f"single_t{w}": (lambda: single(w), None),
        f"cv_w{w}": (lambda: cv(w), "fastest"),  # vs the faster single-split run of this repeat
    }
    runs: list[dict] = []
    for rep in range(args.repeats):
        row: dict = {}
        for name, (fn, base) in plan.items():
            load = loadavg()
            res, wall, cpu = _timed(fn)
            r = row[name] = dict(wall=wall, cpu=cpu, fits=res.fits, iterations=res.iterations, C=res.C, load=load)
            r["scores"] = {f"{c:.4g}": round(s[0], 4) for c, s in res.scores.items()}
            line = f"{wall:6.1f} s wall {cpu:6.1f} s cpu  fits={res.fits:3d} iterations={res.iterations:4d}"
            if base:
                if base == "fastest":
                    base = min(("single", f"single_t{w}"), key=lambda k: row[k]["wall"])
                r["base"] = base
                b = row[base]
                r.update(
                    wall_ratio=wall / b["wall"], cpu_ratio=cpu / b["cpu"], iter_ratio=res.iterations / b["iterations"]
                )
                line += (
                    f"  vs {base}: {r['wall_ratio']:.2f}x wall {r['cpu_ratio']:.2f}x cpu {r['iter_ratio']:.2f}x iter"
                )
            print(f"  run {rep + 1} {name:9s} {line}  C={res.C:.4g}  load before {load}")
        runs.append(row)
    figures["runs"] = runs
    print("validation top-1 per C (single split | CV pooled):")
    for name in ("single", "cv"):
        print(f"  {name:6s}", runs[-1][name]["scores"])
    for name in ("single", "cv"):  # the chosen C refit on the pool at full tolerance, scored on test
        C = runs[-1][name]["C"]
        figures[f"{name}_test_top1"] = score(TorchSolver(Z_pool, y_pool, K).fit(C), Z_te, yi_te)[0]
    print(
        f"test top-1 of the pool refit at the chosen C: single {figures['single_test_top1']:.4f}, "
        f"CV {figures['cv_test_top1']:.4f}"
    )
    figures["loadavg_after"] = loadavg()
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
