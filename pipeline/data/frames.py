"""Frame folders as videos: ``root/<label>/<video>/<frames>.jpg|png`` (UCF101/HMDB51 frame dumps).

A frame folder is a leaf folder of image files; its frames, in natural name order (``img_9`` before
``img_10``), are the video's frames, frame ``i`` shown at ``i / sampling.frame_rate`` seconds, so every
sampling strategy plans on them as on a video's frame table. Its fingerprint is a digest over the frames'
names, sizes and modification times: a frame added, removed or rewritten makes it another video.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "frame_files", "is_frame_folder", "folder_fingerprint"]

IMAGE_EXTENSIONS = frozenset([".jpg", ".jpeg", ".png"])


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def frame_files(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` in natural name order (the video's frames, first to last)."""
    folder = Path(folder)
    return [folder / n for n in sorted((n for n in os.listdir(folder) if _is_image(n)), key=_natural)]


def is_frame_folder(folder: Path, names: list[str]) -> bool:
    """Whether ``folder`` (its file ``names`` listed) is one video's frames: image files and no folder of
    its own (a leaf)."""
    if not any(_is_image(n) for n in names):
        return False
    try:
        return not any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(folder))
    except OSError:
        return False


def folder_fingerprint(folder: str | Path) -> tuple[int, int, int] | None:
    """(total bytes, newest st_mtime_ns, crc32 over every frame's name, size and st_mtime_ns): the
    ``store.sources`` fingerprint of a frame folder; None where it has no frames or cannot be read."""
    try:
        files = frame_files(folder)
        stats = [f.stat() for f in files]
    except OSError:
        return None
    if not files:
        return None
    crc = 0
    for f, st in zip(files, stats):
        crc = zlib.crc32(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(), crc)
    return sum(int(s.st_size) for s in stats), max(int(s.st_mtime_ns) for s in stats), crc
