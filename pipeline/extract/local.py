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
``resolve_runtime`` picks worker/thread/batch defaults for either (see its docstring for why).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..config import AUTO, Config, ExtractConfig, SamplingConfig
from .decode import DecodedClip
from .workers import ClipTask, DecodePool, decode_task
from ..errors import DecodeError
from ..data.manifest import Manifest, Problem, VideoItem
from .sharding import JobShard
from ..store import FeatureStore, ShardWriter, create_or_open, write_run_record

# torch's OpenMP threads must not spin while waiting: the cores they would burn belong to the decoder
# processes (measured: under contention spinning made effnet-lite0 several times slower). Read by
# libgomp when torch is first imported, which the engine does lazily after this; users may override it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def sampling_identity(cfg: SamplingConfig) -> dict[str, Any]:
    """Exactly the sampling settings that change which frames are embedded (store provenance).

    Settings a strategy ignores are left out, and equivalent spellings are normalised (a sliding
    stride of 0 means the clip length), so two configs that embed the same frames compare equal.
    """
    s = cfg.strategy
    out: dict[str, Any] = {"strategy": s}
    if s in ("uniform", "multiclip", "sliding"):
        out["num_frames"] = cfg.num_frames
    if s == "fps":
        out["fps"] = cfg.fps
    if s == "every_n":
        out["every_n"] = cfg.every_n
    if s in ("fps", "every_n", "keyframes"):
        out["max_frames"] = cfg.max_frames
    if s == "multiclip":
        out.update(num_clips=cfg.num_clips, clip_length=cfg.clip_length)
    if s == "sliding":
        out.update(clip_length=cfg.clip_length, stride=cfg.stride if cfg.stride > 0 else cfg.clip_length)
    if s != "keyframes":  # keyframe sampling decodes keyframes whatever the seek mode
        out["seek_mode"] = cfg.seek_mode
    return out


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


# -- summary and provenance --------------------------------------------------------------------------

@dataclass
class ExtractSummary:
    store: str
    total: int = 0  # items in the manifest (in this job shard's part of it, when sharded)
    done: int = 0  # clips extracted by this run (windowed strategies: one per window)
    skipped: int = 0  # clips already in the store (or already recorded as failed)
    skipped_failed: int = 0  # of those, clips recorded as failed by an earlier run (see --retry-failed)
    failed: int = 0  # items that failed in this run (incl. manifest problems)
    frames: int = 0  # frame embeddings stored by this run
    seconds: float = 0.0
    workers_replaced: int = 0  # decoder processes killed after a timeout or found dead
    shard: str | None = None  # job shard "i/n" when sharded (see pipeline.extract.sharding)
    engine: str = "local"  # local | ray
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, message) of this run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_provenance(encoder, cfg: Config) -> dict[str, Any]:
    import h5py
    import torch

    from .. import __version__

    return {
        "encoder": encoder.spec,
        "weights_id": encoder.weights_id,
        "dim": int(encoder.dim),
        "preprocess": encoder.preprocess_cfg.to_dict(),
        "sampling": sampling_identity(cfg.sampling),
        "dtype": cfg.store.dtype,
        "precision": encoder.precision,  # what the encoder actually ran (auto resolved): changes the values
        "encoder_info": encoder.provenance(),
        "versions": {"vidprobe": __version__, "torch": torch.__version__, "h5py": h5py.__version__, "numpy": np.__version__},
    }


# -- planning ---------------------------------------------------------------------------------------

def writer_prefix(shard: JobShard | None) -> str:
    """File-name prefix of the store shards a run writes: ``shard`` or ``shardIIIIofNNNN``."""
    return shard.prefix if shard is not None else "shard"


def plan_tasks(
    manifest: Manifest, store: FeatureStore, sampling: SamplingConfig, summary: ExtractSummary, *,
    shard: JobShard | None = None, retry_failed: bool = False,
) -> tuple[list[tuple[VideoItem, ClipTask]], list[Problem]]:
    """(item, task) pairs still to do and manifest problems to record; counts go into ``summary``.

    Only what ``shard`` owns (everything when None). Single-clip strategies skip an item whose key is
    stored (or recorded as failed, unless ``retry_failed``, which then does only those). Windowed
    strategies cannot know a video's windows without opening it, so each task carries the windows of
    that video already stored and the worker decodes only the missing ones (a resume after a kill
    finishes half-done videos).
    """
    stored = store.done_keys(include_failed=False)
    failed_before = store.done_keys(include_failed=True) - stored
    windows: dict[str, set[tuple[float, float]]] = defaultdict(set)
    if sampling.windowed:
        for video, start, end in stored:
            windows[video].add((start, end))
    todo: list[tuple[VideoItem, ClipTask]] = []
    seen: set = set()
    for item in manifest.items:
        key = item.key
        if shard is not None and not shard.owns(key):
            continue
        summary.total += 1
        if key in seen or (key in failed_before) != retry_failed or (not sampling.windowed and key in stored):
            summary.skipped += 1
            summary.skipped_failed += key in failed_before and not retry_failed
            continue
        seen.add(key)
        skip: frozenset = frozenset()
        if sampling.windowed and windows.get(item.path):
            lo = -np.inf if item.start is None else item.start - 1e-6
            hi = np.inf if item.end is None else item.end + 1e-6
            skip = frozenset(w for w in windows[item.path] if w[0] >= lo and w[1] <= hi)
        todo.append((item, ClipTask(len(todo), str(item.abspath), item.start, item.end, skip)))
    known = {f["path"] for f in store.failures() if f["stage"] == "manifest"}
    problems = [p for p in manifest.problems if p.path not in known and (shard is None or shard.owns((p.path, -1.0, -1.0)))]
    return todo, problems


def plan_extraction(
    manifest: Manifest, store: FeatureStore, summary: ExtractSummary, *, sampling: SamplingConfig,
    shard: JobShard | None = None, retry_failed: bool = False,
) -> tuple[list[VideoItem], list[Problem]]:
    """``plan_tasks`` for engines that handle one clip per item (the Ray engine): windowed sampling,
    which expands a video into several clips, is refused there."""
    from ..errors import ConfigError

    if sampling.windowed:
        raise ConfigError(f"sampling.strategy={sampling.strategy!r} makes several clips per video; use the local engine for it")
    todo, problems = plan_tasks(manifest, store, sampling, summary, shard=shard, retry_failed=retry_failed)
    return [item for item, _ in todo], problems


def note_run(store: FeatureStore, prefix: str, summary: ExtractSummary, state: str) -> None:
    """Record this run's state and counts under its writer prefix (what ``vidprobe info`` shows per shard)."""
    write_run_record(store, prefix, {
        "state": state, "shard": summary.shard, "engine": summary.engine, "assigned": summary.total, "done": summary.done,
        "skipped": summary.skipped, "failed": summary.failed, "host": socket.gethostname(), "pid": os.getpid(),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


@contextlib.contextmanager
def recorded_run(store: FeatureStore, prefix: str, summary: ExtractSummary) -> Iterator[None]:
    """Record the run under its writer prefix: running, then finished — or stopped if it ends by an
    exception (Ctrl-C, a store error), which is re-raised. A SIGKILLed run stays "running"."""
    note_run(store, prefix, summary, "running")
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            note_run(store, prefix, summary, "stopped")
        raise
    note_run(store, prefix, summary, "finished")


# -- batching ---------------------------------------------------------------------------------------

class _TaskState:
    """Main-process state of one task: its frames' embeddings as they are encoded, then its clips."""

    __slots__ = ("tid", "item", "received", "encoded", "emb", "stamps", "clips", "skipped", "error", "stage")

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

    @property
    def finished(self) -> bool:
        return bool(self.error) or (self.clips is not None and self.encoded == self.received)


class _Batcher:
    """Packs frames of many tasks into full batches through one staging buffer (pinned on CUDA)."""

    def __init__(self, encoder, batch_size: int):
        self.encoder, self.batch_size = encoder, batch_size
        self.pending: deque[list] = deque()  # [state, frames, first frame not yet taken]
        self.queued = 0
        self.staging = None
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
        if self.staging is None:
            shape = (self.batch_size, *parts[0].shape[1:])
            self.staging = torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda)
        view = self.staging.numpy()
        pos = 0
        for p in parts:
            view[pos : pos + len(p)] = p
            pos += len(p)
        try:
            emb = self.encoder.encode(self.staging[:n])
            error = ""
        except Exception as exc:  # one bad batch fails its clips, not the job
            emb, error = None, f"encoding failed ({type(exc).__name__}: {exc})"
        self.batches += 1
        pos = 0
        for state, take in owners:
            if emb is None and not state.error:
                state.error, state.stage = f"{state.item.abspath}: {error}", "encode"
            else:
                state.emb.append(emb[pos : pos + take])
                state.encoded += take
            pos += take
        return [s for s, _ in owners]


# -- writing ----------------------------------------------------------------------------------------

class _StoreSink:
    """Writes finished clips and failures from a thread, so shard flushes never stall the encoder."""

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
    encoder=None,
    progress: bool = True,
    retry_failed: bool = False,
    shard: JobShard | None = None,
) -> ExtractSummary:
    """Extract every clip of ``manifest`` not yet in the store at ``store_path``; returns a summary.

    With ``shard`` (see ``pipeline.extract.sharding``) only the clips that job shard owns are extracted, into
    shard files named after it, under that shard's writer lock, so shard processes can share one store.
    """
    from ..encoders import create_encoder

    started = time.perf_counter()
    if encoder is None:
        encoder = create_encoder(cfg.encoder, device=cfg.extract.device, precision=cfg.extract.precision)
    device_type = str(getattr(encoder, "device", "cpu")).split(":")[0]
    rt = resolve_runtime(cfg.extract, device_type)
    store: FeatureStore = create_or_open(store_path, build_provenance(encoder, cfg))
    summary = ExtractSummary(store=str(store.path), shard=str(shard) if shard else None)
    prefix = writer_prefix(shard)
    # The writer lock comes before reading what is done: a second job on the same work is refused here;
    # other shards of the same job may hold their own shard locks at the same time.
    with store.writer_lock(job_shard=shard.as_tuple() if shard else None) as lock:
        todo, problems = plan_tasks(manifest, store, cfg.sampling, summary, shard=shard, retry_failed=retry_failed)
        with recorded_run(store, prefix, summary):
            _run_engine(encoder, cfg, rt, device_type, store, todo, problems, summary, progress, started, prefix, lock.tag)
    summary.seconds = time.perf_counter() - started
    return summary


def _run_engine(encoder, cfg: Config, rt: Runtime, device_type: str, store: FeatureStore, todo: list[tuple[VideoItem, ClipTask]],
                problems: list[Problem], summary: ExtractSummary, progress: bool, started: float, prefix: str, tag: str) -> None:
    """Decoder pool → batched encoder → writer thread, for the planned tasks (see the module docstring)."""
    import torch
    from tqdm.auto import tqdm

    states = {task.task: _TaskState(task.task, item) for item, task in todo}
    old_threads = torch.get_num_threads()
    if device_type == "cpu" and rt.torch_threads:
        torch.set_num_threads(rt.torch_threads)
    pool = DecodePool(cfg.sampling, encoder.preprocess_cfg, num_workers=rt.num_workers, threads=rt.decode_threads,
                      timeout=cfg.extract.decode_timeout, chunk=rt.batch_size, max_messages=max(2, rt.prefetch_frames // rt.batch_size))
    batcher = _Batcher(encoder, rt.batch_size)
    bar = tqdm(total=len(todo), unit="video" if cfg.sampling.windowed else "clip", desc="extract", disable=not progress, dynamic_ncols=True)
    try:
        with ShardWriter(store, shard_size=cfg.extract.shard_size, prefix=prefix, compression=cfg.store.compression,
                         compression_level=cfg.store.compression_level, tag=tag) as writer:
            sink = _StoreSink(writer)
            try:
                for problem in problems:
                    sink.put("add_failure", problem.path, None, None, "manifest", problem.error)
                    summary.failed += 1
                    summary.failures.append((problem.path, problem.error))

                def finish(touched: list[_TaskState]) -> None:
                    for state in dict.fromkeys(touched):
                        if state.finished and states.pop(state.tid, None) is not None:
                            _store_task(state, sink, summary)
                            bar.update(1)
                    elapsed = max(time.perf_counter() - started, 1e-9)
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
                        state.clips, state.skipped = msg[2], msg[3]
                        finish([state])
                    else:
                        state.error, state.stage = msg[2], "decode"
                        finish([state])
                while batcher.queued:
                    finish(batcher.encode())
                summary.workers_replaced = pool.replaced
            finally:
                pool.close()
                sink.close()
    finally:
        bar.close()
        torch.set_num_threads(old_threads)


def _store_task(state: _TaskState, sink: _StoreSink, summary: ExtractSummary) -> None:
    """Hand a finished task's clips (or its failure) to the writer and count them."""
    item = state.item
    summary.skipped += state.skipped
    if not state.error and state.clips:
        emb = np.concatenate(state.emb) if state.emb else np.zeros((0, 0), np.float32)
        if not np.all(np.isfinite(emb)):
            state.error, state.stage = f"{item.abspath}: the encoder returned NaN or Inf embeddings; not stored", "encode"
    if state.error:
        sink.put("add_failure", item.path, item.start, item.end, state.stage, state.error)
        summary.failed += 1
        summary.failures.append((item.path, state.error))
        return
    stamps = np.concatenate(state.stamps) if state.stamps else np.zeros(0)
    for start, end, idx in state.clips:
        sink.put("add", item.path, start, end, item.label, item.split, emb[idx], stamps[idx])
        summary.done += 1
        summary.frames += len(idx)


def _decode_whole(task: ClipTask, sampling: SamplingConfig, preprocess, threads: int, transform=None):
    """Run the engine's per-video decode in-process: (frames or their transform, timestamps, clips)."""
    out, stamps, clips = [], [], None
    for msg in decode_task(task, sampling, preprocess, threads=threads):
        if msg[0] == "frames":
            out.append(transform(msg[2]) if transform else msg[2])
            stamps.append(msg[3])
        elif msg[0] == "done":
            clips = msg[2]
        else:
            raise DecodeError(msg[2])
    return np.concatenate(out), np.concatenate(stamps), clips


def load_clip(item: VideoItem, sampling: SamplingConfig, preprocess, threads: int = 0) -> DecodedClip:
    """Decoded, resized and cropped frames of one single-clip item (the Ray engine's decode stage)."""
    frames, stamps, clips = _decode_whole(ClipTask(0, str(item.abspath), item.start, item.end), sampling, preprocess, threads)
    idx = np.concatenate([i for _, _, i in clips]) if clips else np.arange(len(frames))
    return DecodedClip(frames[idx], stamps[idx])


def embed_clips(encoder, path: str | Path, sampling: SamplingConfig, start: float | None = None, end: float | None = None) -> list[tuple[float | None, float | None, DecodedClip]]:
    """Frame embeddings of every clip of one video, in-process (what ``predict`` uses for new videos).

    Runs the engine's own per-video decode (``decode_task``), so new videos are sampled exactly as
    the training store was. Returns (start, end, clip) per clip window; ``DecodeError`` on failure.
    """
    task = ClipTask(0, str(Path(path).absolute()), start, end)
    emb, ts, clips = _decode_whole(task, sampling, encoder.preprocess_cfg, 0, transform=encoder.encode)
    return [(s, e, DecodedClip(emb[idx], ts[idx])) for s, e, idx in clips]


def embed_video(encoder, path: str | Path, sampling: SamplingConfig, start: float | None = None, end: float | None = None) -> DecodedClip:
    """Frame embeddings of one video (or window) in-process; windowed strategies: all windows' frames
    concatenated in time order (use ``embed_clips`` to keep the windows apart)."""
    clips = embed_clips(encoder, path, sampling, start, end)
    if len(clips) == 1:
        return clips[0][2]
    return DecodedClip(np.concatenate([c.frames for _, _, c in clips]), np.concatenate([c.timestamps for _, _, c in clips]))
