"""The one extraction entry, ``extract``: one encoder or several (the group of one is no special case),
into one store each, over one decode, with the local engine (``pipeline.extract.local``) or the Ray
engine (``pipeline.extract.ray_engine``; Ray is imported only then).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..config import Config
from ..data.manifest import Manifest
from ..data.sampling import sampling_identity
from ..encoders.base import FrameEncoder
from ..errors import ConfigError
from ..store import check_appendable
from ..store.lock import WriterLock
from .job import ExtractionJob, ExtractSummary
from .sharding import JobShard
from .targets import ExtractionJobs, store_paths

__all__ = ["extract"]


def extract(
    source: Manifest,
    output: str | Path,
    settings: Config,
    *,
    engine: Literal["local", "ray"] = "local",
    encoders: Sequence[FrameEncoder] | None = None,
    shard: JobShard | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    address: str | None = None,
    num_encoders: int | None = None,
    num_cpus: int | None = None,
) -> list[ExtractSummary]:
    """Extract every clip of ``source`` that a store still lacks; one summary per store, in spec order.
    The stores: ``output`` itself for one encoder, ``output/<name>`` for several (``store_paths``).
    ``encoders``: built ones (e.g. from ``create_encoders``; local engine), instead of building
    ``settings.encoder``'s. With ``shard`` (``pipeline.extract.sharding``) only the clips that job shard
    owns, into shard files named after it, under its writer lock, so shard processes share a store.
    Ray engine: the cluster at ``address`` (else a local one of ``num_cpus``), ``num_encoders`` encoder
    actors per model (default: one per GPU, or one on CPU).
    """
    started = time.perf_counter()
    if engine not in ("local", "ray"):
        raise ConfigError(f"engine={engine!r}: use 'local' or 'ray'")
    if engine == "ray" and encoders is not None:
        raise ConfigError("encoders: the Ray engine builds its encoders on the cluster, from settings.encoder")
    if engine == "local" and (address, num_encoders, num_cpus) != (None, None, None):
        raise ConfigError("address, num_encoders and num_cpus are for engine='ray'")
    paths = store_paths(output, settings.encoders if encoders is None else [e.spec for e in encoders])
    if encoders is None:
        _refuse_early(settings, paths, shard)

    def jobs(provenances: Sequence[dict[str, Any]]) -> ExtractionJobs:
        made = [
            ExtractionJob(
                source, path, settings, p, engine=engine, shard=shard, retry_failed=retry_failed, started=started
            )
            for path, p in zip(paths, provenances, strict=True)
        ]
        return ExtractionJobs(source, made, progress=progress)

    if engine == "ray":
        from .ray_engine import extract_on_ray

        done = extract_on_ray(settings, jobs, address=address, num_encoders=num_encoders, num_cpus=num_cpus)
    else:
        from .local import extract_locally

        done = extract_locally(settings, paths, encoders, jobs)
    return [job.summary for job in done.jobs]


def _refuse_early(settings: Config, paths: list[Path], shard: JobShard | None) -> None:
    """What the jobs would refuse, refused before the models are built (torch costs seconds): a store made
    with other settings, or one another job is writing to."""
    from ..encoders import canonical_spec

    for path, spec in zip(paths, settings.encoders):
        identity = {"encoder": canonical_spec(spec), "sampling": sampling_identity(settings.sampling)}
        check_appendable(path, {**identity, "dtype": settings.store.dtype})
        WriterLock(path, shard.as_tuple() if shard else None).check_free()
