"""Reading a store: ``FeatureStore`` (the read API over the clip ``index``, the shards and the ``cache``),
``open_store`` and ``create_or_open``. See ``layout``."""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..config import STORE_DTYPES as DTYPES
from ..errors import StoreError
from . import cache, stream
from .clip_tables import ShardMeta, check_sum
from .index import ClipTable, StoreIndex, build_index, failure_counts
from .layout import (
    CACHE_DIR,
    IDENTITY_DEFAULTS,
    IDENTITY_KEYS,
    PROVENANCE_FILE,
    RUNS_DIR,
    SCHEMA_VERSION,
    SHARD_DIR,
    Digest,
    Key,
    atomic_write_text,
    check_provenance,
    check_writable,
    clip_key,
    describe_differences,
    disk_error,
    identity,
    read_provenance_file,
    shard_paths,
)
from .lock import WriterLock, live_holders, parse_scope
from .stream import Block, iter_blocks, pool_blocks, widen

__all__ = ["FeatureStore", "Batch", "open_store", "create_or_open", "check_appendable"]

T = TypeVar("T")
_LITTLE_ENDIAN = sys.byteorder == "little"  # the pooled cache is streamed to disk as the native float32 bytes


@dataclass
class Batch:
    """Clips ``indices`` of a store: their frames (F_b, D) float32 with ``offsets`` (B+1,), labels, splits,
    and with a pooling their pooled (B, D') rows; ``timestamps`` (F_b,) when asked for."""

    indices: np.ndarray
    frames: np.ndarray
    offsets: np.ndarray
    labels: list[str]
    splits: list[str]
    pooled: np.ndarray | None = None
    timestamps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)


def _batches(
    blocks: Iterator[Block],
    idx: StoreIndex,
    splits: np.ndarray,
    size: int,
    split: str | None,
    pool: Callable[[np.ndarray], np.ndarray] | None,
) -> Iterator[Batch]:
    for blk in blocks:
        rows = np.arange(blk.lo, blk.lo + len(blk))
        local = np.arange(len(blk))
        if split is not None:
            local = local[splits[rows] == split]
        for s0 in range(0, len(local), size):
            sel = local[s0 : s0 + size]
            lengths = blk.offsets[sel + 1] - blk.offsets[sel]
            off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            if sel[-1] - sel[0] == len(sel) - 1:  # consecutive clips: a view, no copy
                take: slice | np.ndarray = slice(int(blk.offsets[sel[0]]), int(blk.offsets[sel[-1] + 1]))
            else:
                take = np.concatenate([np.arange(blk.offsets[i], blk.offsets[i + 1]) for i in sel])
            fr = blk.frames[take]
            ts = blk.timestamps[take] if blk.timestamps is not None else None
            g = rows[sel]
            out = Batch(g, fr, off, [idx.label[i] for i in g], [idx.split[i] for i in g], None, ts)
            if pool is not None:
                out.pooled = pool_blocks(iter([Block(0, fr, off, None, 0)]), len(sel), pool)
            yield out


class FeatureStore:
    """A store (folder, or one shard file) read as one table of clips (layout: docs/store-format.md).

    Reads stream: metadata comes from the clip index (no embeddings; cached in ``cache/index.h5``);
    ``pooled`` reads the shards block by block and keeps only its (N, D') result, cached in
    ``cache/pooled-NAME.h5`` (see ``pipeline.store.cache``); ``frames(i)`` reads one clip, keeping at most
    one shard's frames; only ``embeddings`` loads every frame (as float32), for those who ask for it.

    Every shard must carry the identity in ``store.json`` (a foreign shard is refused, never mixed in),
    and what is read is checked against the shard's checksums (``check_checksums``; see ``layout``).
    """

    check_checksums = True  # the benchmark turns it off to measure what checking costs
    use_cache = True  # read and write ``cache/`` (a store folder only); off: always read the shards

    def __init__(self, path: Path, provenance: dict[str, Any]):
        self.path = path
        self.provenance = provenance
        self._index: StoreIndex | None = None
        self._index_key: dict[str, Any] | None = None
        self._table: ClipTable | None = None
        self._home: tuple[np.ndarray, np.ndarray] | None = None  # per clip: live shard number, local clip row
        self._shard_frames: tuple[int, np.ndarray, np.ndarray] | None = None  # one shard's frames, read whole

    # -- discovery -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.provenance["dim"])

    @property
    def dtype(self) -> str:
        return identity(self.provenance, "dtype")

    def shard_paths(self) -> list[Path]:
        """Finished shard files (including any a compaction has superseded)."""
        return shard_paths(self.path)

    def unfinished_paths(self) -> list[Path]:
        d = self.path / SHARD_DIR
        return sorted(d.glob("*.h5.tmp")) if self.path.is_dir() and d.is_dir() else []

    def invalidate(self) -> None:
        self._index = self._index_key = None
        self._table = None
        self._home = self._shard_frames = None

    def _caching(self) -> bool:
        return self.use_cache and self.check_checksums and self.path.is_dir()

    def _save_cache(self, save: Callable[[], None]) -> None:
        """Write a cache file; a store we may not write to (read-only, full disk) is still read, with one warning."""
        try:
            save()
        except StoreError as exc:
            warnings.warn(f"{exc} (the cache is skipped; reads work without it)", RuntimeWarning, stacklevel=3)

    def _indexed(self) -> StoreIndex:
        """The clip index: from ``cache/index.h5`` when its key is the shard listing now, else built and cached."""
        if not self._caching():
            self._index_key = None
            return build_index(self.path, self.provenance, self.check_checksums)
        key: dict[str, Any] | None = cache.index_key(self.provenance, cache.shard_stamps(self.path))
        assert key is not None
        idx = cache.load_index(self.path, key)
        if idx is None:
            idx = build_index(self.path, self.provenance, self.check_checksums)
            if cache.index_key(self.provenance, cache.shard_stamps(self.path)) == key:  # no writer in between
                built, k = idx, key
                self._save_cache(lambda: cache.save_index(self.path, k, built))
            else:
                key = None  # built from a listing that changed meanwhile: use it, cache nothing derived from it
        self._index_key = key
        return idx

    def _relisting(self, read: Callable[[], T]) -> T:
        """``read()``, with the shards listed again (five tries) when a concurrent compaction removed one."""
        tries = 0
        while True:
            try:
                return read()
            except FileNotFoundError:
                self._index, tries = None, tries + 1
                if tries == 5:
                    raise StoreError(
                        f"{self.path}: shards keep disappearing while reading; is a compaction running?"
                    ) from None

    def index(self) -> StoreIndex:
        if self._index is None:
            self._index = self._relisting(self._indexed)
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
            self._table = self._relisting(
                lambda: ClipTable.read(self.index(), self.dim, self.path, self.check_checksums)
            )
        return self._table

    @property
    def embeddings(self) -> np.ndarray:
        """All frames (F, D) float32; clip i owns rows ``offsets[i]:offsets[i+1]``."""
        return self.table().embedding

    def _locate(self, i: int) -> tuple[ShardMeta, int, int]:
        """(live shard, its number among the live shards, local clip row) of clip ``i``."""
        idx = self.index()
        n = len(idx.video)
        if not 0 <= i < n:
            raise IndexError(f"clip {i} out of range for a store of {n} clips")
        home = self._homes()
        k = int(home[0][i])
        return idx.shards[k], k, int(home[1][i])

    def _homes(self) -> tuple[np.ndarray, np.ndarray]:
        if self._home is None:
            metas = self.index().shards
            empty = [np.zeros(0, np.int64)]
            self._home = (
                np.concatenate([np.full(len(m.kept), k, np.int64) for k, m in enumerate(metas)] or empty),
                np.concatenate([np.asarray(m.kept, np.int64) for m in metas] or empty),
            )
        return self._home

    def clip_shards(self) -> np.ndarray:
        """(N,) the live shard each clip is read from: visit clips grouped by it to read each shard once."""
        return self._homes()[0]

    def _clip_rows(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``i``'s float32 frames and timestamps. A shard that fits in one block (every shard extraction
        writes) is read whole, checked, and kept until a clip of another shard is asked for; a larger one
        (compacted) is read clip by clip, unchecked (``vidprobe verify`` checks it whole)."""
        if self._table is not None:
            t = self._table
            return t.frames(i), t.timestamp[t.offset[i] : t.offset[i + 1]]
        import h5py

        for attempt in range(5):
            meta, k, j = self._locate(i)
            a, b = int(meta.offset[j]), int(meta.offset[j + 1])
            if self._shard_frames is not None and self._shard_frames[0] == k:
                return self._shard_frames[1][a:b], self._shard_frames[2][a:b]
            try:
                with h5py.File(meta.path, "r") as f:
                    e, t = f["frames/embedding"], f["frames/timestamp"]
                    if meta.n_frames > stream.BLOCK_FRAMES:
                        return widen(e[a:b]), t[a:b]
                    emb, ts = e[()], t[()]
                break
            except FileNotFoundError:  # compacted meanwhile: index again and read the new shard
                self.invalidate()
                if attempt == 4:
                    raise StoreError(f"{self.path}: shards keep disappearing while reading") from None
            except OSError as exc:
                raise StoreError(f"{meta.path}: unreadable shard ({exc}); run `vidprobe verify {self.path}`") from None
        if self.check_checksums:
            check_sum(meta, self.path, "frames/embedding", emb)
            check_sum(meta, self.path, "frames/timestamp", ts)
        self._shard_frames = (k, widen(emb), ts)
        return self._shard_frames[1][a:b], ts[a:b]

    def frames(self, i: int) -> np.ndarray:
        """Clip ``i``'s per-frame embeddings, (T, D) float32 (reads one shard at most, not the store)."""
        return self._clip_rows(i)[0]

    def timestamps(self, i: int) -> np.ndarray:
        return self._clip_rows(i)[1]

    def _blocks(self, timestamps: bool = False, reuse: bool = False) -> Iterator[Block]:
        return iter_blocks(
            self.index().shards, self.path, check=self.check_checksums, timestamps=timestamps, reuse=reuse
        )

    def iter_batches(
        self,
        batch_size: int = 1024,
        *,
        split: str | None = None,
        pool: Callable[[np.ndarray], np.ndarray] | None = None,
        timestamps: bool = False,
    ) -> Iterator[Batch]:
        """Clips in store order, ``batch_size`` at a time; a batch never spans two shards, so a pass reads
        each shard once. ``split``: only that split's clips; ``pool``: with their pooled rows too.
        Memory: one block of frames (``pipeline.store.stream``)."""
        if batch_size < 1:
            raise StoreError(f"batch_size={batch_size}: must be at least 1")
        idx = self.index()
        splits = np.asarray(idx.split, dtype=object)
        try:
            yield from _batches(self._blocks(timestamps), idx, splits, batch_size, split, pool)
        except FileNotFoundError:
            self.invalidate()
            raise StoreError(
                f"{self.path}: a shard was removed while reading (a compaction ran?); start the pass again"
            ) from None

    def failures(self) -> list[dict]:
        """Current failures (path, start, end, stage, error, time, shard), oldest first."""
        return self.index().failures

    def done_keys(self, include_failed: bool = True) -> set[Key]:
        """Clips resume should skip: stored ones, and (by default) ones already recorded as failed."""
        keys = set(self.keys())
        if include_failed:
            keys |= {clip_key(f["path"], f["start"], f["end"]) for f in self.failures()}
        return keys

    def pooled(
        self,
        pool: Callable[[np.ndarray], np.ndarray],
        indices: Iterable[int] | None = None,
        *,
        progress: bool = False,
    ) -> np.ndarray:
        """One row per clip: ``pool`` (e.g. ``pipeline.probe.pooling.get_pool("mean")``) of its (T, D) frames.

        Streams the shards (peak memory: the result plus about one shard) and pools a block at a time
        with ``pool.batch`` when the pooling has one. A named pooling (``pool.name``) is cached in the
        store (``cache/pooled-NAME.h5``) and reused until the shards change. ``indices``: only those rows.
        """
        X = self._pooled_all(pool, progress)
        return X if indices is None else X[np.asarray(list(indices), dtype=np.int64)]

    def _pooled_all(self, pool: Callable[[np.ndarray], np.ndarray], progress: bool) -> np.ndarray:
        name = getattr(pool, "name", None)
        for attempt in range(5):
            idx = self.index()
            base = self._index_key
            key = cache.pooled_key(base, idx, name, self.dtype) if name and base is not None else None
            if key is not None and name:
                hit = cache.load_pooled(self.path, name, key)
                if hit is not None and self._spot_check(pool, hit):
                    return hit
            # the cache's checksum, taken as the rows are pooled, and its file, written as they are
            summed: Digest | None = None
            sink: cache.PooledWriter | None = None
            if key is not None and name and self._caching():
                summed = Digest()
                if _LITTLE_ENDIAN:
                    sink = cache.PooledWriter(self.path, name, key, len(idx.video))
            try:
                if self._table is not None:  # every frame is in memory already
                    t = self._table
                    blocks = iter([Block(0, t.embedding, t.offset, None, 0)])
                    X = pool_blocks(blocks, len(t), pool, digest=summed, sink=sink)
                else:
                    try:
                        X = self._pool_stream(pool, len(idx.video), progress, name or "pool", summed, sink)
                    except FileNotFoundError:  # a compaction replaced the shards: list again
                        self.invalidate()
                        if attempt == 4:
                            raise StoreError(
                                f"{self.path}: shards keep disappearing while reading; is a compaction running?"
                            ) from None
                        continue
                still = cache.index_key(self.provenance, cache.shard_stamps(self.path)) == base if key else False
                if summed is not None and key is not None and name and still:  # no writer added a shard meanwhile
                    self._store_pooled(name, key, X, summed.hexdigest(), sink)
                return X
            finally:
                if sink is not None:
                    sink.abort()  # a no-op after commit; otherwise nothing of the unfinished file stays
        raise AssertionError("unreachable")

    def _spot_check(self, pool: Callable[[np.ndarray], np.ndarray], X: np.ndarray) -> bool:
        """A few cached rows, drawn at random, pooled again from their clips' frames: a cache whose rows were
        edited and its checksum recomputed is rebuilt, not served (``vidprobe verify`` checks every row).
        Reads only those clips' rows (unchecked: a damaged shard then fails the rebuild's checked read)."""
        import h5py

        try:
            for i in cache.spot_rows(len(X)):
                meta, _, j = self._locate(int(i))
                with h5py.File(meta.path, "r") as f:
                    frames = widen(f["frames/embedding"][int(meta.offset[j]) : int(meta.offset[j + 1])])
                if not cache.rows_agree(X[int(i)], np.asarray(pool(frames), np.float32)):
                    cache.rows_differ(cache.pooled_file(self.path, str(getattr(pool, "name", ""))))
                    return False
        except OSError:
            return False  # a shard gone or unreadable: the rebuild reads them checked and says what is wrong
        return True

    def _store_pooled(
        self, name: str, key: dict[str, Any], X: np.ndarray, checksum: str, sink: cache.PooledWriter | None
    ) -> None:
        if sink is not None and sink.started:
            self._save_cache(lambda: sink.commit(checksum))
        else:  # nothing was streamed to a file (no clips, or a big-endian machine): written whole
            self._save_cache(lambda: cache.save_pooled(self.path, name, key, X, checksum))

    def _pool_stream(
        self,
        pool: Callable[[np.ndarray], np.ndarray],
        n: int,
        progress: bool,
        name: str,
        summed: Digest | None,
        sink: Callable[[int, np.ndarray], None] | None,
    ) -> np.ndarray:
        if not progress:
            return pool_blocks(self._blocks(reuse=True), n, pool, digest=summed, sink=sink)
        from tqdm import tqdm

        with tqdm(total=n, desc=f"pooling ({name})", unit="clip", leave=False) as bar:
            return pool_blocks(self._blocks(reuse=True), n, pool, bar, digest=summed, sink=sink)

    def caches(self) -> list[dict[str, Any]]:
        """The store's cache files and whether each is current (``vidprobe info`` lists them)."""
        if not self.path.is_dir():
            return []
        idx = self.index()
        return cache.describe_caches(self.path, self._index_key, idx, self.dtype)

    def torch_dataset(self, **kwargs: Any):
        """A ``torch.utils.data.Dataset`` over this store (see ``pipeline.store.torch_dataset.ClipDataset``)."""
        from .torch_dataset import ClipDataset  # torch stays out of this module

        return ClipDataset(self, **kwargs)

    # -- writing -------------------------------------------------------------------------------
    def writer_lock(self, job_shard: tuple[int, int] | None = None, purpose: str = "extract") -> WriterLock:
        """The lock a job takes before reading what is done and writing shards. ``job_shard=(i, n)``:
        shard ``i`` of a job split into ``n``; other shards of the same ``n`` may write concurrently."""
        if self.path.is_file():
            raise StoreError(f"{self.path}: a single shard file is read-only; write to a store folder")
        return _StoreWriterLock(self, job_shard, purpose)

    def info(self) -> dict[str, Any]:
        idx = self.index()
        shards = self.shard_paths()
        lengths = np.diff(idx.offset)
        by_stage = failure_counts((f["path"], f["stage"]) for f in idx.failures)  # videos, as the extract summary
        size = sum(p.stat().st_size for p in shards if p.exists())
        last = max((p.stat().st_mtime for p in shards if p.exists()), default=None)
        writers = live_holders(self.path) if self.path.is_dir() else []
        return {
            "path": str(self.path),
            "clips": len(idx.video),
            "frames": int(idx.offset[-1]),
            "frames_per_clip": {"min": int(lengths.min()), "max": int(lengths.max()), "mean": float(lengths.mean())}
            if len(lengths)
            else None,
            "labels": len({x for x in idx.label if x}),
            "label_counts": dict(sorted(Counter(x or "(none)" for x in idx.label).items())),
            "splits": {s or "(none)": n for s, n in sorted(Counter(idx.split).items())},
            "failures": sum(by_stage.values()),  # videos with an open failure
            "failures_by_stage": by_stage,
            "shards": len(idx.shards),
            "unfinished_shards": len(self.unfinished_paths()),
            "superseded_shards": len(idx.superseded),
            "duplicates": idx.duplicates,
            "replaced": idx.replaced,
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
            "caches": self.caches(),
        }


def _tag_scope(name: str) -> tuple[int, int] | None | str:
    """The job shard a shard file's tag names (``PREFIX-TIME-TAG-ID.h5[.tmp]``), "?" if none is readable."""
    parts = name.rsplit("-", 2)
    try:
        return parse_scope(parts[1]) if len(parts) == 3 else "?"
    except ValueError:
        return "?"


class _StoreWriterLock(WriterLock):
    """``WriterLock`` that, once taken, clears the ``.tmp`` files its scope's dead writers left."""

    def __init__(self, store: FeatureStore, job_shard: tuple[int, int] | None, purpose: str):
        super().__init__(store.path, job_shard, purpose)
        self.store = store

    def acquire(self) -> _StoreWriterLock:
        super().acquire()
        for tmp in self.store.unfinished_paths():
            # Whole-store lock: no other writer can be live. Shard lock: only files tagged with our scope.
            if self.job_shard is None or _tag_scope(tmp.name) == self.job_shard:
                tmp.unlink(missing_ok=True)
        self.store.invalidate()  # what is done is read after the lock is taken
        return self


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
        provenance = read_provenance_file(p)
    else:
        raise StoreError(
            f"{p}: no feature store here (missing {PROVENANCE_FILE}); create one with `vidprobe extract SOURCE -o {p}`"
        )
    return FeatureStore(p, check_provenance(provenance, p if p.is_file() else p / PROVENANCE_FILE))


def create_or_open(path: str | Path, provenance: dict[str, Any]) -> FeatureStore:
    """Open ``path`` for appending with ``provenance``, creating it if new; refuse a mismatch. Safe when
    several job shards create the same new store at once: exactly one writes ``store.json``; the others
    open it and are refused, naming what differs, if their settings differ."""
    p = Path(path)
    provenance = {**IDENTITY_DEFAULTS, **provenance, "schema_version": SCHEMA_VERSION}
    if identity(provenance, "dtype") not in DTYPES:
        raise StoreError(f"dtype={provenance['dtype']!r}: allowed values are {', '.join(DTYPES)}")
    check_provenance(provenance, p / PROVENANCE_FILE)  # never write a store.json that could not be opened
    if not _writable_store_path(p):
        try:
            (p / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(p / SHARD_DIR, "create the store", exc) from None
        provenance.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if atomic_write_text(p / PROVENANCE_FILE, json.dumps(provenance, indent=2, sort_keys=True), exclusive=True):
            return FeatureStore(p, provenance)
        # another job created it a moment ago: fall through and compare with what it wrote
    store = open_store(p)
    _refuse_differences(store, provenance, IDENTITY_KEYS)
    return store


def check_appendable(path: str | Path, provenance: dict[str, Any]) -> None:
    """What ``create_or_open`` would refuse, judged on the identity keys given (e.g. encoder spec, sampling,
    dtype), writing nothing: lets ``extract`` fail on a wrong path or settings before it builds a model."""
    p = Path(path)
    if _writable_store_path(p):
        keys = tuple(k for k in IDENTITY_KEYS if k in provenance)
        _refuse_differences(open_store(p), {**IDENTITY_DEFAULTS, **provenance}, keys)
    else:
        check_writable(p, "create the store", folder=True)


def _writable_store_path(p: Path) -> bool:
    """True if ``p`` is an existing store; False if it is free to create one; StoreError otherwise."""
    if p.is_file():
        raise StoreError(f"{p}: is a file; a store to write to is a folder (choose a new path)")
    if (p / PROVENANCE_FILE).is_file():
        return True
    if p.exists() and any(
        x.name not in (SHARD_DIR, "locks", RUNS_DIR, CACHE_DIR, PROVENANCE_FILE)
        and not x.name.startswith(f".{PROVENANCE_FILE}.")
        for x in p.iterdir()
    ):
        raise StoreError(f"{p}: exists and is not a vidprobe store; choose a new path")
    return False


def _refuse_differences(store: FeatureStore, provenance: dict[str, Any], keys: tuple[str, ...]) -> None:
    diffs = describe_differences(store.provenance, provenance, keys=keys)
    if diffs:
        raise StoreError(
            f"{store.path}: refusing to append with different settings — "
            + "; ".join(diffs)
            + ". Use a new store path."
        )
