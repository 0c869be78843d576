"""Which reader opens a source path: a video file, a WebDataset sample, or a frame folder.

``open_reader`` is the one dispatch: a folder is a frame folder (``FrameFolderReader``), a path inside a
``.tar`` shard a WebDataset sample (a ``VideoReader`` over a seekable view of the member, nothing
unpacked), anything else a video file (local, or at a URL: ``data.remote``). Every reader has
``VideoReader``'s reading surface (``info``, ``source``, ``warnings``, ``ended_at``, ``frame_times``,
``keyframe_times``, ``iter_frames``), so the workers and the sampling functions never ask which one they
hold.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

from ..data.frames import folder_fingerprint, frame_files
from ..data.remote import RemoteOptions, is_url, redact
from ..data.webdataset import open_member, split_member
from ..errors import DecodeError, ManifestError
from .decode import _TOL, DecodeStats, FrameChunk, FrameSize, FrameView, VideoInfo, VideoReader, _contained, _reason

__all__ = ["open_reader", "FrameFolderReader"]


def open_reader(
    path: str | Path,
    *,
    threads: int = 0,
    root: str | Path | None = None,
    frame_rate: float = 25.0,
    remote: RemoteOptions | None = None,
) -> VideoReader | FrameFolderReader:
    """The reader of ``path``; ``frame_rate``: a frame folder's frames per second; ``remote``: how a URL is read."""
    member = split_member(path)
    if member is None:
        if not is_url(str(path)) and Path(path).is_dir():
            return FrameFolderReader(path, frame_rate, root=root)
        return VideoReader(path, threads=threads, root=root, remote=remote)
    shard, key = member
    if isinstance(shard, Path):
        _contained(shard, root)
    try:
        view, source = open_member(shard, key, remote)
    except (OSError, tarfile.TarError, ManifestError) as exc:
        raise DecodeError(f"{redact(str(path))}: cannot read the sample from its shard ({_reason(exc)})") from None
    return VideoReader(path, threads=threads, opened=(cast(BinaryIO, view), source))


class FrameFolderReader:
    """A folder of JPEG/PNG frames read as a video at ``frame_rate``: frame ``i`` at ``i / frame_rate`` s.
    Each image is decoded by FFmpeg and resized by the same swscale path as a video's frames."""

    def __init__(self, path: str | Path, frame_rate: float, *, root: str | Path | None = None):
        self.path = Path(path)
        real = _contained(self.path, root)
        try:
            self.files = frame_files(real)
        except OSError as exc:
            raise DecodeError(f"{self.path}: cannot list the frame folder ({_reason(exc)})") from None
        if not self.files:
            raise DecodeError(f"{self.path}: no frames (.jpg, .jpeg, .png) in the folder")
        self.source = folder_fingerprint(real)
        self.fps = float(frame_rate)
        self._reformatters: dict[tuple[int, int, str], Any] = {}
        self.stats = DecodeStats()
        self.warnings: list[str] = []
        self.ended_at: float | None = None
        first = self._decode(0)
        n = len(self.files)
        self.info = VideoInfo(n / self.fps, self.fps, first.width, first.height, 0.0, self.files[0].suffix[1:].lower())

    def _decode(self, i: int):
        import av

        try:
            with av.open(str(self.files[i]), metadata_errors="ignore") as container:
                frame = next(container.decode(video=0))
        except (av.error.FFmpegError, OSError, ValueError, StopIteration) as exc:
            raise DecodeError(f"{self.files[i]}: cannot read the frame ({_reason(exc)})") from None
        self.stats.decoded += 1
        return frame

    def _to_rgb(self, frame: Any, size: FrameSize | None, interpolation: str) -> np.ndarray:
        """One resize path for video frames and image frames (swscale, display rotation applied)."""
        return VideoReader._to_rgb(self, frame, size, interpolation)  # type: ignore[arg-type]

    def frame_times(self) -> np.ndarray:
        return np.arange(len(self.files), dtype=np.float64) / self.fps

    def keyframe_times(self) -> np.ndarray:
        return self.frame_times()  # every image is a keyframe

    def iter_frames(
        self,
        times: np.ndarray,
        *,
        size: FrameSize | None = None,
        interpolation: str = "bicubic",
        keyframes_only: bool = False,
        chunk: int = 32,
        views: Sequence[FrameView] = (),
    ) -> Iterator[FrameChunk]:
        """The distinct frames on screen at ``times`` (the last frame at or before each), in time order."""
        wanted = np.unique(np.asarray(times, dtype=np.float64))
        if wanted.size == 0:
            raise DecodeError(f"{self.path}: sampling asked for no frames")
        last = len(self.files) - 1
        index = np.unique(np.clip(np.floor((wanted + _TOL) * self.fps).astype(np.int64), 0, last))
        outputs = tuple(views) or ((size, interpolation),)
        for lo in range(0, index.size, chunk):
            part = index[lo : lo + chunk].tolist()
            made = [[self._to_rgb(f, s, interp) for s, interp in outputs] for f in map(self._decode, part)]
            stacked = tuple(np.stack(v) for v in zip(*made))
            self.stats.returned += len(part)
            yield FrameChunk(stacked[0], np.array(part, dtype=np.float64) / self.fps, stacked)

    def close(self) -> None:
        pass

    def __enter__(self) -> FrameFolderReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
