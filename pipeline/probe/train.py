"""Store → pooled features → head → metrics: what ``vidprobe train``, ``evaluate`` and ``benchmark`` do.

Training records everything needed to reproduce its split and its inputs in the head's sidecar, so
``evaluate`` scores exactly the held-out clips and refuses a store made with a different encoder.
``fit_on_store`` is the one place a head meets a store; ``train_head`` saves its result and the
benchmark runs it over many settings without saving.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import EVAL_SPLITS
from ..data.splits import Splits, SplitsFrom, SplitSpec, few_shot, make_splits, resplit, short_of_shots, video_group
from ..errors import ConfigError, HeadError, check_choice
from ..store import FeatureStore, open_store
from .heads.files import HEAD_FORMATS, head_format, load_head, save_head, sidecar_path
from .heads.fitting import FitResult, fit_head, progress_shown
from .heads.registry import head_kind, temporal_head_names
from .heads.settings import HeadConfig
from .heads.zeroshot import zeroshot_encoder
from .metrics import clip_correct, metrics
from .pooling import get_pool
from .repeats import over_seeds, repeat_note, repeat_seeds
from .sequences import SEQUENCE_POOL, FrameSequences, store_sequences


def split_assignment(splits_from: SplitsFrom) -> dict[tuple[str, float, float], str]:
    """{clip key: split} from another manifest, e.g. ``SplitsFrom("ucfTrainTestlist", split=2)``."""
    from ..data.manifest import load_manifest

    src = splits_from
    m = load_manifest(src.source, src.root, format=src.format, split=src.split, check_files=False)
    return {it.key: it.split for it in m.items}


def store_splits(store: FeatureStore, spec: SplitSpec | None = None, *, require_train: bool = True) -> Splits:
    """Train/val/test of a store's clips: the manifest's splits (or ``spec.splits_from``'s), else a seeded split."""
    spec = (spec or SplitSpec()).validate()
    src = spec.splits_from
    t = store.index()
    splits = t.split if src is None else resplit(t.keys(), split_assignment(src))
    # carved on the clips in key order, so a seed gives the same split whatever order extraction wrote them in
    order = in_clip_order(t, np.arange(len(t.video)))
    sp = make_splits(
        [t.label[i] for i in order],
        [splits[i] for i in order],
        [t.video[i] for i in order],
        seed=spec.seed,
        val_fraction=spec.val_fraction,
        test_fraction=spec.test_fraction,
        require_train=require_train,
    )
    # train and val in key order (what a fit sees, so it does not depend on the store's order); test in store order
    sp.train, sp.val, sp.test = order[np.sort(sp.train)], order[np.sort(sp.val)], np.sort(order[sp.test])
    sp.labels = t.label  # the indices are the store's now; so must the labels they look up be
    if src is not None:
        sp.source = f"{sp.source}:{Path(src.source).name}#{src.split}"
    return sp


def pooled_features(store: FeatureStore, pool: str) -> np.ndarray | FrameSequences:
    """Every clip of the store pooled once (row i = clip i): the benchmark reuses it across heads.
    ``pool="frames"`` (the temporal heads' input): every clip's frame sequence instead."""
    return clip_inputs(store, pool)


def clip_inputs(store: FeatureStore, pool: str, indices: list[int] | None = None) -> np.ndarray | FrameSequences:
    """What a head reads for the store's clips (all, or ``indices``): pooled rows, or frame sequences."""
    if pool == SEQUENCE_POOL:
        return store_sequences(store, indices)
    return store.pooled(get_pool(pool), indices, progress=indices is None and progress_shown())


def in_clip_order(index: Any, rows: np.ndarray) -> np.ndarray:
    """``rows`` sorted by clip key (video, start, end): a head fitted on them does not depend on the order in
    which extraction happened to finish the clips (decoder workers write shards in completion order, and a
    fit's sums and mini-batches follow its rows' order)."""
    rows = np.asarray(rows, dtype=np.int64)
    video = np.asarray(index.video, dtype=object)[rows]
    start = np.nan_to_num(np.asarray(index.start, dtype=np.float64)[rows], nan=-1.0)
    end = np.nan_to_num(np.asarray(index.end, dtype=np.float64)[rows], nan=-1.0)
    if not len(rows):
        return rows
    codes = np.unique(video, return_inverse=True)[1].reshape(-1)  # rank of each video path among them
    return rows[np.lexsort((end, start, codes))]


def head_pool(kind: str, pool: str | None) -> str:
    """The pooling a head kind reads: temporal heads read the frames themselves; others default to mean."""
    if head_kind(kind).temporal:
        if pool not in (None, SEQUENCE_POOL):
            raise ConfigError(
                f"pool={pool!r}: head {kind!r} reads every frame of a clip; leave the pooling out (or pool=frames)"
            )
        return SEQUENCE_POOL
    if pool == SEQUENCE_POOL:
        raise ConfigError(
            f"pool={pool!r}: only the temporal heads ({', '.join(temporal_head_names())}) read frames; "
            f"head {kind!r} needs a pooling"
        )
    pool = pool or "mean"
    get_pool(pool)  # validate before any work
    return pool


def fit_on_store(
    store: FeatureStore,
    head: HeadConfig | str = "logreg",
    pool: str | None = None,
    *,
    split: SplitSpec | None = None,
    X_all: np.ndarray | FrameSequences | None = None,
    encoder: Any = None,
    strict: bool = False,
) -> tuple[FitResult, dict[str, Any]]:
    """Fit a head on the store's train split (hyperparameter picked on val, or by CV grouped by video where
    val is thin; refit on train+val) and score it on test. ``split.shots``: train on that many clips per
    class (drawn with ``split.shot_seed``), keep val for selection only (no refit); ``strict``: a class with
    fewer training clips than ``shots`` is a ConfigError, not a warning. Returns the fit and a JSON-ready
    record of what was done, with ``selection``, ``missing_classes`` and one-line ``warnings``."""
    cfg = HeadConfig.from_dict(head) if isinstance(head, str) else head.validate()
    pool = head_pool(cfg.kind, pool)
    spec = (split or SplitSpec()).validate()
    t0 = time.perf_counter()
    _import_fit_libraries(cfg)
    t_startup = time.perf_counter()
    sp = store_splits(store, spec, require_train=cfg.kind != "zeroshot")
    t = store.index()
    warnings = split_warnings(sp, spec, strict)
    t_index = time.perf_counter()
    X_all = pooled_features(store, pool) if X_all is None else X_all
    t_pool = time.perf_counter()
    train = sp.train if spec.shots is None else few_shot(t.label, t.video, sp.train, spec.shots, spec.shot_seed)
    if cfg.kind == "zeroshot":
        result = _fit_zeroshot(store, cfg, pool, X_all, encoder)
    else:
        result = _fit_trained(cfg, X_all, t, train, sp.val, spec)
    out: dict[str, Any] = {
        "head": cfg.kind,
        "head_settings": cfg.to_dict(),
        "pool": pool,
        "seed": spec.seed,
        "shots": spec.shots,
        "shot_seed": spec.shot_seed if spec.shots is not None else None,
        "hparams": result.hparams,
        "C": result.C,
        "val_top1": max(result.val_scores.values()) if result.val_scores else None,
        "selection": result.selection,
        "split_source": sp.source,
        "n_train": 0 if cfg.kind == "zeroshot" else int(len(train)),
        "n_val": int(len(sp.val)),
        "n_test": int(len(sp.test)),
        "missing_classes": sp.missing(),
        "warnings": warnings + result.warnings,
        "fit_info": result.info,
        "classes": result.classes,
    }
    t_fit = time.perf_counter()
    if len(sp.test):
        out["test"], out["test_clips"] = _score_test(result, X_all[sp.test], sp.test, t)
    # where the time went (``vidprobe train`` prints it): start-up (importing the fit's libraries), index +
    # splits, pooling (or its cache), fit, test scoring
    out["seconds"] = {
        "startup": t_startup - t0,
        "index": t_index - t_startup,
        "pool": t_pool - t_index,
        "fit": t_fit - t_pool,
        "test": time.perf_counter() - t_fit,
        "total": time.perf_counter() - t0,
    }
    return result, out


def _import_fit_libraries(cfg: HeadConfig) -> None:
    """Import the libraries the head's fit runs on now, so its time is the fit's alone (``import torch`` or
    scikit-learn costs seconds, a small fit milliseconds): scikit-learn for a trained head, torch for a head
    with a device setting (unless scikit-learn is its solver)."""
    import importlib

    settings = cfg.to_dict()
    names = ["sklearn.base"] if head_kind(cfg.kind).trained else []
    if "device" in settings and settings.get("solver", "torch") == "torch":
        names.append("torch")
    for name in names:
        importlib.import_module(name)


def split_warnings(sp: Splits, spec: SplitSpec, strict: bool = False) -> list[str]:
    """One line per problem of the split a fit should not hide: classes missing from a split, and classes
    with fewer training clips than ``spec.shots`` (a ConfigError with ``strict``)."""
    lines = []
    missing = sp.missing()
    if missing:
        lines.append(
            "classes missing from a split: " + "; ".join(f"{name} lacks {', '.join(c)}" for name, c in missing.items())
        )
    short = short_of_shots(sp.labels, sp.train, spec.shots) if spec.shots is not None else {}
    if short:
        line = f"shots={spec.shots}: {len(short)} classes have fewer training clips, all of them used: " + ", ".join(
            f"{c} ({n})" for c, n in short.items()
        )
        if strict:
            raise ConfigError(line)
        lines.append(line)
    return lines


def _fit_zeroshot(store: FeatureStore, cfg: HeadConfig, pool: str, X_all, encoder: Any) -> FitResult:
    prov = store.provenance
    classes = sorted({lab for lab in store.index().label if lab})
    if X_all.shape[1] != int(prov["dim"]):
        raise ConfigError(
            f"zeroshot: pool={pool!r} makes {X_all.shape[1]}-d vectors; prompts need the {prov['dim']}-d "
            "embedding itself: use mean, max or center"
        )
    encoder = encoder or zeroshot_encoder(prov.get("encoder"), weights_id=prov.get("weights_id"), device=cfg.device)
    return fit_head(cfg, X_all[:0], [], classes=classes, encoder=encoder)


def _fit_trained(cfg: HeadConfig, X_all, t: Any, train: np.ndarray, val: np.ndarray, spec: SplitSpec) -> FitResult:
    """``fit_head`` on the train rows and val rows (both in clip-key order, ``store_splits``), each clip
    grouped by its source video (``video_group``) so that CV never splits a video's windows."""
    labels = np.array(t.label, dtype=object)
    groups = np.array([video_group(v) for v in t.video], dtype=object)
    has_val = len(val) > 0
    return fit_head(
        cfg,
        X_all[train],
        labels[train].tolist(),
        X_all[val] if has_val else None,
        labels[val].tolist() if has_val else None,
        seed=spec.seed,
        refit=spec.shots is None,
        groups=groups[train].tolist(),
        groups_val=groups[val].tolist() if has_val else None,
    )


def _score_test(
    result: FitResult, X: np.ndarray | FrameSequences, rows: np.ndarray, index: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A fit's test metrics (intervals over the clips' source videos), and per test clip its store row and
    whether the fit got it right: what a paired comparison of two fits needs (not saved with the head)."""
    proba, y = result.estimator.predict_proba(X), [index.label[i] for i in rows]
    m = metrics(proba, y, result.classes, [video_group(index.video[i]) for i in rows])
    return m, {"rows": rows.tolist(), "correct": clip_correct(proba, y, result.classes).tolist()}


def train_head(
    store_path: str | Path,
    head_path: str | Path,
    *,
    head: HeadConfig | str = "logreg",
    pool: str | None = None,
    split: SplitSpec | None = None,
    store: FeatureStore | None = None,
    strict: bool = False,
    repeats: int = 1,
) -> dict[str, Any]:
    """Fit a head on a store (see ``fit_on_store``), save it with its sidecar, return the record.
    ``repeats``: also refit on the next seeds' splits; the head saved is the first seed's, the record's
    ``repeats`` holds every seed's test scores (mean ± std)."""
    check_head_output(head_path)  # a bad file name or folder fails before the work
    kind = head if isinstance(head, str) else head.kind
    if head_kind(kind).temporal and Path(head_path).suffix != ".npz":
        raise ConfigError(f"{head_path}: a {kind} head is saved as plain arrays; name the file NAME.npz")
    store = store or open_store(store_path)
    spec = (split or SplitSpec()).validate()
    result, out = fit_on_store(store, head, pool, split=spec, strict=strict)
    out.pop("test_clips", None)
    if repeats > 1:
        out["repeats"] = _repeat(store, head, pool, spec, repeats, out)
    prov = store.provenance
    meta = {
        **{k: out[k] for k in ("head", "head_settings", "pool", "split_source")},
        **spec.to_dict(),  # seed, val_fraction, test_fraction, shots, shot_seed, splits_from: what evaluate reproduces
        "store": str(Path(store.path).resolve()),
        "encoder": prov["encoder"],
        "weights_id": prov["weights_id"],
        "dim": prov["dim"],
        "sampling": prov["sampling"],
        "preprocess": prov["preprocess"],
        "metrics": {k: v for k, v in out.items() if k == "test"},
        **{k: v for k, v in out.items() if k == "repeats"},
    }
    try:
        save_head(head_path, result, meta)
    except OSError as exc:
        raise HeadError(f"{head_path}: cannot write the head ({exc.strerror or exc}); choose another -o") from None
    return out


def _repeat(
    store: FeatureStore, head: HeadConfig | str, pool: str | None, spec: SplitSpec, repeats: int, first: dict[str, Any]
) -> dict[str, Any]:
    """The test scores of ``repeats`` fits on the split seeds spec.seed, spec.seed+1, … (the first is ``first``)."""
    X_all = pooled_features(store, first["pool"])

    def fit(seed: int) -> dict[str, Any]:
        if seed == spec.seed:
            return first
        return fit_on_store(store, head, pool, split=dataclasses.replace(spec, seed=seed), X_all=X_all)[1]

    _, summary = over_seeds(fit, repeat_seeds(spec.seed, repeats), lambda rec: rec.get("test"))
    return summary | {"note": repeat_note(first["split_source"])}


def check_head_output(head_path: str | Path) -> None:
    """Refuse, before any work, a head path that cannot be written: a wrong suffix, a folder that cannot be
    created, or the name of another head's sidecar. ``x.npz``, ``x.skops`` and ``x.joblib`` share ``x.json``:
    writing one would break the other's checksum, so the second is refused naming both."""
    p = Path(head_path)
    head_format(p)
    for suffix in HEAD_FORMATS:
        other = p.with_suffix(suffix)
        if suffix != p.suffix and other.exists() and sidecar_path(p).exists():
            raise HeadError(
                f"{p}: its sidecar {sidecar_path(p).name} belongs to the existing head {other}; "
                f"choose another name, or delete {other.name} and {sidecar_path(p).name} first"
            )
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HeadError(
            f"{p}: cannot create its folder {p.parent} ({exc.strerror or exc}); choose another -o"
        ) from None


def evaluate_head(
    store_path: str | Path, head_path: str | Path, *, split: str = "test", trust: bool = False
) -> dict[str, Any]:
    """Score a saved head on a store's split (reproducing the head's own split), or on all clips."""
    check_choice(split, EVAL_SPLITS, "split")
    head = load_head(head_path, trust=trust)
    store = open_store(store_path)
    prov, meta = store.provenance, head.meta
    for key in ("encoder", "weights_id", "sampling"):
        if prov.get(key) != meta.get(key):
            raise HeadError(
                f"{head_path}: head was trained on features with "
                f"{key}={meta.get(key)!r} but {store_path} has {prov.get(key)!r}"
            )
    t = store.index()
    if split == "all":
        idx = np.array([i for i, lab in enumerate(t.label) if lab], dtype=int)
    else:
        spec = SplitSpec.from_dict(meta, prefix=f"{sidecar_path(head_path)}: ")  # old sidecars hold the same keys
        sp = store_splits(store, spec, require_train=False)  # scoring fits nothing: a test-only store is fine
        idx = getattr(sp, split)
    if len(idx) == 0:
        raise ConfigError(f"{store_path}: no labeled clips in split {split!r}; try --split all")
    X = clip_inputs(store, meta["pool"], idx.tolist())
    y = [t.label[i] for i in idx]
    # labels the head never saw count as wrong and are named in unseen_classes (metrics); the caller warns
    out = metrics(head.predict_proba(X), y, head.classes, [video_group(t.video[i]) for i in idx])
    out.update({"split": split, "head": meta.get("head"), "pool": meta.get("pool"), "classes": head.classes})
    if meta.get("repeats"):
        out["train_repeats"] = meta["repeats"]  # the spread over split seeds that training measured
    return out


__all__ = [
    "EVAL_SPLITS",
    "SplitSpec",
    "SplitsFrom",
    "evaluate_head",
    "fit_on_store",
    "clip_inputs",
    "head_pool",
    "pooled_features",
    "split_assignment",
    "store_splits",
    "check_head_output",
    "split_warnings",
    "train_head",
]
