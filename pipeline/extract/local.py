"""The extraction engine: decoder processes feed the encoder, which never waits on one clip or the disk.

Three stages run at once and meet in bounded queues, so memory stays flat however many or long the
videos are:

* ``DecodePool`` (``pipeline.extract.workers``): worker processes decode each manifest item's sampled
  frames, resized and cropped to each distinct encoder input, in chunks; a stuck or crashed worker
  costs one clip.
* this module's main loop packs frames of many clips into full encoder batches, one ``Batcher`` per model
  (``pipeline.extract.batching``: one staging buffer, pinned on CUDA, so host-to-device copies are
  non-blocking; the encoder applies
  AMP there; fp32 and channels_last on CPU), encodes each distinct frame once per model, and
  assembles clips as they complete;
* a writer thread hands finished clips to each store's ``ShardWriter``, so a shard flush never stalls
  the encoder.

Several encoders (``vidprobe extract --encoder A --encoder B``) share the decode: a clip is decoded
once for all the stores that lack it (``pipeline.extract.targets``), and one model's outputs (open_clip
joint and ``#pre``) come from one forward (``pipeline.encoders.group``). One encoder is the case K=1 of
the same loop. ``extract`` (``pipeline.extract.entry``) is the way in. The store side (provenance, lock,
plan, run record, writer, delivery) is one ``ExtractionJob`` per store, as in the Ray engine.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import AUTO, Config, ExtractConfig
from ..encoders.base import FrameEncoder, check_device
from ..store.sources import Source
from .batching import Batcher
from .job import ExtractionJob, Outcome, build_provenance
from .targets import ExtractionJobs, UnionTask, decode_views
from .workers import DecodePool, Done, Frames, Window, start_decoder_server

if TYPE_CHECKING:
    from ..encoders import EncoderGroup

# torch's OpenMP threads must not spin while waiting: the cores they would burn belong to the decoder
# processes. Read by libgomp when torch is first imported (lazily, after this); users may override it.
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
    """Defaults for the machine, measured with ``benchmarks/extract_throughput.py``; why each:
    docs/performance.md#extraction."""
    cpus = cpus or cpu_count()
    cuda = device_type == "cuda"
    batch = ext.batch_size if ext.batch_size != AUTO else (128 if cuda else 16)
    workers = ext.num_workers if ext.num_workers != AUTO else (max(1, cpus - 1) if cuda else min(cpus, 16))
    threads = ext.decode_threads if ext.decode_threads != AUTO else 1
    torch_threads = ext.torch_threads if ext.torch_threads != AUTO else (0 if cuda else cpus)
    prefetch = ext.prefetch_frames or 4 * batch
    return Runtime(int(batch), int(workers), int(threads), int(torch_threads), int(prefetch))


# -- batching ---------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)  # eq=False: hashed by identity
class _TaskState:
    """Main-process state of one task: its frames' embeddings as they are encoded, then its clips.
    ``groups`` are the models whose stores need this task; each encodes the task's frames once
    (``encoded[g]``, ``emb[g]``: per batch part, one array per output of that model)."""

    unit: UnionTask
    groups: tuple[int, ...]
    received: int = 0
    encoded: dict[int, int] = field(init=False)
    emb: dict[int, list[list[np.ndarray]]] = field(init=False)
    stamps: list[np.ndarray] = field(default_factory=list)
    clips: list[Window] | None = None  # set by the worker's Done
    skipped: int = 0
    error: str = ""  # why decoding failed, naming the file (fails every target)
    failed: dict[int, str] = field(default_factory=dict)  # model -> why its encoding failed (fails its targets)
    warnings: list[str] = field(default_factory=list)  # the decoder's (kept with the clips; ExtractSummary.warnings)
    source: Source | None = None  # fingerprint of the file the worker decoded (its Done or Failed)

    def __post_init__(self) -> None:
        self.encoded = dict.fromkeys(self.groups, 0)
        self.emb = {g: [] for g in self.groups}

    @property
    def finished(self) -> bool:
        if self.error:
            return True
        return self.clips is not None and all(g in self.failed or self.encoded[g] == self.received for g in self.groups)


def _dropped(g: int) -> Callable[[_TaskState], bool]:
    """Whether a task's frames queued for model ``g`` are left out: it failed meanwhile."""
    return lambda state: bool(state.error) or g in state.failed


# -- writing ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _writer_thread(jobs: list[ExtractionJob]) -> Iterator[None]:
    """The jobs' writer calls (``ExtractionJob.write``) run in one thread while the engine runs, so shard
    flushes never stall the encoder; the first error (disk full, permissions...) is raised in this one."""
    calls: queue.Queue = queue.Queue(maxsize=1024)
    errors: list[BaseException] = []

    def run() -> None:
        for call in iter(calls.get, None):
            if not errors:
                try:
                    call()
                except BaseException as exc:  # fatal: raised in the main thread
                    errors.append(exc)

    def put(call: Callable[[], None]) -> None:
        if errors:
            raise errors[0]
        calls.put(call)

    thread = threading.Thread(target=run, name="vidprobe-store-writer", daemon=True)
    thread.start()
    direct = [job.write for job in jobs]
    for job in jobs:
        job.write = put
    try:
        yield
    finally:
        for job, write in zip(jobs, direct):
            job.write = write
        calls.put(None)
        thread.join()
        if errors:
            raise errors[0]


# -- the engine -------------------------------------------------------------------------------------


def extract_locally(
    cfg: Config,
    paths: list[Path],
    encoders: Sequence[FrameEncoder] | None,
    jobs: Callable[[list[dict[str, Any]]], ExtractionJobs],
) -> ExtractionJobs:
    """The local engine of ``extract``: build the encoders (unless given), then run ``jobs(provenances)``.
    The decoder workers' server starts before the build, so its imports run meanwhile on another core."""
    from ..encoders import create_encoders, group_outputs

    if encoders is None:
        check_device(cfg.extract.device, "extract.device")  # without torch where there is no NVIDIA driver
        if cfg.extract.num_workers != 0:
            start_decoder_server()
        encoders = create_encoders(cfg.encoders, device=cfg.extract.device, precision=cfg.extract.precision)
    groups, where = group_outputs(list(encoders))  # one forward per model, whatever number of outputs it feeds
    device_type = str(getattr(groups[0], "device", "cpu")).split(":")[0]
    rt = resolve_runtime(cfg.extract, device_type)
    with jobs([build_provenance(groups[g].outputs[j], cfg) for g, j in where]) as running:
        engine = _Engine(groups, where, running, rt)
        with _torch_threads(rt.torch_threads if device_type == "cpu" else 0), _writer_thread(running.jobs), engine.pool:
            engine.run()
    return running


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch runs ``n`` threads meanwhile (0: as many as it has)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _Engine:
    """Decoder pool → one batcher per model → the jobs, over the jobs' merged plan (module docstring).
    Store ``t`` is output ``where[t][1]`` of model ``where[t][0]``."""

    def __init__(self, groups: list[EncoderGroup], where: list[tuple[int, int]], jobs: ExtractionJobs, rt: Runtime):
        self.jobs, self.group_of, self.output_of = jobs, [g for g, _ in where], [j for _, j in where]
        cfg = jobs.jobs[0].cfg
        views, self.view_of_group = decode_views([g.preprocess_cfg for g in groups])
        self.todo = jobs.plan([self.view_of_group[g] for g in self.group_of])
        self.states = {
            u.task.task: _TaskState(u, tuple(sorted({self.group_of[t] for t in u.targets}))) for u in self.todo
        }
        self.batchers = [
            Batcher(group.encode, rt.batch_size, device=getattr(group, "device", "cpu"), dropped=_dropped(g))
            for g, group in enumerate(groups)
        ]
        self.pool = DecodePool(
            cfg.sampling,
            views,
            num_workers=rt.num_workers,
            threads=rt.decode_threads,
            timeout=cfg.extract.decode_timeout,
            chunk=rt.batch_size,
            max_messages=max(2, rt.prefetch_frames // rt.batch_size),
        )

    def run(self) -> None:
        for msg in self.pool.messages(u.task for u in self.todo) if self.todo else ():
            state = self.states.get(msg.task)
            if state is None:
                continue
            if isinstance(msg, Frames):
                self._add_frames(state, msg)
            elif isinstance(msg, Done):
                state.clips, state.skipped, state.warnings = msg.clips, msg.skipped, msg.warnings
                state.source = msg.source
                self._finish([state])
            else:
                state.error, state.source = msg.error, msg.source
                self._finish([state])
        for g, batcher in enumerate(self.batchers):
            while batcher.queued:
                self._encode(g)
        for job in self.jobs.jobs:
            job.summary.workers_replaced = self.pool.replaced

    def _add_frames(self, state: _TaskState, msg: Frames) -> None:
        """Queue a task's next frames for each model that needs them; encode every batch that is full."""
        for g in state.groups:
            self.batchers[g].add(state, msg.frames[self.view_of_group[g]])
        state.received += len(msg.timestamps)
        state.stamps.append(msg.timestamps)
        for g, batcher in enumerate(self.batchers):
            while batcher.full:
                self._encode(g)

    def _encode(self, g: int) -> None:
        """Encode one batch of model ``g``: its rows to their tasks, or its failure to their targets of ``g``."""
        touched = []
        for part in self.batchers[g].encode():
            state = part.owner
            if part.outputs is None:
                state.failed.setdefault(g, f"{state.unit.item.shown}: {part.error}")  # once per task
            else:
                state.emb[g].append(part.outputs)
                state.encoded[g] += part.frames
            touched.append(state)
        self._finish(touched)

    def _finish(self, touched: list[_TaskState]) -> None:
        for state in dict.fromkeys(touched):
            if state.finished and self.states.pop(state.unit.task.task, None) is not None:
                unit = state.unit
                self.jobs.deliver(unit, [self._outcome(state, t, have) for t, have in zip(unit.targets, unit.skips)])

    def _outcome(self, state: _TaskState, t: int, have: frozenset) -> Outcome:
        """What store ``t`` gets of a finished task: the windows it lacks, or the failure."""
        g, clips = self.group_of[t], state.clips or []
        lacking = [c for c in clips if (c[0], c[1]) not in have]  # windows this store already has are left out
        skipped = state.skipped + len(clips) - len(lacking)
        error, stage = (state.error, "decode") if state.error else (state.failed.get(g, ""), "encode")
        if error or not lacking:
            return Outcome(error=error, stage=stage, skipped=skipped, source=state.source)
        parts = [p[self.output_of[t]] for p in state.emb[g]]
        emb = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        stamps = np.concatenate(state.stamps) if state.stamps else np.zeros(0)
        windows = [(start, end, emb[idx], stamps[idx]) for start, end, idx in lacking]
        return Outcome(windows, state.warnings, skipped=skipped, source=state.source)
