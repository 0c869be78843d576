"""The shards' clip tables, read and checked for the store's index (``index.build_index``): each live shard's
clip columns, offsets, checksums, video file fingerprints and failures, as ``ShardMeta`` plus columns."""

from __future__ import annotations

import json
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
]


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
    """The low-level dataset: h5py's ``f[name]`` costs much more, which the index pays ~10 times per shard."""
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


def read_clip_tables(
    store: Path, provenance: dict[str, Any], shards: list[Path], check: bool = True
) -> list[ClipTableRow]:
    """Every shard's clip table in listing order. Raises ``StoreError`` (the first shard refused), or
    ``FileNotFoundError`` for a shard a compaction removed meanwhile."""
    matched: set[str] = set()
    return [read_clip_table(p, store, provenance, check, matched) for p in shards]
