"""Ray Data engine: CPU decode tasks stream frames to encoder actors (one per GPU), the driver writes.

    units (from the plan)  ──►  map_batches(decode)       CPU tasks, our PyAV ``load_views``, 1 unit per call,
                                                          one row out per clip
                           ──►  map_batches(EncodeClips)  actors: one per GPU (num_gpus=1), else CPU
                           ──►  driver: iter_batches ──► ShardWriter ──► the same store layout

A unit of work is one clip, except for WebDataset samples: a shard's planned samples are cut into units of
consecutive samples (``_units``), each read in order through one open shard
(``data.webdataset.shards_kept_open``), so a remote shard is opened once per unit.

``extract(..., engine="ray")`` (``pipeline.extract.entry``) runs it; usage, failures (stage ``worker``
where a block's worker died) and several encoders (one actor pool per model, chained, over the stores'
merged plan): docs/scale-out.md#ray-data-engine. Ray's streaming executor runs the stages concurrently with
back-pressure, so decoding on every CPU of every node keeps the encoders busy, and frames never pile up
past the object store's budget.

The driver writes the store (not writer actors) because what reaches it is small — a clip's (T, D)
float32 embeddings are ~1/30 of its decoded frames — so one writer keeps up with many GPUs; because then
only the driver needs the store path; and because the store's one-writer-per-job rule, crash safety and
resume work unchanged: the same ``ShardWriter``, writer prefix and delivery (``ExtractionJobs.deliver``) as
the local engine, so a shard can be re-run with either engine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, SamplingConfig
from ..data.manifest import VideoItem
from ..data.remote import RemoteOptions
from ..data.webdataset import shard_of_sample, shards_kept_open
from ..encoders import Preprocess
from ..encoders.group import group_specs
from ..errors import ConfigError, VidprobeError
from ..store.sources import UNKNOWN, Source
from .clips import DecodeFailed, load_views
from .job import Outcome, build_provenance
from .local import resolve_runtime
from .targets import ExtractionJobs, UnionTask, decode_views

# Quiet, offline Ray: no usage reporting (it would try the internet), de-duplicated worker logs.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "1"}
ROWS_PER_BLOCK = 8  # clips per Ray block (a shard's unit's, when more): a worker that dies loses one block
SHARD_UNIT_MAX = 256  # most samples of a WebDataset shard in one decode unit (``_units``)
DECODE_RETRIES = 2  # retries of a decode task whose worker died (node lost) before its block is skipped


def _import_ray():
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'vidprobe[ray]' (installs ray[data])") from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` or start a local Ray (no dashboard); True if this call started it.
    Workers get this very ``pipeline`` package (``py_modules``), so the driver's code runs everywhere
    even where vidprobe is not installed; its dependencies (torch, av, ...) must be on the nodes.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    package = str(Path(__file__).resolve().parents[1])
    runtime_env = {"py_modules": [package], "env_vars": {k: os.environ[k] for k in RAY_ENV}}
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "runtime_env": runtime_env}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


def _encoder_device(cfg: Config, gpus: int) -> bool:
    """True if encoder actors should take a GPU each; refuses device settings Ray cannot honour."""
    device = cfg.extract.device
    if device.startswith("cuda:"):
        raise ConfigError(
            f"extract.device={device}: with --engine ray each encoder "
            "actor gets its GPU from Ray; use device=auto or cuda"
        )
    if device == "cuda" and gpus == 0:
        raise ConfigError("extract.device=cuda but the Ray cluster has no GPUs; use device=auto or cpu")
    return gpus > 0 and device != "cpu"


def _provenances(cfg: Config, use_gpu: bool) -> list[dict[str, Any]]:
    """Each encoder's store provenance, built where the encoders run (their device and precision)."""
    from ..encoders import create_encoders

    encoders = create_encoders(cfg.encoders, device="cuda" if use_gpu else "cpu", precision=cfg.extract.precision)
    return [build_provenance(e, cfg) for e in encoders]


def _objects(values: list) -> np.ndarray:
    """A 1-D object array of per-clip arrays (Ray stores ragged rows as variable-shaped tensors)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _decode_units(
    batch: dict[str, np.ndarray],
    sampling: SamplingConfig,
    views: list[Any],
    view_of: list[int],
    threads: int,
    remote: RemoteOptions | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Decode stage (a CPU task): each unit's clips in order (a WebDataset shard's through one open shard),
    one output row per clip: its sampled frames once per view its stores need, or the error that stopped
    them (then every store of the row records it), with the fingerprint of the file the decoder opened."""
    with shards_kept_open():
        for unit in batch["clips"]:
            for clip in json.loads(str(unit)):
                yield _decode_clip(clip, sampling, views, view_of, threads, remote)


def _decode_clip(
    clip: dict[str, Any],
    sampling: SamplingConfig,
    views: list[Any],
    view_of: list[int],
    threads: int,
    remote: RemoteOptions | None,
) -> dict[str, np.ndarray]:
    """One clip of a unit, decoded into a one-row batch of the decode stage's columns."""
    keys = ("path", "root", "start", "end", "follow_links", "url")
    item = VideoItem(**{k: clip[k] for k in keys})
    need = tuple(sorted({view_of[t] for t in _targets(clip["targets"], len(view_of))}))
    error = ""
    warned: list[str] = []
    source: Source | None = None
    try:
        got, ts, warned, source = load_views(item, sampling, views, need, threads, remote)
    except Exception as exc:  # a decoder bug on one odd file must not end the job
        error = str(exc) if isinstance(exc, VidprobeError) else f"{item.shown}: {type(exc).__name__}: {exc}"
        got, ts = [None] * len(views), np.zeros(0, np.float64)
        source = exc.source if isinstance(exc, DecodeFailed) else None  # the file that failed, where it was opened
    out = {
        "index": np.array([clip["index"]], np.int64),
        "path": np.array([clip["path"]], dtype=object),
        "targets": np.array([clip["targets"]], np.int64),
        "timestamps": _objects([np.asarray(ts, np.float64)]),
        "warnings": np.array(["\n".join(warned)], dtype=object),  # the decoder's warnings, one per line
        "source": np.array([source or UNKNOWN], np.int64).reshape(-1, 3),  # fingerprint of the file decoded
    }
    for v, f in enumerate(got):
        size = views[v].size
        out[f"frames_{v}"] = _objects([f if f is not None else np.zeros((0, size, size, 3), np.uint8)])
    for t in range(len(view_of)):  # per store: why its clip failed ("" = not failed)
        out[f"error_{t}"] = np.array([error], dtype=object)
        out[f"stage_{t}"] = np.array(["decode" if error else ""], dtype=object)
    return out


def _units(todo: list[UnionTask], cpus: int = 1) -> list[str]:
    """The plan as units of work, each a JSON list of its clips (what a decode task needs, not the store,
    and which stores lack the clip): a WebDataset shard's samples in plan order, in chunks, else one clip."""
    # a chunk: about 4 units per CPU over the whole plan (few big shards still fill every CPU), at least a
    # block's rows (each chunk opens its shard: one metadata request per remote shard and chunk), at most
    # SHARD_UNIT_MAX (what a dead worker decodes again, and what one task emits ahead of the encoders)
    chunk = min(SHARD_UNIT_MAX, max(ROWS_PER_BLOCK, math.ceil(len(todo) / (4 * max(1, cpus)))))
    units: dict[Any, list[dict[str, Any]]] = {}
    for i, u in enumerate(todo):
        clip = {
            "index": i,
            "path": u.item.path,
            "root": u.item.root,
            "follow_links": u.item.follow_links,
            "url": u.item.url,  # a remote video's URL, secrets included: read by the decode task, never written
            "start": u.item.start,
            "end": u.item.end,
            "targets": sum(1 << t for t in u.targets),
        }
        units.setdefault(shard_of_sample(u.item.path) or i, []).append(clip)
    return [json.dumps(clips[k : k + chunk]) for clips in units.values() for k in range(0, len(clips), chunk)]


def _targets(mask: int, count: int) -> list[int]:
    return [t for t in range(count) if mask >> t & 1]


class _EncodeClips:
    """Encoder stage (an actor holding one frozen model): frames of a batch of clips -> embeddings for
    each store that model feeds (``members``: store indices, one forward for all of them).
    Frames of all clips in the call are packed into encoder batches of ``extract.batch_size``; if a
    packed batch fails, each clip is encoded alone so only the clips that really fail are recorded.
    Columns this stage does not read pass through, except frames no later stage needs (``keep``).
    """

    def __init__(self, cfg: Config, use_gpu: bool, members: list[int], view: int, keep: list[str]):
        from ..encoders import create_encoders, group_outputs

        encoders = create_encoders(
            [cfg.encoders[t] for t in members], device="cuda" if use_gpu else "cpu", precision=cfg.extract.precision
        )
        groups, where = group_outputs(encoders)
        (self.group,) = groups  # the members share one model (pipeline.encoders.group)
        self.members, self.output = members, [j for _, j in where]
        self.view, self.keep = view, keep
        self.batch_size = resolve_runtime(cfg.extract, "cuda" if use_gpu else "cpu").batch_size

    def _encode(self, frames: np.ndarray) -> list[np.ndarray]:
        parts = [self.group.encode(frames[i : i + self.batch_size]) for i in range(0, len(frames), self.batch_size)]
        if not parts:
            return [np.zeros((0, o.dim), np.float32) for o in self.group.outputs]
        return [np.concatenate(p) for p in zip(*parts)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["index"])
        mine = self.members
        out: dict[str, np.ndarray] = {k: v for k, v in batch.items() if not k.startswith("frames_") or k in self.keep}
        errors = {t: list(batch[f"error_{t}"]) for t in mine}
        stages = {t: list(batch[f"stage_{t}"]) for t in mine}
        embs: dict[int, list[np.ndarray]] = {
            t: [np.zeros((0, self.group.outputs[j].dim), np.float32)] * n for t, j in zip(mine, self.output)
        }
        frames = [np.asarray(f) for f in batch[f"frames_{self.view}"]]
        ok = [
            i
            for i in range(n)
            if any(int(batch["targets"][i]) >> t & 1 for t in mine) and not errors[mine[0]][i]  # decode errors: all
        ]

        def put(i: int, encoded: list[np.ndarray]) -> None:
            for t, j in zip(mine, self.output):
                embs[t][i] = encoded[j]

        try:
            packed = self._encode(np.concatenate([frames[i] for i in ok])) if ok else self._encode(frames[0][:0])
            bounds = np.cumsum([0] + [len(frames[i]) for i in ok])
            for k, i in enumerate(ok):
                put(i, [p[bounds[k] : bounds[k + 1]] for p in packed])
        except Exception:
            for i in ok:
                try:
                    put(i, self._encode(frames[i]))
                except Exception as exc:
                    for t in mine:
                        errors[t][i], stages[t][i] = (
                            f"{batch['path'][i]}: encoding failed ({type(exc).__name__}: {exc})",
                            "encode",
                        )
        for t in mine:
            out[f"embedding_{t}"] = _objects(embs[t])
            out[f"error_{t}"] = np.array(errors[t], dtype=object)
            out[f"stage_{t}"] = np.array(stages[t], dtype=object)
        return out


def _actor_class(cfg: Config, use_gpu: bool, members: list[int], view: int, keep: list[str]) -> type:
    """The encoder actor with its settings bound in the class (not passed as constructor arguments,
    which Ray would keep in the object store for actor restarts)."""

    class EncodeClips(_EncodeClips):
        def __init__(self) -> None:
            super().__init__(cfg, use_gpu, members, view, keep)

    return EncodeClips


def extract_on_ray(
    cfg: Config,
    jobs: Callable[[list[dict[str, Any]]], ExtractionJobs],
    *,
    address: str | None = None,
    num_encoders: int | None = None,
    num_cpus: int | None = None,
) -> ExtractionJobs:
    """The Ray engine of ``extract``: one decode stage feeding one encoder actor pool per model.
    ``num_encoders`` actors per model (default: one per GPU in the cluster, or one on CPU); each actor
    takes 1/K of a CPU (and of a GPU) for K models, so the decode tasks keep the CPUs they had with one."""
    if num_encoders is not None and num_encoders < 1:
        raise ConfigError(f"--ray-encoders={num_encoders}: must be >= 1")
    if cfg.sampling.windowed:  # the pipeline maps one row to one clip; a windowed video makes several
        raise ConfigError(
            f"sampling.strategy={cfg.sampling.strategy!r} makes several clips per video; use the local engine for it"
        )
    members = group_specs(cfg.encoders)  # a bad or repeated spec fails here, before a cluster starts
    ray = _import_ray()
    owns_ray = init_ray(address, num_cpus)
    try:
        use_gpu = _encoder_device(cfg, int(ray.cluster_resources().get("GPU", 0)))
        actor_resources = {"num_cpus": 1, "num_gpus": 1 if use_gpu else 0}
        try:  # built where the encoders run, so it records their device and precision
            provenances = ray.get(ray.remote(**actor_resources)(_provenances).remote(cfg, use_gpu))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, VidprobeError):  # e.g. weights that cannot be loaded: one line, not a traceback
                raise exc.cause from None
            raise
        with jobs(provenances) as running:  # the same stores, locks, plans, run records and writers as local
            pres = [Preprocess.from_dict(job.store.provenance["preprocess"]) for job in running.jobs]
            views, view_of = decode_views(pres)
            todo = running.plan(view_of)
            if todo:  # K models: each actor takes 1/K of a CPU (and of a GPU), as one model's actor takes one
                share = {k: v / len(members) for k, v in actor_resources.items()}
                encoders = num_encoders or (int(ray.cluster_resources().get("GPU", 0)) if use_gpu else 1)
                ds = _dataset(ray, cfg, todo, members, views, view_of, use_gpu, encoders, share)
                _deliver(ds, running, todo)
        return running
    finally:
        if owns_ray:
            ray.shutdown()


def _dataset(
    ray,
    cfg: Config,
    todo: list[UnionTask],
    members: list[list[int]],
    views: list[Any],
    view_of: list[int],
    use_gpu: bool,
    encoders: int,
    actor_resources: dict[str, Any],
):
    """The Ray Data pipeline over the merged plan: a decode stage, then one encoder actor pool per model."""
    import ray.data

    frames_per_clip = cfg.sampling.num_frames if cfg.sampling.strategy == "uniform" else (cfg.sampling.max_frames or 8)
    batch_size = resolve_runtime(cfg.extract, "cuda" if use_gpu else "cpu").batch_size
    clips_per_call = max(1, round(batch_size / frames_per_clip))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    units = _units(todo, cpus)
    blocks = min(len(units), max(4 * cpus, math.ceil(len(todo) / ROWS_PER_BLOCK)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_retries has no named parameter yet; Ray warns about **ray_remote_args
        ds = ray.data.from_items([{"clips": u} for u in units], override_num_blocks=blocks)
        threads = resolve_runtime(cfg.extract, "cpu").decode_threads or 1  # one FFmpeg thread per decode task
        ds = ds.map_batches(
            partial(
                _decode_units,
                sampling=cfg.sampling,
                views=views,
                view_of=view_of,
                threads=threads,
                remote=RemoteOptions.of(cfg.extract),
            ),
            batch_size=1,
            num_cpus=1,
            max_retries=DECODE_RETRIES,
        )
        for g, group in enumerate(members):  # one actor pool per model, chained; frames pass on while needed
            later = {view_of[t] for rest in members[g + 1 :] for t in rest}
            ds = ds.map_batches(
                _actor_class(cfg, use_gpu, group, view_of[group[0]], [f"frames_{v}" for v in sorted(later)]),
                batch_size=clips_per_call,
                compute=ray.data.ActorPoolStrategy(size=encoders),
                **actor_resources,
            )
    ctx = ds.context
    ctx.max_errored_blocks = -1  # a block whose worker died is skipped; its clips are recorded in _deliver
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-execution INFO lines and notices; errors still show
    return ds


def _row_outcome(batch: dict[str, np.ndarray], j: int, t: int, item: VideoItem) -> Outcome:
    """What store ``t`` gets of row ``j``: its error, else the clip and the decoder's warnings; with the
    fingerprint of the file decoded, which ``deliver`` checks against the path before storing."""
    size, mtime, crc = (int(x) for x in batch["source"][j])
    source = None if (size, mtime, crc) == UNKNOWN else (size, mtime, crc)
    error = str(batch[f"error_{t}"][j])
    if error:
        return Outcome(error=error, stage=str(batch[f"stage_{t}"][j]), source=source)
    emb = np.asarray(batch[f"embedding_{t}"][j], np.float32)
    stamps = np.asarray(batch["timestamps"][j], np.float64)
    warned = list(filter(None, str(batch["warnings"][j]).split("\n")))
    return Outcome([(item.start, item.end, emb, stamps)], warned, source=source)


def _deliver(ds, jobs: ExtractionJobs, todo: list[UnionTask]) -> None:
    """Hand what comes out of the pipeline to the stores as it comes; a clip whose block was lost fails."""
    seen: set[int] = set()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        for j, index in enumerate(batch["index"]):
            if int(index) in seen:  # never store a clip twice, whatever a retry re-delivers
                continue
            seen.add(int(index))
            unit = todo[int(index)]
            jobs.deliver(unit, [_row_outcome(batch, j, t, unit.item) for t in unit.targets])
    for i, unit in enumerate(todo):
        if i not in seen:
            error = (
                f"{unit.item.shown}: no result from the Ray pipeline (its "
                "worker died; see the Ray logs); retry with --retry-failed"
            )
            jobs.deliver(unit, [Outcome(error=error, stage="worker")] * len(unit.targets))
