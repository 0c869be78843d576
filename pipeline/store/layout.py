"""HDF5 feature store: per-frame embeddings in crash-safe shard files under one folder.

The folder, the datasets and attributes of one shard (readable with plain h5py), the reading rules (the
earliest finished shard wins a clip stored twice; records of a replaced video file, shards named in a
``compacted_from`` and fixed failures are left out) and the guarantees: docs/store-format.md.

The ``shards/`` folder is the index: a shard appears there, by one atomic rename, only when it is
complete, so a directory listing is always a consistent view. A separate index file would have to be
kept in step with the shards and could itself be torn by a kill between the two writes; parallel
writers also need no coordination beyond unique file names.

Checksums (``Digest``): a CRC-32 of each dataset's values, so any edit after writing shows, through h5py or
on the raw bytes. CRC-32 finds every flipped bit and burst up to 32 bits and costs less than SHA-256 (still
checked on older shards); it lives in the same file as the data, so a cryptographic hash would add no
protection against a deliberate edit. HDF5's Fletcher32 filter needs chunked datasets and is recomputed by
HDF5 itself when a value is rewritten through h5py. Nothing here imports torch.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..data.keys import Key, clip_key
from ..errors import OutputError, StoreError
from .lock import writer_tag

__all__ = [
    "SCHEMA_VERSION",
    "PROVENANCE_FILE",
    "SHARD_DIR",
    "RUNS_DIR",
    "IDENTITY_KEYS",
    "Key",
    "clip_key",
    "identity",
    "describe_differences",
    "shard_name",
    "shard_paths",
    "atomic_write_text",
    "publish_new",
    "atomic_h5",
    "CACHE_DIR",
    "fsync_dir",
    "read_provenance_file",
    "check_provenance",
    "Digest",
    "digest",
    "CHECKSUMS_ATTR",
    "WARNINGS_GROUP",
    "read_warnings",
    "disk_error",
    "write_error",
    "check_writable",
    "checksum_mismatch",
    "FAILURE_COLUMNS",
    "SOURCE_COLUMNS",
    "UNKNOWN_SOURCE",
]

SCHEMA_VERSION = 1
PROVENANCE_FILE = "store.json"
SHARD_DIR = "shards"
RUNS_DIR = "runs"
CACHE_DIR = "cache"  # derived files (clip index, pooled features), keyed by the shards they were built from
# Provenance keys that must match for two extractions to share a store. ``dtype`` is identity because
# float16 rounds values: one store never mixes precisions. So is the encoder's ``precision`` (fp32 /
# bf16 / fp16 computation changes the values). Compression is lossless and per shard.
IDENTITY_KEYS = ("schema_version", "encoder", "weights_id", "dim", "preprocess", "sampling", "dtype", "precision")
IDENTITY_DEFAULTS = {"dtype": "float32", "precision": "fp32"}  # stores written before a key existed hold its default


CHECKSUMS_ATTR = "checksums"
FAILURE_COLUMNS = ("path", "start", "end", "stage", "error", "time")  # of failures/, in the order records hold them
# Optional int64 columns of clips/ and failures/: the source file's fingerprint (see the module doc, ``sources``).
SOURCE_COLUMNS = ("source_size", "source_mtime_ns", "source_crc")
UNKNOWN_SOURCE = -1  # the value of each where it is unknown
WARNINGS_GROUP = "warnings"  # optional group of a shard: warnings/video, warnings/message (str)


CHECKSUM_ALGORITHM = "crc32"  # what new shards and caches carry; "sha256" (shards written before) still checks


class Digest:
    """Incremental checksum of one dataset's values (blocks of rows in order give the checksum of the whole).
    ``algorithm``: ``crc32`` (written now) or ``sha256`` (older shards)."""

    def __init__(self, algorithm: str = CHECKSUM_ALGORITHM) -> None:
        self.algorithm = algorithm if algorithm in ("crc32", "sha256") else CHECKSUM_ALGORITHM
        self._h = hashlib.sha256() if self.algorithm == "sha256" else None
        self._crc = 0

    @classmethod
    def like(cls, checksum: str | None) -> Digest:
        """A digest with ``checksum``'s algorithm (``"crc32:…"``/``"sha256:…"``), to compare with it; an
        unknown one gets the current algorithm, whose result then differs (a mismatch, as it should be)."""
        return cls(checksum.partition(":")[0] if isinstance(checksum, str) else CHECKSUM_ALGORITHM)

    def _feed(self, data: Any) -> None:
        if self._h is not None:
            self._h.update(data)
        else:
            self._crc = zlib.crc32(data, self._crc)  # releases the GIL on large buffers, as hashlib does

    def update(self, values: Any) -> Digest:
        """Numbers (an array): their bytes; strings (a list, or an array of str/bytes): the JSON list."""
        if isinstance(values, list) and all(type(x) is str for x in values):  # a clip column as the reader has it
            self._feed(json.dumps(values, ensure_ascii=False).encode("utf-8"))
            return self
        a = np.asarray(values, dtype=object) if isinstance(values, (list, tuple)) else np.asarray(values)
        if a.dtype.kind in "OUS":
            items = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in a.tolist()]
            self._feed(json.dumps(items, ensure_ascii=False).encode("utf-8"))
        else:
            a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
            self._feed(a.reshape(-1).data.cast("B"))
        return self

    def hexdigest(self) -> str:
        if self._h is not None:
            return "sha256:" + self._h.hexdigest()
        return f"crc32:{self._crc:08x}"


def digest(values: Any, like: str | None = None) -> str:
    """The checksum of one dataset's values as stored in a shard's ``checksums`` attribute (with ``like``'s
    algorithm, to compare with that stored checksum)."""
    return Digest.like(like).update(values).hexdigest()


_DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "read-only filesystem",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted",
    errno.EIO: "input/output error",
}


def _failed(path: Path, what: str, exc: OSError) -> str:
    reason = _DISK_ERRNOS.get(exc.errno or 0) or exc.strerror or str(exc).splitlines()[0]
    hint = "free some space and re-run" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "check the path and re-run"
    return f"{path}: cannot {what} ({reason}); {hint}"


def disk_error(path: Path, what: str, exc: OSError, kept: str = "finished shards are kept") -> StoreError:
    """One-line ``StoreError`` for a failed write: names the path, the reason, what to do, and what is ``kept``."""
    return StoreError(f"{_failed(path, what, exc)} ({kept})")


def write_error(path: Path, what: str, exc: OSError) -> OutputError:
    """``disk_error``'s line for an output that is not a store (a plot, a results folder)."""
    return OutputError(_failed(path, what, exc))


def check_writable(path: str | Path, what: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: one ``OutputError`` naming ``path``, ``what``
    was to be written and why. The nearest existing folder on the way must take a new file -- tried by creating
    and removing one, since permission bits tell nothing of a read-only filesystem, /proc, or what root may do
    -- and ``path`` must not be a folder where a file goes (``folder=False``) or a file where a folder goes.
    Creates nothing that stays (missing folders are made by the writer)."""
    p = Path(path)
    if p.exists() and p.is_dir() != folder:
        raise OutputError(f"{p}: is a {'file' if folder else 'folder'}; cannot {what} there (choose another path)")
    d = p if folder else p.parent
    while not d.exists() and d != d.parent:
        d = d.parent
    if not d.is_dir():
        raise OutputError(f"{p}: cannot create its folder ({d} is a file) to {what}; choose another path")
    probe = d / f".vidprobe-write-check-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
        if p.is_file() and not os.access(p, os.W_OK):
            raise PermissionError(errno.EACCES, "permission denied")
    except OSError as exc:
        why = "files cannot be created there" if exc.errno == errno.ENOENT else _DISK_ERRNOS.get(exc.errno or 0)
        where = "" if d == p.parent or d == p else f" in {d}"
        raise OutputError(f"{p}: cannot {what} ({why or exc.strerror or exc}{where}); choose another path") from None


def checksum_mismatch(shard: Path, store: Path, dataset: str) -> StoreError:
    """The refusal for a dataset whose values no longer match the shard's checksum."""
    return StoreError(
        f"{shard}: {dataset} does not match its checksum (changed after it was written); "
        f"run `vidprobe verify {store}` and re-extract the clips of that shard"
    )


def nan_if_none(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def write_str_dataset(group, name: str, values: Sequence[str]) -> None:
    import h5py

    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=h5py.string_dtype("utf-8"))


def read_str(ds) -> list[str]:
    return ds.asstr()[()].tolist() if len(ds) else []


def read_warnings(f) -> list[tuple[str, str]]:
    """(video, message) of an open shard's ``warnings`` group; none for a shard without one."""
    if WARNINGS_GROUP not in f:
        return []
    g = f[WARNINGS_GROUP]
    return list(zip(read_str(g["video"]), read_str(g["message"])))


def atomic_write_text(path: Path, text: str, exclusive: bool = False) -> bool:
    """Write ``text`` to ``path`` atomically; with ``exclusive`` only if ``path`` does not exist yet.
    A failed write (full disk, read-only filesystem) leaves no temporary file and raises one ``StoreError``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            if not publish_new(tmp, path):  # two jobs creating one store cannot both win
                return False
        else:
            os.replace(tmp, path)
    except OSError as exc:
        raise disk_error(path, "write", exc) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    fsync_dir(path.parent)
    return True


def publish_new(tmp: Path, dest: Path) -> bool:
    """Give the finished file ``tmp`` the name ``dest`` atomically, only if nothing has it; False if something
    does, even something created a moment ago. A hard link is the atomic create-if-absent (``os.replace``
    would replace); where the filesystem has none, best effort: a check, then a rename. The caller removes
    ``tmp`` (still there after a link)."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if dest.exists() or dest.is_symlink():
            return False
        os.replace(tmp, dest)
    return True


@contextmanager
def atomic_h5(final: Path, what: str, *, unique_tmp: bool = False) -> Iterator[Any]:
    """An HDF5 file written as ``final.tmp``, fsynced, then renamed to ``final``: how shards and caches come to be.
    ``unique_tmp``: a name of its own, ``final.TAG-RANDOM.tmp`` (TAG: the writer's ``lock.writer_tag``), for
    files two processes may write at once (a cache), so that a killed writer's can be told and removed.
    A failed write leaves no temporary file and raises one ``StoreError``."""
    import h5py

    unique = f".{writer_tag()}-{uuid.uuid4().hex[:8]}.tmp" if unique_tmp else ".tmp"
    tmp = final.with_name(final.name + unique)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise disk_error(final.parent, what, exc) from None
        raise


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def identity(provenance: dict[str, Any], key: str) -> Any:
    if key == "precision" and key not in provenance:  # older stores: what their encoder recorded (CUDA: fp16)
        return ((provenance.get("encoder_info") or {}).get("runtime") or {}).get("precision", IDENTITY_DEFAULTS[key])
    return provenance.get(key, IDENTITY_DEFAULTS.get(key))


def describe_differences(
    old: dict, new: dict, names: tuple[str, str] = ("store", "this job"), keys: tuple[str, ...] = IDENTITY_KEYS
) -> list[str]:
    """Human-readable list of identity ``keys`` whose values differ (``names`` says whose each side is)."""
    diffs = []
    for key in keys:
        a, b = identity(old, key), identity(new, key)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            diffs.append(
                f"{key}: {names[0]} has {json.dumps(a, sort_keys=True)}, {names[1]} has {json.dumps(b, sort_keys=True)}"
            )
    return diffs


def shard_name(prefix: str = "shard", tag: str = "all") -> str:
    """Unique, finish-time-sortable shard file name; ``tag`` is the writer's lock scope."""
    return f"{prefix}-{time.time_ns():020d}-{tag}-{uuid.uuid4().hex[:8]}.h5"


_FINISHED_AT = re.compile(r"-(\d{20})-")


def shard_paths(path: Path) -> list[Path]:
    """Finished shard files in the order they were finished (the time stamp in their names)."""
    if path.is_file():
        return [path]
    d = path / SHARD_DIR
    if not d.is_dir():
        return []

    def finished(p: Path) -> tuple[str, str]:
        m = _FINISHED_AT.search(p.name)
        return (m.group(1) if m else "", p.name)

    return sorted(d.glob("*.h5"), key=finished)


def read_provenance_file(p: Path) -> dict[str, Any]:
    prov_file = p / PROVENANCE_FILE
    try:
        return json.loads(prov_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{prov_file}: unreadable provenance ({exc})") from None


# What every reader relies on in a store's provenance (store.json, or a shard's ``provenance`` attribute):
# key -> (JSON type, required). Checked once when a store is opened, so a hand-edited or truncated file is one
# line naming the key, never a KeyError deep inside info, verify or train.
PROVENANCE_SCHEMA: dict[str, tuple[type, bool]] = {
    "schema_version": (int, True),
    "encoder": (str, True),
    "weights_id": (str, True),
    "dim": (int, True),
    "preprocess": (dict, True),
    "sampling": (dict, True),
    "dtype": (str, False),
    "precision": (str, False),
    "created": (str, False),
    "versions": (dict, False),
    "encoder_info": (dict, False),
}
_JSON_TYPE = {int: "an integer", str: "a string", dict: "an object"}


def check_provenance(provenance: Any, where: Path) -> dict[str, Any]:
    """``provenance`` if it holds every key readers use, with the right JSON type; else one ``StoreError``
    naming ``where`` (the file it came from) and the first bad key. The schema version is checked first:
    a store of another version is refused as such, not for its keys."""
    fix = "restore it from a backup or re-extract the store"
    if not isinstance(provenance, dict):
        raise StoreError(f"{where}: provenance is a JSON {type(provenance).__name__}, not an object; {fix}")
    version = provenance.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise StoreError(f"{where}: schema version {version!r} is not supported (this vidprobe reads {SCHEMA_VERSION})")
    for key, (kind, required) in PROVENANCE_SCHEMA.items():
        if key not in provenance:
            if required:
                raise StoreError(f"{where}: provenance lacks the key {key!r}; {fix}")
            continue
        value = provenance[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise StoreError(
                f"{where}: provenance key {key!r} is {json.dumps(value)[:60]}, expected {_JSON_TYPE[kind]}; {fix}"
            )
    if provenance["dim"] < 1:
        raise StoreError(f"{where}: provenance key 'dim' is {provenance['dim']}, expected at least 1; {fix}")
    return provenance
