"""``vidprobe export``: a store's clips as files the ecosystem reads — Parquet (pandas, pyarrow, Hugging Face
``datasets``, DuckDB, Spark) or one ``.npy`` per video with a JSON index (no pickle anywhere).

Parquet: one row per clip — ``video``, ``start``, ``end`` (null for an open end), ``label``, ``split`` and
``embedding``, a fixed-size list of float32 (the pooled vector; with ``frames=True`` a list of the clip's
per-frame vectors, plus ``timestamps`` and ``num_frames``). Written in row groups, so memory stays at the
pooled matrix (or one shard's frames) plus one row group. The file's key-value metadata ``vidprobe`` holds
the store's provenance, the pooling and the shard listing it was made from.

npy: ``OUT/index.json`` lists the videos, each with its file (``OUT/videos/NAME-HASH.npy``: (clips, D')
pooled rows, or (frames, D) frames of all its clips) and its clips (start, end, label, split, rows, and
timestamps with frames). ``np.load`` opens the files without ``allow_pickle``.

Both are written to a temporary name beside the output (``.OUT.export-TAG-RANDOM.tmp``, TAG naming the
writing process), fsynced and published only if nothing has the output's name, even something created while
the export ran (a hard link for Parquet, a rename for npy's folder): a failed export leaves nothing
half-written under the output name, and never replaces anything. The next export into that folder removes
the temporaries of exports that were killed. The pooling is passed in (a ``pipeline.probe.pooling.Pooling``; the
store never imports the probe stage).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .layout import check_writable, disk_error, fsync_dir, publish_new
from .lock import TAG_PATTERN, remove_dead_temporaries, writer_tag
from .reader import FeatureStore, open_store

__all__ = ["EXPORT_FORMATS", "export_store"]

EXPORT_FORMATS = ("parquet", "npy")
_META_KEYS = ("encoder", "weights_id", "dim", "sampling", "preprocess", "dtype", "precision", "schema_version")


def _metadata(store: FeatureStore, pool: str | None, frames: bool) -> dict[str, Any]:
    return {
        "format": "vidprobe-export/1",
        "store": str(store.path),
        "provenance": {k: store.provenance.get(k) for k in _META_KEYS},
        "pool": pool,
        "frames": frames,
        "clips": len(store),
        "shards": [m.path.name for m in store.index().shards],
    }


def _ends(x: np.ndarray) -> Any:
    import pyarrow as pa

    x = np.asarray(x, np.float64)
    return pa.array(x, type=pa.float64(), mask=np.isnan(x))


# An export's temporary: ``.OUT.export-TAG-RANDOM.tmp`` beside OUT, TAG naming its process (``lock.writer_tag``),
# so that the next export into that folder removes what a killed one left (up to the whole export's size).
_TMP = re.compile(rf"^\..+\.export-{TAG_PATTERN}-[0-9a-f]{{8}}\.tmp$")
_NOTHING_KEPT = "nothing is left under that name"


def _tmp_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.export-{writer_tag()}-{uuid.uuid4().hex[:8]}.tmp")


def _exists(out: Path) -> StoreError:
    return StoreError(f"{out}: exists; choose a new output path (an export never overwrites)")


def _appeared(out: Path) -> StoreError:
    return StoreError(
        f"{out}: appeared while the export ran; it is kept as it is and the export discarded "
        "(an export never overwrites); choose a new output path"
    )


def _check_output(out: Path, format: str) -> None:
    """Before any work: ``out`` is free and its folder writable; stale temporaries there are removed."""
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise _exists(out)
    check_writable(out, "write the export", folder=format == "npy")  # an empty folder may be given to npy only
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(out.parent, "create the output folder", exc, _NOTHING_KEPT) from None
    remove_dead_temporaries(out.parent, _TMP)  # what killed exports into this folder left


def _drop(tmp: Path) -> None:
    """Remove a temporary whatever went wrong (on a read-only filesystem even a missing one cannot be unlinked)."""
    try:
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    except OSError:
        pass


def export_store(
    store_path: str | Path,
    out: str | Path,
    *,
    pool: Callable[[np.ndarray], np.ndarray] | None = None,
    frames: bool = False,
    format: str = "parquet",
    row_group: int = 65536,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the store's clips to ``out`` (see the module doc); returns what was written.
    ``pool``: one pooled vector per clip (cached in the store like any ``pooled`` read); ``frames=True``
    instead: every clip's frames. Exactly one of the two."""
    if format not in EXPORT_FORMATS:
        raise StoreError(f"format={format!r}: allowed values are {', '.join(EXPORT_FORMATS)}")
    if (pool is None) == (not frames):
        raise StoreError("export: give a pooling or frames=True (exactly one)")
    if row_group < 1:
        raise StoreError(f"row_group={row_group}: must be at least 1")
    store = open_store(store_path)
    out = Path(out)
    _check_output(out, format)
    name = getattr(pool, "name", None) if pool is not None else None
    meta = _metadata(store, name, frames)
    if format == "parquet":
        rows = _parquet(store, out, pool, frames, row_group, meta, progress)
    else:
        rows = _npy(store, out, pool, frames, meta, progress)
    return {"path": str(out), "format": format, "clips": rows, "pool": name, "frames": frames}


# -- parquet ----------------------------------------------------------------------------------------------
def _parquet(store, out: Path, pool, frames: bool, row_group: int, meta: dict, progress: bool) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise StoreError("export to parquet needs pyarrow: pip install 'vidprobe[export]'") from None

    idx = store.index()
    dim = store.dim
    tmp = _tmp_path(out)
    writer = None
    written = 0

    def table(rows: np.ndarray, emb: Any, extra: dict[str, Any]) -> Any:
        return pa.table(
            {
                "video": pa.array([idx.video[i] for i in rows], pa.string()),
                "start": _ends(idx.start[rows]),
                "end": _ends(idx.end[rows]),
                "label": pa.array([idx.label[i] for i in rows], pa.string()),
                "split": pa.array([idx.split[i] for i in rows], pa.string()),
                "embedding": emb,
                **extra,
            }
        )

    try:
        if not frames:
            X = store.pooled(pool, progress=progress)
            width = X.shape[1] if X.ndim == 2 and X.shape[1] else dim
            vec = pa.list_(pa.float32(), width)
            schema = table(np.zeros(0, np.int64), pa.array([], vec), {}).schema
            schema = schema.with_metadata({"vidprobe": json.dumps({**meta, "width": width})})
            writer = pq.ParquetWriter(tmp, schema)
            for lo in range(0, len(idx.video), row_group):
                rows = np.arange(lo, min(len(idx.video), lo + row_group))
                emb = pa.FixedSizeListArray.from_arrays(pa.array(X[rows].reshape(-1), pa.float32()), width)
                writer.write_table(table(rows, emb, {}).cast(schema))
                written += len(rows)
        else:
            vec = pa.list_(pa.float32(), dim)
            extra_types = {"timestamps": pa.list_(pa.float64()), "num_frames": pa.int32()}
            empty = {k: pa.array([], t) for k, t in extra_types.items()}
            schema = table(np.zeros(0, np.int64), pa.array([], pa.list_(vec)), empty).schema
            schema = schema.with_metadata({"vidprobe": json.dumps({**meta, "width": dim})})
            writer = pq.ParquetWriter(tmp, schema)
            for b in store.iter_batches(row_group, timestamps=True):
                off = pa.array(b.offsets.astype(np.int32))
                flat = pa.FixedSizeListArray.from_arrays(pa.array(b.frames.reshape(-1), pa.float32()), dim)
                emb = pa.ListArray.from_arrays(off, flat)
                ts = pa.ListArray.from_arrays(off, pa.array(b.timestamps, pa.float64()))
                n = pa.array(np.diff(b.offsets).astype(np.int32))
                writer.write_table(table(b.indices, emb, {"timestamps": ts, "num_frames": n}).cast(schema))
                written += len(b)
        writer.close()
        writer = None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if not publish_new(tmp, out):
            raise _appeared(out)
        fsync_dir(out.parent)
    except OSError as exc:
        raise disk_error(out, "write the export", exc, _NOTHING_KEPT) from None
    finally:
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass
        _drop(tmp)
    return written


# -- npy -------------------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _file_name(video: str) -> str:
    """A readable, collision-free file name for a video path: its stem plus a hash of the whole path."""
    stem = _UNSAFE.sub("_", Path(video).stem)[:80] or "video"
    return f"{stem}-{hashlib.sha1(video.encode('utf-8')).hexdigest()[:10]}.npy"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array, np.float32), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _none_if_nan(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _npy(store, out: Path, pool, frames: bool, meta: dict, progress: bool) -> int:
    idx = store.index()
    by_video: dict[str, list[int]] = {}
    for i, v in enumerate(idx.video):
        by_video.setdefault(v, []).append(i)
    tmp = _tmp_path(out)
    videos: list[dict[str, Any]] = []
    try:
        (tmp / "videos").mkdir(parents=True)

        def entry(v: str, clips: list[int], rows: list[list[int]], ts: list[list[float]] | None) -> dict[str, Any]:
            return {
                "video": v,
                "file": f"videos/{_file_name(v)}",
                "clips": [
                    {
                        "start": _none_if_nan(idx.start[i]),
                        "end": _none_if_nan(idx.end[i]),
                        "label": idx.label[i],
                        "split": idx.split[i],
                        "rows": r,
                        **({"timestamps": ts[k]} if ts is not None else {}),
                    }
                    for k, (i, r) in enumerate(zip(clips, rows))
                ],
            }

        if not frames:
            X = store.pooled(pool, progress=progress)
            for v, clips in by_video.items():
                _save_npy(tmp / "videos" / _file_name(v), X[clips])
                videos.append(entry(v, clips, [[k, k + 1] for k in range(len(clips))], None))
        else:  # stream shard by shard; a video is written once all its clips have been read
            left = {v: len(c) for v, c in by_video.items()}
            parts: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
            for b in store.iter_batches(4096, timestamps=True):
                for k, i in enumerate(b.indices):
                    v = idx.video[i]
                    a, e = int(b.offsets[k]), int(b.offsets[k + 1])
                    parts.setdefault(v, {})[int(i)] = (b.frames[a:e].copy(), b.timestamps[a:e].copy())
                    left[v] -= 1
                    if not left[v]:
                        clips = by_video[v]
                        got = parts.pop(v)
                        lengths = np.cumsum([0] + [len(got[c][0]) for c in clips])
                        _save_npy(tmp / "videos" / _file_name(v), np.concatenate([got[c][0] for c in clips]))
                        rows = [[int(lengths[j]), int(lengths[j + 1])] for j in range(len(clips))]
                        videos.append(entry(v, clips, rows, [got[c][1].tolist() for c in clips]))
        index = {**meta, "width": None, "videos": videos}
        if videos:
            index["width"] = int(np.load(tmp / videos[0]["file"], mmap_mode="r").shape[1])
        with open(tmp / "index.json", "w", encoding="utf-8") as fh:
            json.dump(index, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp / "videos")
        fsync_dir(tmp)
        try:
            os.rename(tmp, out)  # onto nothing, or an empty folder; a file or a folder with files is refused
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            raise _appeared(out) from None
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            raise _appeared(out) from None
        fsync_dir(out.parent)
    except OSError as exc:
        raise disk_error(out, "write the export", exc, _NOTHING_KEPT) from None
    finally:
        _drop(tmp)
    return len(idx.video)
