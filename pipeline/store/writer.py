"""Writing shards: ``write_shard`` is the only way a shard comes to be (``*.h5.tmp`` → fsync → atomic
rename), and ``ShardWriter`` buffers finished clips into whole shards so a kill loses at most one."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import STORE_COMPRESSIONS as COMPRESSIONS
from ..errors import StoreError
from .layout import (
    CHECKSUMS_ATTR,
    FAILURE_COLUMNS,
    SCHEMA_VERSION,
    SHARD_DIR,
    SOURCE_COLUMNS,
    WARNINGS_GROUP,
    Digest,
    atomic_h5,
    digest,
    disk_error,
    identity,
    nan_if_none,
    shard_name,
    write_str_dataset,
)
from .sources import UNKNOWN, Source

if TYPE_CHECKING:
    from .reader import FeatureStore

__all__ = ["ShardWriter", "write_shard"]

_CHUNK_BYTES = 1 << 20  # compressed embeddings are chunked in ~1 MiB row blocks
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_DIGEST_ROWS = 1 << 16  # rows per read when checksumming what was written


def _checksums(f) -> dict[str, str]:
    """``checksums`` of every dataset in an open shard, computed from what the file holds."""
    out: dict[str, str] = {}

    def visit(name: str, obj) -> None:
        if not hasattr(obj, "shape"):
            return
        if obj.ndim and obj.shape[0] > _DIGEST_ROWS:
            d = Digest()
            for lo in range(0, obj.shape[0], _DIGEST_ROWS):
                d.update(obj[lo : lo + _DIGEST_ROWS])
            out[name] = d.hexdigest()
        else:
            out[name] = digest(obj[()])

    f.visititems(visit)
    return out


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
    warnings: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write one shard as ``final.tmp``, fsync, rename to ``final``: the only way shards come to be.

    ``clips`` holds offset/video/start/end/label/split, ``failures`` path/start/end/stage/error/time; both may
    hold ``SOURCE_COLUMNS`` (each record's video file fingerprint), written when given;
    ``fill(embedding_ds, timestamp_ds)`` writes the (n_frames, D) frames so a caller can stream them.
    ``warnings`` (video, message): what the decoder worked around for clips of this shard, kept with them
    across runs. A full disk or a read-only folder raises one ``StoreError`` and leaves no ``.tmp`` behind.
    """
    if compression not in COMPRESSIONS:
        raise StoreError(f"compression={compression!r}: allowed values are {', '.join(COMPRESSIONS)}")
    dim = int(provenance["dim"])
    dtype = np.dtype(identity(provenance, "dtype"))
    with atomic_h5(final, f"write shard {final.name}") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        frames = f.create_group("frames")
        emb = frames.create_dataset(
            "embedding",
            shape=(n_frames, dim),
            dtype=dtype,
            **_embedding_layout(n_frames, dim, dtype, compression, compression_level),
        )
        ts = frames.create_dataset("timestamp", shape=(n_frames,), dtype=np.float64)
        if n_frames:
            fill(emb, ts)
        c = f.create_group("clips")
        c.create_dataset("offset", data=np.asarray(clips["offset"], dtype=np.int64))
        for name in ("video", "label", "split"):
            write_str_dataset(c, name, clips[name])
        for name in ("start", "end"):
            c.create_dataset(name, data=np.asarray(clips[name], dtype=np.float64))
        fl = f.create_group("failures")
        for name in ("path", "stage", "error"):
            write_str_dataset(fl, name, failures[name])
        for name in ("start", "end", "time"):
            fl.create_dataset(name, data=np.asarray(failures[name], dtype=np.float64))
        for group, cols in ((c, clips), (fl, failures)):
            for name in SOURCE_COLUMNS:
                if name in cols:
                    group.create_dataset(name, data=np.asarray(cols[name], dtype=np.int64))
        if warnings:
            w = f.create_group(WARNINGS_GROUP)
            write_str_dataset(w, "video", [v for v, _ in warnings])
            write_str_dataset(w, "message", [m for _, m in warnings])
        f.attrs[CHECKSUMS_ATTR] = json.dumps(_checksums(f), sort_keys=True)
    return final


def _source_columns(sources: Sequence[tuple[int, ...]]) -> dict[str, np.ndarray]:
    arr = np.asarray(sources, dtype=np.int64).reshape(-1, len(SOURCE_COLUMNS))
    return dict(zip(SOURCE_COLUMNS, arr.T))


@dataclass
class _Pending:
    videos: list[str] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    timestamps: list[np.ndarray] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)  # each clip's video file fingerprint
    failures: list[tuple[str, float, float, str, str, float]] = field(default_factory=list)
    failure_sources: list[Source] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (video, message), see ``add_warning``
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
        store: FeatureStore,
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
        # What finished shards hold (a run record counts these, not what was handed in: a full disk
        # loses the buffered clips, and the record must not claim them).
        self.stored_clips = self.stored_frames = 0
        self.stored_failed: dict[str, str] = {}  # video -> stage of its latest failure in a finished shard

    def add(
        self,
        video: str,
        start: float | None,
        end: float | None,
        label: str,
        split: str,
        embeddings: np.ndarray,
        timestamps: np.ndarray,
        source: Source | None = None,
    ) -> None:
        """Buffer one clip; ``source``: its video file's fingerprint (``sources``; None: unknown)."""
        if embeddings.ndim != 2 or embeddings.shape[0] != len(timestamps):
            raise StoreError(f"{video}: embeddings {embeddings.shape} do not match {len(timestamps)} timestamps")
        if embeddings.shape[1] != int(self.store.provenance["dim"]):
            raise StoreError(
                f"{video}: embeddings have {embeddings.shape[1]} dims, the store holds {self.store.provenance['dim']}"
            )
        if not np.all(np.isfinite(embeddings)):
            raise StoreError(f"{video}: embeddings contain NaN or Inf; not stored")
        if self.dtype == np.float16 and np.abs(embeddings).max(initial=0.0) > _FLOAT16_MAX:
            raise StoreError(
                f"{video}: embedding values exceed the float16 range; use a store with store.dtype=float32"
            )
        p = self.pending
        p.videos.append(video)
        p.starts.append(nan_if_none(start))
        p.ends.append(nan_if_none(end))
        p.labels.append(label)
        p.splits.append(split)
        p.embeddings.append(np.asarray(embeddings, dtype=self.dtype))
        p.timestamps.append(np.asarray(timestamps, dtype=np.float64))
        p.sources.append(source or UNKNOWN)
        p.frames += len(timestamps)
        self._maybe_flush()

    def add_warning(self, video: str, message: str) -> None:
        """Keep ``message`` (what the decoder worked around for ``video``) in the shard that will hold the
        clips added next: add a clip's warnings before the clip, so they land in one shard."""
        self.pending.warnings.append((video, message))

    def add_failure(
        self,
        video: str,
        start: float | None,
        end: float | None,
        stage: str,
        error: str,
        source: Source | None = None,
    ) -> None:
        self.pending.failures.append((video, nan_if_none(start), nan_if_none(end), stage, error, time.time()))
        self.pending.failure_sources.append(source or UNKNOWN)
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
        try:
            shard_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(shard_dir, "create the shard folder", exc) from None
        offsets = np.zeros(len(p.videos) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(t) for t in p.timestamps]) if p.timestamps else []

        def fill(emb_ds, ts_ds) -> None:
            emb_ds[...] = np.concatenate(p.embeddings)
            ts_ds[...] = np.concatenate(p.timestamps)

        cols: list[Sequence[Any]] = list(zip(*p.failures)) if p.failures else [[]] * 6
        fails: dict[str, Any] = dict(zip(FAILURE_COLUMNS, cols))
        fails.update(_source_columns(p.failure_sources))
        final = write_shard(
            shard_dir / shard_name(self.prefix, self.tag),
            self.store.provenance,
            {
                "offset": offsets,
                "video": p.videos,
                "start": p.starts,
                "end": p.ends,
                "label": p.labels,
                "split": p.splits,
                **_source_columns(p.sources),
            },
            fails,
            int(offsets[-1]),
            fill,
            compression=self.compression,
            compression_level=self.compression_level,
            warnings=p.warnings,
        )
        self.stored_clips += len(p.videos)
        self.stored_frames += p.frames
        self.stored_failed.update((f[0], f[3]) for f in p.failures)
        self.pending = _Pending()
        self.written.append(final)
        self.store.invalidate()
        return final

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Finished clips are kept even when the job stops on an error or Ctrl-C.
        self.flush()
