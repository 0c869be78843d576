"""``vidprobe verify`` and ``vidprobe compact``: check a store shard by shard, and merge its shards.

Verify trusts nothing the reader assumes (what it checks: docs/store-format.md; a shifted offset breaks
both the frame counts and the timestamp order). Compaction runs verify first and refuses a store that
fails it, so it never launders damage into a clean-looking shard.

Compaction writes all live clips into one new shard by the same tmp → fsync → rename path as extraction;
that rename is the commit point — the new shard names the shards it replaces (``compacted_from``), so
readers ignore them even if a crash leaves them behind, and the next compaction deletes them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError, VidprobeError
from . import cache
from .clip_tables import read_source
from .index import StoreIndex, build_index, kept_frames
from .layout import (
    CACHE_DIR,
    CHECKSUMS_ATTR,
    FAILURE_COLUMNS,
    SHARD_DIR,
    SOURCE_COLUMNS,
    Digest,
    clip_key,
    describe_differences,
    digest,
    fsync_dir,
    identity,
    read_warnings,
    shard_name,
)
from .lock import live_holders
from .reader import FeatureStore, open_store
from .sources import current_sources, is_replaced
from .writer import write_shard

PoolResolver = Callable[[str], Callable[[np.ndarray], np.ndarray]]  # a pooling's name -> the pooling
_BLOCK_ROWS = 1 << 16  # rows per read when scanning embeddings for NaN/Inf


@dataclass
class VerifyReport:
    path: str
    shards: int = 0
    clips: int = 0
    frames: int = 0
    failures: int = 0
    problems: list[str] = field(default_factory=list)  # anything here makes `verify` fail
    notes: list[str] = field(default_factory=list)  # harmless leftovers worth knowing about
    compactable: list[str] = field(default_factory=list)  # of the problems, those `compact` resolves (duplicates)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.__dict__}


def frames_per_clip_problem(sampling: dict[str, Any], lengths: np.ndarray) -> str | None:
    """What is wrong with these clips' frame counts under the sampling identity (None: nothing)."""
    strategy = sampling.get("strategy")
    if strategy in ("uniform", "multiclip", "sliding") and "num_frames" in sampling:
        bad = lengths != int(sampling["num_frames"])
        if np.any(bad):
            i = int(np.argmax(bad))
            return (
                f"{int(bad.sum())} clips do not have num_frames={sampling['num_frames']} frames "
                f"({strategy} sampling), e.g. clip {i} has {int(lengths[i])}"
            )
    elif sampling.get("max_frames"):
        bad = lengths > int(sampling["max_frames"])
        if np.any(bad):
            return f"{int(bad.sum())} clips have more than max_frames={sampling['max_frames']} frames"
    return None


def _dataset_digest(ds, like: str | None = None) -> str:
    """``ds``'s checksum with the algorithm of ``like`` (the stored checksum it is compared with)."""
    if ds.ndim and ds.shape[0] > _BLOCK_ROWS:
        d = Digest.like(like)
        for lo in range(0, ds.shape[0], _BLOCK_ROWS):
            d.update(ds[lo : lo + _BLOCK_ROWS])
        return d.hexdigest()
    return digest(ds[()], like=like)


def _bad_checksums(f, name: str, report: VerifyReport) -> list[str]:
    """Datasets whose values no longer match the shard's checksums; notes a shard that has none."""
    sums = json.loads(f.attrs.get(CHECKSUMS_ATTR, "{}"))
    if not sums:
        report.notes.append(f"{name}: carries no checksums (written before vidprobe stored them); values unchecked")
        return []
    bad = [ds for ds, expected in sorted(sums.items()) if ds not in f or _dataset_digest(f[ds], expected) != expected]

    def visit(path: str, obj) -> None:
        if hasattr(obj, "shape") and path not in sums:
            bad.append(path)  # a dataset added after writing

    f.visititems(visit)
    return bad


def _check_offsets(name: str, off: np.ndarray, ts, sampling: dict[str, Any], report: VerifyReport) -> None:
    """Consistent offsets against the frames: no clip empty, as many frames per clip as ``sampling`` allows,
    each clip's timestamps in order (a shifted offset moves frames between clips)."""
    n, frames = len(off) - 1, int(off[-1])
    if n and np.any(np.diff(off) == 0):
        report.problems.append(f"{name}: {int(np.sum(np.diff(off) == 0))} clips own no frames")
    elif n:
        wrong = frames_per_clip_problem(sampling, np.diff(off))
        if wrong:
            report.problems.append(f"{name}: clips/offset: {wrong}")
        elif ts.shape == (frames,) and frames and np.all(np.isfinite(t := ts[()])):
            step = np.diff(t)
            step[off[1:-1] - 1] = 0  # the step from one clip's last frame to the next clip's first
            if np.any(step < 0):
                clip = int(np.searchsorted(off, int(np.argmax(step < 0)), side="right") - 1)
                report.problems.append(
                    f"{name}: clips/offset does not match frames/timestamp: clip {clip} "
                    "has timestamps out of order (its frames belong to another clip?)"
                )


def _check_layout(f, name: str, store: FeatureStore, report: VerifyReport) -> tuple[int, int, int]:
    """Shapes, dtype, offsets and column lengths of an open shard; returns its clips, failures and frames."""
    emb, ts = f["frames/embedding"], f["frames/timestamp"]
    c, fl = f["clips"], f["failures"]
    off = c["offset"][()]
    n, frames, dtype = len(c["video"]), emb.shape[0], identity(store.provenance, "dtype")
    if emb.ndim != 2 or emb.shape[1] != store.dim:
        report.problems.append(f"{name}: frames/embedding has shape {emb.shape}, expected (F, {store.dim})")
    if str(emb.dtype) != dtype:
        report.problems.append(f"{name}: embeddings stored as {emb.dtype}, the store is {dtype}")
    if ts.shape != (frames,):
        report.problems.append(f"{name}: frames/timestamp has {ts.shape[0]} rows for {frames} embeddings")
    if len(off) != n + 1 or off[0] != 0 or off[-1] != frames or np.any(np.diff(off) < 0):
        report.problems.append(
            f"{name}: clips/offset inconsistent (len {len(off)} for {n} "
            f"clips, first {off[:1]}, last {off[-1:]}, {frames} frames)"
        )
    else:
        _check_offsets(name, off, ts, identity(store.provenance, "sampling") or {}, report)
    for col in ("start", "end", "label", "split", *(col for col in SOURCE_COLUMNS if col in c)):
        if len(c[col]) != n:
            report.problems.append(f"{name}: clips/{col} has {len(c[col])} rows for {n} clips")
    m = len(fl["path"])
    optional = [col for col in SOURCE_COLUMNS if col in fl]
    if any(len(fl[col]) != m for col in ("start", "end", "stage", "error", "time", *optional)):
        report.problems.append(f"{name}: failures columns differ in length")
    return n, m, frames


def _check_finite(f, name: str, frames: int, report: VerifyReport) -> None:
    emb, ts = f["frames/embedding"], f["frames/timestamp"]
    for lo in range(0, frames, _BLOCK_ROWS):
        if not np.all(np.isfinite(emb[lo : lo + _BLOCK_ROWS])):
            report.problems.append(
                f"{name}: NaN or Inf in frames/embedding rows {lo}..{min(frames, lo + _BLOCK_ROWS) - 1}"
            )
            break
    if frames and not np.all(np.isfinite(ts[()])):
        report.problems.append(f"{name}: NaN or Inf in frames/timestamp")


def _add_checksum_problems(name: str, bad_sums: list[str], found: int, report: VerifyReport) -> None:
    """One line per damaged dataset: a problem from ``found`` on already naming it is extended."""
    what = "does not match its checksum (changed after it was written)"
    for ds in bad_sums:
        hit = next((i for i in range(found, len(report.problems)) if ds in report.problems[i]), None)
        if hit is None:
            report.problems.append(f"{name}: {ds} {what}")
        else:
            report.problems[hit] += f"; {ds} {what}"


def _check_shard(
    shard: Path, store: FeatureStore, report: VerifyReport
) -> tuple[list[tuple], np.ndarray, tuple[list[str], np.ndarray]] | None:
    """Problems of one shard go into ``report``; returns its clip keys, their video file fingerprints, and
    its failures' (paths, fingerprints) (None if unreadable)."""
    import h5py

    name = shard.name
    try:
        with h5py.File(shard, "r") as f:
            prov = json.loads(f.attrs["provenance"])
            diffs = describe_differences(store.provenance, prov, names=("store.json", "the shard"))
            if diffs:
                report.problems.append(f"{name}: written with different settings: " + "; ".join(diffs))
            bad_sums = _bad_checksums(f, name, report)
            found = len(report.problems)
            n, m, frames = _check_layout(f, name, store, report)
            sources = read_source(f, "clips", n, strict=False)
            failed = (f["failures/path"].asstr()[()].tolist() if m else [], read_source(f, "failures", m, strict=False))
            _check_finite(f, name, frames, report)
            c = f["clips"]
            videos = c["video"].asstr()[()].tolist() if n else []
            keys = [clip_key(v, s, e) for v, s, e in zip(videos, c["start"][()], c["end"][()])]
            report.failures += m
            _add_checksum_problems(name, bad_sums, found, report)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        report.problems.append(f"{name}: cannot be read ({exc})")
        return None
    dup = [k for k, cnt in Counter(keys).items() if cnt > 1]
    if dup:
        report.problems.append(f"{name}: {len(dup)} clips appear more than once, e.g. {dup[0][0]}")
    report.shards += 1
    report.clips += len(keys)
    report.frames += frames
    return keys, sources, failed


def verify_store(path: str | Path, pools: PoolResolver | None = None) -> VerifyReport:
    """Check every finished shard of the store at ``path``; the report's ``problems`` say what is wrong.
    ``pools``: pooling by name (``pipeline.probe.pooling.get_pool``; the store never imports the probe stage),
    to recompute what a pooled cache holds; without it those rows are not checked (a note says so)."""
    store = open_store(path)
    report = VerifyReport(str(store.path))
    shards = store.shard_paths()
    replaced: set[str] = set()
    import h5py

    for shard in shards:  # which shards a compaction replaced (they are ignored, not checked)
        try:
            with h5py.File(shard, "r") as f:
                replaced.update(json.loads(f.attrs.get("compacted_from", "[]")))
        except (OSError, ValueError):
            pass  # reported below
    checked: list[tuple[str, list[tuple], np.ndarray]] = []
    records: list[tuple[list[str], np.ndarray]] = []
    for shard in shards:
        if shard.name in replaced:
            report.notes.append(
                f"{shard.name}: replaced by a compacted shard (a crash "
                "interrupted compaction); `vidprobe compact` removes it"
            )
            continue
        got = _check_shard(shard, store, report)
        if got is not None:
            keys, sources, (fail_paths, fail_sources) = got
            checked.append((shard.name, keys, sources))
            # failures first, as the reader orders them (a clip's fingerprint stands over a failure's)
            records.append((fail_paths + [k[0] for k in keys], np.concatenate([fail_sources, sources])))
    current, changed = current_sources(records)
    owner: dict[tuple, str] = {}
    across = stale = 0
    example = ""
    for name, keys, sources in checked:
        for key, source in zip(keys, sources):
            if is_replaced(key[0], source, current, changed):
                stale += 1  # of a video file since replaced and extracted again: left out by readers
                continue
            if key in owner and owner[key] != name:
                across += 1
                example = example or f"{key[0]} in {owner[key]} and {name}"
            owner.setdefault(key, name)
    if across:
        report.problems.append(
            f"{across} clips are stored in more than one shard (readers keep the first), e.g. {example}"
        )
        report.compactable.append(report.problems[-1])
    if stale:
        report.notes.append(
            f"{stale} clips are of video files that changed and were extracted again (readers leave them out; "
            "`vidprobe compact` drops them)"
        )
    tmp = store.unfinished_paths()
    if tmp:
        report.notes.append(
            f"{len(tmp)} unfinished *.h5.tmp shard(s) from a running or killed "
            "job (ignored by readers; the next job or compact removes them)"
        )
    for holder in live_holders(store.path) if store.path.is_dir() else []:
        report.notes.append(f"a writer is running: {holder.describe()}")
    if not shards:
        report.notes.append("no finished shards yet")
    if store.path.is_dir():
        _check_caches(store, report, pools)
    return report


def _check_caches(store: FeatureStore, report: VerifyReport, pools: PoolResolver | None) -> None:
    """Each cache file must be intact, and a current one (``cache.is_current``, the rule ``info`` uses too) must
    match what the shards hold now: the clip index is compared with one built from the shards, a pooled cache's
    rows with the shards' frames pooled again (``pools``). A pooled cache whose rows differ is removed: a read
    would otherwise serve it, its key and checksum being right."""
    files = cache.cache_files(store.path)
    if not files:
        return
    key = cache.index_key(store.provenance, cache.shard_stamps(store.path))
    try:
        fresh = build_index(store.path, store.provenance, True)
    except (StoreError, OSError):
        fresh = None  # the shards' own problems are reported above
    dtype = identity(store.provenance, "dtype")
    for p in files:
        where = f"{CACHE_DIR}/{p.name}"
        kind, stored, problem = cache.check_cache(p)
        if problem is None and stored is not None and stored.get("version") != cache.CACHE_VERSION:
            problem = f"cache version {stored.get('version')!r}, this vidprobe writes {cache.CACHE_VERSION}"
        if problem is None and kind is not None and stored is not None:
            if fresh is None:
                continue  # nothing to compare with: the shards' problems are reported
            if cache.is_current(kind, stored, key, fresh, dtype):
                if kind == "index":
                    problem = _index_problem(store, key, fresh)
                else:
                    problem = _pooled_problem(store, p, key, pools, report)
            elif (
                kind == "pooled" and stored.get("shards") == key["shards"] and stored.get("identity") == key["identity"]
            ):
                problem = "built from shards whose checksums differ from the shards on disk"
            else:
                report.notes.append(f"{where}: stale (the shards changed since); the next read rebuilds it")
                continue
        if problem is not None:
            report.problems.append(
                f"{where}: damaged cache ({problem}); it is never used as it is: delete it or run "
                f"`vidprobe compact {store.path}` (the next read rebuilds it)"
            )
            report.compactable.append(report.problems[-1])


def _index_problem(store: FeatureStore, key: dict[str, Any], fresh: StoreIndex) -> str | None:
    held = cache.load_index(store.path, key)
    if (
        held is None
        or (held.video, held.label, held.split) != (fresh.video, fresh.label, fresh.split)
        or not np.array_equal(held.offset, fresh.offset)
        or [m.path.name for m in held.shards] != [m.path.name for m in fresh.shards]
    ):
        return "its clip table differs from the shards'"
    return None


def _pooled_problem(
    store: FeatureStore, path: Path, key: dict[str, Any], pools: PoolResolver | None, report: VerifyReport
) -> str | None:
    """Pool the shards' frames again and compare with the cached rows; rows that differ remove the file.
    ``key``: the store's index key when the cache was judged current (a writer adding a shard meanwhile makes
    the cache stale, not wrong)."""
    import h5py

    with h5py.File(path, "r") as f:
        name, held = json.loads(f.attrs["key"]).get("pool"), f["pooled"][()]
    try:
        pool = pools(str(name)) if pools is not None else None
    except VidprobeError:
        pool = None
    where = f"{CACHE_DIR}/{path.name}"
    if pool is None:
        report.notes.append(f"{where}: rows not recomputed (pooling {name!r} not available)")
        return None
    again = open_store(store.path)
    again.use_cache = False
    try:
        fresh = again.pooled(pool)
    except StoreError:
        return None  # a shard that cannot be read: reported above
    if cache.index_key(store.provenance, cache.shard_stamps(store.path)) != key:
        report.notes.append(f"{where}: stale (the shards changed while verifying); the next read rebuilds it")
        return None
    if cache.rows_agree(held, fresh):
        return None
    try:
        path.unlink()
        gone = "removed"
    except OSError as exc:
        gone = f"could not be removed ({exc.strerror})"
    return f"its rows differ from the shards' frames pooled again; {gone}"


def _refuse_damage(store: FeatureStore) -> VerifyReport:
    """``verify``'s report, if all its problems are ones compaction resolves; StoreError otherwise."""
    # Duplicates across shards are what compaction is for (the first finished is kept, as readers do); any other
    # problem is damage.
    report = verify_store(store.path)
    damage = [p for p in report.problems if p not in report.compactable]
    if damage:
        raise StoreError(
            f"{store.path}: refusing to compact a store that fails verify ({len(damage)} problem(s), "
            f"first: {damage[0]}); run `vidprobe verify {store.path}`, remove or re-extract the "
            "damaged shards, then compact"
        )
    return report


def _write_merged(store: FeatureStore, idx: StoreIndex, before: list[Path], compression: str, level: int) -> Path:
    """All live clips, current failures and the live shards' warnings as one new shard naming ``before``."""
    import h5py

    def fill(emb_ds, ts_ds) -> None:
        for _, e, t, sel, n, pos in kept_frames(idx.shards):
            for lo in range(0, n, _BLOCK_ROWS):  # bounded memory however big the store
                hi = min(n, lo + _BLOCK_ROWS)
                rows = slice(sel.start + lo, sel.start + hi) if isinstance(sel, slice) else sel[lo:hi]
                emb_ds[pos + lo : pos + hi] = e[rows]
                ts_ds[pos + lo : pos + hi] = t[rows]

    said: dict[tuple[str, str], None] = {}  # the live shards' warnings, in order, each once
    for meta in idx.shards:
        with h5py.File(meta.path, "r") as f:
            said.update(dict.fromkeys(read_warnings(f)))
    clips = {"offset": idx.offset, "video": idx.video, "start": idx.start, "end": idx.end, "label": idx.label}
    return write_shard(
        store.path / SHARD_DIR / shard_name("compact"),
        store.provenance,
        {**clips, "split": idx.split, **dict(zip(SOURCE_COLUMNS, idx.source.T))},
        {col: [f[col] for f in idx.failures] for col in (*FAILURE_COLUMNS, *SOURCE_COLUMNS)},
        int(idx.offset[-1]),
        fill,
        compression=compression,
        compression_level=level,
        attrs={"compacted_from": json.dumps([p.name for p in before])},
        warnings=list(said),
    )


def compact_store(path: str | Path, compression: str | None = None, compression_level: int = 4) -> dict[str, Any]:
    """Merge all live shards into one (under the whole-store writer lock); returns what changed.

    ``compression=None`` keeps the compression most live shards use. Duplicates, clips and failures of a
    video file since replaced, and failures already fixed are dropped; current failures are kept, and so
    are the live shards' warnings. A store that fails ``verify`` otherwise is refused.
    """
    store = open_store(path)
    with store.writer_lock(purpose="compact"):  # under the lock: nothing changes between the check and the merge
        report = _refuse_damage(store)
        idx = store.index()
        before = store.shard_paths()
        size_before = sum(p.stat().st_size for p in before)
        if compression is None:
            compression = Counter(m.compression for m in idx.shards).most_common(1)[0][0] if idx.shards else "none"
        summary = {
            "path": str(store.path),
            "changed": False,
            "shards_before": len(before),
            "shards_after": len(before),
            "size_before": size_before,
            "size_after": size_before,
            "clips": len(idx.video),
            "duplicates_dropped": 0,
            "replaced_dropped": 0,
            "compression": compression,
        }
        if len(before) <= 1 and {m.compression for m in idx.shards} <= {compression}:
            if any(CACHE_DIR in p for p in report.compactable):
                cache.remove_caches(store.path)  # a damaged cache: dropped, the next read rebuilds it
            return summary
        merged = _write_merged(store, idx, before, compression, compression_level)
        for old in before:  # after the commit above these are dead; a crash here leaves them ignored
            old.unlink(missing_ok=True)
        cache.remove_caches(store.path)  # keyed by the old shards: stale now (the next read rebuilds them)
        fsync_dir(merged.parent)
        store.invalidate()
        changed = {"changed": True, "shards_after": 1, "size_after": merged.stat().st_size, "shard": str(merged)}
        return {**summary, **changed, "duplicates_dropped": idx.duplicates, "replaced_dropped": idx.replaced}
