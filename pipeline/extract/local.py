"""The extraction engine: decoder processes feed the encoder, which never waits on one clip or the disk.

Three stages run at once and meet in bounded queues, so memory stays flat however many or long the
videos are:

* ``DecodePool`` (``pipeline.extract.workers``): worker processes decode each manifest item's sampled
  frames, resized and cropped to the encoder input, in chunks; a stuck or crashed worker costs one clip.
* this module's main loop packs frames of many clips into full encoder batches (one pinned staging
  buffer on CUDA, so host-to-device copies are non-blocking; the encoder applies AMP there; fp32 and
  channels_last on CPU), encodes each distinct frame once, and assembles clips as they complete;
* a writer thread hands finished clips to the store's ``ShardWriter``, so a shard flush never stalls
  the encoder.

On a CPU the encoder is the bottleneck and shares the cores with decoding; on a GPU the decoders are.
``resolve_runtime`` picks worker/thread/batch defaults for either (see its docstring for why). The store
side (provenance, lock, plan, run record, writer) is the ``ExtractionJob`` the Ray engine uses too.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import AUTO, Config, ExtractConfig, SamplingConfig
from ..data.manifest import Manifest, VideoItem
from ..data.sampling import sampling_identity
from ..encoders.base import FrameEncoder
from ..errors import DecodeError
from ..store import ShardWriter, check_appendable
from .decode import DecodedClip
from .job import ExtractionJob, ExtractSummary, build_provenance
from .sharding import JobShard
from .workers import ClipTask, DecodePool, decode_task

if TYPE_CHECKING:
    import torch

# torch's OpenMP threads must not spin while waiting: the cores they would burn belong to the decoder
# processes (measured: under contention spinning made effnet-lite0 several times slower). Read by
# libgomp when torch is first imported, which the engine does lazily after this; users may override it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# -- runtime defaults -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """``ExtractConfig`` with every ``auto`` resolved for this machine and device."""

    batch_size: int
    num_workers: int
    decode_threads: int
    torch_threads: int
    prefetch_frames: int


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_runtime(ext: ExtractConfig, device_type: str, cpus: int | None = None) -> Runtime:
    """Defaults for the machine (measured with ``benchmarks/extract_throughput.py``; see the README).

    CPU (the encoder is usually the bottleneck and shares the cores with decoding): torch gets every
    core, one decoder process per core (up to 16) with one FFmpeg thread each, batches of 16. Idle
    decoders cost nothing (they block on the bounded queue), and where decoding is the heavier stage
    (sparse samples of long-GOP 720p) they can take the whole machine. OpenMP threads wait passively
    (``OMP_WAIT_POLICY``, set at import): spinning waits burned the decoders' cores and made the
    encoder 2x slower end to end. Batches of 16 ran faster than 32 or 64 for effnet-lite0 on a 2-core
    CPU (activations stay in cache). CUDA (the decoders are the bottleneck): a decoder per core but
    one (the main process feeds the GPU), batches of 128.
    """
    cpus = cpus or cpu_count()
    cuda = device_type == "cuda"
    batch = ext.batch_size if ext.batch_size != AUTO else (128 if cuda else 16)
    workers = ext.num_workers if ext.num_workers != AUTO else (max(1, cpus - 1) if cuda else min(cpus, 16))
    threads = ext.decode_threads if ext.decode_threads != AUTO else 1
    torch_threads = ext.torch_threads if ext.torch_threads != AUTO else (0 if cuda else cpus)
    prefetch = ext.prefetch_frames or 4 * batch
    return Runtime(int(batch), int(workers), int(threads), int(torch_threads), int(prefetch))


# -- batching ---------------------------------------------------------------------------------------


class _TaskState:
    """Main-process state of one task: its frames' embeddings as they are encoded, then its clips."""

    __slots__ = (
        "tid",
        "item",
        "received",
        "encoded",
        "emb",
        "stamps",
        "clips",
        "skipped",
        "error",
        "stage",
        "warnings",
    )

    def __init__(self, tid: int, item: VideoItem):
        self.tid, self.item = tid, item
        self.received = 0
        self.encoded = 0
        self.emb: list[np.ndarray] = []
        self.stamps: list[np.ndarray] = []
        self.clips: list | None = None  # set by the worker's "done"
        self.skipped = 0
        self.error = ""  # why it failed, naming the file
        self.stage = ""  # where it failed: decode | encode
        self.warnings: list[str] = []  # the decoder's warnings (kept with the clips; see ExtractSummary.warnings)

    @property
    def finished(self) -> bool:
        return bool(self.error) or (self.clips is not None and self.encoded == self.received)


class _Batcher:
    """Packs frames of many tasks into full batches through one staging buffer (pinned on CUDA)."""

    def __init__(self, encoder: FrameEncoder, batch_size: int):
        self.encoder, self.batch_size = encoder, batch_size
        self.pending: deque[list] = deque()  # [state, frames, first frame not yet taken]
        self.queued = 0
        self.staging: torch.Tensor | None = None  # made on first use (torch is imported lazily)
        self.cuda = str(getattr(encoder, "device", "cpu")).startswith("cuda")
        self.batches = 0

    def add(self, state: _TaskState, frames: np.ndarray) -> None:
        self.pending.append([state, frames, 0])
        self.queued += len(frames)

    @property
    def full(self) -> bool:
        return self.queued >= self.batch_size

    def encode(self) -> list[_TaskState]:
        """Encode one batch (full if enough frames are queued); returns the tasks it touched."""
        import torch

        parts, owners, n = [], [], 0
        while self.pending and n < self.batch_size:
            entry = self.pending[0]
            state, frames, pos = entry
            if state.error:  # its task failed meanwhile: drop its frames
                self.queued -= len(frames) - pos
                self.pending.popleft()
                continue
            take = min(self.batch_size - n, len(frames) - pos)
            parts.append(frames[pos : pos + take])
            owners.append((state, take))
            n += take
            entry[2] += take
            if entry[2] == len(frames):
                self.pending.popleft()
        self.queued -= n
        if not n:
            return []
        staging = self.staging
        if staging is None:
            shape = (self.batch_size, *parts[0].shape[1:])
            staging = self.staging = torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda)
        view = staging.numpy()
        pos = 0
        for p in parts:
            view[pos : pos + len(p)] = p
            pos += len(p)
        try:
            emb = self.encoder.encode(staging[:n])
            error = ""
        except Exception as exc:  # one bad batch fails its clips, not the job
            emb, error = None, f"encoding failed ({type(exc).__name__}: {exc})"
        self.batches += 1
        pos = 0
        for state, take in owners:
            if emb is None:
                if not state.error:  # a task with several parts in this batch fails once
                    state.error, state.stage = f"{state.item.abspath}: {error}", "encode"
            else:
                state.emb.append(emb[pos : pos + take])
                state.encoded += take
            pos += take
        return [s for s, _ in owners]


# -- writing ----------------------------------------------------------------------------------------


class _StoreSink:
    """Writes finished clips and failures from a thread, so shard flushes never stall the encoder.

    A ``ClipSink`` (``pipeline.extract.job``): the job writes through it while it is open."""

    def __init__(self, writer: ShardWriter, maxsize: int = 1024):
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="vidprobe-store-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            if self.error is not None:
                continue
            method, args = job
            try:
                getattr(self.writer, method)(*args)
            except BaseException as exc:  # disk full, permissions...: fatal, raised in the main thread
                self.error = exc

    def put(self, method: str, *args: Any) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((method, args))

    def add(self, *args: Any) -> None:
        self.put("add", *args)

    def add_failure(self, *args: Any) -> None:
        self.put("add_failure", *args)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


# -- the engine -------------------------------------------------------------------------------------


def extract(
    manifest: Manifest,
    store_path: str | Path,
    cfg: Config,
    *,
    encoder: FrameEncoder | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    shard: JobShard | None = None,
) -> ExtractSummary:
    """Extract every clip of ``manifest`` not yet in the store at ``store_path``; returns a summary.

    With ``shard`` (see ``pipeline.extract.sharding``) only the clips that job shard owns are extracted, into
    shard files named after it, under that shard's writer lock, so shard processes can share one store.
    """
    from ..encoders import canonical_spec, create_encoder

    started = time.perf_counter()
    if encoder is None:
        # what can be refused without the model is refused before building it (torch costs seconds)
        identity = {"encoder": canonical_spec(cfg.encoder), "sampling": sampling_identity(cfg.sampling)}
        check_appendable(store_path, {**identity, "dtype": cfg.store.dtype})
        encoder = create_encoder(cfg.encoder, device=cfg.extract.device, precision=cfg.extract.precision)
    device_type = str(getattr(encoder, "device", "cpu")).split(":")[0]
    rt = resolve_runtime(cfg.extract, device_type)
    job = ExtractionJob(
        manifest,
        store_path,
        cfg,
        build_provenance(encoder, cfg),
        shard=shard,
        retry_failed=retry_failed,
        started=started,
    )
    with job:
        _run_engine(encoder, job, rt, device_type, progress)
    return job.summary


def _run_engine(encoder: FrameEncoder, job: ExtractionJob, rt: Runtime, device_type: str, progress: bool) -> None:
    """Decoder pool → batched encoder → writer thread, for the job's planned tasks (see the module docstring)."""
    import torch
    from tqdm.auto import tqdm

    cfg, summary, todo = job.cfg, job.summary, job.todo
    states = {task.task: _TaskState(task.task, item) for item, task in todo}
    old_threads = torch.get_num_threads()
    if device_type == "cpu" and rt.torch_threads:
        torch.set_num_threads(rt.torch_threads)
    pool = DecodePool(
        cfg.sampling,
        encoder.preprocess_cfg,
        num_workers=rt.num_workers,
        threads=rt.decode_threads,
        timeout=cfg.extract.decode_timeout,
        chunk=rt.batch_size,
        max_messages=max(2, rt.prefetch_frames // rt.batch_size),
    )
    batcher = _Batcher(encoder, rt.batch_size)
    bar = tqdm(
        total=len(todo),
        unit="video" if cfg.sampling.windowed else "clip",
        desc="extract",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        sink = job.sink = _StoreSink(job.writer)
        try:

            def finish(touched: list[_TaskState]) -> None:
                for state in dict.fromkeys(touched):
                    if state.finished and states.pop(state.tid, None) is not None:
                        _store_task(state, job)
                        bar.update(1)
                elapsed = max(time.perf_counter() - job.started, 1e-9)
                bar.set_postfix(frames_s=f"{summary.frames / elapsed:.1f}", failed=summary.failed, refresh=False)

            for msg in pool.messages(task for _, task in todo) if todo else ():
                kind, tid = msg[0], msg[1]
                state = states.get(tid)
                if state is None:
                    continue
                if kind == "frames":
                    batcher.add(state, msg[2])
                    state.received += len(msg[2])
                    state.stamps.append(msg[3])
                    while batcher.full:
                        finish(batcher.encode())
                elif kind == "done":
                    state.clips, state.skipped, state.warnings = msg[2], msg[3], msg[4]
                    finish([state])
                else:
                    state.error, state.stage = msg[2], "decode"
                    finish([state])
            while batcher.queued:
                finish(batcher.encode())
            summary.workers_replaced = pool.replaced
        finally:
            pool.close()
            job.sink = job.writer
            sink.close()
    finally:
        bar.close()
        torch.set_num_threads(old_threads)


def _store_task(state: _TaskState, job: ExtractionJob) -> None:
    """Hand a finished task's clips (or its failure) to the job, which writes and counts them."""
    item = state.item
    job.summary.skipped += state.skipped
    if not state.error and state.clips:
        emb = np.concatenate(state.emb) if state.emb else np.zeros((0, 0), np.float32)
        if not np.all(np.isfinite(emb)):
            state.error, state.stage = (
                f"{item.abspath}: the encoder returned NaN or Inf embeddings; not stored",
                "encode",
            )
    if state.error:
        job.add_failure(item.path, item.start, item.end, state.stage, state.error)
        return
    assert state.clips is not None  # finished without an error: the worker's "done" has set the clips
    stamps = np.concatenate(state.stamps) if state.stamps else np.zeros(0)
    for start, end, idx in state.clips:
        job.add_clip(item, start, end, emb[idx], stamps[idx])
    for warning in state.warnings:
        job.add_warning(item.path, warning)


def _decode_whole(task: ClipTask, sampling: SamplingConfig, preprocess, threads: int):
    """Run the engine's per-video decode in this thread: (frames, timestamps, clips, warnings)."""
    out, stamps, clips, warnings = [], [], None, []
    for msg in decode_task(task, sampling, preprocess, threads=threads):
        if msg[0] == "frames":
            out.append(msg[2])
            stamps.append(msg[3])
        elif msg[0] == "done":
            clips, warnings = msg[2], msg[4]
        else:
            raise DecodeError(msg[2])
    return np.concatenate(out), np.concatenate(stamps), clips, warnings


def load_clip(item: VideoItem, sampling: SamplingConfig, preprocess, threads: int = 0) -> DecodedClip:
    """Decoded, resized and cropped frames of one single-clip item (the Ray engine's decode stage)."""
    task = ClipTask(0, str(item.abspath), item.start, item.end, root=item.root)
    frames, stamps, clips, warnings = _decode_whole(task, sampling, preprocess, threads)
    idx = np.concatenate([i for _, _, i in clips]) if clips else np.arange(len(frames))
    return DecodedClip(frames[idx], stamps[idx], warnings)


Clips = list[tuple[float | None, float | None, DecodedClip]]  # (start, end, clip) per clip window


class VideoDecoder:
    """Decode videos in order, in the background, from the moment it is made (``predict`` decodes while
    torch imports and the model is built), with the engine's own per-video decode (``decode_task``), so
    new videos are sampled exactly as a training store was.

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

    def embedded(self, transform) -> Iterator[Clips | DecodeError]:
        """Per video, in order: its clips with frames through ``transform`` (e.g. ``encoder.encode``), or
        the DecodeError that stopped it (a timeout included)."""
        out: dict[int, tuple[list, list]] = {}
        for msg in self._pool.messages():
            frames, stamps = out.setdefault(msg[1], ([], []))
            if msg[0] == "frames":
                frames.append(transform(msg[2]))
                stamps.append(msg[3])
                continue
            del out[msg[1]]
            if msg[0] == "error":
                yield DecodeError(msg[2])
                continue
            if not frames:  # nothing sampled (every window empty): no clips either
                yield []
                continue
            emb, ts = np.concatenate(frames), np.concatenate(stamps)
            yield [(s, e, DecodedClip(emb[idx], ts[idx], msg[4])) for s, e, idx in msg[2]]

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def embed_clips(
    encoder: FrameEncoder,
    path: str | Path,
    sampling: SamplingConfig,
    start: float | None = None,
    end: float | None = None,
    *,
    timeout: float | None = None,
) -> Clips:
    """Frame embeddings of every clip of one video (see ``VideoDecoder``); ``DecodeError`` on failure."""
    with VideoDecoder([(path, start, end)], sampling, encoder.preprocess_cfg, timeout=timeout) as decoder:
        (result,) = decoder.embedded(encoder.encode)
    if isinstance(result, DecodeError):
        raise result
    return result
