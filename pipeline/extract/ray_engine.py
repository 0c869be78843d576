"""Ray Data engine: CPU decode tasks stream frames to encoder actors (one per GPU), the driver writes.

    clips (from the plan)  ──►  map_batches(decode)       CPU tasks, our PyAV ``load_clip``, 1 clip per call
                           ──►  map_batches(EncodeClips)  actors: one per GPU (num_gpus=1), else CPU
                           ──►  driver: iter_batches ──► ShardWriter ──► the same store layout

Ray's streaming executor runs the stages concurrently with back-pressure, so decoding on every CPU of
every node keeps the encoders busy, and frames never pile up past the object store's budget.

The driver writes the store (not writer actors) because what reaches it is small — a clip's (T, D)
float32 embeddings are ~1/30 of its decoded frames — so one writer keeps up with many GPUs; because
then only the driver needs the store path (workers need only the videos); and because the store's
one-writer-per-job rule, crash safety (tmp → rename shards) and resume work unchanged: it is the same
``ShardWriter`` the local engine uses, under the same writer prefix, so a shard can be re-run with
either engine. Per-clip decode/encode errors travel as rows and become failure records; a block whose
worker died (e.g. a segfault in a decoder) after retries is skipped by Ray and its clips are recorded
as failed with stage ``worker`` — ``--retry-failed`` tries them again.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, SamplingConfig
from ..data.manifest import Manifest, VideoItem
from ..encoders import parse_spec
from ..errors import ConfigError, VidprobeError
from .job import ExtractionJob, ExtractSummary, build_provenance
from .local import load_clip, resolve_runtime
from .sharding import JobShard

# Quiet, offline Ray: no usage reporting (it would try the internet), de-duplicated worker logs.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "1"}
ROWS_PER_BLOCK = 8  # clips per Ray block: a worker that dies loses the results of at most one block
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


def _provenance(cfg: Config, use_gpu: bool) -> dict[str, Any]:
    from ..encoders import create_encoder

    encoder = create_encoder(cfg.encoder, device="cuda" if use_gpu else "cpu", precision=cfg.extract.precision)
    return build_provenance(encoder, cfg)


def _objects(values: list) -> np.ndarray:
    """A 1-D object array of per-clip arrays (Ray stores ragged rows as variable-shaped tensors)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _decode_rows(
    batch: dict[str, np.ndarray], sampling: SamplingConfig, preprocess: Any, threads: int
) -> dict[str, np.ndarray]:
    """Decode stage (a CPU task): each row's sampled frames, or the error that stopped them."""
    frames, stamps, errors, warnings = [], [], [], []
    size = preprocess.size
    for path, root, start, end in zip(batch["path"], batch["root"], batch["start"], batch["end"]):
        item = VideoItem(
            str(path),
            str(root),
            start=None if np.isnan(start) else float(start),
            end=None if np.isnan(end) else float(end),
        )
        try:
            clip = load_clip(item, sampling, preprocess, threads)
            frames.append(clip.frames)
            stamps.append(np.asarray(clip.timestamps, np.float64))
            errors.append("")
            warnings.append("\n".join(clip.warnings))
        except Exception as exc:  # a decoder bug on one odd file must not end the job
            msg = str(exc) if isinstance(exc, VidprobeError) else f"{item.abspath}: {type(exc).__name__}: {exc}"
            frames.append(np.zeros((0, size, size, 3), np.uint8))
            stamps.append(np.zeros(0, np.float64))
            errors.append(msg)
            warnings.append("")
    return {
        "index": batch["index"],
        "path": batch["path"],
        "frames": _objects(frames),
        "timestamps": _objects(stamps),
        "error": np.array(errors, dtype=object),
        "stage": np.array(["decode" if e else "" for e in errors], dtype=object),
        "warnings": np.array(warnings, dtype=object),  # the decoder's warnings, one per line
    }


class _EncodeClips:
    """Encoder stage (an actor holding the frozen model): frames of a batch of clips -> embeddings.

    Frames of all clips in the call are packed into encoder batches of ``extract.batch_size``; if a
    packed batch fails, each clip is encoded alone so only the clips that really fail are recorded.
    """

    def __init__(self, cfg: Config, use_gpu: bool):
        from ..encoders import create_encoder

        self.encoder = create_encoder(cfg.encoder, device="cuda" if use_gpu else "cpu", precision=cfg.extract.precision)
        self.batch_size = resolve_runtime(cfg.extract, "cuda" if use_gpu else "cpu").batch_size

    def _encode(self, frames: np.ndarray) -> np.ndarray:
        parts = [self.encoder.encode(frames[i : i + self.batch_size]) for i in range(0, len(frames), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.encoder.dim), np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["index"])
        errors, stages = list(batch["error"]), list(batch["stage"])
        embs: list[np.ndarray] = [np.zeros((0, self.encoder.dim), np.float32)] * n
        ok = [i for i in range(n) if not errors[i]]
        frames = [np.asarray(batch["frames"][i]) for i in range(n)]
        try:
            packed = (
                self._encode(np.concatenate([frames[i] for i in ok]))
                if ok
                else np.zeros((0, self.encoder.dim), np.float32)
            )
            bounds = np.cumsum([0] + [len(frames[i]) for i in ok])
            for j, i in enumerate(ok):
                embs[i] = packed[bounds[j] : bounds[j + 1]]
        except Exception:
            for i in ok:
                try:
                    embs[i] = self._encode(frames[i])
                except Exception as exc:
                    errors[i], stages[i] = (
                        f"{batch['path'][i]}: encoding failed ({type(exc).__name__}: {exc})",
                        "encode",
                    )
        return {
            "index": batch["index"],
            "embedding": _objects(embs),
            "timestamps": batch["timestamps"],
            "error": np.array(errors, dtype=object),
            "stage": np.array(stages, dtype=object),
            "warnings": batch["warnings"],
        }


def _actor_class(cfg: Config, use_gpu: bool) -> type:
    """The encoder actor with its settings bound in the class (not passed as constructor arguments,
    which Ray would keep in the object store for actor restarts)."""

    class EncodeClips(_EncodeClips):
        def __init__(self) -> None:
            super().__init__(cfg, use_gpu)

    return EncodeClips


def extract_ray(
    manifest: Manifest,
    store_path: str | Path,
    cfg: Config,
    *,
    address: str | None = None,
    num_encoders: int | None = None,
    shard: JobShard | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    num_cpus: int | None = None,
) -> ExtractSummary:
    """``extract`` on a Ray cluster (``address``, or a local one of ``num_cpus``): same plan, same store.

    ``num_encoders`` encoder actors (default: one per GPU in the cluster, or one on CPU).
    """
    started = time.perf_counter()
    if num_encoders is not None and num_encoders < 1:
        raise ConfigError(f"--ray-encoders={num_encoders}: must be >= 1")
    if cfg.sampling.windowed:  # the pipeline maps one row to one clip; a windowed video makes several
        raise ConfigError(
            f"sampling.strategy={cfg.sampling.strategy!r} makes several clips per video; use the local engine for it"
        )
    parse_spec(cfg.encoder)  # a bad spec fails here, before a cluster starts
    ray = _import_ray()
    owns_ray = init_ray(address, num_cpus)
    try:
        use_gpu = _encoder_device(cfg, int(ray.cluster_resources().get("GPU", 0)))
        actor_resources = {"num_cpus": 1, "num_gpus": 1 if use_gpu else 0}
        try:  # built where the encoders run, so it records their device and precision
            provenance = ray.get(ray.remote(**actor_resources)(_provenance).remote(cfg, use_gpu))
        except ray.exceptions.RayTaskError as exc:
            if isinstance(
                exc.cause, VidprobeError
            ):  # e.g. weights that cannot be loaded: one line, not a remote traceback
                raise exc.cause from None
            raise
        job = ExtractionJob(
            manifest, store_path, cfg, provenance, engine="ray", shard=shard, retry_failed=retry_failed, started=started
        )
        with job:  # the same store, lock, plan, run record and writer as the local engine
            if job.todo:
                _run_pipeline(ray, job, use_gpu, num_encoders, actor_resources, progress)
        return job.summary
    finally:
        if owns_ray:
            ray.shutdown()


def _run_pipeline(
    ray, job: ExtractionJob, use_gpu: bool, num_encoders: int | None, actor_resources: dict[str, int], progress: bool
) -> None:
    """Build the Ray Data pipeline over the job's planned items; hand what comes out to the job, as it comes."""
    import ray.data
    from tqdm.auto import tqdm

    from ..encoders import Preprocess

    cfg, summary = job.cfg, job.summary
    todo = [item for item, _ in job.todo]
    pre = Preprocess.from_dict(job.store.provenance["preprocess"])
    frames_per_clip = cfg.sampling.num_frames if cfg.sampling.strategy == "uniform" else (cfg.sampling.max_frames or 8)
    clips_per_call = max(
        1, round(resolve_runtime(cfg.extract, "cuda" if use_gpu else "cpu").batch_size / frames_per_clip)
    )
    encoders = num_encoders or (int(ray.cluster_resources().get("GPU", 0)) if use_gpu else 1)
    rows = [
        {
            "index": i,
            "path": it.path,
            "root": it.root,
            "start": math.nan if it.start is None else float(it.start),
            "end": math.nan if it.end is None else float(it.end),
        }
        for i, it in enumerate(todo)
    ]
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    blocks = min(len(rows), max(4 * cpus, math.ceil(len(rows) / ROWS_PER_BLOCK)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_retries has no named parameter yet; Ray warns about **ray_remote_args
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        # one FFmpeg thread per decode task unless set: Ray already runs one task per core
        threads = resolve_runtime(cfg.extract, "cpu").decode_threads or 1  # one FFmpeg thread per decode task
        ds = ds.map_batches(
            partial(_decode_rows, sampling=cfg.sampling, preprocess=pre, threads=threads),
            batch_size=1,
            num_cpus=1,
            max_retries=DECODE_RETRIES,
        )
        ds = ds.map_batches(
            _actor_class(cfg, use_gpu),
            batch_size=clips_per_call,
            compute=ray.data.ActorPoolStrategy(size=encoders),
            **actor_resources,
        )
    ctx = ds.context
    ctx.max_errored_blocks = -1  # a block whose worker died is skipped; its clips are recorded below
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-execution INFO lines and notices; errors still show
    seen: set[int] = set()
    bar = tqdm(total=len(todo), unit="clip", desc="extract (ray)", disable=not progress, dynamic_ncols=True)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        for j, index in enumerate(batch["index"]):
            if int(index) in seen:  # never store a clip twice, whatever a retry re-delivers
                continue
            item = todo[int(index)]
            seen.add(int(index))
            error = str(batch["error"][j])
            if error:
                job.add_failure(item.path, item.start, item.end, str(batch["stage"][j]), error)
            else:
                emb = np.asarray(batch["embedding"][j], np.float32)
                job.add_clip(item, item.start, item.end, emb, np.asarray(batch["timestamps"][j], np.float64))
                for warning in filter(None, str(batch["warnings"][j]).split("\n")):
                    job.add_warning(item.path, warning)
            bar.update(1)
        elapsed = max(time.perf_counter() - job.started, 1e-9)
        bar.set_postfix(frames_s=f"{summary.frames / elapsed:.1f}", failed=summary.failed, refresh=False)
    bar.close()
    for i, item in enumerate(todo):
        if i not in seen:
            error = (
                f"{item.abspath}: no result from the Ray pipeline (its "
                "worker died; see the Ray logs); retry with --retry-failed"
            )
            job.add_failure(item.path, item.start, item.end, "worker", error)
