"""Store → pooled features → head → metrics: what ``vidprobe train`` and ``evaluate`` do.

Training records everything needed to reproduce its split and its inputs in the head's sidecar, so
``evaluate`` scores exactly the held-out clips and refuses a store made with a different encoder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, HeadError
from .evaluate import metrics
from .heads import DEFAULT_CS, fit_head, load_head, save_head
from .pooling import get_pool
from .splits import make_splits
from .store import FeatureStore, open_store

EVAL_SPLITS = ("test", "val", "train", "all")


def _features(store: FeatureStore, pool: str, idx: np.ndarray) -> tuple[np.ndarray, list[str]]:
    t = store.table()
    X = store.pooled(get_pool(pool), idx.tolist())
    return X, [t.label[i] for i in idx]


def _split_of(store: FeatureStore, seed: int, val_fraction: float, test_fraction: float):
    t = store.table()
    return make_splits(t.label, t.split, t.video, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)


def train_head(
    store_path: str | Path,
    head_path: str | Path,
    *,
    head: str = "logreg",
    pool: str = "mean",
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    Cs: tuple[float, ...] = DEFAULT_CS,
    store: FeatureStore | None = None,
) -> dict[str, Any]:
    """Fit a head on the store's train split (C picked on val, refit on train+val); save; return metrics."""
    get_pool(pool)  # validate before any work
    store = store or open_store(store_path)
    sp = _split_of(store, seed, val_fraction, test_fraction)
    X_tr, y_tr = _features(store, pool, sp.train)
    X_va, y_va = _features(store, pool, sp.val)
    result = fit_head(head, X_tr, y_tr, X_va if len(sp.val) else None, y_va if len(sp.val) else None, Cs=Cs, seed=seed)
    out: dict[str, Any] = {"head": head, "pool": pool, "C": result.C, "split_source": sp.source, "n_train": int(len(sp.train)), "n_val": int(len(sp.val)), "n_test": int(len(sp.test))}
    out["val_top1_at_C"] = result.val_scores.get(f"{result.C:g}")
    if len(sp.test):
        X_te, y_te = _features(store, pool, sp.test)
        out["test"] = metrics(result.estimator.predict_proba(X_te), y_te, result.classes)
    prov = store.provenance
    meta = {
        "head": head,
        "pool": pool,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "store": str(Path(store.path).resolve()),
        "encoder": prov["encoder"],
        "weights_id": prov["weights_id"],
        "dim": prov["dim"],
        "sampling": prov["sampling"],
        "preprocess": prov["preprocess"],
        "split_source": sp.source,
        "metrics": {k: v for k, v in out.items() if k == "test"},
    }
    save_head(head_path, result, meta)
    out["classes"] = result.classes
    return out


def evaluate_head(store_path: str | Path, head_path: str | Path, *, split: str = "test") -> dict[str, Any]:
    """Score a saved head on a store's split (reproducing the head's own split seed), or on all clips."""
    if split not in EVAL_SPLITS:
        raise ConfigError(f"split={split!r}: allowed values are {', '.join(EVAL_SPLITS)}")
    head = load_head(head_path)
    store = open_store(store_path)
    prov, meta = store.provenance, head.meta
    for key in ("encoder", "weights_id", "sampling"):
        if prov.get(key) != meta.get(key):
            raise HeadError(f"{head_path}: head was trained on features with {key}={meta.get(key)!r} but {store_path} has {prov.get(key)!r}")
    t = store.table()
    if split == "all":
        idx = np.array([i for i, lab in enumerate(t.label) if lab], dtype=int)
    else:
        sp = _split_of(store, int(meta.get("seed", 0)), float(meta.get("val_fraction", 0.2)), float(meta.get("test_fraction", 0.2)))
        idx = getattr(sp, split)
    if len(idx) == 0:
        raise ConfigError(f"{store_path}: no labeled clips in split {split!r}; try --split all")
    X, y = _features(store, meta["pool"], idx)
    out = metrics(head.predict_proba(X), y, head.classes)
    out.update({"split": split, "head": meta.get("head"), "pool": meta.get("pool"), "classes": head.classes})
    return out
