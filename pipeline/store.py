"""HDF5 feature store: per-frame embeddings in crash-safe shard files under one folder.

Layout of a store folder ``STORE/``::

    store.json          provenance: encoder spec, weights identity, preprocessing, sampling, dim, dtype, versions
    shards/*.h5         finished shards, each written as *.h5.tmp, fsynced, then renamed atomically
    shards/*.h5.tmp     a shard being written (or left by a killed job); readers ignore it
    locks/*.lock        who is writing now (see ``pipeline.store_lock``)
    runs/PREFIX.json    last run of each writer (job shard): state, clips assigned/done/failed, host

The ``shards/`` folder is the index: a shard appears there, by one atomic rename, only when it is
complete, so a directory listing is always a consistent view. A separate index file would have to be
kept in step with the shards and could itself be torn by a kill between the two writes; parallel
writers (issue 6) also need no coordination beyond unique file names.

Layout of one shard (readable with plain h5py)::

    frames/embedding (F, D) float32|float16    frames/timestamp (F,) float64 seconds
    clips/offset (N+1,) int64   clip i owns frames offset[i]:offset[i+1]
    clips/video (N,) str        path relative to the manifest root (the clip's identity)
    clips/start, clips/end (N,) float64 seconds requested by the manifest (NaN = open end)
    clips/label, clips/split (N,) str
    failures/{path,stage,error} (M,) str, failures/{start,end,time} (M,) float64
    attrs: provenance (JSON), schema_version, compacted_from (JSON list; only on a compacted shard)

Reading: a clip is identified by (video, start, end); if several finished shards hold it, the
earliest finished wins (shard names carry a nanosecond time stamp: ``PREFIX-TIME-SCOPE-RANDOM.h5``). A compacted shard lists the shards it replaces in
``compacted_from``; those are ignored even if a crash left them on disk. A failure record is shown
only while its clip has no stored embeddings (a later fix makes it history) and only its latest one.
Nothing here imports torch: the store is readable on any machine with h5py and numpy.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .config import STORE_COMPRESSIONS as COMPRESSIONS
from .config import STORE_DTYPES as DTYPES
from .errors import StoreError
from .store_lock import WriterLock, live_holders, scope_name

SCHEMA_VERSION = 1
PROVENANCE_FILE = "store.json"
SHARD_DIR = "shards"
RUNS_DIR = "runs"
# Provenance keys that must match for two extractions to share a store. ``dtype`` is identity because
# float16 rounds values: one store never mixes precisions. Compression is lossless and per shard.
IDENTITY_KEYS = ("schema_version", "encoder", "weights_id", "dim", "preprocess", "sampling", "dtype")
_DEFAULTS = {"dtype": "float32"}  # stores written before a key existed hold its default
_CHUNK_BYTES = 1 << 20  # compressed embeddings are chunked in ~1 MiB row blocks
_FLOAT16_MAX = float(np.finfo(np.float16).max)

Key = tuple[str, float, float]


def clip_key(video: str, start: float | None, end: float | None) -> Key:
    """Identity of a clip: its path and requested window (open ends as -1)."""
    return (video, -1.0 if start is None or math.isnan(start) else float(start), -1.0 if end is None or math.isnan(end) else float(end))


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _str_dataset(group, name: str, values: Sequence[str]) -> None:
    import h5py

    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=h5py.string_dtype("utf-8"))


def _read_str(ds) -> list[str]:
    return ds.asstr()[()].tolist() if len(ds) else []


def _atomic_write_text(path: Path, text: str, exclusive: bool = False) -> bool:
    """Write ``text`` to ``path`` atomically; with ``exclusive`` only if ``path`` does not exist yet."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        if exclusive:
            try:
                os.link(tmp, path)  # atomic create-if-absent: two jobs creating one store cannot both win
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                if path.exists():  # no hard links on this filesystem: best effort
                    return False
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


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


def identity(provenance: dict[str, Any], key: str) -> Any:
    return provenance.get(key, _DEFAULTS.get(key))


def describe_differences(old: dict, new: dict) -> list[str]:
    """Human-readable list of identity keys whose values differ."""
    diffs = []
    for key in IDENTITY_KEYS:
        a, b = identity(old, key), identity(new, key)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(f"{key}: store has {json.dumps(a, sort_keys=True)}, this job has {json.dumps(b, sort_keys=True)}")
    return diffs


def shard_name(prefix: str = "shard", tag: str = "all") -> str:
    """Unique, finish-time-sortable shard file name; ``tag`` is the writer's lock scope."""
    return f"{prefix}-{time.time_ns():020d}-{tag}-{uuid.uuid4().hex[:8]}.h5"


def _embedding_layout(n_frames: int, dim: int, dtype: np.dtype, compression: str, level: int) -> dict[str, Any]:
    if compression == "none" or n_frames == 0:
        return {}
    rows = max(1, min(n_frames, _CHUNK_BYTES // max(1, dim * dtype.itemsize)))
    opts: dict[str, Any] = {"chunks": (rows, dim), "compression": compression, "shuffle": True}
    if compression == "gzip":
        opts["compression_opts"] = level
    return opts


def write_shard(
    final: Path,
    provenance: dict[str, Any],
    clips: dict[str, Any],
    failures: dict[str, Any],
    n_frames: int,
    fill: Callable[[Any, Any], None],
    *,
    compression: str = "none",
    compression_level: int = 4,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write one shard as ``final.tmp``, fsync, rename to ``final``: the only way shards come to be.

    ``clips`` holds offset/video/start/end/label/split, ``failures`` path/start/end/stage/error/time;
    ``fill(embedding_ds, timestamp_ds)`` writes the (n_frames, D) frames so a caller can stream them.
    """
    import h5py

    if compression not in COMPRESSIONS:
        raise StoreError(f"compression={compression!r}: allowed values are {', '.join(COMPRESSIONS)}")
    dim = int(provenance["dim"])
    dtype = np.dtype(identity(provenance, "dtype"))
    tmp = final.with_name(final.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
            frames = f.create_group("frames")
            emb = frames.create_dataset("embedding", shape=(n_frames, dim), dtype=dtype, **_embedding_layout(n_frames, dim, dtype, compression, compression_level))
            ts = frames.create_dataset("timestamp", shape=(n_frames,), dtype=np.float64)
            if n_frames:
                fill(emb, ts)
            c = f.create_group("clips")
            c.create_dataset("offset", data=np.asarray(clips["offset"], dtype=np.int64))
            for name in ("video", "label", "split"):
                _str_dataset(c, name, clips[name])
            for name in ("start", "end"):
                c.create_dataset(name, data=np.asarray(clips[name], dtype=np.float64))
            fl = f.create_group("failures")
            for name in ("path", "stage", "error"):
                _str_dataset(fl, name, failures[name])
            for name in ("start", "end", "time"):
                fl.create_dataset(name, data=np.asarray(failures[name], dtype=np.float64))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


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
    the loss from a kill to ``shard_size`` clips. Embeddings are stored in the store's ``dtype``;
    ``compression`` (none|gzip|lzf) is lossless and chosen per writer. ``tag`` names the lock scope
    that owns this writer's files (see ``WriterLock.tag``), so its stale ``.tmp`` files can be found.
    """

    def __init__(
        self,
        store: "FeatureStore",
        shard_size: int = 512,
        max_frames: int = 1 << 16,
        *,
        compression: str = "none",
        compression_level: int = 4,
        prefix: str = "shard",
        tag: str = "all",
    ):
        if compression not in COMPRESSIONS:
            raise StoreError(f"compression={compression!r}: allowed values are {', '.join(COMPRESSIONS)}")
        self.store = store
        self.shard_size = shard_size
        self.max_frames = max_frames
        self.dtype = np.dtype(identity(store.provenance, "dtype"))
        self.compression, self.compression_level = compression, compression_level
        self.prefix, self.tag = prefix, tag
        self.pending = _Pending()
        self.written: list[Path] = []

    def add(self, video: str, start: float | None, end: float | None, label: str, split: str, embeddings: np.ndarray, timestamps: np.ndarray) -> None:
        if embeddings.ndim != 2 or embeddings.shape[0] != len(timestamps):
            raise StoreError(f"{video}: embeddings {embeddings.shape} do not match {len(timestamps)} timestamps")
        if embeddings.shape[1] != int(self.store.provenance["dim"]):
            raise StoreError(f"{video}: embeddings have {embeddings.shape[1]} dims, the store holds {self.store.provenance['dim']}")
        if not np.all(np.isfinite(embeddings)):
            raise StoreError(f"{video}: embeddings contain NaN or Inf; not stored")
        if self.dtype == np.float16 and np.abs(embeddings).max(initial=0.0) > _FLOAT16_MAX:
            raise StoreError(f"{video}: embedding values exceed the float16 range; use a store with store.dtype=float32")
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
        p = self.pending
        shard_dir = self.store.path / SHARD_DIR
        shard_dir.mkdir(parents=True, exist_ok=True)
        offsets = np.zeros(len(p.videos) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(t) for t in p.timestamps]) if p.timestamps else []

        def fill(emb_ds, ts_ds) -> None:
            emb_ds[...] = np.concatenate(p.embeddings)
            ts_ds[...] = np.concatenate(p.timestamps)

        cols = list(zip(*p.failures)) if p.failures else [[]] * 6
        final = write_shard(
            shard_dir / shard_name(self.prefix, self.tag),
            self.store.provenance,
            {"offset": offsets, "video": p.videos, "start": p.starts, "end": p.ends, "label": p.labels, "split": p.splits},
            dict(zip(("path", "start", "end", "stage", "error", "time"), cols)),
            int(offsets[-1]),
            fill,
            compression=self.compression,
            compression_level=self.compression_level,
        )
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
class ShardMeta:
    """One finished shard as the reader sees it: which of its clips count, and where their frames are."""

    path: Path
    offset: np.ndarray  # local (n+1,) offsets
    kept: np.ndarray  # local clip rows that are not duplicates of an earlier shard
    n_clips: int
    n_frames: int
    dtype: str
    compression: str
    compacted_from: list[str]

    @property
    def all_kept(self) -> bool:
        return len(self.kept) == self.n_clips


@dataclass
class StoreIndex:
    """Clip metadata of all live shards (no embeddings): what resume, ``info`` and readers need first."""

    shards: list[ShardMeta]
    video: list[str]
    start: np.ndarray
    end: np.ndarray
    label: list[str]
    split: list[str]
    offset: np.ndarray  # (N+1,) global offsets into the concatenated frames
    failures: list[dict[str, Any]]
    duplicates: int  # clips held by more than one live shard (read once)
    superseded: list[Path]  # shards a compacted shard replaces, left by a crash during compaction

    def keys(self) -> list[Key]:
        return [clip_key(v, s, e) for v, s, e in zip(self.video, self.start, self.end)]


@dataclass
class ClipTable:
    """All clips of a store in memory, de-duplicated by key (first finished shard wins)."""

    video: list[str]
    start: np.ndarray
    end: np.ndarray
    label: list[str]
    split: list[str]
    offset: np.ndarray  # (N+1,)
    embedding: np.ndarray  # (F, D) float32
    timestamp: np.ndarray  # (F,)

    def __len__(self) -> int:
        return len(self.video)

    def frames(self, i: int) -> np.ndarray:
        return self.embedding[self.offset[i] : self.offset[i + 1]]

    def keys(self) -> list[Key]:
        return [clip_key(v, s, e) for v, s, e in zip(self.video, self.start, self.end)]


def _compression_of(ds) -> str:
    return ds.compression or "none"


_FINISHED_AT = re.compile(r"-(\d{20})-")


def _shard_paths(path: Path) -> list[Path]:
    """Finished shard files in the order they were finished (the time stamp in their names)."""
    if path.is_file():
        return [path]
    d = path / SHARD_DIR
    if not d.is_dir():
        return []

    def finished(p: Path) -> tuple[str, str]:
        m = _FINISHED_AT.search(p.name)
        return (m.group(1) if m else "", p.name)

    return sorted(d.glob("*.h5"), key=finished)


def _build_index(path: Path, dim: int) -> StoreIndex:
    import h5py

    rows: list[tuple[ShardMeta, list[str], np.ndarray, np.ndarray, list[str], list[str]]] = []
    replaced: set[str] = set()
    raw_failures: list[dict[str, Any]] = []
    for shard in _shard_paths(path):
        try:
            with h5py.File(shard, "r") as f:
                c = f["clips"]
                off = c["offset"][()]
                v, s, e = _read_str(c["video"]), c["start"][()], c["end"][()]
                lab, spl = _read_str(c["label"]), _read_str(c["split"])
                emb = f["frames/embedding"]
                emb_shape = emb.shape
                meta = ShardMeta(shard, off, np.arange(len(v)), len(v), int(emb.shape[0]), str(emb.dtype), _compression_of(emb), json.loads(f.attrs.get("compacted_from", "[]")))
                fl = f["failures"]
                fcols = (_read_str(fl["path"]), fl["start"][()], fl["end"][()], _read_str(fl["stage"]), _read_str(fl["error"]), fl["time"][()])
        except FileNotFoundError:
            raise  # removed by a compaction after the listing; the caller lists again
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"{shard}: unreadable shard ({exc}); run `vidprobe verify {path}`") from None
        if len(off) != len(v) + 1 or (len(v) and (off[0] != 0 or off[-1] != meta.n_frames)) or emb_shape[1:] != (dim,):
            raise StoreError(f"{shard}: inconsistent shard (offsets/frames/dim); run `vidprobe verify {path}`")
        replaced.update(meta.compacted_from)
        rows.append((meta, v, s, e, lab, spl))
        raw_failures += [dict(path=r[0], start=float(r[1]), end=float(r[2]), stage=r[3], error=r[4], time=float(r[5]), shard=shard.name) for r in zip(*fcols)]
    videos: list[str] = []
    labels: list[str] = []
    splits: list[str] = []
    starts, ends, lengths = [], [], []
    seen: set[Key] = set()
    shards, superseded, duplicates = [], [], 0
    for meta, v, s, e, lab, spl in rows:
        if meta.path.name in replaced:
            superseded.append(meta.path)
            continue
        keep = []
        for i in range(meta.n_clips):
            key = clip_key(v[i], s[i], e[i])
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            keep.append(i)
        meta.kept = np.asarray(keep, dtype=np.int64)
        shards.append(meta)
        if meta.all_kept:
            videos += v
            labels += lab
            splits += spl
            starts.append(s)
            ends.append(e)
            lengths.append(np.diff(meta.offset))
        else:
            videos += [v[i] for i in keep]
            labels += [lab[i] for i in keep]
            splits += [spl[i] for i in keep]
            starts.append(s[meta.kept])
            ends.append(e[meta.kept])
            lengths.append(np.diff(meta.offset)[meta.kept])
    superseded_names = {p.name for p in superseded}
    latest: dict[Key, dict[str, Any]] = {}
    for fail in raw_failures:
        if fail["shard"] in superseded_names:
            continue
        key = clip_key(fail["path"], fail["start"], fail["end"])
        # A failure that a later run fixed is history, not a current failure; of repeats, the latest counts.
        if key not in seen and (key not in latest or fail["time"] >= latest[key]["time"]):
            latest[key] = fail
    offset = np.zeros(len(videos) + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offset[1:])
    return StoreIndex(
        shards,
        videos,
        np.concatenate(starts) if starts else np.zeros(0),
        np.concatenate(ends) if ends else np.zeros(0),
        labels,
        splits,
        offset,
        sorted(latest.values(), key=lambda f: f["time"]),
        duplicates,
        superseded,
    )


def _read_frames(index: StoreIndex, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """All live frames as one float32 (F, D) matrix plus timestamps, read straight into place."""
    import h5py

    total = int(index.offset[-1])
    emb = np.empty((total, dim), dtype=np.float32)
    ts = np.empty(total, dtype=np.float64)
    pos = 0
    for meta in index.shards:
        if not len(meta.kept):
            continue
        with h5py.File(meta.path, "r") as f:
            e, t = f["frames/embedding"], f["frames/timestamp"]
            if meta.all_kept:
                n = meta.n_frames
                if n and e.dtype == np.float32:
                    e.read_direct(emb, dest_sel=np.s_[pos : pos + n])
                elif n:
                    emb[pos : pos + n] = e[()]  # numpy widens float16 3x faster than HDF5's conversion
                if n:
                    t.read_direct(ts, dest_sel=np.s_[pos : pos + n])
            else:
                sel = np.concatenate([np.arange(meta.offset[i], meta.offset[i + 1]) for i in meta.kept])
                n = len(sel)
                emb[pos : pos + n] = e[()][sel]
                ts[pos : pos + n] = t[()][sel]
        pos += n
    return emb, ts


class FeatureStore:
    """A store (folder, or one shard file) read as one table of clips; see the module doc for layout.

    Read API: ``len(store)``, ``videos``, ``labels``, ``splits``, ``starts``/``ends``, ``keys()``,
    ``frames(i)`` → (T, D) float32, ``timestamps(i)``, ``embeddings``/``offsets`` (all frames),
    ``pooled(pool)`` → (N, D'), ``failures()``, ``info()``, and ``torch_dataset()``. Metadata is read
    without touching embeddings; embeddings are loaded (as float32) on first use and cached.
    """

    def __init__(self, path: Path, provenance: dict[str, Any]):
        self.path = path
        self.provenance = provenance
        self._index: StoreIndex | None = None
        self._table: ClipTable | None = None

    # -- discovery -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.provenance["dim"])

    @property
    def dtype(self) -> str:
        return identity(self.provenance, "dtype")

    def shard_paths(self) -> list[Path]:
        """Finished shard files (including any a compaction has superseded)."""
        return _shard_paths(self.path)

    def unfinished_paths(self) -> list[Path]:
        d = self.path / SHARD_DIR
        return sorted(d.glob("*.h5.tmp")) if self.path.is_dir() and d.is_dir() else []

    def invalidate(self) -> None:
        self._index = None
        self._table = None

    def index(self) -> StoreIndex:
        if self._index is None:
            for attempt in range(5):
                try:
                    self._index = _build_index(self.path, self.dim)
                    break
                except FileNotFoundError:  # a concurrent compaction removed a listed shard: list again
                    if attempt == 4:
                        raise StoreError(f"{self.path}: shards keep disappearing while reading; is a compaction running?") from None
        return self._index

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index().video)

    @property
    def videos(self) -> list[str]:
        return self.index().video

    @property
    def labels(self) -> list[str]:
        return self.index().label

    @property
    def splits(self) -> list[str]:
        return self.index().split

    @property
    def starts(self) -> np.ndarray:
        return self.index().start

    @property
    def ends(self) -> np.ndarray:
        return self.index().end

    @property
    def offsets(self) -> np.ndarray:
        return self.index().offset

    def keys(self) -> list[Key]:
        return self.index().keys()

    def table(self) -> ClipTable:
        if self._table is None:
            for attempt in range(5):
                idx = self.index()
                try:
                    emb, ts = _read_frames(idx, self.dim)
                    break
                except FileNotFoundError:
                    self._index = None
                    if attempt == 4:
                        raise StoreError(f"{self.path}: shards keep disappearing while reading; is a compaction running?") from None
            self._table = ClipTable(idx.video, idx.start, idx.end, idx.label, idx.split, idx.offset, emb, ts)
        return self._table

    @property
    def embeddings(self) -> np.ndarray:
        """All frames (F, D) float32; clip i owns rows ``offsets[i]:offsets[i+1]``."""
        return self.table().embedding

    def frames(self, i: int) -> np.ndarray:
        """Clip ``i``'s per-frame embeddings, (T, D) float32."""
        return self.table().frames(i)

    def timestamps(self, i: int) -> np.ndarray:
        t = self.table()
        return t.timestamp[t.offset[i] : t.offset[i + 1]]

    def failures(self) -> list[dict]:
        """Current failures (path, start, end, stage, error, time, shard), oldest first."""
        return self.index().failures

    def done_keys(self, include_failed: bool = True) -> set[Key]:
        """Clips resume should skip: stored ones, and (by default) ones already recorded as failed."""
        keys = set(self.keys())
        if include_failed:
            keys |= {clip_key(f["path"], f["start"], f["end"]) for f in self.failures()}
        return keys

    def pooled(self, pool: Callable[[np.ndarray], np.ndarray], indices: Iterable[int] | None = None) -> np.ndarray:
        """One row per clip: ``pool`` (e.g. ``pipeline.pooling.get_pool("mean")``) of its (T, D) frames."""
        t = self.table()
        idx = range(len(t)) if indices is None else indices
        rows = [pool(t.frames(i)) for i in idx]
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    def torch_dataset(self, **kwargs: Any):
        """A ``torch.utils.data.Dataset`` over this store (see ``pipeline.torch_data.ClipDataset``)."""
        from .torch_data import ClipDataset  # torch stays out of this module

        return ClipDataset(self, **kwargs)

    # -- writing -------------------------------------------------------------------------------
    def writer_lock(self, job_shard: tuple[int, int] | None = None, purpose: str = "extract") -> WriterLock:
        """The lock a job takes before reading what is done and writing shards (see ``store_lock``).

        ``job_shard=(i, n)``: shard ``i`` of a job split into ``n``; other shards of the same ``n`` may
        write concurrently. Taking the whole-store lock also removes ``.tmp`` files of dead writers.
        """
        if self.path.is_file():
            raise StoreError(f"{self.path}: a single shard file is read-only; write to a store folder")
        lock = _StoreWriterLock(self, job_shard, purpose)
        return lock

    def info(self) -> dict[str, Any]:
        idx = self.index()
        shards = self.shard_paths()
        lengths = np.diff(idx.offset)
        by_stage = Counter(f["stage"] for f in idx.failures)
        size = sum(p.stat().st_size for p in shards if p.exists())
        last = max((p.stat().st_mtime for p in shards if p.exists()), default=None)
        writers = live_holders(self.path) if self.path.is_dir() else []
        return {
            "path": str(self.path),
            "clips": len(idx.video),
            "frames": int(idx.offset[-1]),
            "frames_per_clip": {"min": int(lengths.min()), "max": int(lengths.max()), "mean": float(lengths.mean())} if len(lengths) else None,
            "labels": len({x for x in idx.label if x}),
            "label_counts": dict(sorted(Counter(x or "(none)" for x in idx.label).items())),
            "splits": {s or "(none)": n for s, n in sorted(Counter(idx.split).items())},
            "failures": len(idx.failures),
            "failures_by_stage": dict(sorted(by_stage.items())),
            "shards": len(idx.shards),
            "unfinished_shards": len(self.unfinished_paths()),
            "superseded_shards": len(idx.superseded),
            "duplicates": idx.duplicates,
            "size_bytes": size,
            "dtype": self.dtype,
            "compression": sorted({m.compression for m in idx.shards}),
            "encoder": self.provenance.get("encoder"),
            "weights_id": self.provenance.get("weights_id"),
            "dim": self.provenance.get("dim"),
            "sampling": self.provenance.get("sampling"),
            "preprocess": self.provenance.get("preprocess"),
            "versions": self.provenance.get("versions"),
            "created": self.provenance.get("created"),
            "last_write": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)) if last else None,
            "writers": [h.describe() for h in writers],
        }


class _StoreWriterLock(WriterLock):
    """``WriterLock`` that, once taken, clears the ``.tmp`` files its scope's dead writers left."""

    def __init__(self, store: FeatureStore, job_shard: tuple[int, int] | None, purpose: str):
        super().__init__(store.path, job_shard, purpose)
        self.store = store

    @property
    def tag(self) -> str:
        """Scope tag to pass to ``ShardWriter(tag=...)``: names this writer's shard files."""
        return scope_name(self.job_shard)

    def acquire(self) -> "_StoreWriterLock":
        super().acquire()
        for tmp in self.store.unfinished_paths():
            # Whole-store lock: no other writer can be live. Shard lock: only files tagged with our scope.
            if self.job_shard is None or f"-{self.tag}-" in tmp.name:
                tmp.unlink(missing_ok=True)
        self.store.invalidate()  # what is done is read after the lock is taken
        return self


def _read_provenance_file(p: Path) -> dict[str, Any]:
    prov_file = p / PROVENANCE_FILE
    try:
        return json.loads(prov_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{prov_file}: unreadable provenance ({exc})") from None


def open_store(path: str | Path) -> FeatureStore:
    """Open an existing store for reading: a store folder, or one shard file (e.g. after ``compact``)."""
    p = Path(path)
    if p.is_file():
        import h5py

        try:
            with h5py.File(p, "r") as f:
                provenance = json.loads(f.attrs["provenance"])
        except (OSError, KeyError, ValueError) as exc:
            raise StoreError(f"{p}: not a vidprobe store folder or shard file ({exc})") from None
    elif (p / PROVENANCE_FILE).is_file():
        provenance = _read_provenance_file(p)
    else:
        raise StoreError(f"{p}: no feature store here (missing {PROVENANCE_FILE}); create one with `vidprobe extract SOURCE -o {p}`")
    if provenance.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"{p}: schema version {provenance.get('schema_version')} is not supported (this vidprobe reads {SCHEMA_VERSION})")
    return FeatureStore(p, provenance)


def create_or_open(path: str | Path, provenance: dict[str, Any]) -> FeatureStore:
    """Open ``path`` for appending with ``provenance``, creating it if new; refuse a mismatch.

    Safe when several processes (job shards) create the same new store at once: exactly one writes
    ``store.json``; the others open it and are refused, naming what differs, if their settings differ.
    """
    p = Path(path)
    provenance = {**_DEFAULTS, **provenance, "schema_version": SCHEMA_VERSION}
    if identity(provenance, "dtype") not in DTYPES:
        raise StoreError(f"dtype={provenance['dtype']!r}: allowed values are {', '.join(DTYPES)}")
    if p.is_file():
        raise StoreError(f"{p}: is a file; a store to write to is a folder (choose a new path)")
    if not (p / PROVENANCE_FILE).is_file():
        if p.exists() and any(x.name not in (SHARD_DIR, "locks", RUNS_DIR, PROVENANCE_FILE) and not x.name.startswith(f".{PROVENANCE_FILE}.") for x in p.iterdir()):
            raise StoreError(f"{p}: exists and is not a vidprobe store; choose a new path")
        (p / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        provenance.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if _atomic_write_text(p / PROVENANCE_FILE, json.dumps(provenance, indent=2, sort_keys=True), exclusive=True):
            return FeatureStore(p, provenance)
        # another job created it a moment ago: fall through and compare with what it wrote
    store = open_store(p)
    diffs = describe_differences(store.provenance, provenance)
    if diffs:
        raise StoreError(f"{p}: refusing to append with different settings — " + "; ".join(diffs) + ". Use a new store path.")
    return store


# -- per-writer progress (job shards) ----------------------------------------------------------------
# Each extraction run writes shard files named ``PREFIX-<time>-<id>.h5`` (PREFIX ``shard`` or, for job
# shard i of n, ``shardIIIIofNNNN``) and keeps a small record of its last run in ``runs/PREFIX.json``
# (state running/finished/stopped, clips assigned/done/skipped/failed, host, pid, time). A run killed
# with SIGKILL stays "running" in its record until it is re-run.


def writer_of(shard_name: str) -> str:
    """The writer prefix of a shard file name (``shard0001of0004-<time>-<tag>-<id>.h5`` -> ``shard0001of0004``)."""
    m = re.match(r"(.*?)-\d{20}-", shard_name)
    return m.group(1) if m else shard_name.split("-", 1)[0]


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
