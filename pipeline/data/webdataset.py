"""WebDataset shards as a source: ``.tar`` files of samples, as video2dataset writes them.

A sample is the members sharing a key (``00000003.mp4``, ``00000003.json``, ``00000003.txt``); its video
is the first of ``WDS_VIDEO`` present, its label one member chosen by ``label_from``. A sample's clip key
is ``<shard path relative to the root>/<sample key>`` (``00000.tar/00000003``), so the decoder finds the
shard from the key alone (``split_member``) and job sharding keeps a shard's samples together.

Nothing is unpacked: a shard's member table (name -> offset and size of its data) is read once per
process from the tar headers, and the decoder reads a member through ``MemberView``, a seekable window
onto the shard file, so sparse sampling reads only the bytes it decodes. A sample's fingerprint is the
member's size, the shard's modification time and a crc of the member's offset and its first and last
bytes: a rewritten shard is extracted again, a copied one is not.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

from ..errors import DecodeError, ManifestError
from .remote import RemoteOptions, fingerprint_url, is_url, open_url, redact

__all__ = [
    "WDS_VIDEO",
    "LABEL_FROM",
    "is_shard_list",
    "Listing",
    "list_samples",
    "split_member",
    "shard_of_sample",
    "member_fingerprint",
    "open_member",
    "MemberView",
]

WDS_VIDEO = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
LABEL_FROM = "auto"  # .cls, else the "label" key of .json (video2dataset's .txt is a caption, not a class)
_SAMPLE_BYTES = 1 << 16


@dataclass(frozen=True)
class Member:
    offset: int  # of the member's data in the shard file
    size: int


Shard = Path | str  # a local shard file, or a shard's URL (``data.remote``)
_tables: dict[tuple, dict[str, dict[str, Member]]] = {}  # (shard, its identity) -> key -> ext -> member


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the base name, the rest the extension."""
    path = PurePosixPath(name)
    stem, _, ext = path.name.partition(".")
    return str(path.parent / stem) if str(path.parent) != "." else stem, ext.lower()


def _identity(shard: Shard) -> tuple:
    """What tells one version of a shard from another: size and time (a file), size and ETag (a URL)."""
    if is_url(str(shard)):
        return (str(shard), fingerprint_url(str(shard)))
    st = os.stat(shard)
    return (str(shard), int(st.st_size), int(st.st_mtime_ns))


def _open_shard(shard: Shard, remote: RemoteOptions | None = None) -> BinaryIO:
    """The shard as a seekable file: the local file, or the URL read in ranges (``data.remote``)."""
    if is_url(str(shard)):
        # buffered: a raw read() stops at a block's end, and a label member may straddle one
        return cast(BinaryIO, io.BufferedReader(open_url(str(shard), remote)[0]))
    return open(shard, "rb")  # noqa: SIM115 - the caller closes it


def shard_table(shard: Shard) -> dict[str, dict[str, Member]]:
    """The shard's samples: key -> extension -> where its data lies (read from the headers once per process;
    over a URL one ranged read per header, the data between them skipped)."""
    ident = _identity(shard)
    table = _tables.get(ident)
    if table is None:
        table = {}
        with _open_shard(shard) as f, tarfile.open(fileobj=f, mode="r:") as tar:  # headers only: data is seeked over
            for info in tar:
                if info.isfile():
                    key, ext = _split_name(info.name)
                    table.setdefault(key, {})[ext] = Member(info.offset_data, info.size)
        if len(_tables) > 64:
            _tables.clear()
        _tables[ident] = table
    return table


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


def _video_member(shard: Shard, key: str) -> Member:
    members = shard_table(shard).get(key)
    if members is None:
        raise ManifestError(f"{shard}/{key}: no sample {key!r} in the shard")
    for ext in WDS_VIDEO:
        if ext in members:
            return members[ext]
    raise ManifestError(f"{shard}/{key}: the sample has no video member (.{', .'.join(WDS_VIDEO)})")


def member_fingerprint(shard: Shard, key: str) -> tuple[int, int, int] | None:
    """The ``store.sources`` fingerprint of one sample (None when it cannot be read). A remote shard's:
    the member's size and offset with the shard's ETag (no byte of the member read)."""
    try:
        member = _video_member(shard, key)
        if is_url(str(shard)):
            tagged = fingerprint_url(str(shard))
            if tagged is None:
                return None
            return member.size, tagged[1], zlib.crc32(f"{member.offset}:{tagged[2]}".encode())
        with open(shard, "rb") as f:
            f.seek(member.offset)
            crc = zlib.crc32(f.read(min(member.size, _SAMPLE_BYTES)), zlib.crc32(str(member.offset).encode()))
            f.seek(member.offset + max(0, member.size - _SAMPLE_BYTES))
            crc = zlib.crc32(f.read(min(member.size, _SAMPLE_BYTES)), crc)
        return member.size, int(os.stat(shard).st_mtime_ns), crc
    except (OSError, tarfile.TarError, ManifestError, DecodeError):
        return None


class MemberView(io.RawIOBase):
    """A read-only, seekable window ``[offset, offset + size)`` onto an open shard file: what FFmpeg reads
    a sample's video through (no copy of the member to disk or to memory)."""

    def __init__(self, file, offset: int, size: int):
        super().__init__()
        self._f, self._start, self._size, self._pos = file, offset, size, 0

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
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def open_member(
    shard: Shard, key: str, remote: RemoteOptions | None = None
) -> tuple[MemberView, tuple[int, int, int] | None]:
    """(a seekable view of the sample's video, its fingerprint); ManifestError, DecodeError or OSError if
    it has none."""
    member = _video_member(shard, key)
    source = member_fingerprint(shard, key)
    return MemberView(_open_shard(shard, remote), member.offset, member.size), source


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
        table = shard_table(shard)
    except (OSError, tarfile.TarError, DecodeError) as exc:
        listing.problems.append((rel, f"{shown}: not a readable tar shard ({exc})"))
        return
    with _open_shard(shard) as f:
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
