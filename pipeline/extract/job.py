"""One extraction job: everything the local and the Ray engine share, so they differ only in how they
decode and encode.

``ExtractionJob`` is a context manager that, in this order, creates or opens the store with the
encoder's provenance (a mismatch is refused before anything runs), takes the writer lock of its job
shard (before reading what is done, so a second job on the same work is refused), plans what is left
(``plan_tasks``; a resume takes what the interrupted run stored as recorded: ``store.runs.resumed_records``),
records the run (running, then finished or stopped, under the writer prefix), opens the ``ShardWriter``
and records the manifest's problems as failures. Engines hand it what they made of
each item (``deliver`` an ``Outcome``: a failure, else warnings and clips), which it writes and counts in
its ``ExtractSummary``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, SamplingConfig
from ..data.keys import clip_key
from ..data.manifest import Manifest, Problem, VideoItem
from ..data.remote import RemoteOptions, is_url, redact
from ..data.sampling import sampling_identity
from ..encoders.base import FrameEncoder
from ..errors import StoreError
from ..store import FeatureStore, ShardWriter, create_or_open, write_run_record, writer_prefix
from ..store.index import failure_counts
from ..store.runs import resumed_records
from ..store.sources import Source, fingerprint, quick_fingerprint, same_file
from ..versions import versions
from .sharding import JobShard
from .workers import ClipTask

MAX_RECORDED_WARNINGS = 200  # warnings kept in a run record (the count is always complete)

__all__ = [
    "ExtractSummary",
    "ExtractionJob",
    "Outcome",
    "build_provenance",
    "changed_since",
    "plan_tasks",
    "note_run",
    "recorded_run",
]


@dataclass
class ExtractSummary:
    store: str
    total: int = 0  # items in the manifest (in this job shard's part of it, when sharded)
    done: int = 0  # clips extracted by this run (windowed strategies: one per window)
    skipped: int = 0  # clips already in the store (or already recorded as failed)
    skipped_failed: int = 0  # of those, clips recorded as failed by an earlier run (see --retry-failed)
    # videos whose file is another one (size, or sampled bytes) than their features or failure were made from:
    # extracted again, the old records left out by readers (see pipeline.store.sources)
    changed: list[str] = field(default_factory=list)
    failed: int = 0  # videos that failed in this run (incl. manifest problems), each once, as `info` counts
    failed_by_cause: dict[str, int] = field(default_factory=dict)  # of those, per stage of the latest failure
    frames: int = 0  # frame embeddings stored by this run
    seconds: float = 0.0
    workers_replaced: int = 0  # decoder processes killed after a timeout or found dead
    shard: str | None = None  # job shard "i/n" when sharded (see pipeline.extract.sharding)
    engine: str = "local"  # local | ray
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, message) of this run
    ignored: list[str] = field(default_factory=list)  # source files left out: not videos by extension
    # (path, message): clips stored but worked around or not as sampled (a header that lies about the
    # duration; one decoded frame for several sampled times); kept in the run record and, across runs,
    # in the shards with the clips; shown by `info`
    warnings: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_provenance(encoder: FrameEncoder, cfg: Config) -> dict[str, Any]:
    """What the store records about how its embeddings were made (identity keys: see store.layout)."""
    return {
        "encoder": encoder.spec,
        "weights_id": encoder.weights_id,
        "dim": int(encoder.dim),
        "preprocess": encoder.preprocess_cfg.to_dict(),
        "sampling": sampling_identity(cfg.sampling),
        "dtype": cfg.store.dtype,
        "precision": encoder.precision,  # what the encoder actually ran (auto resolved): changes the values
        "encoder_info": encoder.provenance(),
        "versions": versions("vidprobe", "torch", "h5py", "numpy"),
    }


def plan_tasks(
    manifest: Manifest,
    store: FeatureStore,
    sampling: SamplingConfig,
    summary: ExtractSummary,
    *,
    shard: JobShard | None = None,
    retry_failed: bool = False,
    sources: dict[str, Source | None] | None = None,
    remote: RemoteOptions | None = None,
    resumed: set[str] | frozenset[str] = frozenset(),
    checked: dict[tuple, Source | None] | None = None,
) -> tuple[list[tuple[VideoItem, ClipTask]], list[Problem]]:
    """(item, task) pairs still to do and manifest problems to record; counts go into ``summary``.
    Only what ``shard`` owns (everything when None). Single-clip strategies skip an item whose key is
    stored (or recorded as failed, unless ``retry_failed``, which then does only those). Windowed
    strategies cannot know a video's windows without opening it, so each task carries the windows of
    that video already stored and the worker decodes only the missing ones (a resume after a kill
    finishes half-done videos). A video whose file is not the one its stored clips or failure were made
    from (``store.sources.same_file``) is done again whole, and named in ``summary.changed``.
    ``sources``: filled with each planned item's fingerprint, its crc unknown where planning did not need it
    (planning reads no file it need not): what a failure without a decoder's fingerprint records.
    ``resumed``: video paths a resume takes as recorded (``store.runs.resumed_records``): their URLs get no
    request (a local file or sample is still stat'ed: that is free).
    ``checked``: fingerprints by (location, recorded), shared by the plans of one run's stores
    (``ExtractionJobs``), so a stored URL gets one ``HEAD`` however many encoders there are.
    """
    index = store.index()
    stored = store.done_keys(include_failed=False)
    failed_before = store.done_keys(include_failed=True) - stored
    recorded = index.current_sources()
    windows: dict[str, set[tuple[float, float]]] = defaultdict(set)
    if sampling.windowed:
        for video, start, end in stored:
            windows[video].add((start, end))
    todo: list[tuple[VideoItem, ClipTask]] = []
    seen: set = set()
    changed: set[str] = set()
    for item in manifest.items:
        key = item.key
        if shard is not None and not shard.owns(key):
            continue
        summary.total += 1
        if key in seen:
            summary.skipped += 1
            continue
        was = recorded.get(item.path)
        # a URL never stored gets no request (``fingerprint``: a million HEADs one by one), nor one a resume trusts
        now = was if item.url and item.path in resumed else _checked(checked, item.location, was)
        renewed = was is not None and now is not None and not same_file(now, was)  # the path holds another file
        if not renewed and ((key in failed_before) != retry_failed or (not sampling.windowed and key in stored)):
            summary.skipped += 1
            summary.skipped_failed += key in failed_before and not retry_failed
            continue
        seen.add(key)
        if sources is not None:
            sources[item.path] = now
        if renewed and item.path not in changed:
            changed.add(item.path)
            summary.changed.append(item.path)
        skip: frozenset = frozenset()
        if sampling.windowed and windows.get(item.path) and not renewed:
            lo = -np.inf if item.start is None else item.start - 1e-6
            hi = np.inf if item.end is None else item.end + 1e-6
            skip = frozenset(w for w in windows[item.path] if w[0] >= lo and w[1] <= hi)
        todo.append((item, ClipTask(len(todo), item.location, item.start, item.end, skip, item.confine, remote=remote)))
    known = {f["path"] for f in store.failures() if f["stage"] == "manifest"}
    problems = [
        p
        for p in manifest.problems
        if p.path not in known and (shard is None or shard.owns(clip_key(p.path, None, None)))
    ]
    return todo, problems


def _checked(memo: dict[tuple, Source | None] | None, location: str, was: Source | None) -> Source | None:
    """Planning's ``fingerprint`` of ``location`` against what its store recorded, asked once per ``memo``."""
    key = (location, None if was is None else tuple(was))
    if memo is None or key not in memo:
        now = fingerprint(location, was, complete=False)
        if memo is None:
            return now
        memo[key] = now
    return memo[key]


def note_run(store: FeatureStore, prefix: str, summary: ExtractSummary, state: str, after_shard: str = "") -> None:
    """Record this run's state and counts under its writer prefix (what ``vidprobe info`` shows per shard);
    ``after_shard``: see ``store.runs.resumed_records``."""
    write_run_record(
        store,
        prefix,
        {
            "state": state,
            "after_shard": after_shard,
            "shard": summary.shard,
            "engine": summary.engine,
            "assigned": summary.total,
            "done": summary.done,
            "skipped": summary.skipped,
            "failed": summary.failed,
            "failed_by_cause": summary.failed_by_cause,
            "changed": summary.changed[:MAX_RECORDED_WARNINGS],  # video files found replaced, done again
            "warnings": [message for _, message in summary.warnings[:MAX_RECORDED_WARNINGS]],
            "warnings_total": len(summary.warnings),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


@contextlib.contextmanager
def recorded_run(store: FeatureStore, prefix: str, summary: ExtractSummary, after_shard: str = "") -> Iterator[None]:
    """Record the run under its writer prefix: running, then finished — or stopped if it ends by an
    exception (Ctrl-C, a store error), which is re-raised. A SIGKILLed run stays "running"."""
    note = partial(note_run, store, prefix, summary, after_shard=after_shard)
    note("running")
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError, StoreError):  # e.g. the disk is full: the error says so
            note("stopped")
        raise
    note("finished")


@dataclass(frozen=True)
class Outcome:
    """What one store gets of one planned item: its failure, else its clips and the decoder's warnings."""

    clips: Sequence[tuple[float | None, float | None, np.ndarray, np.ndarray]] = ()  # start, end, emb, timestamps
    warnings: Sequence[str] = ()
    error: str = ""  # why it failed, naming the file ("" = it did not)
    stage: str = ""  # where it failed: decode | encode | worker (| changed, set by ``deliver``)
    skipped: int = 0  # its windows this store already has
    # fingerprint of the file the clips were made from, taken by the decoder through the file it read;
    # None: unknown (not a regular file, or the decoder could not open it)
    source: Source | None = None


def changed_since(path: str | Path, decoded: Source | None) -> str:
    """Why clips made from the file ``decoded`` names must not be stored as ``path``'s: it holds another
    file now (replaced or rewritten while it was decoded), or none; "" while it holds that file (or the
    decoder knew no fingerprint). Stats ``path``; reads its samples only if its time changed."""
    if decoded is None:
        return ""
    now = fingerprint(path, decoded)
    if now is None and is_url(str(path)):  # no answer now (a timeout, a 5xx) is not a replaced object
        return ""
    if now is not None and same_file(now, decoded):
        return ""
    why = "it is gone" if now is None else "another file is at its path"
    return (
        f"{redact(str(path))}: changed during extraction ({why}: the file was replaced or rewritten while it was "
        "decoded); "
        "its clips were not stored; extract again to store the new file's"
    )


def _now(call: Callable[[], None]) -> None:
    call()


class ExtractionJob:
    """One run of one extraction into one store (see the module doc); a context manager.
    Inside the ``with``: ``store``, ``summary``, ``prefix``, ``writer`` and ``todo`` (the planned (item,
    task) pairs). ``write`` runs each call of the writer (from ``deliver`` and ``add_failure``): at
    once, unless an engine puts a writer thread in front of it (then only that thread may touch the
    writer until it is closed).
    ``summary.seconds`` counts from ``started`` (default: when the job was made) to the end of the run.
    """

    def __init__(
        self,
        manifest: Manifest,
        store_path: str | Path,
        cfg: Config,
        provenance: dict[str, Any],
        *,
        engine: str = "local",
        shard: JobShard | None = None,
        retry_failed: bool = False,
        started: float | None = None,
    ) -> None:
        self.manifest, self.store_path, self.cfg, self.provenance = manifest, store_path, cfg, provenance
        self.engine, self.shard, self.retry_failed = engine, shard, retry_failed
        self.started = time.perf_counter() if started is None else started
        self.prefix = writer_prefix(shard.as_tuple() if shard else None)
        self.write: Callable[[Callable[[], None]], None] = _now
        self._failed: dict[str, str] = {}  # video -> stage of its latest failure in this run
        self._stack: contextlib.ExitStack | None = None
        self.checked: dict[tuple, Source | None] | None = None  # ``plan_tasks``'s, shared by ``ExtractionJobs``

    def __enter__(self) -> ExtractionJob:
        cfg, shard = self.cfg, self.shard
        self.store: FeatureStore = create_or_open(self.store_path, self.provenance)
        self.summary = ExtractSummary(
            store=str(self.store.path),
            shard=str(shard) if shard else None,
            engine=self.engine,
            ignored=list(self.manifest.ignored),
        )
        with contextlib.ExitStack() as stack:
            # before reading what is done (module doc); other shards of the job hold their own shard locks
            lock = stack.enter_context(self.store.writer_lock(job_shard=shard.as_tuple() if shard else None))
            self.sources: dict[str, Source | None] = {}
            after_shard, resumed = resumed_records(self.store, self.prefix)
            self.todo, problems = plan_tasks(
                self.manifest,
                self.store,
                cfg.sampling,
                self.summary,
                shard=shard,
                retry_failed=self.retry_failed,
                sources=self.sources,
                remote=RemoteOptions.of(cfg.extract),
                resumed=resumed,
                checked=self.checked,
            )
            stack.enter_context(recorded_run(self.store, self.prefix, self.summary, after_shard))
            stack.push(self._count_stored)  # runs after the writer's last flush, before the run record
            self.writer = stack.enter_context(
                ShardWriter(
                    self.store,
                    shard_size=cfg.extract.shard_size,
                    prefix=self.prefix,
                    compression=cfg.store.compression,
                    compression_level=cfg.store.compression_level,
                    tag=lock.tag,
                )
            )
            for problem in problems:
                self.add_failure(problem.path, None, None, "manifest", problem.error)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        assert self._stack is not None
        try:
            return self._stack.__exit__(*exc)
        finally:
            self.summary.seconds = time.perf_counter() - self.started

    def _count_stored(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        """Count the failed videos per cause (``failure_counts``, as ``info``); on a stop by an exception, only
        what finished shards hold (a full disk loses the buffer)."""
        w, failed = getattr(self, "writer", None), self._failed
        if exc_type is not None and w is not None:
            self.summary.done, self.summary.frames, failed = w.stored_clips, w.stored_frames, w.stored_failed
        self.summary.failed_by_cause = failure_counts(failed.items())
        self.summary.failed = sum(self.summary.failed_by_cause.values())
        return False

    def add_failure(
        self, path: str, start: float | None, end: float | None, stage: str, error: str, source: Source | None = None
    ) -> None:
        """Record a failed clip (``error`` names the file and what went wrong) and count it. ``source``: the
        fingerprint of the file that failed, else the planned one (its crc unread where planning did not
        need it: the file may be what hangs, and this runs in the job's main thread; without the crc only
        the same size and time make the same file, so a failed video that was copied is simply tried again).
        """
        src = source if source is not None else self.sources.get(path)
        self.write(partial(self.writer.add_failure, path, start, end, stage, error, src))
        self.summary.failed += path not in self._failed  # videos, each once (``_count_stored`` has the causes)
        self._failed[path] = stage
        self.summary.failures.append((path, error))

    def deliver(self, item: VideoItem, outcome: Outcome, changed: Callable[[Source | None], str] | None = None) -> None:
        """Write and count what an engine made of ``item``: its failure, else the decoder's warnings (first:
        the shard that takes the clips keeps them) and its clips, under the fingerprint of the file they
        were made from. Embeddings that are not finite fail it, and so does a file that is not the one
        decoded any more (``changed_since``): its clips are never stored under another file's fingerprint.
        ``changed``: ``changed_since`` of ``item`` as the caller has it (``ExtractionJobs.deliver`` asks once
        for all its stores: one ``HEAD`` per decoded URL, not one per store)."""
        error, stage = outcome.error, outcome.stage
        if not error and not all(np.isfinite(emb).all() for _, _, emb, _ in outcome.clips):
            error, stage = f"{item.shown}: the encoder returned NaN or Inf embeddings; not stored", "encode"
        if not error and outcome.clips:
            error, stage = (changed or partial(changed_since, item.location))(outcome.source), "changed"
        self.summary.skipped += outcome.skipped
        if error:  # recorded with the decoded file's fingerprint: a re-run sees the path changed and redoes it
            source = outcome.source
            if source is None and self.sources.get(item.path) is None:  # e.g. a decode timeout: stats only
                source = quick_fingerprint(item.location)
            self.add_failure(item.path, item.start, item.end, stage, error, source)
            return
        for message in outcome.warnings if outcome.clips else ():  # each names the file and how
            self.write(partial(self.writer.add_warning, item.path, message))
            self.summary.warnings.append((item.path, message))
        source = outcome.source
        for start, end, emb, stamps in outcome.clips:
            self.write(partial(self.writer.add, item.path, start, end, item.label, item.split, emb, stamps, source))
            self.summary.done += 1
            self.summary.frames += len(stamps)
