"""Derived files inside a store: the clip index and pooled features, cached so a retrain reads neither
every shard's clip table nor every frame again.

Layout under ``STORE/cache/`` (HDF5, written by the shards' tmp → fsync → rename path, ``layout.atomic_h5``)::

    index.h5          the ``index.StoreIndex`` (clip columns, per-shard offsets and kept rows, failures)
    pooled-NAME.h5    ``pooled`` (N, D') float32: row i = pooling NAME of live clip i, in index order

Never served stale: each file carries its ``key`` (``index_key``, ``pooled_key``) and checksums of its own
datasets, and is used only while that key equals the store's now; a damaged one is rebuilt with a warning.
The key is taken from the shard list before reading and a cache is written only if the list has not changed
meanwhile, so a concurrent writer only makes the next read rebuild it. Why each key holds what it does, and
what ``verify``/``compact`` do with caches: docs/store-format.md#streaming-reads-and-caches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .clip_tables import ShardMeta
from .index import StoreIndex
from .layout import (
    CACHE_DIR,
    CHECKSUMS_ATTR,
    IDENTITY_KEYS,
    SHARD_DIR,
    SOURCE_COLUMNS,
    atomic_h5,
    digest,
    disk_error,
    identity,
    shard_paths,
)
from .lock import TAG_PATTERN, remove_dead_temporaries

__all__ = [
    "CACHE_VERSION",
    "shard_stamps",
    "index_key",
    "pooled_key",
    "load_index",
    "save_index",
    "load_pooled",
    "rows_agree",
    "spot_rows",
    "save_pooled",
    "PooledWriter",
    "cache_files",
    "check_cache",
    "is_current",
    "describe_caches",
    "remove_caches",
]

CACHE_VERSION = 1
# Of the index cache only (pooled caches keep their keys): 2 added each clip's video file fingerprint; 3: a
# failure closes once any clip of its video inside its window is stored (``index._current_failures``).
INDEX_FORMAT = 3
INDEX_FILE = "index.h5"
_SAFE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")


def cache_dir(store: Path) -> Path:
    return store / CACHE_DIR


def pooled_file(store: Path, pool: str) -> Path:
    if not _SAFE.match(pool):
        raise StoreError(f"pool name {pool!r}: not usable as a cache file name")
    return cache_dir(store) / f"pooled-{pool}.h5"


# A cache's temporary while it is written (``layout.atomic_h5`` with ``unique_tmp``).
_TMP = re.compile(rf"^.+\.h5\.{TAG_PATTERN}-[0-9a-f]{{8}}\.tmp$")


def _cache_folder(store: Path) -> Path:
    """``cache/``, created if need be; the temporaries of killed cache writers there (up to a pooled matrix
    each) are removed."""
    d = cache_dir(store)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(d, "create the cache folder", exc) from None
    remove_dead_temporaries(d, _TMP)
    return d


def cache_files(store: Path) -> list[Path]:
    d = cache_dir(store)
    return sorted(d.glob("*.h5")) if d.is_dir() else []


def remove_caches(store: Path) -> int:
    """Delete every cache file (and leftover ``.tmp``); returns how many. Used by ``compact``."""
    d = cache_dir(store)
    n = 0
    for p in sorted(d.glob("*.h5*")) if d.is_dir() else []:
        p.unlink(missing_ok=True)
        n += 1
    return n


def shard_stamps(store: Path) -> list[list[Any]]:
    """[name, size, mtime_ns] of every finished shard file, in finish order: cheap (``stat`` only)."""
    out = []
    for p in shard_paths(store):
        st = p.stat()
        out.append([p.name, int(st.st_size), int(st.st_mtime_ns)])
    return out


def index_key(provenance: dict[str, Any], stamps: list[list[Any]]) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "index_format": INDEX_FORMAT,
        "identity": _text_digest(json.dumps({k: identity(provenance, k) for k in IDENTITY_KEYS}, sort_keys=True)),
        "shards": stamps,
    }


def pooled_key(base: dict[str, Any], index: StoreIndex, pool: str, dtype: str) -> dict[str, Any]:
    sums = [[m.path.name, _text_digest(json.dumps(m.checksums, sort_keys=True))] for m in index.shards]
    base = {k: v for k, v in base.items() if k != "index_format"}  # a new index format keeps pooled caches valid
    return {**base, "pool": pool, "dtype": dtype, "clips": len(index.video), "shard_checksums": sums}


def is_current(
    kind: str, stored: dict[str, Any], current: dict[str, Any] | None, index: StoreIndex | None, dtype: str
) -> bool:
    """Whether a cache of ``kind`` keyed ``stored`` is exactly what a read now would use: the rule ``info`` and
    ``verify`` share (the reader's ``_open_checked`` compares the same keys). ``current``: the store's
    ``index_key`` now; ``index``: its clip index
    (a pooled cache is also keyed by the checksums of the shards it was pooled from)."""
    if current is None:
        return False
    if kind == "index":
        return _same(stored, current)
    if kind == "pooled" and index is not None:
        return _same(stored, pooled_key(current, index, str(stored.get("pool")), dtype))
    return False


def _text_digest(text: Any) -> str:
    return "sha256:" + hashlib.sha256(str(text).encode("utf-8")).hexdigest()


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _blob(values: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(values, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _write(
    path: Path,
    kind: str,
    key: dict[str, Any],
    datasets: dict[str, np.ndarray],
    attrs: dict[str, str],
    known: dict[str, str] | None = None,
) -> None:
    """One cache file; ``known``: checksums of datasets already hashed while they were computed."""
    _cache_folder(path.parent.parent)
    with atomic_h5(path, f"write cache {path.name}", unique_tmp=True) as f:
        f.attrs["kind"] = kind
        f.attrs["key"] = json.dumps(key, sort_keys=True)
        for k, v in attrs.items():
            f.attrs[k] = v
        sums = {}
        for name, values in datasets.items():
            f.create_dataset(name, data=values)
            sums[name] = (known or {}).get(name) or digest(values)
        sums.update({f"attrs/{k}": _text_digest(v) for k, v in attrs.items()})
        f.attrs[CHECKSUMS_ATTR] = json.dumps(sums, sort_keys=True)


class _Damaged(Exception):
    pass


def _damaged(path: Path, why: str) -> None:
    warnings.warn(f"{path}: cache ignored and rebuilt ({why})", RuntimeWarning, stacklevel=4)


def _read_checked(path: Path, kind: str | None, key: dict[str, Any] | None, names: tuple[str, ...] | None):
    """(stored key, datasets, attrs) of an intact cache of ``kind`` (None: any) whose key is ``key`` (None: any);
    None when its key differs (stale: the store changed, which is normal). Raises ``_Damaged`` otherwise."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise _Damaged(f"unreadable: {exc}") from None
    try:
        found = f.attrs.get("kind")
        if found not in ("index", "pooled") or (kind is not None and found != kind):
            raise ValueError(f"not a {kind or 'vidprobe'} cache")
        stored = json.loads(f.attrs["key"])
        if key is not None and not _same(stored, key):
            return None
        sums = json.loads(f.attrs[CHECKSUMS_ATTR])
        data = {}
        for name in names if names is not None else tuple(f.keys()):
            values = f[name][()]
            if digest(values, like=sums.get(name)) != sums.get(name):
                raise ValueError(f"{name} does not match its checksum")
            data[name] = values
        for k, v in f.attrs.items():
            if f"attrs/{k}" in sums and _text_digest(v) != sums[f"attrs/{k}"]:
                raise ValueError(f"attribute {k} does not match its checksum")
        return stored, data, dict(f.attrs)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise _Damaged(str(exc)) from None
    finally:
        f.close()


def _open_checked(path: Path, kind: str, key: dict[str, Any], names: tuple[str, ...]):
    """``_read_checked``, but damage is reported (one warning line) and reads as "no cache"."""
    if not path.is_file():
        return None
    try:
        return _read_checked(path, kind, key, names)
    except _Damaged as exc:
        _damaged(path, str(exc))
        return None


def check_cache(path: Path) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(kind, stored key, problem) of one cache file, reading all its data: what ``verify`` reports."""
    try:
        got = _read_checked(path, None, None, None)
    except _Damaged as exc:
        return None, None, str(exc)
    assert got is not None  # no key to differ from
    stored, _, attrs = got
    return str(attrs.get("kind")), stored, None


# -- the clip index --------------------------------------------------------------------------------
_INDEX_DATA = ("offsets", "kept", "start", "end", "offset", "video", "label", "split", "sources")


def save_index(store: Path, key: dict[str, Any], index: StoreIndex) -> None:
    shards = [
        {
            "name": m.path.name,
            "n_clips": m.n_clips,
            "n_frames": m.n_frames,
            "n_kept": len(m.kept),
            "dtype": m.dtype,
            "compression": m.compression,
            "compacted_from": m.compacted_from,
            "checksums": m.checksums,
        }
        for m in index.shards
    ]
    meta = {
        "shards": shards,
        "superseded": [p.name for p in index.superseded],
        "duplicates": index.duplicates,
        "replaced": index.replaced,
        "failures": index.failures,
    }
    datasets = {
        "offsets": np.concatenate([m.offset for m in index.shards]).astype(np.int64)
        if index.shards
        else np.zeros(0, np.int64),
        "kept": np.concatenate([m.kept for m in index.shards]).astype(np.int64)
        if index.shards
        else np.zeros(0, np.int64),
        "start": np.asarray(index.start, np.float64),
        "end": np.asarray(index.end, np.float64),
        "offset": np.asarray(index.offset, np.int64),
        "video": _blob(index.video),
        "label": _blob(index.label),
        "split": _blob(index.split),
        "sources": np.concatenate([m.source for m in index.shards]).astype(np.int64)
        if index.shards
        else np.zeros((0, len(SOURCE_COLUMNS)), np.int64),
    }
    _write(cache_dir(store) / INDEX_FILE, "index", key, datasets, {"meta": json.dumps(meta, sort_keys=True)})


def load_index(store: Path, key: dict[str, Any]) -> StoreIndex | None:
    """The cached index, if its key is ``key`` and it is intact; else None."""
    got = _open_checked(cache_dir(store) / INDEX_FILE, "index", key, _INDEX_DATA)
    if got is None:
        return None
    _, d, attrs = got
    try:
        meta = json.loads(attrs["meta"])
        shards: list[ShardMeta] = []
        a = b = c = 0
        for s in meta["shards"]:
            n = s["n_clips"]
            shards.append(
                ShardMeta(
                    store / SHARD_DIR / s["name"],
                    offset=d["offsets"][a : a + n + 1],
                    kept=d["kept"][b : b + s["n_kept"]],
                    n_clips=n,
                    n_frames=s["n_frames"],
                    dtype=s["dtype"],
                    compression=s["compression"],
                    compacted_from=s["compacted_from"],
                    checksums=s["checksums"],
                    source=d["sources"][c : c + n],
                )
            )
            a, b, c = a + n + 1, b + s["n_kept"], c + n
        video, label, split = (json.loads(d[k].tobytes().decode("utf-8")) for k in ("video", "label", "split"))
        # the kept clips' fingerprints, in index order: derived from the shards' (stored once)
        no_source = np.zeros((0, len(SOURCE_COLUMNS)), np.int64)
        source = np.concatenate([m.source[m.kept] for m in shards]) if shards else no_source
        lengths = {len(label), len(split), len(d["start"]), len(d["end"]), len(source), len(d["offset"]) - 1}
        if lengths != {len(video)}:
            raise ValueError("columns differ in length")
        superseded = [store / SHARD_DIR / name for name in meta["superseded"]]
        failures, duplicates, replaced = meta["failures"], int(meta["duplicates"]), int(meta["replaced"])
        return StoreIndex(
            shards,
            video,
            d["start"],
            d["end"],
            label,
            split,
            d["offset"],
            failures,
            duplicates,
            superseded,
            source,
            replaced,
        )
    except (KeyError, ValueError, TypeError) as exc:
        _damaged(cache_dir(store) / INDEX_FILE, str(exc))
        return None


# -- pooled features --------------------------------------------------------------------------------
def save_pooled(store: Path, pool: str, key: dict[str, Any], X: np.ndarray, checksum: str | None = None) -> None:
    """``checksum``: ``layout.digest(X)`` when the caller hashed X as it was pooled (``stream.pool_blocks``)."""
    data = {"pooled": np.ascontiguousarray(X, np.float32)}
    _write(pooled_file(store, pool), "pooled", key, data, {}, {"pooled": checksum} if checksum else None)


class PooledWriter:
    """The pooled cache written while its rows are pooled: ``stream.pool_blocks`` calls it (``sink``) with each
    block's finished rows in its helper thread, so writing the (N, D') matrix overlaps the reading of the
    shards instead of following it (at 1M x 256 clips that write is a 1 GB copy into the page cache).

    Same file, path and checksums as ``save_pooled``: the dataset is created contiguous with its space
    allocated, and rows go to their place by ``os.pwrite`` (no HDF5 call, so no HDF5 lock shared with the
    shard reads). Only ``commit`` makes it the cache; a failed write never fails the read (``commit`` then
    raises the ``StoreError`` the reader turns into a warning).
    """

    _SYNC_EVERY = 1 << 28  # bytes between fsyncs while writing, so the final one has little left to flush

    def __init__(self, store: Path, pool: str, key: dict[str, Any], n_clips: int) -> None:
        self._final = pooled_file(store, pool)
        self._key, self._n = key, n_clips
        self._ctx: Any = None  # atomic_h5's context, entered at the first rows (their width sizes the dataset)
        self._file: Any = None
        self._fd = -1
        self._error: BaseException | None = None
        self._start = self._row_bytes = self._unsynced = 0

    @property
    def started(self) -> bool:
        return self._ctx is not None or self._error is not None

    def __call__(self, lo: int, rows: np.ndarray) -> None:
        if self._error is not None:
            return
        try:
            if self._ctx is None:
                self._begin(rows.shape[1])
            data = np.ascontiguousarray(rows, dtype="<f4")
            if data.shape[1:] != (self._row_bytes // 4,) or lo + len(data) > self._n:
                raise StoreError(f"{self._final}: rows {lo}:{lo + len(data)} of shape {data.shape} do not fit")
            view = data.reshape(-1).data.cast("B")
            pos = self._start + lo * self._row_bytes
            while view:  # pwrite may write less than asked
                done = os.pwrite(self._fd, view, pos)
                view, pos = view[done:], pos + done
            self._unsynced += data.nbytes
            if self._unsynced >= self._SYNC_EVERY:
                os.fsync(self._fd)
                self._unsynced = 0
        except Exception as exc:  # noqa: BLE001 - the cache is optional: commit reports it, the read goes on
            self._error = exc

    def _begin(self, width: int) -> None:
        import h5py

        _cache_folder(self._final.parent.parent)
        ctx = atomic_h5(self._final, f"write cache {self._final.name}", unique_tmp=True)
        f = self._file = ctx.__enter__()
        self._ctx = ctx
        f.attrs["kind"] = "pooled"
        f.attrs["key"] = json.dumps(self._key, sort_keys=True)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
        space = h5py.h5s.create_simple((self._n, width))
        ds = h5py.h5d.create(f.id, b"pooled", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
        self._start = ds.get_offset()
        if self._start is None:
            raise StoreError(f"{self._final}: HDF5 gave the pooled dataset no contiguous place")
        self._row_bytes = 4 * width
        f.flush()
        self._fd = os.open(f.filename, os.O_WRONLY)

    def commit(self, checksum: str) -> None:
        """Make the written file the cache (``checksum``: the rows' ``layout.Digest``, taken as they were pooled)."""
        if self._error is not None:
            failed = self._error
            self.abort()
            if isinstance(failed, StoreError):
                raise failed
            if isinstance(failed, OSError):
                raise disk_error(self._final.parent, f"write cache {self._final.name}", failed)
            raise StoreError(f"{self._final}: cache not written ({failed})")
        self._close_fd()
        try:
            self._file.attrs[CHECKSUMS_ATTR] = json.dumps({"pooled": checksum}, sort_keys=True)
        except OSError as exc:  # a full disk while HDF5 grows the header: one line, the caller warns
            self.abort()
            raise disk_error(self._final.parent, f"write cache {self._final.name}", exc) from None
        ctx, self._ctx = self._ctx, None
        ctx.__exit__(None, None, None)  # close, fsync, rename, fsync the folder (raises StoreError if it fails)

    def abort(self) -> None:
        """Drop what was written (no cache file appears); safe to call more than once."""
        self._close_fd()
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            try:
                ctx.__exit__(_Aborted, _Aborted(), None)  # atomic_h5 removes its temporary file
            except _Aborted:
                pass

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Aborted(Exception):
    pass


def load_pooled(store: Path, pool: str, key: dict[str, Any]) -> np.ndarray | None:
    """The cached (N, D') matrix if its key is ``key`` and it is intact, else None."""
    path = pooled_file(store, pool)
    got = _open_checked(path, "pooled", key, ("pooled",))
    if got is None:
        return None
    X = got[1]["pooled"]
    if X.ndim != 2 or X.dtype != np.float32 or X.shape[0] != key["clips"]:
        _damaged(path, f"holds {X.shape} {X.dtype}, expected ({key['clips']}, D') float32")
        return None
    return X


SPOT_ROWS = 4  # rows of a pooled cache a read pools again before serving it


def spot_rows(n: int) -> np.ndarray:
    """Which rows a read checks: drawn afresh each time, so an edit to the cache cannot know them."""
    return np.random.default_rng().choice(n, size=min(n, SPOT_ROWS), replace=False) if n else np.zeros(0, np.int64)


def rows_agree(held: np.ndarray, fresh: np.ndarray) -> bool:
    """Cached rows against the same rows pooled again: equal up to float32 rounding of a different summation
    order (a block of other clips pools a clip by another path), relative to the rows' magnitude."""
    scale = max(float(np.max(np.abs(fresh))), 1.0) if fresh.size else 1.0
    return held.shape == fresh.shape and bool(np.allclose(held, fresh, rtol=1e-4, atol=1e-5 * scale))


def rows_differ(path: Path) -> None:
    """The warning for a pooled cache whose rows are not what pooling the shards gives (then rebuilt)."""
    _damaged(path, "its rows differ from the shards' frames pooled again")


# -- info and verify --------------------------------------------------------------------------------
def describe_caches(store: Path, current: dict[str, Any] | None, index: StoreIndex | None, dtype: str) -> list[dict]:
    """One entry per cache file: file, kind, pool, shape, size, and ``state`` (current | stale | damaged: WHY).

    ``current`` is the store's index key now; with it and the ``index``, a pooled cache is ``current``
    only if its key is exactly what a read now would ask for. Reads only attributes (no data) unless
    checking (``verify`` re-reads the data through ``load_*``)."""
    import h5py

    out = []
    for p in cache_files(store):
        entry: dict[str, Any] = {"file": p.name, "size_bytes": p.stat().st_size}
        try:
            with h5py.File(p, "r") as f:
                kind = str(f.attrs.get("kind"))
                stored = json.loads(f.attrs["key"])
                entry["kind"] = kind
                if kind == "pooled":
                    entry["pool"] = stored.get("pool")
                    entry["shape"] = list(f["pooled"].shape)
                elif kind == "index":
                    entry["clips"] = int(f["offset"].shape[0]) - 1
                else:
                    raise ValueError(f"unknown cache kind {kind!r}")
            entry["state"] = "current" if is_current(kind, stored, current, index, dtype) else "stale"
        except (OSError, KeyError, ValueError, TypeError) as exc:
            entry["state"] = f"damaged: {exc}"
        out.append(entry)
    return out
