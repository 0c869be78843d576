"""The extraction engine: decoder processes feed the encoder, which never waits on one clip or the disk.

Three stages run at once and meet in bounded queues, so memory stays flat however many or long the
videos are:

* ``DecodePool`` (``pipeline.extract.workers``): worker processes decode each manifest item's sampled
  frames, resized and cropped to each distinct encoder input, in chunks; a stuck or crashed worker
  costs one clip.
* this module's main loop packs frames of many clips into full encoder batches, one batcher per model
  (one pinned staging buffer on CUDA, so host-to-device copies are non-blocking; the encoder applies
  AMP there; fp32 and channels_last on CPU), encodes each distinct frame once per model, and
  assembles clips as they complete;
* a writer thread per store hands finished clips to its ``ShardWriter``, so a shard flush never
  stalls the encoder.

Several encoders (``extract_all``, ``vidprobe extract --encoder A --encoder B``) share the decode: a
clip is decoded once for all the stores that lack it (``pipeline.extract.targets``), and one model's
outputs (open_clip joint and ``#pre``) come from one forward (``pipeline.encoders.group``). One
encoder is the case K=1 of the same loop.

On a CPU the encoder is the bottleneck and shares the cores with decoding; on a GPU the decoders are.
``resolve_runtime`` picks worker/thread/batch defaults for either (see its docstring for why). The store
side (provenance, lock, plan, run record, writer) is one ``ExtractionJob`` per store, as in the Ray engine.
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
from ..errors import ConfigError, DecodeError
from ..store import ShardWriter, check_appendable
from .decode import DecodedClip
from .job import ExtractionJob, ExtractSummary, build_provenance
from .sharding import JobShard
from .targets import ExtractionJobs, UnionTask, decode_views, store_paths
from .workers import ClipTask, DecodePool, decode_task

if TYPE_CHECKING:
    import torch

    from ..encoders import EncoderGroup

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
    """Main-process state of one task: its frames' embeddings as they are encoded, then its clips.

    ``groups`` are the models whose stores need this task; each encodes the task's frames once
    (``encoded[g]``, ``emb[g]``: per batch part, one array per output of that model)."""

    __slots__ = (
        "tid",
        "item",
        "targets",
        "skips",
        "groups",
        "received",
        "encoded",
        "emb",
        "stamps",
        "clips",
        "skipped",
        "error",
        "stage",
        "failed",
        "warnings",
    )

    def __init__(self, unit: UnionTask, groups: tuple[int, ...]):
        self.tid, self.item, self.targets, self.skips = unit.task.task, unit.item, unit.targets, unit.skips
        self.groups = groups
        self.received = 0
        self.encoded = dict.fromkeys(groups, 0)
        self.emb: dict[int, list[list[np.ndarray]]] = {g: [] for g in groups}
        self.stamps: list[np.ndarray] = []
        self.clips: list | None = None  # set by the worker's "done"
        self.skipped = 0
        self.error = ""  # why decoding failed, naming the file (fails every target)
        self.stage = ""  # decode
        self.failed: dict[int, str] = {}  # model -> why its encoding failed (fails that model's targets)
        self.warnings: list[str] = []  # the decoder's warnings (kept with the clips; see ExtractSummary.warnings)

    @property
    def finished(self) -> bool:
        if self.error:
            return True
        return self.clips is not None and all(g in self.failed or self.encoded[g] == self.received for g in self.groups)


class _Batcher:
    """Packs frames of many tasks into full batches for one model, through one staging buffer (pinned on CUDA)."""

    def __init__(self, group: EncoderGroup, index: int, batch_size: int):
        self.group, self.index, self.batch_size = group, index, batch_size
        self.pending: deque[list] = deque()  # [state, frames, first frame not yet taken]
        self.queued = 0
        self.staging: torch.Tensor | None = None  # made on first use (torch is imported lazily)
        self.cuda = str(getattr(group, "device", "cpu")).startswith("cuda")
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

        g = self.index
        parts, owners, n = [], [], 0
        while self.pending and n < self.batch_size:
            entry = self.pending[0]
            state, frames, pos = entry
            if state.error or g in state.failed:  # its task failed meanwhile: drop its frames
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
            outs: list[np.ndarray] | None = self.group.encode(staging[:n])
            error = ""
        except Exception as exc:  # one bad batch fails its clips, not the job
            outs, error = None, f"encoding failed ({type(exc).__name__}: {exc})"
        self.batches += 1
        pos = 0
        for state, take in owners:
            if outs is None:
                state.failed.setdefault(g, f"{state.item.abspath}: {error}")  # once per task
            else:
                state.emb[g].append([o[pos : pos + take] for o in outs])
                state.encoded[g] += take
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

    def add_warning(self, *args: Any) -> None:
        self.put("add_warning", *args)

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
    One encoder (``encoder``, else ``cfg.encoder``); ``extract_all`` runs several over one decode.
    """
    if encoder is None and len(cfg.encoders) > 1:
        raise ConfigError(f"encoder: {len(cfg.encoders)} specs; extract() writes one store, extract_all() several")
    encoders = None if encoder is None else [encoder]
    (summary,) = extract_all(
        manifest, store_path, cfg, encoders=encoders, progress=progress, retry_failed=retry_failed, shard=shard
    )
    return summary


def extract_all(
    manifest: Manifest,
    output: str | Path,
    cfg: Config,
    *,
    encoders: list[FrameEncoder] | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    shard: JobShard | None = None,
) -> list[ExtractSummary]:
    """Every encoder of ``cfg.encoder`` (or ``encoders``, e.g. from ``create_encoders``) over one decode of
    ``manifest``: one store each.

    The stores are ``store_paths(output, specs)`` (``output`` itself for one encoder, ``output/<name>``
    for several); each is its own job (plan, lock, run record, failures, resume), so a clip already in
    one store is decoded only for the others. Returns one summary per store, in spec order.
    """
    from ..encoders import canonical_spec, create_encoders, group_outputs

    started = time.perf_counter()
    paths = store_paths(output, cfg.encoders if encoders is None else [e.spec for e in encoders])  # before loading
    if encoders is None:
        # what can be refused without the models is refused before building them (torch costs seconds)
        for path, spec in zip(paths, cfg.encoders):
            identity = {"encoder": canonical_spec(spec), "sampling": sampling_identity(cfg.sampling)}
            check_appendable(path, {**identity, "dtype": cfg.store.dtype})
        encoders = create_encoders(cfg.encoders, device=cfg.extract.device, precision=cfg.extract.precision)
    groups, where = group_outputs(encoders)  # one forward per model, whatever number of outputs it feeds
    outputs = [groups[g].outputs[j] for g, j in where]
    device_type = str(getattr(groups[0], "device", "cpu")).split(":")[0]
    rt = resolve_runtime(cfg.extract, device_type)
    jobs = ExtractionJobs(
        manifest,
        paths,
        cfg,
        [build_provenance(o, cfg) for o in outputs],
        shard=shard,
        retry_failed=retry_failed,
        started=started,
    )
    with jobs:
        _run_engine(groups, [g for g, _ in where], [j for _, j in where], jobs, rt, device_type, progress)
    return [job.summary for job in jobs.jobs]


def _run_engine(
    groups: list[EncoderGroup],
    group_of: list[int],
    output_of: list[int],
    jobs: ExtractionJobs,
    rt: Runtime,
    device_type: str,
    progress: bool,
) -> None:
    """Decoder pool → one batcher per model → writer threads, for the jobs' merged plan (module docstring).

    Store ``t`` is output ``output_of[t]`` of model ``group_of[t]``."""
    import torch
    from tqdm.auto import tqdm

    first = jobs.jobs[0]
    cfg = first.cfg
    views, view_of_group = decode_views([g.preprocess_cfg for g in groups])
    todo = jobs.plan([view_of_group[g] for g in group_of])
    states = {u.task.task: _TaskState(u, tuple(sorted({group_of[t] for t in u.targets}))) for u in todo}
    old_threads = torch.get_num_threads()
    if device_type == "cpu" and rt.torch_threads:
        torch.set_num_threads(rt.torch_threads)
    pool = DecodePool(
        cfg.sampling,
        views,
        num_workers=rt.num_workers,
        threads=rt.decode_threads,
        timeout=cfg.extract.decode_timeout,
        chunk=rt.batch_size,
        max_messages=max(2, rt.prefetch_frames // rt.batch_size),
    )
    batchers = [_Batcher(group, i, rt.batch_size) for i, group in enumerate(groups)]
    bar = tqdm(
        total=len(todo),
        unit="video" if cfg.sampling.windowed else "clip",
        desc="extract",
        disable=not progress,
        dynamic_ncols=True,
    )
    sinks: list[_StoreSink] = []
    try:
        for job in jobs.jobs:
            sinks.append(_StoreSink(job.writer))
            job.sink = sinks[-1]
        try:

            def finish(touched: list[_TaskState]) -> None:
                for state in dict.fromkeys(touched):
                    if state.finished and states.pop(state.tid, None) is not None:
                        _store_task(state, jobs.jobs, group_of, output_of)
                        bar.update(1)
                elapsed = max(time.perf_counter() - first.started, 1e-9)
                frames = sum(job.summary.frames for job in jobs.jobs)
                failed = sum(job.summary.failed for job in jobs.jobs)
                bar.set_postfix(frames_s=f"{frames / elapsed:.1f}", failed=failed, refresh=False)

            for msg in pool.messages(u.task for u in todo) if todo else ():
                kind, tid = msg[0], msg[1]
                state = states.get(tid)
                if state is None:
                    continue
                if kind == "frames":
                    for g in state.groups:
                        batchers[g].add(state, msg[2][view_of_group[g]])
                    state.received += len(msg[3])
                    state.stamps.append(msg[3])
                    for batcher in batchers:
                        while batcher.full:
                            finish(batcher.encode())
                elif kind == "done":
                    state.clips, state.skipped, state.warnings = msg[2], msg[3], msg[4]
                    finish([state])
                else:
                    state.error, state.stage = msg[2], "decode"
                    finish([state])
            for batcher in batchers:
                while batcher.queued:
                    finish(batcher.encode())
            for job in jobs.jobs:
                job.summary.workers_replaced = pool.replaced
        finally:
            pool.close()
            errors = []
            for job, sink in zip(jobs.jobs, sinks):
                job.sink = job.writer
                try:
                    sink.close()
                except BaseException as exc:  # every store's writer thread is stopped before one error is raised
                    errors.append(exc)
            if errors:
                raise errors[0]
    finally:
        bar.close()
        torch.set_num_threads(old_threads)


def _store_task(state: _TaskState, jobs: list[ExtractionJob], group_of: list[int], output_of: list[int]) -> None:
    """Hand a finished task's clips (or its failure) to each job that needs it, which writes and counts them."""
    item = state.item
    for t, have in zip(state.targets, state.skips):
        job, g = jobs[t], group_of[t]
        clips = [c for c in state.clips or () if (c[0], c[1]) not in have]  # windows this store already has
        job.summary.skipped += state.skipped + len(state.clips or ()) - len(clips)
        error, stage = (state.error, state.stage) if state.error else (state.failed.get(g, ""), "encode")
        if not error and clips:
            parts = [p[output_of[t]] for p in state.emb[g]]
            emb = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
            if not np.all(np.isfinite(emb)):
                error, stage = f"{item.abspath}: the encoder returned NaN or Inf embeddings; not stored", "encode"
        if error:
            job.add_failure(item.path, item.start, item.end, stage, error)
            continue
        stamps = np.concatenate(state.stamps) if state.stamps else np.zeros(0)
        for warning in state.warnings if clips else ():  # first: they go into the shard that takes the clips
            job.add_warning(item.path, warning)
        for start, end, idx in clips:
            job.add_clip(item, start, end, emb[idx], stamps[idx])


def _decode_whole(task: ClipTask, sampling: SamplingConfig, preprocess, threads: int):
    """Run the engine's per-video decode in this thread: (frames, timestamps, clips, warnings).

    With a sequence of preprocessings the frames are a tuple, one array per preprocessing (None for
    those ``task.views`` leaves out)."""
    out, stamps, clips, warnings = [], [], None, []
    for msg in decode_task(task, sampling, preprocess, threads=threads):
        if msg[0] == "frames":
            out.append(msg[2])
            stamps.append(msg[3])
        elif msg[0] == "done":
            clips, warnings = msg[2], msg[4]
        else:
            raise DecodeError(msg[2])
    if isinstance(out[0], tuple):
        frames: Any = tuple(None if v[0] is None else np.concatenate(v) for v in zip(*out))
    else:
        frames = np.concatenate(out)
    return frames, np.concatenate(stamps), clips, warnings


def load_views(
    item: VideoItem, sampling: SamplingConfig, views: list, need: tuple[int, ...] | None = None, threads: int = 0
) -> tuple[list[np.ndarray | None], np.ndarray, list[str]]:
    """One decode of a single-clip item, resized once per preprocessing in ``views`` that ``need`` names:
    (frames per view, one per sampled time; None where not needed), timestamps, warnings."""
    task = ClipTask(0, str(item.abspath), item.start, item.end, root=item.root, views=need)
    frames, stamps, clips, warnings = _decode_whole(task, sampling, list(views), threads)
    idx = np.concatenate([i for _, _, i in clips]) if clips else np.arange(len(stamps))
    return [None if f is None else f[idx] for f in frames], stamps[idx], warnings


def load_clip(item: VideoItem, sampling: SamplingConfig, preprocess, threads: int = 0) -> DecodedClip:
    """Decoded, resized and cropped frames of one single-clip item (``load_views`` with one view)."""
    (frames,), stamps, warnings = load_views(item, sampling, [preprocess], threads=threads)
    assert frames is not None
    return DecodedClip(frames, stamps, warnings)


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
