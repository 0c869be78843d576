"""The clip index: which clips of which live shards a store holds, built from the shards' clip tables.

Per clip key the earliest finished shard wins; shards a compacted shard replaces (``compacted_from``) and clips
of a video file since replaced (``sources``) are left out. ``StoreIndex`` holds clip metadata only — what resume,
``info`` and readers need first (``cache`` keeps it in ``cache/index.h5``); ``ClipTable`` adds every frame.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from .clip_tables import ClipTableRow, ShardMeta, check_sum, read_clip_tables
from .layout import SOURCE_COLUMNS, UNKNOWN_SOURCE, Key, clip_key, shard_paths
from .sources import Source, current_sources, is_replaced
from .stream import widen

__all__ = ["StoreIndex", "ClipTable", "build_index", "kept_frames", "failure_counts"]


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
    source: np.ndarray  # (N, 3) int64: each clip's video file fingerprint (``sources``; -1 where unknown)
    replaced: int  # clips left out because their video file was replaced and extracted again

    def keys(self) -> list[Key]:
        return [clip_key(v, s, e) for v, s, e in zip(self.video, self.start, self.end)]

    def current_sources(self) -> dict[str, Source]:
        """The fingerprint of the file each video path held when its clips or its failure were recorded
        (paths with none recorded are absent): what ``plan_tasks`` compares the files on disk with."""
        known = np.flatnonzero(self.source[:, 0] != UNKNOWN_SOURCE).tolist()
        out: dict[str, Source] = dict(zip((self.video[i] for i in known), map(tuple, self.source[known].tolist())))
        for fail in self.failures:  # where a video has stored clips too (outside the failure's window), theirs stands
            src = tuple(int(fail.get(c, UNKNOWN_SOURCE)) for c in SOURCE_COLUMNS)
            if src[0] != UNKNOWN_SOURCE:
                out.setdefault(fail["path"], src)  # type: ignore[arg-type]
        return out


@dataclass
class ClipTable(StoreIndex):
    """A ``StoreIndex`` with all its clips' frames in memory (de-duplicated: first finished shard wins)."""

    embedding: np.ndarray  # (F, D) float32
    timestamp: np.ndarray  # (F,)

    @classmethod
    def read(cls, index: StoreIndex, dim: int, store: Path, check: bool = True) -> ClipTable:
        """``index`` with all its live frames as one float32 (F, D) matrix plus timestamps, read straight into
        place. Each shard's frames are read whole, so with ``check`` their checksums are verified on the way."""
        total = int(index.offset[-1])
        emb = np.empty((total, dim), dtype=np.float32)
        ts = np.empty(total, dtype=np.float64)
        for meta, e, t, rows, n, pos in kept_frames(index.shards):
            if isinstance(rows, slice) and e.dtype == np.float32:
                e.read_direct(emb, dest_sel=np.s_[pos : pos + n])
                t.read_direct(ts, dest_sel=np.s_[pos : pos + n])
                e_all, t_all = emb[pos : pos + n], ts[pos : pos + n]
            else:
                e_all, t_all = e[()], t[()]
                widen(e_all[rows], emb[pos : pos + n])  # much faster than HDF5's conversion or numpy's cast
                ts[pos : pos + n] = t_all[rows]
            if check:
                check_sum(meta, store, "frames/embedding", e_all)
                check_sum(meta, store, "frames/timestamp", t_all)
        return cls(**{f.name: getattr(index, f.name) for f in fields(StoreIndex)}, embedding=emb, timestamp=ts)

    def __len__(self) -> int:
        return len(self.video)

    def frames(self, i: int) -> np.ndarray:
        return self.embedding[self.offset[i] : self.offset[i + 1]]


def kept_frames(shards: list[ShardMeta]) -> Iterator[tuple[ShardMeta, Any, Any, slice | np.ndarray, int, int]]:
    """Per live shard with kept frames, opened in turn: the shard, its ``frames/embedding`` and ``frames/timestamp``
    datasets, the kept rows (``ShardMeta.kept_rows``), how many, and where they go in the store's frames."""
    import h5py

    pos = 0
    for meta in shards:
        if not len(meta.kept):
            continue
        rows = meta.kept_rows()
        n = meta.n_frames if isinstance(rows, slice) else len(rows)
        if n:
            with h5py.File(meta.path, "r") as f:
                yield meta, f["frames/embedding"], f["frames/timestamp"], rows, n, pos
        pos += n


def _records(row: ClipTableRow) -> tuple[list[str], np.ndarray]:
    """(paths, fingerprints) of one clip-table row's clips and failures, for ``sources.current_sources``."""
    meta, v, *_, fails = row
    if not fails:
        return v, meta.source
    fsrc = np.array([[f[c] for c in SOURCE_COLUMNS] for f in fails], dtype=np.int64)
    # failures first: where a path has both, its clips' fingerprint (crc read) is the one that stands
    return [f["path"] for f in fails] + v, np.concatenate([fsrc, meta.source])


def _kept_clips(
    meta: ShardMeta, v: list[str], s: np.ndarray, e: np.ndarray, stale: set[int], seen: set[Key]
) -> tuple[list[int], int]:
    """The rows of a shard's clips that count (not ``stale``, key not ``seen`` yet: added to it), duplicates."""
    # clip_key of every clip at once (NaN, an open end, as -1); the common case has no repeats at all
    keys = list(zip(v, np.where(np.isnan(s), -1.0, s).tolist(), np.where(np.isnan(e), -1.0, e).tolist()))
    if not stale and seen.isdisjoint(keys) and len(set(keys)) == len(keys):
        seen.update(keys)
        return list(range(meta.n_clips)), 0
    keep: list[int] = []
    duplicates = 0
    for i, key in enumerate(keys):
        if i in stale:
            continue
        if key in seen:
            duplicates += 1
        else:
            seen.add(key)
            keep.append(i)
    return keep, duplicates


def _stored_windows(seen: set[Key], paths: set[str]) -> dict[str, list[tuple[float, float]]]:
    """The (start, end) of each stored clip of ``paths``; an open end as -inf or +inf."""
    out: dict[str, list[tuple[float, float]]] = {}
    for video, start, end in seen:
        if video in paths:
            out.setdefault(video, []).append((-np.inf if start < 0 else start, np.inf if end < 0 else end))
    return out


def _current_failures(
    rows: list[ClipTableRow], seen: set[Key], current: dict[str, Source], changed: set[str]
) -> list[dict[str, Any]]:
    """The open failures, oldest first, each clip's latest: what ``info`` shows, ``--retry-failed`` retries
    and ``compact`` keeps. A failure is closed once its file was replaced, or once any clip of its video
    inside its window is stored (the whole video for an open window; windowed sampling stores windows)."""
    latest: dict[Key, dict[str, Any]] = {}
    for *_, fails in rows:
        for fail in fails:
            if is_replaced(fail["path"], [fail[c] for c in SOURCE_COLUMNS], current, changed):
                continue  # an attempt on a file since replaced: history
            key = clip_key(fail["path"], fail["start"], fail["end"])
            if key not in latest or fail["time"] >= latest[key]["time"]:
                latest[key] = fail
    stored = _stored_windows(seen, {key[0] for key in latest}) if latest else {}

    def is_open(key: Key) -> bool:
        lo = -np.inf if key[1] < 0 else key[1] - 1e-6  # the tolerance plan_tasks skips stored windows with
        hi = np.inf if key[2] < 0 else key[2] + 1e-6
        return not any(lo <= s and e <= hi for s, e in stored.get(key[0], ()))

    return sorted((f for key, f in latest.items() if is_open(key)), key=lambda f: f["time"])


def failure_counts(failures: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Failed videos per cause, from (video path, stage) pairs in time order: each video once, under its
    latest failure's stage. The extract summary and ``info`` both count with it, so they agree."""
    return dict(sorted(Counter(dict(failures).values()).items()))


def build_index(path: Path, provenance: dict[str, Any], check: bool = True) -> StoreIndex:
    """Clip metadata of every live shard; refuses a shard of other provenance or with a damaged clip table."""
    rows = read_clip_tables(path, provenance, shard_paths(path), check)
    replaced_shards = {name for meta, *_ in rows for name in meta.compacted_from}
    superseded = [meta.path for meta, *_ in rows if meta.path.name in replaced_shards]
    rows = [row for row in rows if row[0].path.name not in replaced_shards]
    current, changed = current_sources(map(_records, rows))
    videos: list[str] = []
    labels: list[str] = []
    splits: list[str] = []
    starts, ends, lengths, sources = [], [], [], []
    seen: set[Key] = set()
    duplicates = replaced = 0
    for meta, v, s, e, lab, spl, _ in rows:
        stale = (
            set()
            if changed.isdisjoint(v)
            else {i for i, video in enumerate(v) if is_replaced(video, meta.source[i], current, changed)}
        )
        keep, dup = _kept_clips(meta, v, s, e, stale, seen)
        duplicates, replaced = duplicates + dup, replaced + len(stale)
        meta.kept = np.asarray(keep, dtype=np.int64)
        n_frames, src = np.diff(meta.offset), meta.source
        if not meta.all_kept:  # leave out the clips an earlier shard holds, or of a replaced file
            v, lab, spl = ([x[i] for i in keep] for x in (v, lab, spl))
            s, e, n_frames, src = s[meta.kept], e[meta.kept], n_frames[meta.kept], src[meta.kept]
        videos += v
        labels += lab
        splits += spl
        starts.append(s)
        ends.append(e)
        lengths.append(n_frames)
        sources.append(src)
    offset = np.zeros(len(videos) + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offset[1:])
    return StoreIndex(
        [row[0] for row in rows],
        videos,
        np.concatenate(starts) if starts else np.zeros(0),
        np.concatenate(ends) if ends else np.zeros(0),
        labels,
        splits,
        offset,
        _current_failures(rows, seen, current, changed),
        duplicates,
        superseded,
        np.concatenate(sources) if sources else np.zeros((0, len(SOURCE_COLUMNS)), np.int64),
        replaced,
    )
