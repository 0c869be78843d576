"""The extraction engine: decode in worker processes while the main process encodes, then store.

Workers (a torch ``DataLoader``) turn each clip into uint8 frames already resized and cropped to the
encoder's input; the main process packs frames from many clips into full batches, so the encoder never
waits on one short clip, and hands each finished clip to the shard writer. Per-clip failures become
failure records and the job goes on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .config import Config, SamplingConfig
from .decode import DecodedClip, VideoInfo, decode_at
from .errors import VidprobeError
from .manifest import Manifest, Problem, VideoItem
from .sampling import clip_window, sample_timestamps
from .sharding import JobShard
from .store import FeatureStore, ShardWriter, create_or_open, write_run_record


def sampling_identity(cfg: SamplingConfig) -> dict[str, Any]:
    """Only the sampling settings that change which frames are embedded (store provenance)."""
    if cfg.strategy == "uniform":
        return {"strategy": "uniform", "num_frames": cfg.num_frames}
    return {"strategy": cfg.strategy, "fps": cfg.fps, "max_frames": cfg.max_frames}


def load_clip(item: VideoItem, sampling: SamplingConfig, preprocess, threads: int = 0) -> DecodedClip:
    """Decode one clip's sampled frames, resized in the decoder and centre-cropped to the model input."""

    def times(info: VideoInfo) -> np.ndarray:
        start, end = clip_window(info.duration, item.start, item.end)
        return sample_timestamps(sampling, start, end)

    return decode_at(
        item.abspath,
        times,
        size=preprocess.frame_size,
        crop=preprocess.center_crop,
        interpolation=preprocess.interpolation,
        threads=threads,
    )


class _ClipDataset:
    """Map-style dataset for ``DataLoader``: item i → decoded frames or the error that stopped them."""

    def __init__(self, items: list[VideoItem], sampling: SamplingConfig, preprocess, threads: int):
        self.items, self.sampling, self.preprocess, self.threads = items, sampling, preprocess, threads

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            clip = load_clip(self.items[i], self.sampling, self.preprocess, self.threads)
            return {"index": i, "frames": clip.frames, "timestamps": clip.timestamps, "error": ""}
        except VidprobeError as exc:
            return {"index": i, "frames": None, "timestamps": None, "error": str(exc)}
        except Exception as exc:  # a decoder bug on one odd file must not end the job
            return {"index": i, "frames": None, "timestamps": None, "error": f"{self.items[i].abspath}: {type(exc).__name__}: {exc}"}


def _collate(sample: dict[str, Any]) -> dict[str, Any]:
    import torch

    if sample["frames"] is not None:
        sample["frames"] = torch.from_numpy(sample["frames"])
    return sample


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)  # decoding threads are FFmpeg's; torch in a worker only copies arrays


def iter_decoded(items: list[VideoItem], sampling: SamplingConfig, preprocess, num_workers: int, threads: int = 0, pin_memory: bool = False) -> Iterator[dict[str, Any]]:
    """Decoded clips in manifest order, produced by ``num_workers`` processes (0 = in-process)."""
    from torch.utils.data import DataLoader

    dataset = _ClipDataset(items, sampling, preprocess, threads)
    if num_workers == 0:
        for i in range(len(dataset)):
            yield _collate(dataset[i])
        return
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
        prefetch_factor=4,
        worker_init_fn=_worker_init,
    )
    yield from loader


@dataclass
class ExtractSummary:
    store: str
    total: int = 0  # clips in the manifest (in this job shard's part of it, when sharded)
    done: int = 0  # clips extracted by this run
    skipped: int = 0  # clips already in the store (or already recorded as failed)
    skipped_failed: int = 0  # of those, clips recorded as failed by an earlier run (see --retry-failed)
    failed: int = 0  # clips that failed in this run (incl. manifest problems)
    frames: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, message) of this run
    shard: str | None = None  # "i/n" when this run was job shard i of n
    engine: str = "local"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_provenance(encoder, cfg: Config) -> dict[str, Any]:
    import h5py
    import torch

    from . import __version__

    return {
        "encoder": encoder.spec,
        "weights_id": encoder.weights_id,
        "dim": int(encoder.dim),
        "preprocess": encoder.preprocess_cfg.to_dict(),
        "sampling": sampling_identity(cfg.sampling),
        "dtype": cfg.store.dtype,
        "encoder_info": encoder.provenance(),
        "versions": {"vidprobe": __version__, "torch": torch.__version__, "h5py": h5py.__version__, "numpy": np.__version__},
    }


class _Batcher:
    """Packs frames of consecutive clips into encoder batches and returns clips as they complete."""

    def __init__(self, encoder, batch_size: int):
        self.encoder, self.batch_size = encoder, batch_size
        self.clips: list[dict[str, Any]] = []  # clips with frames still to encode, in order
        self.queued = 0  # frames waiting

    def add(self, clip: dict[str, Any]) -> list[dict[str, Any]]:
        clip["emb"] = []
        clip["next"] = 0  # first frame not yet handed to the encoder
        self.clips.append(clip)
        self.queued += len(clip["frames"])
        finished: list[dict[str, Any]] = []
        while self.queued >= self.batch_size:
            finished += self._encode(self.batch_size)
        return finished

    def drain(self) -> list[dict[str, Any]]:
        finished: list[dict[str, Any]] = []
        while self.queued:
            finished += self._encode(min(self.queued, self.batch_size))
        return finished

    def _encode(self, n: int) -> list[dict[str, Any]]:
        import torch

        parts, owners = [], []
        for clip in self.clips:
            if n == 0:
                break
            take = min(n, len(clip["frames"]) - clip["next"])
            if take:
                parts.append(clip["frames"][clip["next"] : clip["next"] + take])
                owners.append((clip, take))
                clip["next"] += take
                n -= take
        batch = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.queued -= len(batch)
        try:
            emb = self.encoder.encode(batch)
        except Exception as exc:  # one bad batch fails its clips, not the job
            for clip, _ in owners:
                clip["error"] = f"{clip['path']}: encoding failed ({type(exc).__name__}: {exc})"
            emb = None
        pos = 0
        for clip, take in owners:
            if emb is not None:
                clip["emb"].append(emb[pos : pos + take])
            pos += take
        finished = []
        while self.clips and self.clips[0]["next"] == len(self.clips[0]["frames"]):
            finished.append(self.clips.pop(0))
        return finished


def writer_prefix(shard: JobShard | None) -> str:
    """File-name prefix of the store shards a run writes: ``shard`` or ``shardIIIIofNNNN``."""
    return shard.prefix if shard is not None else "shard"


def plan_extraction(
    manifest: Manifest, store: FeatureStore, summary: ExtractSummary, *, shard: JobShard | None = None, retry_failed: bool = False
) -> tuple[list[VideoItem], list[Problem]]:
    """Clips this run must extract, and manifest problems it must record (counts go into ``summary``).

    Only what ``shard`` owns (everything when None); clips already stored — or already recorded as
    failed, unless ``retry_failed`` (which then does only those) — are counted as skipped.
    """
    stored = store.done_keys(include_failed=False)
    failed_before = store.done_keys(include_failed=True) - stored
    skip = stored if retry_failed else stored | failed_before
    todo: list[VideoItem] = []
    seen = set()
    for item in manifest.items:
        if shard is not None and not shard.owns(item.key):
            continue
        summary.total += 1
        if item.key in skip or item.key in seen or (retry_failed and item.key not in failed_before):
            summary.skipped += 1
            summary.skipped_failed += item.key in failed_before and not retry_failed
            continue
        seen.add(item.key)
        todo.append(item)
    known = {f["path"] for f in store.failures() if f["stage"] == "manifest"}
    problems = [p for p in manifest.problems if p.path not in known and (shard is None or shard.owns((p.path, -1.0, -1.0)))]
    return todo, problems


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

    With ``shard`` (see ``pipeline.sharding``) only the clips that job shard owns are extracted, into
    shard files named after it, so any number of shard processes can share one store.
    """
    from tqdm.auto import tqdm

    from .encoders import create_encoder

    started = time.perf_counter()
    if encoder is None:
        encoder = create_encoder(cfg.encoder, device=cfg.extract.device, precision=cfg.extract.precision)
    store: FeatureStore = create_or_open(store_path, build_provenance(encoder, cfg))
    summary = ExtractSummary(store=str(store.path), shard=str(shard) if shard else None)
    is_cuda = str(getattr(encoder, "device", "cpu")).startswith("cuda")
    pre = encoder.preprocess_cfg
    prefix = writer_prefix(shard)
    # The writer lock comes before reading what is done: a second job on the same work is refused here;
    # other shards of the same job may hold their own shard locks at the same time.
    with store.writer_lock(job_shard=shard.as_tuple() if shard else None) as lock:
        todo, problems = plan_extraction(manifest, store, summary, shard=shard, retry_failed=retry_failed)
        with recorded_run(store, prefix, summary), ShardWriter(
            store, shard_size=cfg.extract.shard_size, prefix=prefix, compression=cfg.store.compression,
            compression_level=cfg.store.compression_level, tag=lock.tag,
        ) as writer:
            for problem in problems:
                writer.add_failure(problem.path, None, None, "manifest", problem.error)
                summary.failed += 1
                summary.failures.append((problem.path, problem.error))
            batcher = _Batcher(encoder, cfg.extract.batch_size)
            bar = tqdm(total=len(todo), unit="clip", desc="extract", disable=not progress, dynamic_ncols=True)

            def finish(clips: list[dict[str, Any]]) -> None:
                for clip in clips:
                    item = todo[clip["index"]]
                    if clip.get("error"):
                        writer.add_failure(item.path, item.start, item.end, "encode", clip["error"])
                        summary.failed += 1
                        summary.failures.append((item.path, clip["error"]))
                    else:
                        emb = np.concatenate(clip["emb"])
                        writer.add(item.path, item.start, item.end, item.label, item.split, emb, clip["timestamps"])
                        summary.done += 1
                        summary.frames += len(emb)
                    bar.update(1)
                if clips:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix(frames_s=f"{summary.frames / elapsed:.1f}", failed=summary.failed, refresh=False)

            for sample in iter_decoded(todo, cfg.sampling, pre, cfg.extract.num_workers, cfg.extract.decode_threads, pin_memory=is_cuda):
                item = todo[sample["index"]]
                if sample["error"]:
                    writer.add_failure(item.path, item.start, item.end, "decode", sample["error"])
                    summary.failed += 1
                    summary.failures.append((item.path, sample["error"]))
                    bar.update(1)
                    continue
                sample["path"] = item.path
                finish(batcher.add(sample))
            finish(batcher.drain())
            bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def embed_video(encoder, path: str | Path, sampling: SamplingConfig, start: float | None = None, end: float | None = None) -> DecodedClip:
    """Frame embeddings of one video (or window) in-process: what ``predict`` uses for new videos."""
    p = Path(path).absolute()
    item = VideoItem(p.name, str(p.parent), start=start, end=end)
    clip = load_clip(item, sampling, encoder.preprocess_cfg)
    return DecodedClip(encoder.encode(clip.frames), clip.timestamps)
