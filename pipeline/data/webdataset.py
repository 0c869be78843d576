"""WebDataset shards as a source: ``.tar`` files of samples, as video2dataset writes them.

A sample is the members sharing a key (``00000003.mp4``, ``00000003.json``, ``00000003.txt``); its video
is the first of ``WDS_VIDEO`` present, its label one member chosen by ``label_from``. A sample's clip key
is ``<shard path relative to the root>/<sample key>`` (``00000.tar/00000003``), so the decoder finds the
shard from the key alone (``split_member``) and job sharding keeps a shard's samples together.

Nothing is unpacked: a shard's member table (name -> offset and size of its data) is read once per
process from the tar headers, and the decoder reads a member through ``MemberView``, a seekable window
onto the shard file, so sparse sampling reads only the bytes it decodes. A sample's fingerprint is the
member's size, the shard's modification time and a crc of the member's offset and its first and last
bytes (a remote shard's: the member's size and offset with the shard's ETag): a rewritten shard is
extracted again, a copied one is not.

A shard is opened once per decoder process, not once per sample: inside ``shards_kept_open()`` (a decoder
process's life, a Ray decode task's unit) the last ``KEEP_OPEN`` shards stay open (``OpenShard``), and
each sample is read, and fingerprinted, through the very handle it is decoded from: a remote shard costs
one metadata request per process, then only the ranges read (a sample that fails reopens it:
``forget_shard``). Outside it a sample opens its shard alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

from ..errors import DecodeError, ManifestError
from .remote import RemoteOptions, is_url, open_url, redact

__all__ = [
    "WDS_VIDEO",
    "LABEL_FROM",
    "is_shard_list",
    "Listing",
    "list_samples",
    "split_member",
    "shard_of_sample",
    "member_fingerprint",
    "member_stat",
    "forget_shard",
    "open_member",
    "MemberView",
    "OpenShard",
    "shards_kept_open",
]

WDS_VIDEO = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
LABEL_FROM = "auto"  # .cls, else the "label" key of .json (video2dataset's .txt is a caption, not a class)
_SAMPLE_BYTES = 1 << 16
KEEP_OPEN = 2  # shards a process keeps open inside ``shards_kept_open`` (the one it reads, and one more)


@dataclass(frozen=True)
class Member:
    offset: int  # of the member's data in the shard file
    size: int


Shard = Path | str  # a local shard file, or a shard's URL (``data.remote``)
# (shard, its identity) -> key -> ext -> member; least recently used first
_tables: OrderedDict[tuple, dict[str, dict[str, Member]]] = OrderedDict()
_TABLES = 64  # member tables a process keeps
_tables_lock = threading.Lock()


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the base name, the rest the extension."""
    path = PurePosixPath(name)
    stem, _, ext = path.name.partition(".")
    return str(path.parent / stem) if str(path.parent) != "." else stem, ext.lower()


class OpenShard:
    """One shard opened once: its file (the local file, or the URL read in ranges), the identity of the
    version opened (size and time of a file, size and ETag of a URL, from the open handle), and its member
    table. Samples are read through it under ``lock`` (a read is a seek then a read)."""

    def __init__(self, shard: Shard, remote: RemoteOptions | None = None):
        self.shard = shard
        if is_url(str(shard)):
            raw, tag = open_url(str(shard), remote)
            # buffered: a raw read() stops at a block's end, and a label member may straddle one
            self.file: BinaryIO = cast(BinaryIO, io.BufferedReader(raw))
            self.identity: tuple = (str(shard), tag)
            self.stat: tuple | None = None
        else:
            self.file = open(shard, "rb")  # noqa: SIM115 - closed by ``close``
            st = os.fstat(self.file.fileno())
            self.stat = (int(st.st_size), int(st.st_mtime_ns), int(st.st_ino), int(st.st_dev))
            self.identity = (str(shard), self.stat[0], self.stat[1])
        self.lock = threading.Lock()
        self.users = 0  # open ``MemberView``s
        self.kept = False  # in the process's cache (closed when evicted and unused)
        try:
            self.table = self._table()
        except BaseException:
            self.file.close()
            raise

    def _table(self) -> dict[str, dict[str, Member]]:
        """The member table of this version (read from the headers once per process and version; over a
        URL one ranged read per header, the data between them skipped)."""
        with _tables_lock:
            table = _tables.get(self.identity)
            if table is not None:
                _tables.move_to_end(self.identity)
        if table is None:
            table = {}
            with tarfile.open(fileobj=self.file, mode="r:") as tar:  # headers only: data is seeked over
                for info in tar:
                    if info.isfile():
                        key, ext = _split_name(info.name)
                        table.setdefault(key, {})[ext] = Member(info.offset_data, info.size)
            with _tables_lock:
                _tables[self.identity] = table
                while len(_tables) > _TABLES:
                    _tables.popitem(last=False)
        return table

    def current(self) -> bool:
        """Whether the shard's path still names the file open here (a local ``stat``; a URL is not asked
        again: the driver's check before storing, ``store.sources``, tells a replaced object, and a sample
        that fails reopens it: ``forget_shard``)."""
        if self.stat is None:
            return True
        try:
            st = os.stat(self.shard)
        except OSError:
            return False
        return (int(st.st_size), int(st.st_mtime_ns), int(st.st_ino), int(st.st_dev)) == self.stat

    def video_member(self, key: str) -> Member:
        members = self.table.get(key)
        if members is None:
            raise ManifestError(f"{redact(str(self.shard))}/{key}: no sample {key!r} in the shard")
        for ext in WDS_VIDEO:
            if ext in members:
                return members[ext]
        raise ManifestError(
            f"{redact(str(self.shard))}/{key}: the sample has no video member (.{', .'.join(WDS_VIDEO)})"
        )

    def fingerprint(self, member: Member) -> tuple[int, int, int]:
        """The ``store.sources`` fingerprint of a sample of this version of the shard: a remote one's from the
        ETag the shard was opened with (no byte read), a local one's from its first and last bytes."""
        if self.stat is None:
            tag = self.identity[1]
            return member.size, tag[1], zlib.crc32(f"{member.offset}:{tag[2]}".encode())
        with self.lock:
            f = self.file
            f.seek(member.offset)
            crc = zlib.crc32(f.read(min(member.size, _SAMPLE_BYTES)), zlib.crc32(str(member.offset).encode()))
            f.seek(member.offset + max(0, member.size - _SAMPLE_BYTES))
            crc = zlib.crc32(f.read(min(member.size, _SAMPLE_BYTES)), crc)
        return member.size, self.stat[1], crc

    def read(self, offset: int, n: int) -> bytes:
        with self.lock:
            self.file.seek(offset)
            return self.file.read(n)

    def release(self) -> None:
        """A view of it closed: close the file if no one else reads it and the cache does not keep it."""
        with _cache_lock:
            self.users -= 1
            done = self.users <= 0 and not self.kept
        if done:
            self.file.close()

    def close(self) -> None:
        self.file.close()


_cache_lock = threading.Lock()
_kept: OrderedDict[tuple[str, RemoteOptions | None], OpenShard] = OrderedDict()  # most recent last
_keeping = 0  # depth of ``shards_kept_open``


@contextlib.contextmanager
def shards_kept_open() -> Iterator[None]:
    """While inside, ``open_member`` keeps the last ``KEEP_OPEN`` shards open and reads each sample
    through its shard's one handle (a decoder process wraps its life in it; a Ray decode task its unit);
    on leaving they are closed. Samples of one shard decoded one after another then cost one open."""
    global _keeping
    with _cache_lock:
        _keeping += 1
    try:
        yield
    finally:
        with _cache_lock:
            _keeping -= 1
            gone = list(_kept.values()) if _keeping == 0 else []
            if gone:
                _kept.clear()
        for opened in gone:
            _drop(opened)


def _drop(opened: OpenShard) -> None:
    """``opened`` left the cache: close it now, or when its last view closes."""
    with _cache_lock:
        opened.kept = False
        done = opened.users <= 0
    if done:
        opened.close()


def _acquire(shard: Shard, remote: RemoteOptions | None) -> OpenShard:
    """The open shard to read a sample through (one more user): the kept one while it is current, else
    a new one (kept inside ``shards_kept_open``, the least recent evicted)."""
    key = (str(shard), remote)
    with _cache_lock:
        opened = _kept.pop(key, None)
    if opened is not None and not opened.current():
        _drop(opened)
        opened = None
    if opened is None:
        opened = OpenShard(shard, remote)
    evicted: list[OpenShard] = []
    with _cache_lock:
        other = _kept.get(key) if _keeping else None
        if other is not None:  # another thread opened it meanwhile: read through theirs, close this one
            evicted.append(opened)
            opened = other
        opened.users += 1
        if _keeping:
            opened.kept = True
            _kept[key] = opened
            _kept.move_to_end(key)
            while len(_kept) > KEEP_OPEN:
                evicted.append(_kept.popitem(last=False)[1])
    for old in evicted:
        _drop(old)
    return opened


def forget_shard(path: str) -> None:
    """A sample of ``path``'s remote shard failed: the kept handle may read a shard since replaced (a URL is
    not asked again while kept), so the shard's next sample reopens it."""
    member = split_member(path) if is_url(path) else None
    if member is None:
        return
    with _cache_lock:
        gone = [_kept.pop(k) for k in [k for k in _kept if k[0] == member[0]]]
    for opened in gone:
        _drop(opened)


def member_stat(shard: Path, key: str) -> tuple[int, int] | None:
    """(the sample's video member size, the local shard's ``st_mtime_ns``) from a stat and the member table
    (cached per process; else the tar headers are read, no member data): what planning compares with a
    recorded fingerprint before reading any sample byte. None if it cannot be read."""
    try:
        st = os.stat(shard)
        with _tables_lock:
            table = _tables.get((str(shard), int(st.st_size), int(st.st_mtime_ns)))
        if table is None:
            opened = OpenShard(shard)
            opened.close()
            table = opened.table
            st_mtime = opened.identity[2]
        else:
            st_mtime = int(st.st_mtime_ns)
    except (OSError, tarfile.TarError, DecodeError):
        return None
    members = table.get(key, {})
    video = next((members[ext] for ext in WDS_VIDEO if ext in members), None)
    return None if video is None else (video.size, st_mtime)


def shard_of_sample(path: str) -> str | None:
    """The shard part of a sample's clip path (``a/00000.tar`` of ``a/00000.tar/00000003``), else None;
    from the text alone (job sharding plans without touching files)."""
    parts = PurePosixPath(path).parts
    for i, part in enumerate(parts[:-1]):
        if part.lower().endswith(".tar"):
            return PurePosixPath(*parts[: i + 1]).as_posix()
    return None


def split_member(path: str | Path) -> tuple[Shard, str] | None:
    """(shard file or URL, sample key) of a sample path ``.../00000.tar/00000003``; None for any other path."""
    if is_url(str(path)):
        head, dot, key = str(path).partition(".tar/")
        return (head + ".tar", key) if dot and key and "?" not in str(path) else None
    p = Path(path)
    for i, part in enumerate(p.parts[:-1]):
        if part.lower().endswith(".tar"):
            file = Path(*p.parts[: i + 1])
            if file.is_file():
                return file, PurePosixPath(*p.parts[i + 1 :]).as_posix()
            return None
    return None


def member_fingerprint(shard: Shard, key: str) -> tuple[int, int, int] | None:
    """The ``store.sources`` fingerprint of one sample now (None when it cannot be read): the shard opened
    afresh (a remote one: one metadata request, its table known), as ``OpenShard.fingerprint``."""
    try:
        opened = OpenShard(shard, RemoteOptions(retries=1))
    except (OSError, tarfile.TarError, DecodeError):
        return None
    try:
        return opened.fingerprint(opened.video_member(key))
    except (OSError, ManifestError):
        return None
    finally:
        opened.close()


class MemberView(io.RawIOBase):
    """A read-only, seekable window ``[offset, offset + size)`` onto an open shard: what FFmpeg reads a
    sample's video through (no copy of the member to disk or to memory). Closing it releases the shard."""

    def __init__(self, shard: OpenShard, offset: int, size: int):
        super().__init__()
        self._shard, self._start, self._size, self._pos = shard, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        data = self._shard.read(self._start + self._pos, n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._shard.release()
        super().close()


def open_member(shard: Shard, key: str, remote: RemoteOptions | None = None) -> tuple[MemberView, tuple[int, int, int]]:
    """(a seekable view of the sample's video, its fingerprint taken through the handle the view reads);
    ManifestError, DecodeError or OSError if it has none. Inside ``shards_kept_open`` the shard's handle
    is shared with the samples before and after it."""
    opened = _acquire(shard, remote)
    try:
        member = opened.video_member(key)
        source = opened.fingerprint(member)
    except BaseException:
        opened.release()
        raise
    return MemberView(opened, member.offset, member.size), source


# -- the manifest ---------------------------------------------------------------------------------


def is_shard_list(text: str) -> bool:
    """Whether a source argument names WebDataset shards: ``x.tar`` or a brace list ``x-{000..009}.tar``."""
    return text.lower().endswith(".tar")


def _label(f, members: dict[str, Member], label_from: str) -> str:
    """The sample's label from the member ``label_from`` names (``cls``, ``txt``, ``json:KEY``; ``auto``:
    ``cls``, else ``json:label``); "" where it has none."""
    order = ["cls", "json:label"] if label_from == "auto" else [label_from]
    for choice in order:
        ext, _, field = choice.partition(":")
        member = members.get(ext)
        if member is None:
            continue
        f.seek(member.offset)
        text = f.read(member.size).decode("utf-8").strip()
        if ext != "json":
            return text
        value = json.loads(text).get(field or "label") if text else None
        if value is not None:
            return str(value).strip()
    return ""


def _check_label_from(label_from: str) -> None:
    ext, _, field = label_from.partition(":")
    if label_from != "auto" and not (ext in ("cls", "txt", "none") and not field or ext == "json" and field):
        raise ManifestError(f"--label-from {label_from!r}: expected auto, cls, txt, none or json:KEY (e.g. json:label)")


@dataclass
class Listing:
    """The samples of a list of shards: what ``data.manifest`` makes its items and problems of."""

    root: Path  # the folder all shards are under; sample paths are relative to it
    samples: list[tuple[str, str]] = field(default_factory=list)  # (shard/key, label)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (shard or shard/key, why)
    ignored: list[str] = field(default_factory=list)  # samples without a video member


def _read_shard(listing: Listing, shard: Shard, label_from: str) -> None:
    remote = isinstance(shard, str)  # its samples are named by URL: "<shard URL>/<key>"
    rel = shard if isinstance(shard, str) else PurePosixPath(*shard.relative_to(listing.root).parts).as_posix()
    shown = redact(rel) if remote else str(shard)
    try:
        opened = OpenShard(shard)  # one open (a URL: one metadata request) for the table and the labels
    except (OSError, tarfile.TarError, DecodeError) as exc:
        listing.problems.append((rel, f"{shown}: not a readable tar shard ({exc})"))
        return
    table = opened.table
    with opened.file as f:
        for key in sorted(table):
            members = table[key]
            if not any(ext in members for ext in WDS_VIDEO):
                listing.ignored.append(f"{rel}/{key}")
                continue
            try:
                label = "" if label_from == "none" else _label(f, members, label_from)
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
                listing.problems.append((f"{rel}/{key}", f"{shown}/{key}: unreadable label ({exc})"))
                continue
            listing.samples.append((f"{rel}/{key}", label))


def list_samples(spec: str, label_from: str = LABEL_FROM) -> Listing:
    """The samples of the shards ``spec`` names (brace lists expanded), in shard then key order. A shard
    that is missing or unreadable is a problem; the others are read."""
    from braceexpand import braceexpand

    _check_label_from(label_from)
    if is_url(spec):  # samples named by URL; the root is unused
        listing = Listing(Path.cwd())
        for url in braceexpand(spec):
            _read_shard(listing, url, label_from)
        return _some(listing, spec)
    shards = [Path(os.path.abspath(s)) for s in braceexpand(spec)]
    listing = Listing(Path(os.path.commonpath([str(s.parent) for s in shards])))
    for shard in shards:
        if not shard.is_file():
            listing.problems.append((shard.name, f"{shard}: shard not found"))
            continue
        _read_shard(listing, shard, label_from)
    return _some(listing, spec)


def _some(listing: Listing, spec: str) -> Listing:
    if not listing.samples and not listing.problems:
        raise ManifestError(f"{redact(spec)}: the shards hold no video samples (.{', .'.join(WDS_VIDEO)})")
    return listing
