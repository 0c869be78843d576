"""PyAV decoding of exactly the frames sampling asks for, and no more.

Cost model (why the decoder looks like this):

* A frame can only be decoded from the keyframe before it, so the cost of a request is the number of
  frames between the keyframes we start from and the frames we need. ``VideoReader`` keeps a keyframe
  table (the container's index where it has one: MP4/MOV/AVI at open, Matroska/WebM cues after one
  seek; otherwise learned while decoding) and, for each wanted time, **seeks** only when a keyframe lies
  between the current position and that time; otherwise it **decodes through**. It stops right after
  the last wanted frame.
* ``keyframes_only`` decodes keyframes alone: the approximate ``seek_mode: keyframe``.
* Frames are resized inside FFmpeg's swscale while converting to RGB (one cached context per output
  size), far cheaper than resizing full-size RGB arrays. One decoded frame can be resized to several
  sizes (``iter_frames(views=...)``: several encoders fed by one decode); display rotation (the display-matrix side data
  phones write) is applied so frames are upright.
* ``thread_type``: frame threading has a pipeline delay that every seek pays again, so requests that
  seek often with short decode runs use slice threading; long decode-throughs use AUTO (frame+slice).

Frames come back with the presentation time (seconds from the stream's first frame, start offset
removed) of each returned frame, so the store records what was really embedded. A frame is "on screen"
at time t when it is the last frame whose presentation time is <= t. Every failure becomes a
``DecodeError`` whose message names the file and the cause.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ..data.remote import RemoteOptions, is_url, open_url, redact
from ..errors import DecodeError
from ..store.sources import Source, opened_fingerprint

if TYPE_CHECKING:
    from av.video.reformatter import VideoReformatter

FrameSize = Callable[[int, int], "tuple[int, int]"]  # (height, width) -> (height, width) to resize to
FrameCrop = Callable[[np.ndarray], np.ndarray]  # uint8 (N,H,W,3) -> (N,h,w,3)
FrameView = tuple["FrameSize | None", str]  # one output of a decode: (size, interpolation)

_INTERPOLATION = {
    "bicubic": "BICUBIC",
    "bilinear": "BILINEAR",
    "area": "AREA",
    "lanczos": "LANCZOS",
    "nearest": "POINT",
}
_TOL = 1e-6  # seconds; timestamps closer than this are the same instant
_NO_GOP_GUESS = 3.0  # seconds between wanted times beyond which a blind seek is tried (no keyframe table)
_SEEK_BACKOFF_TRIES = 4


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream (duration may be estimated or scanned)."""

    duration: float | None
    fps: float | None
    width: int  # coded size (frames are returned upright: a display rotation is applied per frame)
    height: int
    start_offset: float  # presentation time of the stream's start, subtracted from every frame time
    codec: str


@dataclass
class DecodedClip:
    frames: np.ndarray  # uint8 (T, H, W, 3)
    timestamps: np.ndarray  # float64 (T,), seconds from the video's start, of the frames actually returned
    warnings: list[str] = field(default_factory=list)  # what the decoder worked around (see VideoReader)


@dataclass
class FrameChunk:
    """Consecutive distinct decoded frames, in presentation order."""

    frames: np.ndarray  # uint8 (m, H, W, 3): the first view
    timestamps: np.ndarray  # float64 (m,)
    views: tuple[np.ndarray, ...] = ()  # every requested view of the same frames (``iter_frames(views=...)``)


@dataclass
class DecodeStats:
    """What a request cost: frames decoded, frames returned, seeks (for benchmarks and tests)."""

    decoded: int = 0
    returned: int = 0
    seeks: int = 0
    thread_type: str = ""


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _contained(path: Path, root: str | Path | None) -> Path:
    """The path to open: ``path`` resolved now (at open time, not when the manifest was planned), refused
    when it leads outside ``root`` (a link whose target appeared after planning). Opening the resolved
    path means the file opened is the one checked."""
    if root is None:
        return path
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != top and top not in real.parents:
        raise DecodeError(f"{path}: path resolves (through a link) outside the manifest root {top}; not opened")
    return real


def _open_file(path: str | Path, root: str | Path | None, remote: RemoteOptions | None) -> tuple[Any, Source | None]:
    """(the file object FFmpeg will read, its fingerprint): a local file, or a URL read in byte ranges
    with a bounded read-ahead (``data.remote``)."""
    if is_url(str(path)):
        return open_url(str(path), remote)
    path = Path(path)
    if not path.exists():
        raise DecodeError(f"{path}: file not found")
    file = open(_contained(path, root), "rb")  # noqa: SIM115 - closed by VideoReader.close, after the container
    try:
        return file, opened_fingerprint(file)
    except OSError:
        file.close()
        raise


def _open(
    path: str | Path,
    root: str | Path | None = None,
    remote: RemoteOptions | None = None,
    opened: tuple[BinaryIO, Source | None] | None = None,
) -> tuple[Any, BinaryIO, Source | None]:
    """(container, the file it reads, that file's fingerprint): FFmpeg reads the file object opened here
    (or ``opened``: one a source opened, e.g. a WebDataset member), so the fingerprint is of the very file
    decoded, even if another is renamed over ``path`` meanwhile."""
    import av

    file: BinaryIO | None = None
    shown = redact(str(path))  # a URL's secrets stay out of every message
    try:
        file, source = opened if opened is not None else _open_file(path, root, remote)
        container = av.open(file, mode="r", metadata_errors="ignore")
    except DecodeError:
        _close(file)
        raise
    except PermissionError:
        _close(file)
        raise DecodeError(f"{shown}: permission denied") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        _close(file)
        raise DecodeError(f"{shown}: cannot open as a video ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        file.close()
        raise DecodeError(f"{shown}: no video stream (audio-only or not a video file)")
    kind = container.format.name
    if kind == "image2" or kind.endswith("_pipe"):  # FFmpeg reads a PNG or JPEG (whatever its name) as 1 frame
        container.close()
        file.close()
        raise DecodeError(f"{shown}: a still image ({kind.removesuffix('_pipe')}), not a video")
    return container, file, source


def _close(file: BinaryIO | None) -> None:
    if file is not None:
        file.close()


def _quarter_turns(rotation: float) -> int:
    return int(round(float(rotation or 0) / 90.0)) % 4


def _index_len(stream) -> int:
    try:
        return len(stream.index_entries)
    except (SystemError, AttributeError):  # PyAV raises SystemError on an empty index
        return 0


class VideoReader:
    """One open video: metadata, keyframe/frame tables on demand, and frames at wanted times.

    ``threads`` is FFmpeg's thread count (0 = FFmpeg decides). Not thread-safe; one reader per worker.
    With ``root``, the path is re-resolved when opened and refused outside ``root``. A header duration
    that lies is corrected up front (``_checked_duration``) and said in ``warnings``; ``ended_at`` is set
    when decoding met the end of the stream before a wanted time (a file without any index).
    """

    def __init__(
        self,
        path: str | Path,
        threads: int = 0,
        *,
        root: str | Path | None = None,
        remote: RemoteOptions | None = None,
        opened: tuple[BinaryIO, Source | None] | None = None,
    ):
        # how messages name it: a URL (``remote``: how it is read) redacted of its secrets
        self.path: str | Path = redact(str(path)) if is_url(str(path)) else Path(path)
        # ``source``: the fingerprint of the file opened (``pipeline.store.sources``), carried to the store
        self.container, self._file, self.source = _open(path, root, remote, opened)
        self.stream = self.container.streams.video[0]
        self.threads = int(threads)
        self.tb = float(self.stream.time_base) if self.stream.time_base else 1e-6
        self._offset_raw = self.stream.start_time if self.stream.start_time is not None else 0
        self._scan: tuple[np.ndarray, np.ndarray] | None = None  # (frame times, keyframe times) from demux
        self._rewind = False  # the demuxer is not at the start any more (after a scan)
        self._reformatters: dict[tuple[int, int, str], VideoReformatter] = {}  # one swscale context per size
        self.stats = DecodeStats()
        self.warnings: list[str] = []  # what was found wrong with the file but worked around
        self.ended_at: float | None = None  # last frame's time, when the stream ended before a wanted time
        try:
            self.info = self._read_info()
        except Exception:
            self.close()
            raise

    # -- metadata --------------------------------------------------------------------------------
    def _read_info(self) -> VideoInfo:
        s, c = self.stream, self.container
        offset = float(self._offset_raw * self.tb)
        duration = None
        if s.duration:
            duration = float(s.duration * self.tb)
        elif c.duration and abs(offset) < 1e-3:  # a container-level duration is ambiguous about a start offset
            duration = float(c.duration) / 1e6
        fps = float(s.average_rate) if s.average_rate else (float(s.guessed_rate) if s.guessed_rate else None)
        ctx = s.codec_context
        info = VideoInfo(duration, fps, int(ctx.width or 0), int(ctx.height or 0), offset, ctx.name or "")
        if info.duration is None or info.duration <= 0:  # missing or ambiguous: scan the packets (exact)
            frames, _ = self._packet_table()
            if frames.size:
                step = float(np.median(np.diff(frames))) if frames.size > 1 else (1.0 / fps if fps else 0.0)
                info = VideoInfo(float(frames[-1]) + step, fps, info.width, info.height, offset, info.codec)
        return self._checked_duration(info)

    def _index_end(self) -> float | None:
        """End of the last frame by the stream's index, where the index lists every frame (AVI, MP4/MOV:
        an index of keyframes only, like Matroska cues, gives no end); None otherwise."""
        n = _index_len(self.stream)
        if n < 2:
            return None
        entries = self.stream.index_entries
        tail = [entries[i] for i in range(max(0, n - 32), n)]
        complete = self.container.format.name in ("avi", "mov,mp4,m4a,3gp,3g2,mj2") or any(
            not e.is_keyframe for e in tail
        )
        if not complete:
            return None
        first = int(min(entries[i].timestamp for i in range(min(n, 16))))
        shift = max(0, int(self._offset_raw) - first)  # index times may be decode times (see _seek_table)
        last = max(e.timestamp for e in tail) + shift
        step = max(float(tail[-1].timestamp - tail[-2].timestamp) * self.tb, 0.0) if len(tail) > 1 else 0.0
        return float((last - self._offset_raw) * self.tb) + step

    def _demuxed_end(self, fps: float | None) -> float | None:
        """End of the last frame where the index lists keyframes only (Matroska/WebM cues): one seek to the
        last indexed keyframe and a demux (no decoding) of its packets to the end of the file (without
        cues: from the last keyframe the demuxer saw while probing). None where there is no index at all
        (the decode then meets the end, see ``ended_at``)."""
        import av

        table = self._seek_table()  # loads Matroska cues
        if table is None:
            return None
        try:
            self.container.seek(int(table[1][-1]), backward=True, any_frame=False, stream=self.stream)
            self._rewind = True
            pts, last_dur = None, 0
            for packet in self.container.demux(self.stream):
                if packet.pts is None or packet.size == 0:
                    continue
                if pts is None or packet.pts >= pts:
                    pts, last_dur = packet.pts, packet.duration or 0
        except (av.error.FFmpegError, OSError, ValueError):
            return None
        if pts is None:
            return None
        step = float(last_dur * self.tb) if last_dur else (1.0 / fps if fps else 0.0)
        return float((pts - self._offset_raw) * self.tb) + step

    def _checked_duration(self, info: VideoInfo) -> VideoInfo:
        """``info`` with the duration the frames really cover, when the header's is off by more than a few
        frames (a header that lies: its frame count or duration says 1000x, or 1/50, of what the file
        holds), by ``_index_end`` or else ``_demuxed_end``."""
        if info.duration is None or self._scan is not None:  # scanned: exact already
            return info
        real = self._index_end()
        if real is None:
            real = self._demuxed_end(info.fps)
        if real is None or real <= 0:
            return info
        step = 1.0 / info.fps if info.fps else 0.04
        if abs(info.duration - real) <= max(3 * step, 0.02 * real):
            return info
        self.warnings.append(
            f"{self.path}: the header says the video lasts {info.duration:.3f} s but its frames end at "
            f"{real:.3f} s; sampled within the real {real:.3f} s"
        )
        return VideoInfo(real, info.fps, info.width, info.height, info.start_offset, info.codec)

    def _packet_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Presentation times of every frame and of every keyframe, from one demux pass (no decoding)."""
        if self._scan is None:
            import av

            frames, keys = [], []
            try:
                for packet in self.container.demux(self.stream):
                    if packet.pts is None or packet.size == 0:
                        continue
                    t = float((packet.pts - self._offset_raw) * self.tb)
                    frames.append(t)
                    if packet.is_keyframe:
                        keys.append(t)
            except av.error.FFmpegError as exc:
                raise DecodeError(f"{self.path}: reading packets failed ({_reason(exc)})") from None
            self._rewind = True
            self._scan = (np.unique(np.array(frames, np.float64)), np.unique(np.array(keys, np.float64)))
        return self._scan

    def frame_times(self) -> np.ndarray:
        """Presentation time of every frame (exact; variable frame rate included). Costs one demux pass."""
        return self._packet_table()[0]

    def keyframe_times(self) -> np.ndarray:
        """Exact presentation times of the keyframes. Costs one demux pass."""
        return self._packet_table()[1]

    def _seek_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(keyframe times, raw seek timestamps) for planning seeks, cheapest source first; None if unknown.

        MP4 index timestamps are decode times (with B-frames a keyframe is shown a few frames after it is
        decoded) while seeking compares presentation times; the constant shift is estimated from the
        first entries, and every seek is verified against the first decoded frame anyway.
        """
        if self._scan is not None:
            keys = self._scan[1]
            return keys, np.round(keys / self.tb).astype(np.int64) + self._offset_raw
        n = _index_len(self.stream)
        if n < 2 and self.container.format.name in ("matroska,webm",):
            try:  # Matroska reads its cues on the first seek
                self.container.seek(self._offset_raw, backward=True, stream=self.stream)
                n = _index_len(self.stream)
            except Exception:
                n = 0
        if n < 2:
            return None
        entries = self.stream.index_entries
        raw = np.array([e.timestamp for e in entries if e.is_keyframe and not e.is_discard], dtype=np.int64)
        if raw.size < 2:
            return None
        first = int(min(e.timestamp for e in entries[:16]))
        shift = max(0, int(self._offset_raw) - first)
        raw = np.unique(raw) + shift  # seeking compares presentation times (MP4 included)
        return (raw - self._offset_raw) * self.tb, raw

    # -- decoding --------------------------------------------------------------------------------
    def _to_rgb(self, frame, size: FrameSize | None, interpolation: str) -> np.ndarray:
        turns = _quarter_turns(getattr(frame, "rotation", 0))
        ch, cw = frame.height, frame.width
        dh, dw = (cw, ch) if turns % 2 else (ch, cw)
        th, tw = size(dh, dw) if size is not None else (dh, dw)
        if turns % 2:
            th, tw = tw, th
        reformatter = self._reformatters.get((th, tw, interpolation))
        if reformatter is None:  # several sizes per frame must not rebuild one context at every call
            from av.video.reformatter import VideoReformatter

            reformatter = self._reformatters[(th, tw, interpolation)] = VideoReformatter()
        if (th, tw) == (ch, cw):
            out = reformatter.reformat(frame, format="rgb24")
        else:
            out = reformatter.reformat(
                frame, width=tw, height=th, format="rgb24", interpolation=_INTERPOLATION.get(interpolation, "BICUBIC")
            )
        arr = out.to_ndarray()
        return np.rot90(arr, turns) if turns else arr

    def _frames(self, keyframes_only: bool = False) -> Iterator:
        """Decoded frames from the current demuxer position (frames without a timestamp are skipped).
        Keyframes-only: each keyframe is drained at once (a reordering decoder would hold it back)."""
        ctx = self.stream.codec_context
        for packet in self.container.demux(self.stream):
            if keyframes_only:
                if not packet.is_keyframe or packet.size == 0:
                    continue
                out = self.stream.decode(packet) + self.stream.decode(None)
                ctx.flush_buffers()
            else:
                out = self.stream.decode(packet)
            for frame in out:
                if frame.pts is not None:
                    self.stats.decoded += 1
                    yield frame

    def _seek(self, raw: int) -> bool:
        import av

        try:
            self.container.seek(int(raw), backward=True, any_frame=False, stream=self.stream)
        except (av.error.FFmpegError, OSError, ValueError):
            return False
        self.stats.seeks += 1
        return True

    def _configure(self, wanted: np.ndarray, table, keyframes_only: bool) -> None:
        ctx = self.stream.codec_context
        fps = self.info.fps or 30.0
        if keyframes_only:
            thread_type = "SLICE"
        elif table is None or wanted.size == 0:
            thread_type = "AUTO"
        else:  # estimate frames decoded per seek if we seek at every keyframe boundary we can
            keys = table[0]
            idx = np.searchsorted(keys, wanted + _TOL, side="right") - 1
            starts = np.where(idx >= 0, keys[np.clip(idx, 0, None)], 0.0)
            runs = np.unique(idx).size
            span = float(np.sum(wanted - starts)) * fps / max(1, runs)
            thread_type = "SLICE" if span < 8 else "AUTO"
        try:
            ctx.thread_type = thread_type
            if self.threads:
                ctx.thread_count = self.threads
            if keyframes_only:
                ctx.skip_frame = "NONKEY"  # belt and braces: _frames only sends keyframes anyway
        except Exception:  # already opened: keep what it has
            pass
        self.stats.thread_type = thread_type

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
        """The distinct frames on screen at ``times`` (any order, duplicates allowed), in time order.

        Chunks hold at most ``chunk`` frames so memory does not grow with a clip's length; map each
        requested time to its frame with ``assign_frames``. ``views`` (default: the one ``(size,
        interpolation)``) resizes each decoded frame once per view: encoders share one decode.
        """
        import av

        wanted = np.unique(np.asarray(times, dtype=np.float64))
        if wanted.size == 0:
            raise DecodeError(f"{self.path}: sampling asked for no frames")
        walk = _Walk(self, wanted, keyframes_only, tuple(views) or ((size, interpolation),), chunk)
        try:
            yield from walk.run()
        except DecodeError:
            raise
        except (av.error.FFmpegError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            raise DecodeError(f"{self.path}: decoding failed ({_reason(exc)})") from None
        if walk.out_f:
            yield _chunk(walk.out_f, walk.out_t)

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:  # pragma: no cover - closing a broken container must not mask the real error
            pass
        self._file.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chunk(out_f: list[list[np.ndarray]], out_t: list[float]) -> FrameChunk:
    stacked = tuple(np.stack(v) for v in zip(*out_f))
    c = FrameChunk(stacked[0], np.array(out_t, dtype=np.float64), stacked)
    out_f.clear()
    out_t.clear()
    return c


class _Walk:
    """One ``iter_frames`` request: the decode position moving through the wanted times, seeking only
    where a keyframe lies between it and the next wanted time, and the frames found on screen."""

    def __init__(self, reader: VideoReader, wanted: np.ndarray, keyframes_only: bool, views: tuple, chunk: int):
        self.r, self.wanted, self.keyframes_only, self.views, self.chunk = reader, wanted, keyframes_only, views, chunk
        self.table = reader._seek_table()  # set to None where a seek fails: decode through from there on
        reader._configure(wanted, self.table, keyframes_only)
        self.fps = reader.info.fps or 30.0
        s = reader.stream  # frame durations are trusted only where the stream says its rate is constant
        rate_is_constant = s.average_rate and s.base_rate and s.average_rate == s.base_rate
        self.cfr_step = 1.0 / float(s.average_rate) if rate_is_constant else 0.0
        self.out_f: list[list[np.ndarray]] = []  # per frame, one array per view
        self.out_t: list[float] = []
        self.last_emitted: float | None = None
        self.gop_seen = 0.0  # largest keyframe interval observed while decoding (used when there is no table)
        self.last_key: float | None = None

    def emit(self, frame, t: float) -> Iterator[FrameChunk]:
        if self.last_emitted is not None and abs(t - self.last_emitted) <= _TOL:
            return
        self.last_emitted = t
        self.out_f.append([self.r._to_rgb(frame, s, interp) for s, interp in self.views])
        self.out_t.append(t)
        self.r.stats.returned += 1
        if len(self.out_f) >= self.chunk:
            yield _chunk(self.out_f, self.out_t)

    def seek_target(self, w: float, cur: float | None) -> int | None:
        """Raw timestamp to seek to before decoding toward ``w``, or None to decode through."""
        if self.table is not None:
            keys, raws = self.table
            j = int(np.searchsorted(keys, w + _TOL, side="right")) - 1
            if j < 0:
                return None
            base = keys[0] if cur is None else cur
            if self.keyframes_only:  # decoding through costs one decode per keyframe in between
                worth = np.any((keys > base + _TOL) & (keys < keys[j] - _TOL))
            else:  # decoding through costs every frame in between
                worth = keys[j] > base + 2.0 / self.fps
            return int(raws[j]) if worth else None
        base = 0.0 if cur is None else cur
        if w - base > (2 * self.gop_seen if self.gop_seen else _NO_GOP_GUESS):
            return int(round(w / self.r.tb)) + int(self.r._offset_raw)
        return None

    def _covers(self, frame, t: float) -> float:
        """Until when ``frame`` (shown at ``t``) is known to be on screen without decoding the next one: its
        duration where the rate is constant, else only its own instant."""
        dur = float(frame.duration * self.r.tb) if frame.duration and self.cfr_step else 0.0
        return t + (dur if abs(dur - self.cfr_step) <= 1e-3 * self.cfr_step else 0.0)

    def _note_keyframe(self, frame, t: float) -> None:
        if frame.key_frame and self.table is None:
            if self.last_key is not None and t > self.last_key:
                self.gop_seen = max(self.gop_seen, t - self.last_key)
            self.last_key = t

    def run(self) -> Iterator[FrameChunk]:
        r, wanted = self.r, self.wanted
        prev: tuple[Any, float] | None = None  # (frame, t): the last decoded frame
        landing: int | None = None  # raw target of the last seek, until its first frame is checked
        backoff = 0
        i, n = 0, wanted.size
        seeked_for = 0
        target = self.seek_target(float(wanted[0]), None)
        if target is not None and r._seek(target):
            landing = target
        elif r._rewind:
            r.container.seek(int(r._offset_raw), backward=True, stream=r.stream)
        r._rewind = True
        frames = r._frames(self.keyframes_only)
        while i < n:
            frame = next(frames, None)
            t = None if frame is None else float((frame.pts - r._offset_raw) * r.tb)
            if landing is not None:  # first frame after a seek: must be at or before wanted[i]
                if (t is None or (t > wanted[i] + _TOL and t > _TOL)) and backoff < _SEEK_BACKOFF_TRIES:
                    backoff += 1  # landed after it (index times are decode times, or an inexact
                    # demuxer): back off further, and finally decode from the start
                    late = (t if t is not None else float(wanted[i])) - float(wanted[i])
                    landing = landing - int(max(1.0, 2.0 * late) * 2**backoff / r.tb)
                    if backoff == _SEEK_BACKOFF_TRIES or not r._seek(landing):
                        r.container.seek(int(r._offset_raw), backward=True, stream=r.stream)
                    frames, prev = r._frames(self.keyframes_only), None
                    continue
                landing, backoff = None, 0
            if frame is None or t is None:  # end of stream (t is None only then): later times show the last frame
                if prev is None:
                    raise DecodeError(f"{r.path}: no decodable video frames")
                r.ended_at = prev[1]
                yield from self.emit(*prev)
                break
            self._note_keyframe(frame, t)
            if t > wanted[i] + _TOL:  # past wanted[i]: the previous frame was on screen then
                yield from self.emit(*(prev if prev is not None else (frame, t)))
                while i < n and wanted[i] < t - _TOL:
                    i += 1
                if i == n:
                    break
            prev = (frame, t)
            # Known to be on screen at wanted[i] without decoding the next frame: shown exactly then,
            # or (constant frame rate only) its duration covers it.
            covers = self._covers(frame, t)
            if abs(t - wanted[i]) <= _TOL or covers > wanted[i] + _TOL:
                yield from self.emit(frame, t)
                while i < n and wanted[i] < max(covers, t + _TOL) - _TOL:
                    i += 1
                if i == n:
                    break
            target = self.seek_target(float(wanted[i]), t) if i != seeked_for else None
            if target is not None:
                seeked_for = i  # at most one seek per wanted time: a seek never loops
                if r._seek(target):
                    landing, prev = target, None
                    frames = r._frames(self.keyframes_only)
                else:  # not seekable: decode through from here on
                    self.table, self.gop_seen = None, float("inf")


def assign_frames(frame_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index into ``frame_times`` (the distinct frames returned, ascending) of the frame on screen at
    each of ``times``: the last frame at or before it, or the first frame for times before it."""
    idx = np.searchsorted(np.asarray(frame_times), np.asarray(times, dtype=np.float64) + _TOL, side="right") - 1
    return np.clip(idx, 0, max(len(frame_times) - 1, 0))


def probe(path: str | Path) -> VideoInfo:
    """Container metadata of the first video stream (no frames decoded)."""
    with VideoReader(path) as reader:
        return reader.info


def decode_at(
    path: str | Path,
    times: Callable[[VideoInfo], np.ndarray],
    *,
    size: FrameSize | None = None,
    crop: FrameCrop | None = None,
    interpolation: str = "bicubic",
    threads: int = 0,
    keyframes_only: bool = False,
) -> DecodedClip:
    """Decode the frames on screen at the times ``times(info)`` returns (seconds, any order).

    ``times`` receives the probed ``VideoInfo`` so clip windows can be filled in from the real duration.
    Returns one frame per requested time (repeated where several times share a frame).
    """
    with VideoReader(path, threads=threads) as reader:
        wanted = np.asarray(times(reader.info), dtype=np.float64)
        chunks = list(reader.iter_frames(wanted, size=size, interpolation=interpolation, keyframes_only=keyframes_only))
        warnings = list(reader.warnings)
    frames = np.concatenate([c.frames for c in chunks])
    stamps = np.concatenate([c.timestamps for c in chunks])
    idx = assign_frames(stamps, wanted)
    out = frames[idx]
    if crop is not None:
        out = crop(out)
    return DecodedClip(np.ascontiguousarray(out), stamps[idx], warnings)
