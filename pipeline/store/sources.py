"""Which file a video path held: fingerprints of source video files, and the rule that tells a file
replaced at the same path from the same file copied or touched.

A fingerprint is ``(size, st_mtime_ns, crc)``: the crc32 of the file's first and last ``SAMPLE_BYTES``.
Resuming stats every video (cheap) and reads the two samples only where the size matches but the
modification time does not: a store moved with ``cp -r`` or ``rsync`` without ``-t`` is not extracted again,
while a video re-encoded, re-downloaded or swapped for another is. Records written before fingerprints
existed carry ``UNKNOWN_SOURCE`` and are never taken for replaced. A URL's fingerprint is its size and
ETag (``pipeline.data.remote.remote_source``). See ``layout`` for the columns.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..data.remote import fingerprint_url, is_url
from .layout import UNKNOWN_SOURCE

__all__ = [
    "Source",
    "UNKNOWN",
    "SAMPLE_BYTES",
    "fingerprint",
    "quick_fingerprint",
    "opened_fingerprint",
    "same_file",
    "current_sources",
    "is_replaced",
]

Source = tuple[int, int, int]  # (size in bytes, st_mtime_ns, crc32 of the head and tail samples)
UNKNOWN: Source = (UNKNOWN_SOURCE, UNKNOWN_SOURCE, UNKNOWN_SOURCE)
SAMPLE_BYTES = 1 << 16  # read from each end of a file: a container's header and index, and the first frames


def _crc_of(f: BinaryIO, size: int) -> int:
    f.seek(0)
    crc = zlib.crc32(f.read(SAMPLE_BYTES))
    if size > SAMPLE_BYTES:
        f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
        crc = zlib.crc32(f.read(SAMPLE_BYTES), crc)
    return crc


def _crc(path: Path, size: int) -> int:
    with open(path, "rb") as f:
        return _crc_of(f, size)


def opened_fingerprint(f: BinaryIO) -> Source | None:
    """The fingerprint of the file ``f`` has open (None if it is not a regular file), read through ``f``
    and left at its start: a decoder given ``f`` reads exactly the file this names, whatever is renamed
    over its path meanwhile (the path's fingerprint at storing time then tells the change)."""
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        return None
    size = int(st.st_size)
    crc = _crc_of(f, size)
    f.seek(0)
    return size, int(st.st_mtime_ns), crc


def _other_source(path: str | Path):
    """The fingerprint of a source that is not one file (a frame folder, a WebDataset sample), as a
    call; None for a file (or nothing at all)."""
    from ..data.frames import folder_fingerprint
    from ..data.webdataset import member_fingerprint, split_member

    if not is_url(str(path)) and os.path.isdir(path):
        return lambda: folder_fingerprint(path)
    member = split_member(path)
    if member is not None:
        return lambda: member_fingerprint(*member)
    return None


def _member_stat(path: str | Path) -> tuple[int, int] | None:
    """(video member size, shard ``st_mtime_ns``) of a local WebDataset sample; None for anything else."""
    from ..data.webdataset import member_stat, split_member

    member = split_member(path)
    if member is None or not isinstance(member[0], Path):
        return None
    return member_stat(member[0], member[1])


def quick_fingerprint(path: str | Path) -> Source | None:
    """A fingerprint that reads no video byte, its crc ``UNKNOWN_SOURCE`` where it would need one: a file's
    or a local WebDataset sample's size and time, a frame folder's (stats only); None for a URL. What a
    failure without a decoder's fingerprint records (the source may be what hangs)."""
    if is_url(str(path)):
        return None
    quick = _member_stat(path)
    if quick is not None:
        return quick[0], quick[1], UNKNOWN_SOURCE
    if os.path.isdir(path):
        from ..data.frames import folder_fingerprint

        return folder_fingerprint(path)
    return fingerprint(path, complete=False)


def fingerprint(path: str | Path, recorded: Source | None = None, *, complete: bool = True) -> Source | None:
    """The file's fingerprint now (None if it cannot be read or is not a regular file).
    Against a ``recorded`` fingerprint the samples are read only when they decide ``same_file`` (the size
    matches, the modification time does not); with the same size and time the recorded crc stands.
    ``complete=False`` (planning: it reads no file it need not) leaves the crc ``UNKNOWN_SOURCE`` wherever the
    comparison does not need it, and with nothing recorded looks at no source that is not one local file: a
    URL, a frame folder or a WebDataset sample is then None, unread (its decoder fingerprints what it opens).
    A URL's fingerprint is its size and ETag (``pipeline.data.remote.remote_source``): one metadata request.
    A frame folder's is ``data.frames.folder_fingerprint`` (stats only), a WebDataset sample's
    ``data.webdataset.member_fingerprint``; with ``complete=False`` a local sample is first compared as a file
    is (its member's size from the cached member table, the shard's time from a stat), and its first and
    last bytes read only when the size matches and the time does not.
    """
    known = recorded is not None and recorded[0] != UNKNOWN_SOURCE
    other = _other_source(path)
    if not complete and not known and (other is not None or is_url(str(path))):
        return None
    quick = _member_stat(path) if other is not None and not complete else None  # a local sample, compared as a file
    if quick is not None:
        return _against(*quick, recorded, complete, lambda: (other() or UNKNOWN)[2])
    if other is not None:
        return other()
    if is_url(str(path)):
        return fingerprint_url(str(path))
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device: reading it could block, and it has no identity
            return None
        size = int(st.st_size)
        return _against(size, int(st.st_mtime_ns), recorded, complete, lambda: _crc(Path(path), size))
    except OSError:
        return None


def _against(size: int, mtime: int, recorded: Source | None, complete: bool, crc: Callable[[], int]) -> Source | None:
    """The fingerprint of a source of ``size`` bytes modified at ``mtime``, compared with ``recorded``: the
    recorded crc where size and time match, ``crc()`` where it decides (the size matches, the time does
    not) or ``complete`` asks for it, else ``UNKNOWN_SOURCE``; None where ``crc()`` finds it unreadable."""
    known = recorded is not None and recorded[0] != UNKNOWN_SOURCE
    if known and (size, mtime) == tuple(recorded[:2]):  # type: ignore[index]
        return size, mtime, int(recorded[2])  # type: ignore[index]
    if complete or (known and size == recorded[0]):  # type: ignore[index]
        value = crc()
        return None if value == UNKNOWN_SOURCE else (size, mtime, value)
    return size, mtime, UNKNOWN_SOURCE


def same_file(a: Source | tuple, b: Source | tuple) -> bool:
    """Whether two known fingerprints are of one file: equal size and an equal modification time or samples."""
    return a[0] == b[0] and (a[1] == b[1] or (a[2] == b[2] and a[2] != UNKNOWN_SOURCE))


def current_sources(records: Iterable[tuple[list[str], np.ndarray]]) -> tuple[dict[str, Source], set[str]]:
    """(the fingerprint each video path holds now, the paths that held another file before).
    ``records``: per live shard in finish order, the video paths of its records (clips and failures) and
    their (n, 3) fingerprints. A path's current file is that of its latest record with a known fingerprint;
    only paths seen with two different files can have replaced records (``is_replaced``).
    """
    current: dict[str, Source] = {}
    changed: set[str] = set()
    for paths, sources in records:
        known = np.flatnonzero(sources[:, 0] != UNKNOWN_SOURCE)
        # one file per path within a shard (one run fingerprints a video once; compaction keeps only current)
        here = dict(zip((paths[i] for i in known.tolist()), map(tuple, sources[known].tolist())))
        changed.update(p for p in here.keys() & current.keys() if not same_file(here[p], current[p]))
        current.update(here)
    return current, changed


def is_replaced(path: str, source: Iterable[int], current: dict[str, Source], changed: set[str]) -> bool:
    """Whether a record of ``path`` made from the file ``source`` is of a file since replaced."""
    if path not in changed:
        return False
    src = tuple(int(x) for x in source)
    return src[0] != UNKNOWN_SOURCE and not same_file(src, current[path])
