"""Streaming reads: a store's live frames, shard by shard in blocks of whole clips, hashed as they are read.

Memory is bounded by a few blocks (``BLOCK_FRAMES`` rows each, about one extraction shard) whatever the
store's size — also for a compacted store, whose one shard holds every frame. Each shard's
``frames/embedding`` is hashed in order, every row (kept or not), in a helper thread, and compared with
the shard's checksum when its last block has been read: a damaged shard raises ``StoreError`` before a
whole-store result (``pooled``) is returned, and a shard that fits in one block before any of its rows is
handed out. How reading, hashing and widening overlap: docs/store-format.md#streaming-reads-and-caches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .layout import Digest, checksum_mismatch

__all__ = ["BLOCK_FRAMES", "Block", "iter_blocks", "pool_blocks", "prefault", "widen"]

BLOCK_FRAMES = 1 << 16  # frames read at once (16 MiB of float16 x 128-d ... 256 MiB of float32 x 1024-d)
_WIDEN_CHUNK = 1 << 16  # values widened per step: the step's temporaries stay in the L2 cache
_HALF_TO_SINGLE = np.float32(2.0**112)  # 2 ** (float32 bias 127 - float16 bias 15)


def _subnormals_kept() -> bool:
    """False if this thread flushes float32 subnormals to zero (FTZ/DAZ, which a library may switch on)."""
    tiny = np.array([1 << 13], np.uint32).view(np.float32)  # float16's smallest subnormal, 2**-24, shifted in place
    return bool(tiny[0] * _HALF_TO_SINGLE == np.float32(2.0**-24))


def widen(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``raw`` as float32 (into ``out`` when given: same shape), bit for bit what ``raw.astype(np.float32)`` gives.

    numpy casts float16 one value at a time. This places each value's exponent and mantissa bits in a float32
    and scales by 2**112 — exact for normal and subnormal values — in cache-sized steps of whole-array integer
    operations; a step holding an Inf or NaN, or a thread that flushes subnormals, falls back to numpy's cast.
    Other dtypes: numpy's cast (float32 without ``out``: ``raw`` itself, no copy).
    """
    if out is None:
        if raw.dtype == np.float32:
            return raw
        out = np.empty(raw.shape, np.float32)
    if raw.dtype != np.float16 or not _subnormals_kept():
        np.copyto(out, raw, casting="unsafe")
        return out
    src = np.ascontiguousarray(raw).reshape(-1).view(np.uint16)
    bits = out.reshape(-1).view(np.uint32)  # out is C-contiguous (np.empty, or the caller's buffer)
    sign = np.empty(min(len(src), _WIDEN_CHUNK), np.uint32)
    for lo in range(0, len(src), _WIDEN_CHUNK):
        h, b = src[lo : lo + _WIDEN_CHUNK], bits[lo : lo + _WIDEN_CHUNK]
        sg = sign[: len(h)]
        np.copyto(b, h, casting="unsafe")
        np.bitwise_and(b, 0x8000, out=sg)
        np.left_shift(sg, 16, out=sg)
        np.bitwise_and(b, 0x7FFF, out=b)
        if len(b) and b.max() >= 0x7C00:  # Inf or NaN in this step
            np.copyto(b.view(np.float32), h.view(np.float16), casting="unsafe")
            continue
        np.left_shift(b, 13, out=b)
        f = b.view(np.float32)
        np.multiply(f, _HALF_TO_SINGLE, out=f)
        np.bitwise_or(b, sg, out=b)
    return out


_PREFAULT_MIN = 1 << 26  # results from 64 MiB on are faulted in ahead (smaller ones: not worth a thread)
_PREFAULT_STEP = 1 << 24
_MADV_POPULATE_WRITE = 23  # Linux >= 5.14


def prefault(a: np.ndarray) -> bool:
    """Fault in the pages of ``a`` (C-contiguous) without touching its values; False where the OS cannot.
    A fresh matrix costs a page fault per 4 KiB at its first write; ``MADV_POPULATE_WRITE`` does that work in
    a helper thread (ctypes releases the GIL) and writes nothing, so it cannot race the rows being stored."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux") or not a.flags.c_contiguous:
        return False
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return False
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = 4096
    lo = (a.ctypes.data + page - 1) // page * page
    hi = (a.ctypes.data + a.nbytes) // page * page
    for start in range(lo, hi, _PREFAULT_STEP):
        if madvise(start, min(_PREFAULT_STEP, hi - start), _MADV_POPULATE_WRITE) != 0:
            return False  # an older kernel (EINVAL) or no memory to spare: the pooling faults pages itself
    return True


def _feed(digest: Digest | None, sink: Callable[[int, np.ndarray], None] | None, lo: int, rows: np.ndarray) -> None:
    if digest is not None:
        digest.update(rows)
    if sink is not None:
        sink(lo, rows)


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


class _Buffers:
    """Two alternating (rows, D) arrays per role, grown as needed: what ``reuse`` recycles between blocks."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, int], np.ndarray] = {}

    def get(self, role: str, slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        buf = self._bufs.get((role, slot))
        if buf is None or buf.dtype != dtype or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = self._bufs[(role, slot)] = np.empty(shape, dtype)
        return buf[: shape[0]]


@dataclass
class _Prepared:
    block: Block | None  # None: no kept clip in these rows (read and hashed all the same)
    check: Callable[[], None] | None  # the shard's checksum test, on its last block


def _read_rows(ds: Any, a: int, b: int, out: np.ndarray | None) -> np.ndarray:
    """Rows ``a:b`` of ``ds`` in its stored dtype, into ``out`` (a reused buffer) when given; read at h5py's
    low level, as its ``ds[a:b]`` and ``read_direct`` cost several times the read itself."""
    from h5py import h5s

    shape = (b - a, *ds.shape[1:])
    if out is None:
        out = np.empty(shape, ds.dtype)
    if b > a:
        space = ds.id.get_space()
        space.select_hyperslab((a,) + (0,) * (len(shape) - 1), shape)
        ds.id.read(h5s.create_simple(shape), space, out)
    return out


def _prepare(
    shards: list[Any], store: Path, hasher: ThreadPoolExecutor, check: bool, timestamps: bool, block: int, reuse: bool
) -> Iterator[_Prepared]:
    """Each block read, its hash queued on ``hasher`` and its frames widened; checks not yet waited for."""
    import h5py

    bufs = _Buffers() if reuse else None
    slot = 0
    hashing: dict[int, Future] = {}  # slot -> the hash job still reading that slot's raw buffer
    lo = 0
    for k, meta in enumerate(shards):
        if not len(meta.kept):
            continue
        kept = np.zeros(meta.n_clips, bool)
        kept[meta.kept] = True
        expected = meta.checksums.get("frames/embedding") if check else None
        expected_t = meta.checksums.get("frames/timestamp") if check and timestamps else None
        d, dt = Digest.like(expected), Digest.like(expected_t)
        pending: list[Future] = []
        ranges = list(_clip_ranges(meta.offset, block))
        with h5py.File(meta.path, "r") as f:
            e, t = f["frames/embedding"], f["frames/timestamp"]
            for r, (c0, c1) in enumerate(ranges):
                a, b = int(meta.offset[c0]), int(meta.offset[c1])
                slot ^= 1
                if slot in hashing:  # a block of a shard larger than one block: its hash may still be running
                    hashing.pop(slot).result()
                raw_buf = bufs.get("raw", slot, (b - a, *e.shape[1:]), e.dtype) if bufs else None
                raw = _read_rows(e, a, b, raw_buf)
                raw_t = t[a:b] if timestamps else None
                if expected is not None:
                    pending.append(hasher.submit(d.update, raw))
                    if bufs:
                        hashing[slot] = pending[-1]
                if expected_t is not None:
                    dt.update(raw_t)
                local = meta.offset[c0 : c1 + 1] - a
                sel = kept[c0:c1]
                if sel.all():
                    recycle = bufs is not None and raw.dtype != np.float32
                    wide = bufs.get("frames", slot, raw.shape, np.dtype(np.float32)) if bufs and recycle else None
                    frames = widen(raw, wide)
                    off, ts = local, raw_t
                else:
                    clips = np.flatnonzero(sel)
                    lengths = local[clips + 1] - local[clips]
                    rows = np.concatenate([np.arange(local[i], local[i + 1]) for i in clips] or [np.zeros(0, np.int64)])
                    frames = widen(raw[rows])
                    ts = raw_t[rows] if raw_t is not None else None
                    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
                last = r == len(ranges) - 1

                def verify(meta=meta, d=d, dt=dt, pending=pending, expected=expected, expected_t=expected_t) -> None:
                    for job in pending:
                        job.result()
                    if expected is not None and d.hexdigest() != expected:
                        raise checksum_mismatch(meta.path, store, "frames/embedding")
                    if expected_t is not None and dt.hexdigest() != expected_t:
                        raise checksum_mismatch(meta.path, store, "frames/timestamp")

                blk = Block(lo, frames, off, ts, k) if len(off) > 1 else None
                lo += len(off) - 1
                yield _Prepared(blk, verify if last else None)


def iter_blocks(
    shards: list[Any],
    store: Path,
    *,
    check: bool = True,
    timestamps: bool = False,
    block: int | None = None,
    reuse: bool = False,
) -> Iterator[Block]:
    """Blocks of every live shard's kept clips, in the store's clip order (see the module doc).
    ``reuse``: a block's arrays are recycled two blocks later, so it is valid only until the next one is
    asked for (``pool_blocks`` keeps nothing of it; the page faults of fresh arrays cost more than the copy)."""
    # One hashing worker keeps the updates in order (zlib and hashlib release the GIL). The next block is
    # read, queued for hashing and widened before this one's check is waited for, so the hasher never idles.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidprobe-checksum") as hasher:
        ahead: _Prepared | None = None
        for nxt in _prepare(shards, store, hasher, check, timestamps, block or BLOCK_FRAMES, reuse):
            if ahead is not None:
                yield from _finish(ahead)
            ahead = nxt
        if ahead is not None:
            yield from _finish(ahead)


def _finish(p: _Prepared) -> Iterator[Block]:
    if p.check is not None:  # the shard is fully read: check it before handing out its last rows
        p.check()
    if p.block is not None:
        yield p.block


def pool_blocks(
    blocks: Iterator[Block],
    n_clips: int,
    pool: Callable[[np.ndarray], np.ndarray],
    progress: Any = None,
    digest: Digest | None = None,
    sink: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """(N, D') float32 from streamed blocks: ``pool.batch(frames, offsets)`` per block when the pooling has
    one (``pipeline.probe.pooling.Pooling``), else ``pool(frames)`` per clip. Only the result is kept.
    ``digest``: fed the result's rows in order, in a helper thread as they are pooled (the pooled cache's
    checksum, so writing the cache does not hash the whole matrix again afterwards). ``sink(lo, rows)``: called
    in that thread too with each block's finished rows (``cache.PooledWriter`` writes them to the cache file).
    The result's memory is faulted in ahead of the rows by a second helper thread (``prefault``)."""
    batch = getattr(pool, "batch", None)
    out: np.ndarray | None = None
    done = 0  # rows fed to ``digest``
    # One worker each: the rows' jobs must run in order (the digest is incremental); the prefault runs beside.
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidprobe-checksum-pooled") as helper,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidprobe-prefault") as faulter,
    ):
        jobs: list[Future] = []
        for blk in blocks:
            if batch is not None:
                rows = np.asarray(batch(blk.frames, blk.offsets), dtype=np.float32)
            else:
                rows = np.stack([pool(blk.frames[a:b]) for a, b in zip(blk.offsets[:-1], blk.offsets[1:])]).astype(
                    np.float32, copy=False
                )
            if out is None:
                out = np.empty((n_clips, rows.shape[1]), np.float32)
                if out.nbytes >= _PREFAULT_MIN:
                    jobs.append(faulter.submit(prefault, out[len(rows) :]))
            out[blk.lo : blk.lo + len(rows)] = rows
            mine = out[blk.lo : blk.lo + len(rows)]
            if digest is not None and blk.lo == done:  # blocks come in store order, so rows are fed in order
                jobs.append(helper.submit(_feed, digest, sink, blk.lo, mine))
                done += len(rows)
            elif sink is not None:
                jobs.append(helper.submit(_feed, None, sink, blk.lo, mine))
            if progress is not None:
                progress.update(len(rows))
        for job in jobs:
            job.result()
    if digest is not None and done != n_clips:  # not fed every row in order: the caller must hash the result
        raise RuntimeError("pool_blocks: rows were not fed to the digest in order")
    return out if out is not None else np.zeros((0, 0), np.float32)
