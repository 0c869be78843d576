"""The decoding front: whole clips of single videos, decoded exactly as the extraction engines do.

``predict`` and the engines share it, so a new video is sampled exactly as a training store was:
``load_views``/``load_clip`` decode one item in this thread (the Ray engine's decode stage);
``VideoDecoder`` decodes a list of videos in the background, in the local engine's decoder processes,
and packs their frames into full encoder batches with the local engine's ``Batcher`` (``predict`` decodes
while torch imports, then runs at extraction's speed); ``embed_clips`` embeds one video's clips. All run
the engine's per-video decode (``decode_task``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..config import SamplingConfig
from ..data.manifest import VideoItem
from ..data.remote import RemoteOptions
from ..encoders.base import FrameEncoder
from ..errors import DecodeError
from ..store.sources import Source
from .batching import Batcher, Part
from .decode import DecodedClip
from .workers import ClipTask, DecodePool, Done, Failed, Frames, decode_task

if TYPE_CHECKING:
    import torch

__all__ = ["Clips", "DecodeFailed", "VideoDecoder", "Views", "embed_clips", "load_clip", "load_views"]

Clips = list[tuple[float | None, float | None, DecodedClip]]  # (start, end, clip) per clip window


class DecodeFailed(DecodeError):
    """A decode that failed, with the fingerprint of the file the decoder had opened (None: it opened
    none): a failure record names the file that failed, as the local engine's ``Failed`` does."""

    def __init__(self, message: str, source: Source | None = None):
        super().__init__(message)
        self.source = source


def _decode_whole(task: ClipTask, sampling: SamplingConfig, preprocess: Any, threads: int):
    """Run the engine's per-video decode in this thread: (frames, timestamps, its ``Done``).
    With a sequence of preprocessings the frames are a tuple, one array per preprocessing (None for
    those ``task.views`` leaves out)."""
    out, stamps = [], []
    done: Done | None = None
    for msg in decode_task(task, sampling, preprocess, threads=threads):
        if isinstance(msg, Failed):
            raise DecodeFailed(msg.error, msg.source)
        if isinstance(msg, Frames):
            out.append(msg.frames)
            stamps.append(msg.timestamps)
        else:
            done = msg
    assert done is not None
    if isinstance(out[0], tuple):
        frames: Any = tuple(None if v[0] is None else np.concatenate(v) for v in zip(*out))
    else:
        frames = np.concatenate(out)
    return frames, np.concatenate(stamps), done


class Views(NamedTuple):
    """One decode of a single-clip item (``load_views``)."""

    frames: list[np.ndarray | None]  # per view, one frame per sampled time (None where not needed)
    timestamps: np.ndarray
    warnings: list[str]
    source: Source | None  # fingerprint of the file decoded (``ExtractionJob.deliver`` checks it before storing)


def load_views(
    item: VideoItem,
    sampling: SamplingConfig,
    views: list,
    need: tuple[int, ...] | None = None,
    threads: int = 0,
    remote: RemoteOptions | None = None,
) -> Views:
    """One decode of a single-clip item, resized once per preprocessing in ``views`` that ``need`` names
    (``remote``: how a URL is read); ``DecodeFailed`` if it fails."""
    task = ClipTask(0, item.location, item.start, item.end, root=item.confine, views=need, remote=remote)
    frames, stamps, done = _decode_whole(task, sampling, list(views), threads)
    idx = np.concatenate([i for _, _, i in done.clips]) if done.clips else np.arange(len(stamps))
    return Views([None if f is None else f[idx] for f in frames], stamps[idx], done.warnings, done.source)


def load_clip(item: VideoItem, sampling: SamplingConfig, preprocess: Any, threads: int = 0) -> DecodedClip:
    """Decoded, resized and cropped frames of one single-clip item (``load_views`` with one view)."""
    got = load_views(item, sampling, [preprocess], threads=threads)
    assert got.frames[0] is not None
    return DecodedClip(got.frames[0], got.timestamps, got.warnings)


class VideoDecoder:
    """Decode videos in the background, from the moment it is made (see the module doc), as the local
    engine does: ``workers`` decoder processes (extraction's ``extract.num_workers``; ``threads``: FFmpeg's
    threads in each, 0 = FFmpeg decides), each killed and replaced after ``timeout`` s without progress
    (that video fails, the rest go on); without ``timeout``: a thread of this process. What is decoded
    ahead is bounded (``DecodePool``'s queue). A video is a path, a ``(path, start, end)`` window, or a
    manifest ``VideoItem`` (re-checked against its root at open time, as extraction does). ``skip``: per
    video, clip windows a windowed sampling leaves out (done already; a video with all of them has no clips).
    """

    def __init__(
        self,
        videos: Sequence[VideoItem | str | Path | tuple[str | Path, float | None, float | None]],
        sampling: SamplingConfig,
        preprocess: Any,
        *,
        timeout: float | None = None,
        workers: int = 1,
        threads: int = 0,
        chunk: int = 32,
        prefetch: int = 8,
        skip: Sequence[frozenset] | None = None,
    ) -> None:
        self._tasks = [_task(i, v, skip[i] if skip else frozenset()) for i, v in enumerate(videos)]
        workers = 0 if timeout is None else max(1, min(workers, len(self._tasks)))
        self._pool = DecodePool(
            sampling,
            preprocess,
            num_workers=workers,
            threads=threads,
            timeout=timeout or 0.0,
            chunk=chunk,
            max_messages=prefetch,
        )
        self._pool.start(self._tasks)

    def embedded(
        self, transform: Callable[[torch.Tensor], np.ndarray], batch_size: int = 32, *, device: Any = "cpu"
    ) -> Iterator[tuple[int, Clips | DecodeError]]:
        """(index in ``videos``, its clips with frames through ``transform``, e.g. ``encoder.encode``), or the
        DecodeError that stopped it (a timeout, or ``transform`` raising, included), as each video finishes.
        Frames of many videos are packed into batches of ``batch_size`` by the local engine's ``Batcher``
        (short videos still fill the encoder's batches): ``transform`` gets a uint8 ``(N, H, W, 3)`` tensor
        in its staging buffer (pinned where ``device``, the encoder's, is CUDA), which it must not return."""
        videos: dict[int, _Video] = {}
        gone: set[int] = set()  # videos already answered (a batch that failed ends a video early)
        batcher: Batcher[_Video] = Batcher(
            lambda frames: [transform(frames)], batch_size, device=device, dropped=lambda video: bool(video.error)
        )
        for msg in self._pool.messages():
            if msg.task in gone:
                continue
            video = videos.setdefault(msg.task, _Video())
            if isinstance(msg, Frames):
                video.stamps.append(msg.timestamps)
                video.queued += len(msg.timestamps)
                batcher.add(video, msg.frames)
                while batcher.full:
                    _encoded(batcher.encode())
            elif isinstance(msg, Failed):
                video.error = msg.error
            else:
                video.done = msg
            yield from _finished(videos, gone)
        while batcher.queued:
            _encoded(batcher.encode())
        yield from _finished(videos, gone)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _task(index: int, video: Any, skip: frozenset) -> ClipTask:
    if isinstance(video, VideoItem):
        return ClipTask(index, video.location, video.start, video.end, skip, root=video.confine)
    path, start, end = (video, None, None) if isinstance(video, (str, Path)) else video
    return ClipTask(index, str(Path(path).absolute()), start, end, skip)


@dataclass(eq=False)
class _Video:
    """One video's embeddings as its batches are encoded, until its ``Done`` (or failure) and all its frames."""

    emb: list[np.ndarray] = field(default_factory=list)
    stamps: list[np.ndarray] = field(default_factory=list)
    queued: int = 0  # frames waiting in a batch
    done: Done | None = None
    error: str = ""

    def result(self) -> Clips | DecodeError:
        if self.error:
            return DecodeError(self.error)
        assert self.done is not None
        if not self.emb:  # nothing sampled (every window empty): no clips either
            return []
        emb, ts = np.concatenate(self.emb), np.concatenate(self.stamps)
        return [(s, e, DecodedClip(emb[idx], ts[idx], self.done.warnings)) for s, e, idx in self.done.clips]


def _encoded(parts: list[Part[_Video]]) -> None:
    """A batch's rows to their videos; a batch that failed fails its videos."""
    for part in parts:
        video = part.owner
        video.queued -= part.frames
        if part.outputs is None:
            video.error = video.error or part.error
        else:
            video.emb.append(part.outputs[0])


def _finished(videos: dict[int, _Video], gone: set[int]) -> Iterator[tuple[int, Clips | DecodeError]]:
    """The videos that failed, or are done with every frame encoded (their frames still queued are dropped)."""
    for task in [t for t, v in videos.items() if v.error or (v.done and not v.queued)]:
        gone.add(task)
        yield task, videos.pop(task).result()


def embed_clips(
    encoder: FrameEncoder, path: str | Path, sampling: SamplingConfig, *, timeout: float | None = None
) -> Clips:
    """Frame embeddings of every clip of one video, whole (see ``VideoDecoder``); ``DecodeError`` on failure."""
    with VideoDecoder([path], sampling, encoder.preprocess_cfg, timeout=timeout) as decoder:
        ((_, result),) = decoder.embedded(encoder.encode, device=getattr(encoder, "device", "cpu"))
    if isinstance(result, DecodeError):
        raise result
    return result
