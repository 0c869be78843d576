"""Which clips a job shard owns, and which shard this process is.

A clip belongs to shard ``shard_of(key, n)``: the first 8 bytes of SHA-1 over its key
``path \\0 start \\0 end`` (start/end as Python float reprs, -1.0 for an open end), big-endian, mod n.
Unlike ``hash()`` (salted per process) this is the same on every machine, Python version and run, so
shard i of n always means the same clips; and because it depends on the clip alone (not its position in
the manifest), clips added to a manifest later never move the ones already assigned. A WebDataset
sample (``00000.tar/00000003``) is hashed by its shard's path alone: one job shard reads a tar shard whole.

Where the shard comes from, first match wins (``resolve_shard``; the list for users is in docs/scale-out.md):
``--shard-id``/``--num-shards``, ``RANK``/``WORLD_SIZE``, a Slurm array (split further by its ``srun`` tasks),
``SLURM_PROCID``/``SLURM_NTASKS``, else one process does the whole manifest.
A count of 1 from any source means "not sharded".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..data.keys import Key
from ..data.webdataset import shard_of_sample
from ..errors import ConfigError
from ..store.runs import writer_prefix


def shard_of(key: Key, num_shards: int) -> int:
    """Shard index in ``[0, num_shards)`` that owns the clip ``key`` = (path, start, end)."""
    if num_shards < 1:
        raise ConfigError(f"num_shards={num_shards}: must be >= 1")
    path, start, end = key
    shard = shard_of_sample(path)  # a WebDataset shard is one unit of work: its samples stay together
    text = shard if shard is not None else f"{path}\0{float(start)!r}\0{float(end)!r}"
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


@dataclass(frozen=True)
class JobShard:
    """Shard ``index`` of ``count`` of one extraction job; ``source`` says where that came from."""

    index: int
    count: int
    source: str = "--shard-id/--num-shards"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"number of shards {self.count} (from {self.source}): must be >= 1")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard id {self.index} (from {self.source}): must be in 0..{self.count - 1} for {self.count} shards"
            )

    def owns(self, key: Key) -> bool:
        return shard_of(key, self.count) == self.index

    @property
    def prefix(self) -> str:
        """Name prefix of the store shard files this job shard writes: they say who wrote them."""
        return writer_prefix(self.as_tuple())

    def as_tuple(self) -> tuple[int, int]:
        return self.index, self.count

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _env_int(env: Mapping[str, str], name: str) -> int:
    raw = env[name]
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r}: expected an integer") from None


def _from_env(env: Mapping[str, str]) -> tuple[int, int, str] | None:
    def has(*names: str) -> bool:
        return all(env.get(n, "").strip() for n in names)

    if has("RANK", "WORLD_SIZE"):
        return _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE"), "RANK/WORLD_SIZE"
    if has("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        task, count = _env_int(env, "SLURM_ARRAY_TASK_ID"), _env_int(env, "SLURM_ARRAY_TASK_COUNT")
        low = _env_int(env, "SLURM_ARRAY_TASK_MIN") if has("SLURM_ARRAY_TASK_MIN") else 0
        step = _env_int(env, "SLURM_ARRAY_TASK_STEP") if has("SLURM_ARRAY_TASK_STEP") else 1
        index, rest = divmod(task - low, max(step, 1))
        if rest or not 0 <= index < count:
            raise ConfigError(
                f"SLURM_ARRAY_TASK_ID={task} is not on an evenly stepped array range (min {low}, step "
                f"{step}, count {count}); use --array=0-(N-1) or pass --shard-id/--num-shards explicitly"
            )
        source = "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"
        if has("SLURM_PROCID", "SLURM_NTASKS") and _env_int(env, "SLURM_NTASKS") > 1:
            ntasks = _env_int(env, "SLURM_NTASKS")
            return (
                index * ntasks + _env_int(env, "SLURM_PROCID"),
                count * ntasks,
                source + " x SLURM_PROCID/SLURM_NTASKS",
            )
        return index, count, source
    if has("SLURM_PROCID", "SLURM_NTASKS"):
        return _env_int(env, "SLURM_PROCID"), _env_int(env, "SLURM_NTASKS"), "SLURM_PROCID/SLURM_NTASKS"
    return None


def resolve_shard(
    shard_id: int | None = None, num_shards: int | None = None, env: Mapping[str, str] | None = None
) -> JobShard | None:
    """The job shard this process extracts (None = the whole manifest); precedence in the module doc."""
    if (shard_id is None) != (num_shards is None):
        raise ConfigError(
            "--shard-id and --num-shards go together: give both (e.g. --shard-id 0 --num-shards 4) or neither"
        )
    if shard_id is not None and num_shards is not None:
        found: tuple[int, int, str] | None = (int(shard_id), int(num_shards), "--shard-id/--num-shards")
    else:
        found = _from_env(os.environ if env is None else env)
    if found is None:
        return None
    shard = JobShard(*found)
    return None if shard.count == 1 else shard
