"""Streaming reads: a store's live frames, shard by shard in blocks of whole clips, hashed as they are read.

Memory is bounded by one block (``BLOCK_FRAMES`` rows, about one extraction shard) whatever the store's
size — also for a compacted store, whose one shard holds every frame. Each shard's ``frames/embedding``
is read in order, every row (kept or not), into one incremental SHA-256 (``layout.Digest``), and compared
with the shard's checksum when its last block has been read: a damaged shard raises ``StoreError`` before
a whole-store result (``pooled``) is returned. A shard that fits in one block — every shard extraction
writes — is checked before any of its rows is handed out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .layout import Digest, checksum_mismatch

__all__ = ["BLOCK_FRAMES", "Block", "iter_blocks", "pool_blocks"]

BLOCK_FRAMES = 1 << 16  # frames read at once (16 MiB of float16 x 128-d ... 256 MiB of float32 x 1024-d)


@dataclass
class Block:
    """Kept clips ``lo:lo + n`` of the store (global clip rows), their float32 frames and local offsets."""

    lo: int
    frames: np.ndarray  # (F_b, D) float32
    offsets: np.ndarray  # (n+1,) into ``frames``
    timestamps: np.ndarray | None  # (F_b,) with ``timestamps=True``
    shard: int  # position of the shard among the live shards

    def __len__(self) -> int:
        return len(self.offsets) - 1


def _clip_ranges(offset: np.ndarray, block: int) -> Iterator[tuple[int, int]]:
    """[c0, c1) runs of clips holding at most ``block`` frames (at least one clip each)."""
    n = len(offset) - 1
    c0 = 0
    while c0 < n:
        c1 = int(np.searchsorted(offset, offset[c0] + block, side="right")) - 1
        c1 = max(c0 + 1, min(n, c1))
        yield c0, c1
        c0 = c1


def iter_blocks(
    shards: list[Any], store: Path, *, check: bool = True, timestamps: bool = False, block: int | None = None
) -> Iterator[Block]:
    """Blocks of every live shard's kept clips, in the store's clip order (see the module doc)."""
    import h5py

    block = block or BLOCK_FRAMES

    lo = 0
    # SHA-256 runs in a helper thread (hashlib releases the GIL), overlapping the float16 -> float32 widening and
    # the pooling of the same block on another core; one worker keeps the updates in order.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidprobe-sha256") as hasher:
        for k, meta in enumerate(shards):
            if not len(meta.kept):
                continue
            kept = np.zeros(meta.n_clips, bool)
            kept[meta.kept] = True
            expected = meta.checksums.get("frames/embedding") if check else None
            expected_t = meta.checksums.get("frames/timestamp") if check and timestamps else None
            d, dt = Digest(), Digest()
            pending: list[Future] = []
            ranges = list(_clip_ranges(meta.offset, block))
            with h5py.File(meta.path, "r") as f:
                e, t = f["frames/embedding"], f["frames/timestamp"]
                for r, (c0, c1) in enumerate(ranges):
                    a, b = int(meta.offset[c0]), int(meta.offset[c1])
                    raw = e[a:b]
                    raw_t = t[a:b] if timestamps else None
                    if expected is not None:
                        pending.append(hasher.submit(d.update, raw))
                    if expected_t is not None:
                        dt.update(raw_t)
                    local = meta.offset[c0 : c1 + 1] - a
                    sel = kept[c0:c1]
                    if sel.all():
                        frames, off, ts = raw.astype(np.float32, copy=False), local, raw_t
                    else:
                        clips = np.flatnonzero(sel)
                        lengths = local[clips + 1] - local[clips]
                        rows = np.concatenate(
                            [np.arange(local[i], local[i + 1]) for i in clips] or [np.zeros(0, np.int64)]
                        )
                        frames = raw[rows].astype(np.float32, copy=False)
                        ts = raw_t[rows] if raw_t is not None else None
                        off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
                    if r == len(ranges) - 1:  # the shard is fully read: check it before handing out its last rows
                        for job in pending:
                            job.result()
                        if expected is not None and d.hexdigest() != expected:
                            raise checksum_mismatch(meta.path, store, "frames/embedding")
                        if expected_t is not None and dt.hexdigest() != expected_t:
                            raise checksum_mismatch(meta.path, store, "frames/timestamp")
                    if len(off) > 1:
                        yield Block(lo, frames, off, ts, k)
                        lo += len(off) - 1


def pool_blocks(
    blocks: Iterator[Block], n_clips: int, pool: Callable[[np.ndarray], np.ndarray], progress: Any = None
) -> np.ndarray:
    """(N, D') float32 from streamed blocks: ``pool.batch(frames, offsets)`` per block when the pooling has
    one (``pipeline.probe.pooling.Pooling``), else ``pool(frames)`` per clip. Only the result is kept."""
    batch = getattr(pool, "batch", None)
    out: np.ndarray | None = None
    for blk in blocks:
        if batch is not None:
            rows = np.asarray(batch(blk.frames, blk.offsets), dtype=np.float32)
        else:
            rows = np.stack([pool(blk.frames[a:b]) for a, b in zip(blk.offsets[:-1], blk.offsets[1:])]).astype(
                np.float32, copy=False
            )
        if out is None:
            out = np.empty((n_clips, rows.shape[1]), np.float32)
        out[blk.lo : blk.lo + len(rows)] = rows
        if progress is not None:
            progress.update(len(rows))
    return out if out is not None else np.zeros((0, 0), np.float32)
