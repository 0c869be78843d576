"""Per-writer progress (job shards).

Each extraction run writes shard files named ``PREFIX-<time>-<tag>-<id>.h5`` (PREFIX ``shard`` or, for job
shard i of n, ``shardIIIIofNNNN``) and keeps a small record of its last run in ``runs/PREFIX.json``
(state running/finished/stopped, clips assigned/done/skipped/failed, host, pid, time, and ``after_shard``:
see ``resumed_records``). A run killed with SIGKILL stays "running" in its record until it is re-run. The
next run replaces the record, so the decoder's warnings are kept in the shards with their clips
(``warnings/*``, see ``layout``), not only here.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StoreError
from .index import failure_counts
from .layout import RUNS_DIR, atomic_write_text, disk_error, read_warnings
from .lock import scope_name

if TYPE_CHECKING:
    from .reader import FeatureStore

__all__ = ["writer_prefix", "writer_of", "write_run_record", "writer_progress", "resumed_records"]


def writer_prefix(job_shard: tuple[int, int] | None) -> str:
    """File-name prefix of the shards (and name of the run record) of a writer: ``shard``, or for job
    shard i of n ``shard`` + its label (``shard0003of0008``, see ``lock.scope_name``)."""
    return "shard" if job_shard is None else "shard" + scope_name(job_shard)


def writer_of(shard_name: str) -> str:
    """The writer prefix of a shard file name (``shard0001of0004-<time>-<tag>-<id>.h5`` -> ``shard0001of0004``)."""
    m = re.match(r"(.*?)-\d{20}-", shard_name)
    return m.group(1) if m else shard_name.split("-", 1)[0]


def write_run_record(store: FeatureStore, writer: str, doc: dict[str, Any]) -> None:
    """Atomically replace the last-run record of ``writer`` (a shard-file prefix)."""
    d = store.path / RUNS_DIR
    try:
        d.mkdir(exist_ok=True)
    except OSError as exc:
        raise disk_error(d, "create the run records folder", exc) from None
    atomic_write_text(d / f"{writer}.json", json.dumps(doc, indent=1, sort_keys=True))


def _last_run(store: FeatureStore, writer: str) -> dict[str, Any] | None:
    """The last-run record of ``writer`` (None when there is none, or it cannot be read)."""
    try:
        doc = json.loads((store.path / RUNS_DIR / f"{writer}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def resumed_records(store: FeatureStore, writer: str) -> tuple[str, set[str]]:
    """A resume continues the interrupted run: (this run's ``after_shard``, the video paths it takes as
    recorded). Call it holding ``writer``'s lock, before this run's record replaces the last one.

    Every run records ``after_shard``: the newest shard file of ``writer`` when it began ("" for none). When
    ``writer``'s last run did not finish (its record says "running": it was killed, since we now hold its
    lock; or "stopped"), this run is a resume: it keeps that run's ``after_shard`` (so a resume that is
    interrupted too is continued alike, back to the last finished run), and returns the paths of the clips
    and open failures in ``writer``'s shard files named after it, which only the interrupted runs wrote:
    their fingerprints were taken by those runs' decoders, and ``plan_tasks`` sends no request to check
    their URLs again (except a video found replaced while it was decoded: a failure of stage "changed").
    After a finished run (or with no record) nothing is taken as recorded: every stored URL is checked (one
    ``HEAD``) and a replaced object extracted again. Shard names sort by finish time (``layout.shard_name``)
    and every shard finished before the run began sorts at or before its ``after_shard``, so no older
    record is trusted (a clock set back only makes a resume check more).
    """
    last = _last_run(store, writer)
    mine = sorted(p.name for p in store.shard_paths() if writer_of(p.name) == writer)
    if last is None or last.get("state") not in ("running", "stopped") or not isinstance(last.get("after_shard"), str):
        return (mine[-1] if mine else ""), set()
    after = last["after_shard"]
    index = store.index()
    trusted = {name for name in mine if name > after}
    paths = {f["path"] for f in index.failures if f.get("shard") in trusted}
    ends = np.cumsum([len(meta.kept) for meta in index.shards])
    for meta, end in zip(index.shards, ends.tolist()):
        if meta.path.name in trusted:
            paths.update(index.video[end - len(meta.kept) : end])
    return after, paths - {f["path"] for f in index.failures if f["stage"] == "changed"}


def writer_progress(store: FeatureStore) -> dict[str, dict[str, Any]]:
    """Per writer prefix: clips in its finished shard files, its videos with open failures, its shard files, the
    warnings its live shards keep (``warnings``: every run's, oldest first, one per line, repeats once),
    and its last run record (``last_run``, when one exists) — what ``vidprobe info`` shows per shard."""
    import h5py

    out: dict[str, dict[str, Any]] = {}

    def row(writer: str) -> dict[str, Any]:
        return out.setdefault(writer, {"clips": 0, "failures": 0, "shard_files": 0, "warnings": []})

    superseded = {p.name for p in store.index().superseded}  # their warnings live on in the compacted shard
    said_by: dict[str, dict[str, None]] = {}  # writer -> its warnings, in order, each once
    for shard in store.shard_paths():
        try:
            with h5py.File(shard, "r") as f:
                clips = len(f["clips/video"])
                said = [message for _, message in read_warnings(f)]
        except (OSError, KeyError) as exc:
            raise StoreError(f"{shard}: unreadable shard ({exc}); run `vidprobe verify {store.path}`") from None
        r = row(writer_of(shard.name))
        r["clips"] += clips
        r["shard_files"] += 1
        if shard.name not in superseded:
            said_by.setdefault(writer_of(shard.name), {}).update(dict.fromkeys(said))
    for writer, said_once in said_by.items():
        row(writer)["warnings"] = list(said_once)
    failed: dict[str, list[tuple[str, str]]] = {}  # writer -> (video, stage) of its open failures
    for failure in store.failures():
        if failure.get("shard"):
            failed.setdefault(writer_of(failure["shard"]), []).append((failure["path"], failure["stage"]))
    for writer, pairs in failed.items():
        row(writer)["failures"] = sum(failure_counts(pairs).values())
    runs = store.path / RUNS_DIR
    for record in sorted(runs.glob("*.json")) if runs.is_dir() else []:
        try:
            row(record.stem)["last_run"] = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return dict(sorted(out.items()))
