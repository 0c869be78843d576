"""Decoder worker processes feeding the encoder: bounded, timed, and isolated from bad files.

Why not a torch ``DataLoader``: one clip that hangs inside FFmpeg must cost that clip (recorded as failed,
"timeout after N s") and not the job, and a worker killed by a segfault on a corrupt file must be
replaced while the job goes on; a DataLoader can do neither (its timeout and a dead worker end the
whole iterator). Here each worker owns a pipe; the scheduler thread in the main process hands out
tasks, reads results, watches every worker, and feeds one bounded queue that the encoder drains.

Protocol (worker -> main), small frozen dataclasses with named fields: ``Ready`` once, then per task
its ``Frames`` in time order, at most ``chunk`` frames each (memory does not grow with a clip's length),
and ``Done`` or ``Failed`` (frames already sent for a failed task must be dropped). ``Done`` and ``Failed``
carry the fingerprint of the file the worker opened (``Done.source``): the store checks it against the
path before storing, so a file replaced while it was decoded is never stored under the new file's name.

Samples of one WebDataset shard go to one worker one after another where that is cheap (``_Feed``): a
worker keeps its last shards open (``data.webdataset.shards_kept_open``), so a shard is opened once per
worker that reads it, not once per sample.

``num_workers=0`` decodes in a thread of the main process instead (no timeout or crash isolation;
for debugging, or where processes are not allowed).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_ready
from typing import Any

import numpy as np

from ..config import SamplingConfig
from ..data.remote import RemoteOptions, redact
from ..data.sampling import (
    clip_window,
    clip_windows,
    needs_frame_table,
    needs_keyframe_table,
    sample_timestamps,
    snap_to_keyframes,
)
from ..data.webdataset import forget_shard, shard_of_sample, shards_kept_open
from ..errors import DecodeError, VidprobeError
from ..store.sources import Source
from .decode import assign_frames
from .readers import open_reader

Window = tuple[float | None, float | None, np.ndarray]  # (start, end, frame index per sampled time)


@dataclass(frozen=True)
class Ready:
    """A worker process started (a death before this is a broken setup, not a bad file)."""


@dataclass(frozen=True)
class Frames:
    """A task's next distinct frames: uint8 (m, S, S, 3); with several preprocessings (encoders sharing one
    decode) a tuple, the same frames resized and cropped once per preprocessing (None: ``ClipTask.views``
    leaves it out)."""

    task: int
    frames: Any
    timestamps: np.ndarray  # float64 (m,)


@dataclass(frozen=True)
class Done:
    """A task's clip windows, each (start, end, frame index per sampled time): overlapping windows and
    repeated times share one decoded and encoded frame."""

    task: int
    clips: list[Window]
    skipped: int  # windows already stored
    warnings: list[str]  # what was worked around (a header that lies), or stored as it is (a shared frame)
    source: Source | None = None  # fingerprint of the file decoded, taken through the file the decoder read


@dataclass(frozen=True)
class Failed:
    task: int
    error: str  # names the file
    source: Source | None = None  # of the file that failed, where it was opened


Message = Frames | Done | Failed


@dataclass(frozen=True)
class ClipTask:
    """One manifest item to decode: all its clip windows in one pass over the file."""

    task: int  # the scheduler's id, echoed in every message
    path: str  # absolute path of the video
    start: float | None = None  # requested window (None = open)
    end: float | None = None
    skip: frozenset = field(default_factory=frozenset)  # (start, end) windows already stored
    root: str | None = None  # the manifest root: the path is re-checked against it when the file is opened
    views: tuple[int, ...] | None = None  # which of the pool's preprocessings this task needs (None: all)
    remote: RemoteOptions | None = None  # how a URL is read (``extract.remote_*``; None: the defaults)


def _with_path(path: str, message: str) -> str:
    return message if path in message else f"{path}: {message}"


def _shared_frames(task: ClipTask, clips: list, per_window: list, ended_at: float | None) -> list[str]:
    """A warning per clip that stores one decoded frame for several of its distinct sampled times (the
    video has fewer frames in the window than sampling asks for, or its stream ended early). Times that
    are equal already (keyframe snapping) are the settings' choice, not a surprise."""
    out = []
    for (start, end, idx), times in zip(clips, per_window):
        distinct, asked = int(np.unique(idx).size), int(np.unique(times).size)
        if distinct < asked:
            where = "" if start is None and end is None else f" (window {start}..{end} s)"
            why = f"; the stream ended at {ended_at:.3f} s" if ended_at is not None else ""
            out.append(
                f"{redact(task.path)}{where}: {asked - distinct} of {len(idx)} sampled times share a decoded frame "
                f"with another (fewer frames than sampled{why}); stored as they are"
            )
    return out


def _views(preprocess: Any, task: ClipTask) -> list[Any]:
    """The preprocessings to produce for ``task``: one (a single ``Preprocess``), or those it needs, else None."""
    if not isinstance(preprocess, (tuple, list)):
        return [preprocess]
    return [p if task.views is None or i in task.views else None for i, p in enumerate(preprocess)]


def decode_task(
    task: ClipTask, sampling: SamplingConfig, preprocess: Any, threads: int = 0, chunk: int = 32
) -> Iterator[Message]:
    """Decode one task into protocol messages (runs in a worker process, or in-process for 0 workers).
    ``preprocess``: one ``Preprocess``, or one per distinct encoder input (``Frames.frames`` is then a tuple)."""
    many = isinstance(preprocess, (tuple, list))
    views = _views(preprocess, task)
    wanted_views = [p for p in views if p is not None]
    source: Source | None = None
    try:
        with open_reader(
            task.path, threads=threads, root=task.root, frame_rate=sampling.frame_rate, remote=task.remote
        ) as reader:
            info, source = reader.info, reader.source
            keys: Sequence[tuple[float | None, float | None]]  # the clips' store keys
            if sampling.windowed:  # windows are the clips' keys; resume skips the stored ones
                every = clip_windows(sampling, info.duration, task.start, task.end)
                windows = [w for w in every if w not in task.skip]
                keys = windows
                skipped = len(every) - len(windows)
            else:  # one clip, keyed by the window the manifest asked for
                windows = [clip_window(info.duration, task.start, task.end)]
                keys, skipped = [(task.start, task.end)], 0
            if not windows:
                yield Done(task.task, [], skipped, list(reader.warnings), source)
                return
            frame_times = reader.frame_times() if needs_frame_table(sampling) else None
            key_times = reader.keyframe_times() if needs_keyframe_table(sampling) else None
            per_window = []
            for s, e in windows:
                t = sample_timestamps(sampling, s, e, frame_times, key_times)
                if sampling.seek_mode == "keyframe" and key_times is not None:  # keyframe seeking reads the table
                    t = snap_to_keyframes(t, key_times)
                per_window.append(t)
            wanted = np.concatenate(per_window)
            keyframes_only = sampling.seek_mode == "keyframe" or sampling.strategy == "keyframes"
            stamps: list[np.ndarray] = []
            for c in reader.iter_frames(
                wanted,
                views=[(p.frame_size, p.interpolation) for p in wanted_views],
                keyframes_only=keyframes_only,
                chunk=chunk,
            ):
                stamps.append(c.timestamps)
                made = iter(np.ascontiguousarray(p.center_crop(v)) for p, v in zip(wanted_views, c.views))
                out = tuple(None if p is None else next(made) for p in views)
                yield Frames(task.task, out if many else out[0], c.timestamps)
            all_ts = np.concatenate(stamps)
            clips = [(k[0], k[1], assign_frames(all_ts, t).astype(np.int32)) for k, t in zip(keys, per_window)]
            warnings = reader.warnings + _shared_frames(task, clips, per_window, reader.ended_at)
            yield Done(task.task, clips, skipped, warnings, source)
    except VidprobeError as exc:
        forget_shard(task.path)  # a remote shard re-uploaded under its kept handle: the next sample reopens it
        yield Failed(task.task, _with_path(redact(task.path), str(exc)), source)
    except Exception as exc:  # a decoder bug on one odd file must not end the job
        forget_shard(task.path)
        yield Failed(task.task, f"{redact(task.path)}: {type(exc).__name__}: {exc}", source)


def _worker_main(conn, sampling: SamplingConfig, preprocess: Any, threads: int, chunk: int) -> None:
    """Worker process: decode tasks from ``conn`` until told to stop (None) or the pipe closes."""
    # Ctrl-C and SIGTERM (Slurm sends it to every process of a job) are the main process's to handle: it
    # stops the workers itself, after keeping what they finished.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        conn.send(Ready())
        with shards_kept_open():  # a shard's samples, sent one after another, share one open shard
            while True:
                task = conn.recv()
                if task is None:
                    return
                for message in decode_task(task, sampling, preprocess, threads, chunk):
                    conn.send(message)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return


def _context():
    methods = mp.get_all_start_methods()
    if "forkserver" in methods:  # never fork a process with live torch/OpenMP/HDF5 threads
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["pipeline.extract.workers"])  # workers start with av/numpy imported
        return ctx
    return mp.get_context("spawn")


def start_decoder_server() -> None:
    """Start now, without waiting, the process decoder workers are forked from (it imports av and numpy, a
    second or so): ``extract`` calls this before it builds its model, so that runs meanwhile on another core
    and the first worker starts at once."""
    if _context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _death(proc) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            return f"signal {-code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class _Worker:
    def __init__(self, ctx, args: tuple):
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, *args), daemon=True, name="vidprobe-decoder")
        self.proc.start()
        child.close()
        self.conn = parent
        self.assigned: deque[ClipTask] = deque()
        self.ready = False  # said hello: a death before that is a broken setup, not a bad file
        self.since = time.monotonic()  # last sign of progress on the task at the head of ``assigned``
        self.on: Hashable = None  # the WebDataset shard of its last task (None: not a sample)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def _unit_of(task: ClipTask) -> Hashable:
    """What a worker keeps open across tasks: a WebDataset sample's shard (None for any other source)."""
    return shard_of_sample(task.path)


class _Feed:
    """The tasks, read ahead in plan order and handed out so that a WebDataset shard's samples go to one
    worker one after another (it reads them through one open shard): a worker takes the next sample of its
    shard, else the first task that is not of another worker's shard, else (every shard read ahead is
    taken) a sample of the shard with the most left, so no worker idles while samples wait. Tasks of other
    sources come in plan order."""

    def __init__(self, tasks: Iterator[ClipTask], lookahead: int = 4096):
        self.tasks, self.lookahead = tasks, lookahead
        self.runs: OrderedDict[Hashable, deque[ClipTask]] = OrderedDict()  # read ahead, by shard (else by task)
        self.ahead = 0
        self.last: Hashable = None  # the unit of the last task read
        self.exhausted = False
        self.requeued: deque[ClipTask] = deque()  # a dead worker's queued tasks: first

    @property
    def empty(self) -> bool:
        return self.exhausted and not self.runs and not self.requeued

    def _pull(self) -> Hashable | None:
        """Read one more task; the key of its run (None when there are no more, or enough are read ahead)."""
        if self.exhausted or self.ahead >= self.lookahead:
            return None
        task = next(self.tasks, None)
        if task is None:
            self.exhausted = True
            return None
        unit = _unit_of(task)
        key = unit if unit is not None else ("task", task.task)
        self.runs.setdefault(key, deque()).append(task)
        self.ahead += 1
        self.last = unit
        return key

    def _pop(self, key: Hashable) -> ClipTask:
        run = self.runs[key]
        task = run.popleft()
        if not run:
            del self.runs[key]
        self.ahead -= 1
        return task

    def take(self, on: Hashable, others: set) -> ClipTask | None:
        """The next task for a worker on shard ``on`` while other workers are on ``others``."""
        if self.requeued:
            return self.requeued.popleft()
        if on is not None:
            while on not in self.runs and self.last == on and self._pull() is not None:
                pass  # the plan may go on with this shard's samples
            if on in self.runs:
                return self._pop(on)
        for key in self.runs:
            if key not in others:
                return self._pop(key)
        while (key := self._pull()) is not None:
            if key not in others:
                return self._pop(key)
        if self.runs:  # every shard read ahead has a worker: share the one with the most samples left
            return self._pop(max(self.runs, key=lambda k: len(self.runs[k])))
        return None


class DecodePool:
    """Decodes tasks in ``num_workers`` processes (0 = a thread) into one bounded message queue.
    Iterate ``messages(tasks)`` from the consuming (encoder) thread. ``max_messages`` bounds what is
    decoded ahead of the consumer (each message holds at most ``chunk`` frames). ``timeout`` is how
    long a worker may go without delivering anything for its current clip before it is killed and
    replaced and the clip recorded as failed ("timeout after N s").
    """

    def __init__(
        self,
        sampling: SamplingConfig,
        preprocess: Any,
        *,
        num_workers: int,
        threads: int = 1,
        timeout: float = 120.0,
        chunk: int = 32,
        max_messages: int = 8,
        tasks_per_worker: int = 2,
    ):
        self.sampling, self.preprocess = sampling, preprocess
        self.num_workers, self.threads, self.timeout, self.chunk = num_workers, threads, float(timeout), chunk
        self.tasks_per_worker = tasks_per_worker
        self.queue: queue.Queue = queue.Queue(maxsize=max(2, max_messages))
        self.stop = threading.Event()
        self.workers: list[_Worker] = []
        self.replaced = 0  # workers killed (timeout) or found dead (crash) and replaced
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- consumer side ----------------------------------------------------------------------------
    def start(self, tasks: Iterable[ClipTask]) -> None:
        """Begin decoding ``tasks`` now, ahead of the consumer (``messages()`` then drains them): predict
        decodes while torch imports. Up to ``max_messages`` messages wait in the queue."""
        target = self._run_workers if self.num_workers > 0 else self._run_inline
        self._thread = threading.Thread(
            target=self._guard, args=(target, iter(tasks)), name="vidprobe-decode-scheduler", daemon=True
        )
        self._thread.start()

    def messages(self, tasks: Iterable[ClipTask] | None = None) -> Iterator[Message]:
        """Messages for ``tasks`` (or those given to ``start``) as they are decoded (tasks interleave; each
        task's frames stay in order; with one worker, tasks come one after another in plan order, a WebDataset
        shard's samples together)."""
        if self._thread is None:
            self.start(tasks or ())
        assert self._thread is not None
        while True:
            msg = self.queue.get()
            if msg is None:
                break
            yield msg
        self._thread.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the scheduler and every worker (safe to call more than once, and on error paths)."""
        self.stop.set()
        while True:  # unblock a scheduler waiting on a full queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        for w in self.workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 5
        for w in self.workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            w.kill()
        self.workers.clear()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- scheduler thread ---------------------------------------------------------------------------
    def _put(self, msg: Message | None) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(msg, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _guard(self, target, tasks: Iterator[ClipTask]) -> None:
        try:
            target(tasks)
        except BaseException as exc:  # surfaced in the consumer thread
            self._error = exc
        finally:
            self._put(None)

    def _run_inline(self, tasks: Iterator[ClipTask]) -> None:
        with shards_kept_open():
            for task in tasks:
                for msg in decode_task(task, self.sampling, self.preprocess, self.threads, self.chunk):
                    if not self._put(msg):
                        return

    def _spawn(self, ctx) -> _Worker:
        w = _Worker(ctx, (self.sampling, self.preprocess, self.threads, self.chunk))
        self.workers.append(w)
        return w

    def _retire(self, w: _Worker, reason: str, ctx) -> None:
        """``w`` is stuck or dead: fail its current task, hand its queued tasks to others, replace it."""
        if not w.ready:
            w.kill()
            raise DecodeError(
                f"a decoder worker process could not start ({_death(w.proc)}); see its error above. When calling "
                "pipeline.extract.entry.extract from a script, put the call under `if __name__ == '__main__':`, or use "
                "extract.num_workers=0"
            )
        failed = w.assigned.popleft() if w.assigned else None
        rest = list(w.assigned)
        w.assigned.clear()
        w.kill()
        self.workers.remove(w)
        self.replaced += 1
        if failed is not None:
            self._put(Failed(failed.task, f"{failed.path}: {reason}"))
        self._feed.requeued.extendleft(reversed(rest))
        if not self.stop.is_set():
            self._spawn(ctx)

    def _run_workers(self, tasks: Iterator[ClipTask]) -> None:
        ctx = _context()
        for _ in range(self.num_workers):
            self._spawn(ctx)
        self._feed = feed = _Feed(tasks)
        while not self.stop.is_set():
            # 1. keep every worker supplied (one task running, one queued, so it never idles)
            for w in list(self.workers):
                while len(w.assigned) < self.tasks_per_worker:
                    task = feed.take(w.on, {o.on for o in self.workers if o is not w})
                    if task is None:
                        break
                    try:
                        w.conn.send(task)
                    except (OSError, ValueError):  # died before we noticed (e.g. killed while idle)
                        feed.requeued.appendleft(task)
                        w.proc.join(1)
                        self._retire(w, f"decoder process died ({_death(w.proc)}); the file may be corrupt", ctx)
                        break
                    if not w.assigned:
                        w.since = time.monotonic()
                    w.assigned.append(task)
                    w.on = _unit_of(task)
            busy = [w for w in self.workers if w.assigned]
            if not busy and feed.empty:
                return
            # 2. wait for output or a death, but never past the earliest timeout
            now = time.monotonic()
            wait_s = min([max(0.0, w.since + self.timeout - now) for w in busy] + [0.5])
            ready = wait_ready([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=wait_s)
            for w in busy:
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):  # the process died mid-message
                        w.proc.join(1)
                        self._retire(w, f"decoder process died ({_death(w.proc)}); the file may be corrupt", ctx)
                        continue
                    w.since = time.monotonic()
                    if isinstance(msg, Ready):
                        w.ready = True
                        continue
                    if isinstance(msg, (Done, Failed)) and w.assigned:
                        w.assigned.popleft()
                    if not self._put(msg):
                        return
                elif w.proc.sentinel in ready or not w.proc.is_alive():
                    if w.conn.poll():  # read what it sent before dying first
                        continue
                    w.proc.join(1)
                    self._retire(w, f"decoder process died ({_death(w.proc)}); the file may be corrupt", ctx)
                elif w.ready and time.monotonic() - w.since > self.timeout and not w.conn.poll():
                    self._retire(w, f"timeout after {self.timeout:g} s (decoder stuck; worker replaced)", ctx)
