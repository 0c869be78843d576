"""Reading the shards' clip tables for the store's index — split with a second process on a big store.

The index (``reader._build_index``) needs every live shard's clip columns, offsets, checksums and failures.
That costs ~2.6 ms a shard here (HDF5 open, seven small reads, string decoding, the columns' checksums), so
5 s for the 1954 shards of 1M clips: the largest part of a first read at that size, and HDF5 reads do not run
in parallel in one process (h5py serialises every call). From ``PARALLEL_MIN_SHARDS`` shards on, a
``python -m pipeline.store.clip_tables`` child reads the later part of the listing while this process reads
the first (sized so both end together, the child's start-up counted), and sends its tables back pickled
over a pipe, string columns joined (a plain subprocess, not ``multiprocessing``: nothing re-imports the
caller's ``__main__``).
The tables and every refusal are exactly what one process reading all shards gives; a child that cannot
start, dies, or takes far longer than this process took for its own part leaves its shards to this process.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .layout import (
    CHECKSUMS_ATTR,
    PROVENANCE_FILE,
    SOURCE_COLUMNS,
    UNKNOWN_SOURCE,
    checksum_mismatch,
    describe_differences,
    digest,
)

__all__ = [
    "ShardMeta",
    "ClipTableRow",
    "check_sum",
    "read_clip_table",
    "read_clip_tables",
    "read_source",
    "PARALLEL_MIN_SHARDS",
]

PARALLEL_MIN_SHARDS = 512  # below (~1.3 s of reading here), a second process costs more than it saves
_CHILD_START_SHARDS = 200  # shards this process reads while the child starts and sends its tables back


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
    checksums: dict[str, str] = field(default_factory=dict)  # dataset -> "crc32:HEX" (older: "sha256:HEX")
    # (n_clips, 3) int64: each clip's video file fingerprint (``sources``), UNKNOWN_SOURCE where not recorded
    source: np.ndarray = field(default_factory=lambda: np.zeros((0, len(SOURCE_COLUMNS)), np.int64))

    @property
    def all_kept(self) -> bool:
        return len(self.kept) == self.n_clips

    def kept_rows(self) -> slice | np.ndarray:
        """Rows of ``frames/*`` that belong to the kept clips, in order: a slice when all are kept."""
        if self.all_kept:
            return slice(0, self.n_frames)
        return np.concatenate([np.arange(self.offset[i], self.offset[i + 1]) for i in self.kept])


# (meta, video, start, end, label, split, failures) of one shard
ClipTableRow = tuple[ShardMeta, list[str], np.ndarray, np.ndarray, list[str], list[str], list[dict[str, Any]]]


def _compression_of(ds) -> str:
    return ds.compression or "none"


def check_sum(meta: ShardMeta, store: Path, dataset: str, values: Any) -> None:
    """Raise the one-line refusal if ``values`` (read whole) do not match the shard's checksum of ``dataset``."""
    expected = meta.checksums.get(dataset)
    if expected is not None and digest(values, like=expected) != expected:
        raise checksum_mismatch(meta.path, store, dataset)


def _foreign(shard: Path, store: Path, provenance: dict[str, Any], attrs: Any) -> StoreError | None:
    """The refusal for a shard whose identity differs from the store's (None when it matches)."""
    try:
        theirs = json.loads(attrs["provenance"])
    except (KeyError, ValueError, TypeError):
        return StoreError(f"{shard}: no readable provenance; run `vidprobe verify {store}`")
    diffs = describe_differences(provenance, theirs, names=(PROVENANCE_FILE, "the shard"))
    if not diffs:
        return None
    return StoreError(
        f"{shard}: written with other settings than {PROVENANCE_FILE} ({'; '.join(diffs)}); a store never mixes "
        "extractions: move the shard to a store of its own, or restore store.json"
    )


def _dataset_id(f: Any, name: str) -> Any:
    """The low-level dataset: h5py's ``f[name]`` costs ~8x more, which the index pays ~10 times per shard."""
    from h5py import h5d

    try:
        return h5d.open(f.id, name.encode("utf-8"))
    except KeyError:
        raise KeyError(f"no dataset {name}") from None


def _read(f: Any, name: str) -> np.ndarray:
    """A whole dataset as a numpy array (strings: an object array of bytes), read at h5py's low level."""
    from h5py import h5s

    d = _dataset_id(f, name)
    arr = np.empty(d.shape, dtype=d.dtype)
    if arr.size:
        d.read(h5s.ALL, h5s.ALL, arr)
    return arr


def read_source(f: Any, group: str, n: int, strict: bool = True) -> np.ndarray:
    """(n, 3) int64 fingerprints of a group's rows (``SOURCE_COLUMNS``); unknown in a shard written before them.

    A column of another length raises ``ValueError`` (``strict``), else stays unknown (``verify`` reports it).
    """
    out = np.full((n, len(SOURCE_COLUMNS)), UNKNOWN_SOURCE, dtype=np.int64)
    for j, name in enumerate(SOURCE_COLUMNS):
        try:
            col = _read(f, f"{group}/{name}")
        except KeyError:
            continue
        if col.shape == (n,):
            out[:, j] = col
        elif strict:
            raise ValueError(f"{group}/{name} has {col.shape[0] if col.ndim else 0} rows for {n}")
    return out


def _read_str(f: Any, name: str) -> list[str]:
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in _read(f, name).tolist()]


def read_clip_table(
    shard: Path, store: Path, provenance: dict[str, Any], check: bool, matched: set[str]
) -> ClipTableRow:
    """One shard's clip table, checked; ``matched``: provenance texts already found equal to ``store.json``."""
    import h5py

    dim = int(provenance["dim"])
    try:
        with h5py.File(shard, "r") as f:
            off = _read(f, "clips/offset")
            v, s, e = _read_str(f, "clips/video"), _read(f, "clips/start"), _read(f, "clips/end")
            lab, spl = _read_str(f, "clips/label"), _read_str(f, "clips/split")
            emb = f["frames/embedding"]
            emb_shape = emb.shape
            meta = ShardMeta(
                shard,
                off,
                np.arange(len(v)),
                len(v),
                int(emb.shape[0]),
                str(emb.dtype),
                _compression_of(emb),
                json.loads(f.attrs.get("compacted_from", "[]")),
                json.loads(f.attrs.get(CHECKSUMS_ATTR, "{}")),
                read_source(f, "clips", len(v)),
            )
            raw_prov = f.attrs.get("provenance")
            known = isinstance(raw_prov, str) and raw_prov in matched  # shards of one store share it
            foreign = None if known else _foreign(shard, store, provenance, f.attrs)
            if foreign is None and isinstance(raw_prov, str):
                matched.add(raw_prov)
            fpath = _dataset_id(f, "failures/path")
            fcols = (  # most shards have none: skip reading five empty datasets (the index of 1M clips)
                (
                    _read_str(f, "failures/path"),
                    _read(f, "failures/start"),
                    _read(f, "failures/end"),
                    _read_str(f, "failures/stage"),
                    _read_str(f, "failures/error"),
                    _read(f, "failures/time"),
                )
                if fpath.shape[0]
                else ()
            )
            fsource = read_source(f, "failures", fpath.shape[0])
    except FileNotFoundError:
        raise  # removed by a compaction after the listing; the caller lists again
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise StoreError(f"{shard}: unreadable shard ({exc}); run `vidprobe verify {store}`") from None
    if foreign is not None:
        raise foreign
    if check:  # the clip table is small: check it whole (a shifted offset would move frames between clips)
        for name, values in (
            ("offset", off),
            ("video", v),
            ("start", s),
            ("end", e),
            ("label", lab),
            ("split", spl),
            *((name, meta.source[:, j]) for j, name in enumerate(SOURCE_COLUMNS)),
        ):
            check_sum(meta, store, f"clips/{name}", values)  # no-op where not recorded (older shards)
    if len(off) != len(v) + 1 or (len(v) and (off[0] != 0 or off[-1] != meta.n_frames)) or emb_shape[1:] != (dim,):
        raise StoreError(f"{shard}: inconsistent shard (offsets/frames/dim); run `vidprobe verify {store}`")
    failures = [
        dict(
            path=r[0],
            start=float(r[1]),
            end=float(r[2]),
            stage=r[3],
            error=r[4],
            time=float(r[5]),
            shard=shard.name,
            **dict(zip(SOURCE_COLUMNS, src.tolist())),
        )
        for *r, src in zip(*fcols, fsource)
    ]
    return meta, v, s, e, lab, spl, failures


def _read_all(store: Path, provenance: dict[str, Any], shards: list[Path], check: bool) -> list[ClipTableRow]:
    matched: set[str] = set()
    return [read_clip_table(p, store, provenance, check, matched) for p in shards]


def read_clip_tables(
    store: Path, provenance: dict[str, Any], shards: list[Path], check: bool = True
) -> list[ClipTableRow]:
    """Every shard's clip table in listing order (see the module doc for when a child process reads a part).

    Raises what reading the shards one by one raises first (``StoreError``; ``FileNotFoundError`` for a shard
    a compaction removed meanwhile)."""
    python = Path(sys.executable or "").name.lower().startswith("python")  # not an embedding application
    if len(shards) < PARALLEL_MIN_SHARDS or (os.cpu_count() or 1) < 2 or not python:
        return _read_all(store, provenance, shards, check)
    cut = (len(shards) + _CHILD_START_SHARDS) // 2
    child = _start_child(store, provenance, shards[cut:], check)
    if child is None:
        return _read_all(store, provenance, shards, check)
    proc, reply = child
    t0 = time.perf_counter()
    try:
        head = _read_all(store, provenance, shards[:cut], check)
    except BaseException:
        proc.kill()
        reply.result()
        raise
    try:  # the child has as many shards as this process had: far more than twice its time means it is stuck
        answer = reply.result(timeout=30 + 2 * (time.perf_counter() - t0))
    except FutureTimeout:
        proc.kill()
        answer = None
    status, tail = answer if answer is not None else ("lost", None)
    if status == "ok" and isinstance(tail, list):
        return head + [_unpack(r) for r in tail]
    if status == "error" and isinstance(tail, BaseException):
        raise tail  # what reading those shards here would raise (the child stopped at the first)
    return head + _read_all(store, provenance, shards[cut:], check)  # the child failed: read its part here


def _start_child(store: Path, provenance: dict[str, Any], shards: list[Path], check: bool):
    """(process, future of its decoded reply) for a child reading ``shards``; None if it cannot start."""
    import pipeline

    root = str(Path(pipeline.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from pipeline.store.clip_tables import _child_main; _child_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    except OSError:
        return None
    job = pickle.dumps((store, provenance, shards, check), protocol=pickle.HIGHEST_PROTOCOL)

    def talk() -> tuple[str, Any] | None:  # in a thread, so the child never blocks on a full pipe
        try:
            out, _ = proc.communicate(job)
            return pickle.loads(out) if proc.returncode == 0 else None
        except Exception:  # noqa: BLE001 - a broken child: its shards are read here instead
            return None

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidprobe-index-child")
    reply = pool.submit(talk)
    pool.shutdown(wait=False)
    return proc, reply


_SEP = "\0"  # cannot occur in an HDF5 string (they are NUL-terminated)


def _join(col: list[str]) -> str | list[str]:
    text = _SEP.join(col)
    return text if text.count(_SEP) == len(col) - 1 else col  # a NUL inside a value after all: sent as it is


def _split(col: str | list[str], n: int) -> list[str]:
    return col if isinstance(col, list) else col.split(_SEP) if n else []


def _pack(row: ClipTableRow) -> tuple[Any, ...]:
    """A row with its string columns joined: 977 shards' tables (500k clips) pickled and unpickled in 0.11 s this
    way against 0.80 s as lists of short strings (joining and splitting them costs 0.11 s; AMD EPYC Zen 5)."""
    meta, v, s, e, lab, spl, fails = row
    return meta, _join(v), s, e, _join(lab), _join(spl), fails


def _unpack(packed: tuple[Any, ...]) -> ClipTableRow:
    meta, v, s, e, lab, spl, fails = packed
    n = meta.n_clips
    return meta, _split(v, n), s, e, _split(lab, n), _split(spl, n), fails


def _child_main() -> None:
    """The child's side: the job from stdin, ``("ok", packed rows)`` or ``("error", exception)`` to stdout."""
    store, provenance, shards, check = pickle.loads(sys.stdin.buffer.read())
    try:
        answer: tuple[str, Any] = ("ok", [_pack(r) for r in _read_all(store, provenance, shards, check)])
    except (StoreError, FileNotFoundError) as exc:
        answer = ("error", exc)
    sys.stdout.buffer.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
