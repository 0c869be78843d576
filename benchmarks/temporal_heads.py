"""Temporal heads on an order-dependent set: attn / gru against mean, seg4 and tdiff pooling + logreg, and the
parallel lr x wd sweep against the same candidates fitted one after another.

Data (synthetic, shaped like frozen-encoder frame features): ``--clips`` clips x ``--frames`` frames x
``--dim`` dims, 10 classes. Every clip has a strong scene vector of its own in all frames, per-frame
noise, and two *event* frames at adjacent random positions: event pair p (of 5) in one order is class
2p, in the other order class 2p + 1. The set of frames is the same for both orders, so order-blind
pooling (mean) can at best name the pair (top-1 <= 0.5); ``tdiff`` (late half minus early half) sees the
order only when the two events straddle the middle, ``seg4`` only when they fall in different quarters.
Splits 60/20/20 train/val/test.

Everything runs through the product path, ``pipeline.probe.heads.fitting.fit_head``: pooled heads are the
default logreg (C swept on val, refit on train+val), temporal heads the default recipe with its lr x wd
grid trained as one batched model, then the winner refit on train+val. The sequential comparison trains
the very same candidates with the same recipe one at a time (``train_candidates`` with one candidate).

Timings are wall seconds on this machine, measured side by side in one run; on a shared machine they are
noisy (say so next to any figure). The last line is one JSON object with every figure printed.

    python benchmarks/temporal_heads.py            # 10k x 8 x 512, the issue's size
    python benchmarks/temporal_heads.py --quick    # 1k clips, a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.probe.heads.fitting import fit_head  # noqa: E402
from pipeline.probe.heads.settings import HeadConfig  # noqa: E402
from pipeline.probe.pooling import get_pool  # noqa: E402
from pipeline.probe.sequences import FrameSequences  # noqa: E402
from pipeline.probe.temporal.arch import temporal_arch  # noqa: E402
from pipeline.probe.temporal.inputs import input_stats  # noqa: E402
from pipeline.probe.temporal.train import train_candidates  # noqa: E402
from pipeline.versions import cpu_model

N_PAIRS = 5


def make_clips(n: int, T: int, dim: int, seed: int = 0):
    """(FrameSequences, labels, splits) of the order-dependent set described above."""
    rng = np.random.default_rng(seed)
    events = rng.normal(size=(N_PAIRS, 2, dim)).astype(np.float32) * 1.2
    y = rng.integers(0, 2 * N_PAIRS, size=n)
    x = rng.normal(size=(n, T, dim)).astype(np.float32)  # per-frame noise
    x += 2.0 * rng.normal(size=(n, 1, dim)).astype(np.float32)  # the clip's scene, in every frame
    first = rng.integers(0, T - 1, size=n)
    pair, order = y // 2, y % 2
    rows = np.arange(n)
    x[rows, first] += events[pair, order]
    x[rows, first + 1] += events[pair, 1 - order]
    times = np.tile(np.arange(T, dtype=np.float64) / 2.0, (n, 1))  # 2 frames per second
    seqs = FrameSequences(x, np.tile(np.linspace(0, 1, T, dtype=np.float32), (n, 1)), np.ones((n, T), bool), times)
    split = np.array(["train"] * n, dtype=object)
    perm = rng.permutation(n)
    split[perm[: n // 5]] = "val"
    split[perm[n // 5 : 2 * n // 5]] = "test"
    return seqs, np.array([f"class{c}" for c in y]), split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=10_000)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=15, help="most epochs per candidate (early stopping on val)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="of the training steps: auto (bf16 where native) | fp32 | bf16")
    ap.add_argument("--no-sequential", action="store_true", help="skip the one-after-another comparison")
    ap.add_argument("--quick", action="store_true", help="1000 clips, 4 epochs: a smoke run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.clips, args.epochs = 1000, 4
    import torch

    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f} (timings on a shared machine are noisy)"
    )
    seqs, labels, split = make_clips(args.clips, args.frames, args.dim, args.seed)
    idx = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    print(f"data: {args.clips} clips x {args.frames} frames x {args.dim}, 10 classes (order decides half the label)")
    out: dict = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "clips": args.clips,
        "frames": args.frames,
        "dim": args.dim,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
    }
    y_test = labels[idx["test"]]

    for pool in ("mean", "seg4", "tdiff"):
        f = get_pool(pool)
        X = np.stack([f(c) for c in seqs.x])
        t0 = time.perf_counter()
        res = fit_head("logreg", X[idx["train"]], labels[idx["train"]], X[idx["val"]], labels[idx["val"]])
        secs = time.perf_counter() - t0
        pred = np.array(res.classes)[res.estimator.predict_proba(X[idx["test"]]).argmax(axis=1)]
        acc = float(np.mean(pred == y_test))
        print(f"  {pool:6s} + logreg  test top-1 {acc:.3f}  ({secs:.1f} s, C={res.hparams['C']:.3g})")
        out[f"{pool}_logreg_top1"], out[f"{pool}_logreg_seconds"] = round(acc, 4), round(secs, 2)

    for kind in ("attn", "gru"):
        cfg = HeadConfig(
            kind=kind, epochs=args.epochs, batch_size=args.batch_size, device=args.device, precision=args.precision
        )
        t0 = time.perf_counter()
        res = fit_head(cfg, seqs[idx["train"]], labels[idx["train"]], seqs[idx["val"]], labels[idx["val"]])
        secs = time.perf_counter() - t0
        pred = np.array(res.classes)[res.estimator.predict_proba(seqs[idx["test"]]).argmax(axis=1)]
        acc = float(np.mean(pred == y_test))
        info = res.info
        print(
            f"  {kind:6s} (frames) test top-1 {acc:.3f}  sweep of {info['candidates']} candidates "
            f"{info['sweep_seconds']:.1f} s ({info['sweep_epochs']} epochs), "
            f"refit {info.get('refit_seconds', 0):.1f} s, "
            f"total {secs:.1f} s; chose lr={res.hparams['lr']:g} wd={res.hparams['wd']:g}; "
            f"components {res.estimator.arch['components']} (0 = every dimension), trend {res.estimator.arch['trend']}"
        )
        out.update(
            {
                f"{kind}_top1": round(acc, 4),
                f"{kind}_components": res.estimator.arch["components"],
                f"{kind}_sweep_seconds": info["sweep_seconds"],
                f"{kind}_sweep_epochs": info["sweep_epochs"],
                f"{kind}_refit_seconds": info.get("refit_seconds"),
                f"{kind}_total_seconds": round(secs, 2),
                f"{kind}_candidates": info["candidates"],
                f"{kind}_chosen": res.hparams,
                f"{kind}_precision": info["precision"],
            }
        )
        if kind == "attn" and not args.no_sequential:
            # the same candidates, recipe, data and epochs, one after another (no early stop, like for like)
            recipe = dataclasses.replace(
                cfg.settings,
                epochs=args.epochs,
                early_stop=0,
                device=args.device,
                precision=args.precision,
            )
            classes = sorted(set(labels))
            yi = np.array([classes.index(c) for c in labels])
            train = (seqs[idx["train"]], yi[idx["train"]])
            val = (seqs[idx["val"]], yi[idx["val"]])
            # as fit_head decides it
            arch = temporal_arch(cfg.kind, cfg.settings, args.dim, 10, (len(train[0]), args.frames))
            stats = input_stats(train[0], cfg.inputs, arch["components"])
            t0 = time.perf_counter()
            together = train_candidates(arch, recipe, recipe.candidates, train, val, stats, seed=0)
            t_par = time.perf_counter() - t0
            t0 = time.perf_counter()
            for cand in recipe.candidates:
                train_candidates(arch, recipe, [cand], train, val, stats, seed=0)
            t_seq = time.perf_counter() - t0
            print(
                f"  attn sweep, {len(recipe.candidates)} candidates x {args.epochs} epochs: parallel {t_par:.1f} s, "
                f"one after another {t_seq:.1f} s ({t_seq / t_par:.2f}x)  [{together.steps} steps]"
            )
            out.update(
                attn_parallel_seconds=round(t_par, 2),
                attn_sequential_seconds=round(t_seq, 2),
                attn_parallel_speedup=round(t_seq / t_par, 2),
            )
    pooled = max(out[f"{p}_logreg_top1"] for p in ("mean", "seg4", "tdiff"))
    out["attn_beats_every_pooling"] = out["attn_top1"] > pooled
    print(json.dumps(out))


if __name__ == "__main__":
    main()
