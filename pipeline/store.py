"""HDF5 feature store: per-frame embeddings in crash-safe shard files under one folder.

Layout of a store folder ``STORE/``::

    store.json            provenance: encoder spec, weights identity, preprocessing, sampling, dim, versions
    shards/*.h5           finished shards (each written as *.h5.tmp, fsynced, then renamed atomically),
                          named PREFIX-<time>-<id>.h5; PREFIX says which writer (job shard) wrote them
    runs/PREFIX.json      last run of each writer: state, clips assigned/done/failed, host (for `info`)

Layout of one shard (readable with plain h5py)::

    frames/embedding (F, D) float32|float16    frames/timestamp (F,) float64 seconds
    clips/offset (N+1,) int64   clip i owns frames offset[i]:offset[i+1]
    clips/video (N,) str        path relative to the manifest root (the clip's identity)
    clips/start, clips/end (N,) float64 seconds requested by the manifest (NaN = open end)
    clips/label, clips/split (N,) str
    failures/{path,stage,error} (M,) str, failures/{start,end,time} (M,) float64
    attrs: provenance (JSON), schema_version

A killed writer leaves at most one ``*.tmp`` file, which readers ignore; everything renamed is whole.
Nothing here imports torch: the store is readable on any machine with h5py and numpy.
"""
from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import StoreError

SCHEMA_VERSION = 1
PROVENANCE_FILE = "store.json"
SHARD_DIR = "shards"
# Provenance keys that must match for two extractions to share a store.
IDENTITY_KEYS = ("schema_version", "encoder", "weights_id", "dim", "preprocess", "sampling")

Key = tuple[str, float, float]


def clip_key(video: str, start: float, end: float) -> Key:
    """Identity of a clip: its path and requested window (open ends as -1)."""
    return (video, -1.0 if start is None or math.isnan(start) else float(start), -1.0 if end is None or math.isnan(end) else float(end))


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _str_dataset(group, name: str, values: list[str]) -> None:
    import h5py

    group.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype("utf-8"))


def _read_str(ds) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in ds[()]]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe_differences(old: dict, new: dict) -> list[str]:
    """Human-readable list of identity keys whose values differ."""
    diffs = []
    for key in IDENTITY_KEYS:
        a, b = old.get(key), new.get(key)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(f"{key}: store has {json.dumps(a, sort_keys=True)}, this job has {json.dumps(b, sort_keys=True)}")
    return diffs


@dataclass
class _Pending:
    videos: list[str] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    timestamps: list[np.ndarray] = field(default_factory=list)
    failures: list[tuple[str, float, float, str, str, float]] = field(default_factory=list)
    frames: int = 0

    def __len__(self) -> int:
        return len(self.videos) + len(self.failures)


class ShardWriter:
    """Buffers finished clips and writes them as whole shard files (tmp → fsync → rename).

    Writing a shard in one go keeps a half-written shard impossible to observe, and buffering bounds
    the loss from a kill to ``shard_size`` clips.
    """

    def __init__(self, store: "FeatureStore", shard_size: int = 512, max_frames: int = 1 << 16, dtype: str = "float32", prefix: str = "shard"):
        self.store = store
        self.shard_size = shard_size
        self.max_frames = max_frames
        self.dtype = np.dtype(dtype)
        self.prefix = prefix
        self.pending = _Pending()
        self.written: list[Path] = []

    def add(self, video: str, start: float | None, end: float | None, label: str, split: str, embeddings: np.ndarray, timestamps: np.ndarray) -> None:
        if embeddings.ndim != 2 or embeddings.shape[0] != len(timestamps):
            raise StoreError(f"{video}: embeddings {embeddings.shape} do not match {len(timestamps)} timestamps")
        if not np.all(np.isfinite(embeddings)):
            raise StoreError(f"{video}: embeddings contain NaN or Inf; not stored")
        p = self.pending
        p.videos.append(video)
        p.starts.append(_nan(start))
        p.ends.append(_nan(end))
        p.labels.append(label)
        p.splits.append(split)
        p.embeddings.append(np.asarray(embeddings, dtype=self.dtype))
        p.timestamps.append(np.asarray(timestamps, dtype=np.float64))
        p.frames += len(timestamps)
        self._maybe_flush()

    def add_failure(self, video: str, start: float | None, end: float | None, stage: str, error: str) -> None:
        self.pending.failures.append((video, _nan(start), _nan(end), stage, error, time.time()))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self.pending) >= self.shard_size or self.pending.frames >= self.max_frames:
            self.flush()

    def flush(self) -> Path | None:
        """Write what is buffered as one finished shard; returns its path (None if nothing buffered)."""
        if not len(self.pending):
            return None
        import h5py

        p, dim = self.pending, int(self.store.provenance["dim"])
        shard_dir = self.store.path / SHARD_DIR
        shard_dir.mkdir(parents=True, exist_ok=True)
        name = f"{self.prefix}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.h5"  # sorts by finish time
        final = shard_dir / name
        tmp = shard_dir / (name + ".tmp")
        emb = np.concatenate(p.embeddings) if p.embeddings else np.zeros((0, dim), self.dtype)
        ts = np.concatenate(p.timestamps) if p.timestamps else np.zeros((0,), np.float64)
        offsets = np.zeros(len(p.videos) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(t) for t in p.timestamps]) if p.timestamps else []
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["schema_version"] = SCHEMA_VERSION
                f.attrs["provenance"] = json.dumps(self.store.provenance, sort_keys=True)
                frames = f.create_group("frames")
                frames.create_dataset("embedding", data=emb.reshape(-1, dim), chunks=True if len(emb) else None)
                frames.create_dataset("timestamp", data=ts)
                clips = f.create_group("clips")
                clips.create_dataset("offset", data=offsets)
                _str_dataset(clips, "video", p.videos)
                clips.create_dataset("start", data=np.array(p.starts, dtype=np.float64))
                clips.create_dataset("end", data=np.array(p.ends, dtype=np.float64))
                _str_dataset(clips, "label", p.labels)
                _str_dataset(clips, "split", p.splits)
                fail = f.create_group("failures")
                cols = list(zip(*p.failures)) if p.failures else [[], [], [], [], [], []]
                _str_dataset(fail, "path", list(cols[0]))
                fail.create_dataset("start", data=np.array(cols[1], dtype=np.float64))
                fail.create_dataset("end", data=np.array(cols[2], dtype=np.float64))
                _str_dataset(fail, "stage", list(cols[3]))
                _str_dataset(fail, "error", list(cols[4]))
                fail.create_dataset("time", data=np.array(cols[5], dtype=np.float64))
                f.flush()
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            _fsync_dir(shard_dir)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.pending = _Pending()
        self.written.append(final)
        self.store.invalidate()
        return final

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Finished clips are kept even when the job stops on an error or Ctrl-C.
        self.flush()


@dataclass
class ClipTable:
    """All clips of a store in memory, de-duplicated by key (first finished shard wins)."""

    video: list[str]
    start: np.ndarray
    end: np.ndarray
    label: list[str]
    split: list[str]
    offset: np.ndarray  # (N+1,)
    embedding: np.ndarray  # (F, D)
    timestamp: np.ndarray  # (F,)

    def __len__(self) -> int:
        return len(self.video)

    def frames(self, i: int) -> np.ndarray:
        return self.embedding[self.offset[i] : self.offset[i + 1]]

    def keys(self) -> list[Key]:
        return [clip_key(v, s, e) for v, s, e in zip(self.video, self.start, self.end)]


class FeatureStore:
    """A store folder: provenance plus finished shards, read as one table."""

    def __init__(self, path: Path, provenance: dict[str, Any]):
        self.path = path
        self.provenance = provenance
        self._table: ClipTable | None = None
        self._failures: list[dict] | None = None

    # -- discovery -----------------------------------------------------------------------------
    def shard_paths(self) -> list[Path]:
        d = self.path / SHARD_DIR
        return sorted(d.glob("*.h5")) if d.is_dir() else []

    def invalidate(self) -> None:
        self._table = None
        self._failures = None

    # -- reading -------------------------------------------------------------------------------
    def _read_shards(self) -> tuple[ClipTable, list[dict]]:
        import h5py

        videos: list[str] = []
        starts, ends, labels, splits, embs, tss, lengths = [], [], [], [], [], [], []
        failures: list[dict] = []
        seen: set[Key] = set()
        dim = int(self.provenance["dim"])
        for shard in self.shard_paths():
            try:
                with h5py.File(shard, "r") as f:
                    c = f["clips"]
                    off = c["offset"][()]
                    v = _read_str(c["video"])
                    s, e = c["start"][()], c["end"][()]
                    lab, spl = _read_str(c["label"]), _read_str(c["split"])
                    emb = f["frames/embedding"][()]
                    ts = f["frames/timestamp"][()]
                    fl = f["failures"]
                    fcols = [_read_str(fl["path"]), fl["start"][()], fl["end"][()], _read_str(fl["stage"]), _read_str(fl["error"]), fl["time"][()]]
            except (OSError, KeyError, ValueError) as exc:
                raise StoreError(f"{shard}: unreadable shard ({exc}); run `vidprobe verify {self.path}`") from None
            for i, key in enumerate(clip_key(a, b, cc) for a, b, cc in zip(v, s, e)):
                if key in seen:
                    continue
                seen.add(key)
                videos.append(v[i])
                starts.append(s[i])
                ends.append(e[i])
                labels.append(lab[i])
                splits.append(spl[i])
                embs.append(emb[off[i] : off[i + 1]])
                tss.append(ts[off[i] : off[i + 1]])
                lengths.append(off[i + 1] - off[i])
            for row in zip(*fcols):
                failures.append(dict(path=row[0], start=float(row[1]), end=float(row[2]), stage=row[3], error=row[4], time=float(row[5]), shard=shard.name))
        offset = np.zeros(len(videos) + 1, dtype=np.int64)
        offset[1:] = np.cumsum(lengths) if lengths else []
        table = ClipTable(
            videos,
            np.array(starts, dtype=np.float64),
            np.array(ends, dtype=np.float64),
            labels,
            splits,
            offset,
            np.concatenate(embs).astype(np.float32, copy=False) if embs else np.zeros((0, dim), np.float32),
            np.concatenate(tss) if tss else np.zeros((0,), np.float64),
        )
        # A failure that a later run fixed is history, not a current failure.
        failures = [f for f in failures if clip_key(f["path"], f["start"], f["end"]) not in seen]
        return table, failures

    def table(self) -> ClipTable:
        if self._table is None:
            self._table, self._failures = self._read_shards()
        return self._table

    def failures(self) -> list[dict]:
        if self._failures is None:
            self._table, self._failures = self._read_shards()
        return self._failures

    def done_keys(self, include_failed: bool = True) -> set[Key]:
        """Clips resume should skip: stored ones, and (by default) ones already recorded as failed."""
        keys = set(self.table().keys())
        if include_failed:
            keys |= {clip_key(f["path"], f["start"], f["end"]) for f in self.failures()}
        return keys

    def pooled(self, pool: Callable[[np.ndarray], np.ndarray], indices: Iterable[int] | None = None) -> np.ndarray:
        """One row per clip: ``pool`` applied to each clip's (T, D) frame embeddings."""
        t = self.table()
        idx = range(len(t)) if indices is None else indices
        rows = [pool(t.frames(i)) for i in idx]
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    def info(self) -> dict[str, Any]:
        t = self.table()
        shards = self.shard_paths()
        labels = sorted({x for x in t.label if x})
        return {
            "path": str(self.path),
            "clips": len(t),
            "frames": int(t.offset[-1]) if len(t) else 0,
            "labels": len(labels),
            "splits": {s or "(none)": int(sum(1 for x in t.split if x == s)) for s in sorted(set(t.split))},
            "failures": len(self.failures()),
            "shards": len(shards),
            "unfinished_shards": len(list((self.path / SHARD_DIR).glob("*.tmp"))) if (self.path / SHARD_DIR).is_dir() else 0,
            "size_bytes": sum(p.stat().st_size for p in shards),
            "encoder": self.provenance.get("encoder"),
            "weights_id": self.provenance.get("weights_id"),
            "dim": self.provenance.get("dim"),
            "sampling": self.provenance.get("sampling"),
            "preprocess": self.provenance.get("preprocess"),
            "created": self.provenance.get("created"),
        }


def open_store(path: str | Path) -> FeatureStore:
    """Open an existing store for reading."""
    p = Path(path)
    prov_file = p / PROVENANCE_FILE
    if not prov_file.is_file():
        if p.is_file():
            raise StoreError(f"{p}: a store is a folder made by `vidprobe extract -o {p}`, not a file")
        raise StoreError(f"{p}: no feature store here (missing {PROVENANCE_FILE}); create one with `vidprobe extract SOURCE -o {p}`")
    try:
        provenance = json.loads(prov_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{prov_file}: unreadable provenance ({exc})") from None
    if provenance.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"{p}: schema version {provenance.get('schema_version')} is not supported (this vidprobe reads {SCHEMA_VERSION})")
    return FeatureStore(p, provenance)


def _open_settled(p: Path, wait_s: float = 5.0) -> FeatureStore:
    """``open_store``, after waiting briefly while a racing creator may still be writing ``store.json``
    (only where hard links are unsupported; see ``_create_exclusive``)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            json.loads((p / PROVENANCE_FILE).read_text(encoding="utf-8"))
            break
        except (OSError, ValueError):
            time.sleep(0.05)
    return open_store(p)


def _create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` only if it does not exist, never visible half-written; False if it did.

    The whole file is written and fsynced under a private name, then hard-linked to ``path``: ``link``
    fails when ``path`` exists, so of several processes creating one store exactly one wins. Where hard
    links are unsupported, ``O_EXCL`` keeps the exclusivity (readers then retry while it is written).
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _creation_debris(entry: Path) -> bool:
    """What a concurrent ``create_or_open`` of the same new store may have left so far."""
    return entry.name in (SHARD_DIR, PROVENANCE_FILE) or (entry.name.startswith(f".{PROVENANCE_FILE}.") and entry.name.endswith(".tmp"))


def create_or_open(path: str | Path, provenance: dict[str, Any]) -> FeatureStore:
    """Open ``path`` for appending with ``provenance``, creating it if new; refuse a mismatch.

    Safe when several processes (job shards) create the same new store at once: exactly one writes
    ``store.json``; the others open it and are refused, naming what differs, if their settings differ.
    """
    p = Path(path)
    provenance = {**provenance, "schema_version": SCHEMA_VERSION}
    if not (p / PROVENANCE_FILE).is_file():
        if p.exists() and (not p.is_dir() or not all(_creation_debris(c) for c in p.iterdir())):
            raise StoreError(f"{p}: exists and is not a vidprobe store; choose a new path")
        p.mkdir(parents=True, exist_ok=True)
        provenance.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if _create_exclusive(p / PROVENANCE_FILE, json.dumps(provenance, indent=2, sort_keys=True)):
            (p / SHARD_DIR).mkdir(exist_ok=True)
            return FeatureStore(p, provenance)
        # another process created it first: append to theirs if the settings agree
    store = _open_settled(p)
    diffs = describe_differences(store.provenance, provenance)
    if diffs:
        raise StoreError(f"{p}: refusing to append with different settings — " + "; ".join(diffs) + ". Use a new store path.")
    return store


# -- per-writer progress (job shards) ----------------------------------------------------------------
# Each extraction run writes shard files named ``PREFIX-<time>-<id>.h5`` (PREFIX ``shard`` or, for job
# shard i of n, ``shardIIIIofNNNN``) and keeps a small record of its last run in ``runs/PREFIX.json``
# (state running/finished/stopped, clips assigned/done/skipped/failed, host, pid, time). A run killed
# with SIGKILL stays "running" in its record until it is re-run.
RUNS_DIR = "runs"


def writer_of(shard_name: str) -> str:
    """The writer prefix of a shard file name (``shard0001of0004-…-….h5`` -> ``shard0001of0004``)."""
    stem = shard_name[: -len(".h5")] if shard_name.endswith(".h5") else shard_name
    parts = stem.rsplit("-", 2)
    return parts[0] if len(parts) == 3 else stem


def write_run_record(store: FeatureStore, writer: str, doc: dict[str, Any]) -> None:
    """Atomically replace the last-run record of ``writer`` (a shard-file prefix)."""
    d = store.path / RUNS_DIR
    d.mkdir(exist_ok=True)
    _atomic_write_text(d / f"{writer}.json", json.dumps(doc, indent=1, sort_keys=True))


def writer_progress(store: FeatureStore) -> dict[str, dict[str, Any]]:
    """Per writer prefix: clips in its finished shard files, its current failures, its shard files,
    and its last run record (``last_run``, when one exists) — what ``vidprobe info`` shows per shard."""
    import h5py

    out: dict[str, dict[str, Any]] = {}

    def row(writer: str) -> dict[str, Any]:
        return out.setdefault(writer, {"clips": 0, "failures": 0, "shard_files": 0})

    for shard in store.shard_paths():
        try:
            with h5py.File(shard, "r") as f:
                clips = len(f["clips/video"])
        except (OSError, KeyError) as exc:
            raise StoreError(f"{shard}: unreadable shard ({exc}); run `vidprobe verify {store.path}`") from None
        r = row(writer_of(shard.name))
        r["clips"] += clips
        r["shard_files"] += 1
    for failure in store.failures():
        if failure.get("shard"):
            row(writer_of(failure["shard"]))["failures"] += 1
    runs = store.path / RUNS_DIR
    for record in sorted(runs.glob("*.json")) if runs.is_dir() else []:
        try:
            row(record.stem)["last_run"] = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return dict(sorted(out.items()))
