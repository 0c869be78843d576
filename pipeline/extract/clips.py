"""The decoding front: whole clips of single videos, decoded exactly as the extraction engines do.

``predict`` and the engines share it, so a new video is sampled exactly as a training store was:
``load_views``/``load_clip`` decode one item in this thread (the Ray engine's decode stage);
``VideoDecoder`` decodes a list of videos in the background (``predict`` decodes while torch imports),
and ``embed_clips`` embeds one video's clips. All run the engine's per-video decode (``decode_task``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..config import SamplingConfig
from ..data.manifest import VideoItem
from ..encoders.base import FrameEncoder
from ..errors import DecodeError
from ..store.sources import Source
from .decode import DecodedClip
from .workers import ClipTask, DecodePool, Done, Failed, Frames, decode_task

__all__ = ["Clips", "VideoDecoder", "Views", "embed_clips", "load_clip", "load_views"]

Clips = list[tuple[float | None, float | None, DecodedClip]]  # (start, end, clip) per clip window


def _decode_whole(task: ClipTask, sampling: SamplingConfig, preprocess: Any, threads: int):
    """Run the engine's per-video decode in this thread: (frames, timestamps, its ``Done``).
    With a sequence of preprocessings the frames are a tuple, one array per preprocessing (None for
    those ``task.views`` leaves out)."""
    out, stamps = [], []
    done: Done | None = None
    for msg in decode_task(task, sampling, preprocess, threads=threads):
        if isinstance(msg, Failed):
            raise DecodeError(msg.error)
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
    item: VideoItem, sampling: SamplingConfig, views: list, need: tuple[int, ...] | None = None, threads: int = 0
) -> Views:
    """One decode of a single-clip item, resized once per preprocessing in ``views`` that ``need`` names."""
    task = ClipTask(0, str(item.abspath), item.start, item.end, root=item.root, views=need)
    frames, stamps, done = _decode_whole(task, sampling, list(views), threads)
    idx = np.concatenate([i for _, _, i in done.clips]) if done.clips else np.arange(len(stamps))
    return Views([None if f is None else f[idx] for f in frames], stamps[idx], done.warnings, done.source)


def load_clip(item: VideoItem, sampling: SamplingConfig, preprocess: Any, threads: int = 0) -> DecodedClip:
    """Decoded, resized and cropped frames of one single-clip item (``load_views`` with one view)."""
    got = load_views(item, sampling, [preprocess], threads=threads)
    assert got.frames[0] is not None
    return DecodedClip(got.frames[0], got.timestamps, got.warnings)


class VideoDecoder:
    """Decode videos in order, in the background, from the moment it is made (see the module doc).
    With ``timeout`` (extraction's ``extract.decode_timeout``): one decoder worker process for all the
    videos, killed and replaced after ``timeout`` s without progress (that video fails, the rest go on);
    without: a thread of this process. What is decoded ahead is bounded (``DecodePool``'s queue).
    """

    def __init__(
        self,
        videos: Sequence[tuple[str | Path, float | None, float | None]],
        sampling: SamplingConfig,
        preprocess: Any,
        *,
        timeout: float | None = None,
    ) -> None:
        self._tasks = [ClipTask(i, str(Path(p).absolute()), s, e) for i, (p, s, e) in enumerate(videos)]
        workers = 0 if timeout is None else 1
        self._pool = DecodePool(sampling, preprocess, num_workers=workers, threads=0, timeout=timeout or 0.0)
        self._pool.start(self._tasks)

    def embedded(self, transform: Callable[[np.ndarray], np.ndarray]) -> Iterator[Clips | DecodeError]:
        """Per video, in order: its clips with frames through ``transform`` (e.g. ``encoder.encode``), or
        the DecodeError that stopped it (a timeout included)."""
        out: dict[int, tuple[list, list]] = {}
        for msg in self._pool.messages():
            frames, stamps = out.setdefault(msg.task, ([], []))
            if isinstance(msg, Frames):
                frames.append(transform(msg.frames))
                stamps.append(msg.timestamps)
                continue
            del out[msg.task]
            if isinstance(msg, Failed):
                yield DecodeError(msg.error)
            elif not frames:  # nothing sampled (every window empty): no clips either
                yield []
            else:
                emb, ts = np.concatenate(frames), np.concatenate(stamps)
                yield [(s, e, DecodedClip(emb[idx], ts[idx], msg.warnings)) for s, e, idx in msg.clips]

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def embed_clips(
    encoder: FrameEncoder, path: str | Path, sampling: SamplingConfig, *, timeout: float | None = None
) -> Clips:
    """Frame embeddings of every clip of one video, whole (see ``VideoDecoder``); ``DecodeError`` on failure."""
    with VideoDecoder([(path, None, None)], sampling, encoder.preprocess_cfg, timeout=timeout) as decoder:
        (result,) = decoder.embedded(encoder.encode)
    if isinstance(result, DecodeError):
        raise result
    return result
