"""Derived files inside a store: the clip index and pooled features, cached so a retrain reads neither
every shard's clip table nor every frame again.

Layout under ``STORE/cache/`` (HDF5, written by the shards' tmp → fsync → rename path, ``layout.atomic_h5``)::

    index.h5          the reader's ``StoreIndex`` (clip columns, per-shard offsets and kept rows, failures)
    pooled-NAME.h5    ``pooled`` (N, D') float32: row i = pooling NAME of live clip i, in index order

Never served stale: each file carries its ``key`` (attrs, JSON) and is used only when that equals the key
of the store as it is now —

* index: the store's identity (``IDENTITY_KEYS`` of ``store.json``) and the exact list of finished shard
  files with their sizes and modification times (shards are immutable once renamed into ``shards/``, so
  adding, removing or compacting a shard changes the list; a rewrite in place changes the time);
* pooled: the index key, the pooling's name, the store dtype and every live shard's checksums.

Each file also carries checksums of its own datasets (``checksums``, as shards do): a damaged or
foreign cache (other key, unreadable, wrong shape, bad checksum) is never trusted — it is rebuilt, and a
damaged one is reported in one line. ``vidprobe verify`` checks every cache against the shards
themselves; ``vidprobe compact`` deletes them (the next read rebuilds). A writer adding shards while a
cache is built only makes the next read rebuild it: the key is taken from the shard list before reading,
and a cache is written only if the list has not changed meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StoreError
from .layout import (
    CACHE_DIR,
    CHECKSUMS_ATTR,
    IDENTITY_KEYS,
    SHARD_DIR,
    atomic_h5,
    digest,
    disk_error,
    identity,
    shard_paths,
)

if TYPE_CHECKING:  # types only: the reader imports this module
    from .reader import StoreIndex

__all__ = [
    "CACHE_VERSION",
    "shard_stamps",
    "index_key",
    "pooled_key",
    "load_index",
    "save_index",
    "load_pooled",
    "save_pooled",
    "cache_files",
    "check_cache",
    "describe_caches",
    "remove_caches",
]

CACHE_VERSION = 1
INDEX_FILE = "index.h5"
_SAFE = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")


def cache_dir(store: Path) -> Path:
    return store / CACHE_DIR


def pooled_file(store: Path, pool: str) -> Path:
    if not _SAFE.match(pool):
        raise StoreError(f"pool name {pool!r}: not usable as a cache file name")
    return cache_dir(store) / f"pooled-{pool}.h5"


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
        "identity": _text_digest(json.dumps({k: identity(provenance, k) for k in IDENTITY_KEYS}, sort_keys=True)),
        "shards": stamps,
    }


def pooled_key(base: dict[str, Any], index: StoreIndex, pool: str, dtype: str) -> dict[str, Any]:
    sums = [[m.path.name, _text_digest(json.dumps(m.checksums, sort_keys=True))] for m in index.shards]
    return {**base, "pool": pool, "dtype": dtype, "clips": len(index.video), "shard_checksums": sums}


def _text_digest(text: Any) -> str:
    return "sha256:" + hashlib.sha256(str(text).encode("utf-8")).hexdigest()


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _blob(values: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(values, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _unblob(ds) -> Any:
    return json.loads(ds[()].tobytes().decode("utf-8"))


def _write(
    path: Path,
    kind: str,
    key: dict[str, Any],
    datasets: dict[str, np.ndarray],
    attrs: dict[str, str],
    known: dict[str, str] | None = None,
) -> None:
    """One cache file; ``known``: checksums of datasets already hashed while they were computed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(path.parent, "create the cache folder", exc) from None
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
_INDEX_DATA = ("offsets", "kept", "start", "end", "offset", "video", "label", "split")


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
    }
    _write(cache_dir(store) / INDEX_FILE, "index", key, datasets, {"meta": json.dumps(meta, sort_keys=True)})


def load_index(store: Path, key: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """The cached index, if its key is ``key`` and it is intact: the fields of each ``ShardMeta`` and of the
    ``StoreIndex`` (plain values: the reader builds the objects, so this module never imports it); else None."""
    got = _open_checked(cache_dir(store) / INDEX_FILE, "index", key, _INDEX_DATA)
    if got is None:
        return None
    _, d, attrs = got
    path = cache_dir(store) / INDEX_FILE
    try:
        meta = json.loads(attrs["meta"])
        shards: list[dict[str, Any]] = []
        a = b = 0
        for s in meta["shards"]:
            shards.append(
                {
                    "path": store / SHARD_DIR / s["name"],
                    "offset": d["offsets"][a : a + s["n_clips"] + 1],
                    "kept": d["kept"][b : b + s["n_kept"]],
                    "n_clips": s["n_clips"],
                    "n_frames": s["n_frames"],
                    "dtype": s["dtype"],
                    "compression": s["compression"],
                    "compacted_from": s["compacted_from"],
                    "checksums": s["checksums"],
                }
            )
            a, b = a + s["n_clips"] + 1, b + s["n_kept"]
        video, label, split = (json.loads(d[k].tobytes().decode("utf-8")) for k in ("video", "label", "split"))
        n = len(video)
        if not (len(label) == len(split) == len(d["start"]) == len(d["end"]) == n == len(d["offset"]) - 1):
            raise ValueError("columns differ in length")
        return shards, {
            "video": video,
            "start": d["start"],
            "end": d["end"],
            "label": label,
            "split": split,
            "offset": d["offset"],
            "failures": meta["failures"],
            "duplicates": int(meta["duplicates"]),
            "superseded": [store / SHARD_DIR / name for name in meta["superseded"]],
        }
    except (KeyError, ValueError, TypeError) as exc:
        _damaged(path, str(exc))
        return None


# -- pooled features --------------------------------------------------------------------------------
def save_pooled(store: Path, pool: str, key: dict[str, Any], X: np.ndarray, checksum: str | None = None) -> None:
    """``checksum``: ``layout.digest(X)`` when the caller hashed X as it was pooled (``stream.pool_blocks``)."""
    data = {"pooled": np.ascontiguousarray(X, np.float32)}
    _write(pooled_file(store, pool), "pooled", key, data, {}, {"pooled": checksum} if checksum else None)


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
                    want = (
                        pooled_key(current, index, str(stored.get("pool")), dtype)
                        if current is not None and index is not None
                        else None
                    )
                elif kind == "index":
                    entry["clips"] = int(f["offset"].shape[0]) - 1
                    want = current
                else:
                    raise ValueError(f"unknown cache kind {kind!r}")
            entry["state"] = "current" if want is not None and _same(stored, want) else "stale"
        except (OSError, KeyError, ValueError, TypeError) as exc:
            entry["state"] = f"damaged: {exc}"
        out.append(entry)
    return out
