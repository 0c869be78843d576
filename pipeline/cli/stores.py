"""``vidprobe info``, ``verify``, ``compact`` and ``export``: the commands that read or tidy a feature store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..config import STORE_COMPRESSIONS
from ..errors import ConfigError
from .common import (
    EXIT_ERROR,
    EXIT_OK,
    add_json,
    add_store,
    check_order,
    command,
    failed_videos,
    print_json,
)

MAX_WARNINGS_SHOWN = 5  # decoder warnings `info` lists in text mode (--json: all)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def add_info(sub: Any) -> None:
    p = command(sub, cmd_info, "describe a feature store")
    add_store(p)
    add_json(p, help="one JSON document (includes every failure)")
    p.add_argument("--max-failures", type=int, default=20, help="failures to list in text mode (default 20)")


def cmd_info(args: argparse.Namespace) -> int:
    """Counts (clips, frames, labels, splits), encoder, sampling, dtype, compression, size, running writers, leftovers
    of killed jobs, and the recorded failures of a store."""
    check_order(args, {"store": "store"}, "vidprobe info STORE")
    from ..store import open_store, writer_progress
    from ..store.layout import identity

    store = open_store(args.store)
    info = {**store.info(), "precision": identity(store.provenance, "precision")}
    failures = store.failures()
    writers = writer_progress(store)
    # What the decoder worked around, every run's: kept in the shards with the clips (the last run record
    # adds those of a store written before shards kept them).
    said = list(
        dict.fromkeys(
            m
            for w in writers.values()
            for m in [*w.get("warnings", []), *(w.get("last_run") or {}).get("warnings", [])]
        )
    )
    if args.json:
        print_json({**info, "warnings": said, "failure_list": failures, "per_writer": writers})
        return EXIT_OK
    for key, value in _contents(info) + _state(info, said):
        print(f"{key:12s} {value}")
    _print_writers(writers)
    for message in said[:MAX_WARNINGS_SHOWN]:
        print(f"  warning {message}")
    if len(said) > MAX_WARNINGS_SHOWN:
        print(f"  ... {len(said) - MAX_WARNINGS_SHOWN} more warning(s) (use --json for all)")
    for f in failures[: args.max_failures]:
        print(f"  failed [{f['stage']}] {f['error'] if f['path'] in f['error'] else f['path'] + ': ' + f['error']}")
    if len(failures) > args.max_failures:
        print(f"  ... {len(failures) - args.max_failures} more (use --json for all)")
    return EXIT_OK


def _contents(info: dict[str, Any]) -> list[tuple[str, str]]:
    """What the store holds and how it was made."""
    fpc = info["frames_per_clip"]
    span = "" if not fpc else str(fpc["min"]) if fpc["min"] == fpc["max"] else f"{fpc['min']}..{fpc['max']}"
    per_clip = f", {span} per clip" if span else ""
    counts = list(info["label_counts"].items())
    labels = ", ".join(f"{k} {v}" for k, v in counts[:8]) + (" ..." if len(counts) > 8 else "")
    return [
        (
            "store",
            f"{info['path']} ({info['shards']} shard{'' if info['shards'] == 1 else 's'}, {_size(info['size_bytes'])}, "
            f"{info['dtype']}, compression {'/'.join(info['compression']) or 'none'})",
        ),
        ("clips", f"{info['clips']} ({info['frames']} frames{per_clip})"),
        ("labels", f"{info['labels']}: {labels}" if info["labels"] else "0"),
        ("splits", " · ".join(f"{k} {v}" for k, v in info["splits"].items()) or "-"),
        ("encoder", f"{info['encoder']} (weights {info['weights_id']}, dim {info['dim']}, {info['precision']})"),
        ("sampling", json.dumps(info["sampling"])),
        ("preprocess", json.dumps(info["preprocess"])),
        ("created", f"{info['created']}, last write {info['last_write']}"),
    ]


def _state(info: dict[str, Any], said: list[str]) -> list[tuple[str, str]]:
    """Writers, leftovers, caches, failures and decoder warnings."""
    rows = [("writing now", "; ".join(info["writers"]))] if info["writers"] else []
    if n := info["unfinished_shards"]:
        rows.append(("unfinished", f"{n} *.h5.tmp shard(s) being written or left by a killed job (ignored)"))
    if info["superseded_shards"] or info["duplicates"] or info["replaced"]:
        tidy = f"{info['superseded_shards']} superseded shard(s), {info['duplicates']} duplicate clip(s), "
        tidy += f"{info['replaced']} clip(s) of video files since replaced (left out); `vidprobe compact` removes them"
        rows.append(("to tidy", tidy))
    for c in info["caches"]:
        what = (
            f"pooled {c.get('pool')} {'x'.join(map(str, c.get('shape', [])))}"
            if c.get("kind") == "pooled"
            else (f"clip index ({c.get('clips')} clips)" if c.get("kind") == "index" else c["file"])
        )
        rows.append(("cache", f"{what}, {_size(c['size_bytes'])}, {c['state']} (cache/{c['file']})"))
    retry = "; `vidprobe extract ... --retry-failed` retries them" if info["failures"] else ""
    rows.append(("failures", f"{failed_videos(info['failures_by_stage'])}{retry}"))
    if said:
        rows.append(("warnings", f"{len(said)} (what decoding worked around, kept across runs; --json lists all)"))
    return rows


def _print_writers(writers: dict[str, Any]) -> None:
    """Per job shard (where the store has several writers): clips stored, failures, last run."""
    if len(writers) <= 1 and all(w == "shard" for w in writers):
        return
    print("per writer (job shard): clips stored, failures | last run")
    for name, w in writers.items():
        run = w.get("last_run")
        last = (
            f"{run['state']}: {run['assigned']} clips assigned, {run['done']} done, {run['skipped']} skipped, "
            f"{run['failed']} failed ({run['engine']}, {run['host']} pid {run['pid']}, {run['updated']})"
            if run
            else "no record"
        )
        print(f"  {name:18s} {w['clips']:7d} clips {w['failures']:5d} failed | {last}")


def add_verify(sub: Any) -> None:
    p = command(sub, cmd_verify, "check a store: shards open, offsets consistent, no duplicates, no NaN/Inf")
    add_store(p)
    add_json(p, "the report")


def cmd_verify(args: argparse.Namespace) -> int:
    """Open every finished shard and check it against the store's provenance: consistent offsets and lengths, expected
    dim and dtype, no clip stored twice (within or across shards), only finite values; a current pooled cache is pooled
    again from the shards and compared (removed if its rows differ). Safe while an extraction runs.
    Exit 0 when all is well, 1 when a problem is found (each printed on stderr)."""
    check_order(args, {"store": "store"}, "vidprobe verify STORE")
    from ..probe.pooling import get_pool
    from ..store.tools import verify_store

    report = verify_store(args.store, pools=get_pool)
    if args.json:
        print_json(report.to_dict())
    else:
        for note in report.notes:
            print(f"note: {note}")
        for problem in report.problems:
            print(f"problem: {problem}", file=sys.stderr)
        verdict = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
        print(
            f"{verdict}: {report.shards} shards, {report.clips} clips, {report.frames} frames, "
            f"{report.failures} failure records checked in {report.path}"
        )
    return EXIT_OK if report.ok else EXIT_ERROR


def add_compact(sub: Any) -> None:
    p = command(sub, cmd_compact, "merge all shards of a store into one file, atomically")
    add_store(p, "feature store folder")
    p.add_argument(
        "--compression",
        choices=STORE_COMPRESSIONS,
        help="compression of the merged shard (default: what most shards use)",
    )
    p.add_argument("--level", type=int, default=4, choices=range(1, 10), metavar="1..9", help="gzip level (default 4)")
    add_json(p)


def cmd_compact(args: argparse.Namespace) -> int:
    """Write every stored clip (duplicates dropped; failures that were later fixed dropped) into one new shard (tmp,
    fsync, atomic rename), then delete the old shards and leftover *.tmp files. Refused while another job writes to the
    store (exit 75). A crash at any point leaves a readable store; re-run to finish."""
    check_order(args, {"store": "store"}, "vidprobe compact STORE")
    from ..store.tools import compact_store

    out = compact_store(args.store, compression=args.compression, compression_level=args.level)
    if args.json:
        print_json(out)
    elif not out["changed"]:
        print(f"{out['path']}: already compact ({out['shards_after']} shard, {out['clips']} clips)")
    else:
        print(
            f"{out['path']}: {out['shards_before']} shards ({_size(out['size_before'])}) "
            f"-> 1 shard ({_size(out['size_after'])}), "
            f"{out['clips']} clips, {out['duplicates_dropped']} duplicates and {out['replaced_dropped']} "
            f"clips of replaced video files dropped, compression {out['compression']}"
        )
    return EXIT_OK


def add_export(sub: Any) -> None:
    p = command(
        sub, cmd_export, "write a store's clips as Parquet (pandas, pyarrow, Hugging Face datasets) or .npy files"
    )
    add_store(p)
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="OUT.parquet, or a new folder with --format npy"
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument("--pool", metavar="NAME", help="pooling of each clip's frames (default mean; e.g. max, seg4)")
    how.add_argument("--frames", action="store_true", help="every frame's embedding and timestamp instead of a pool")
    p.add_argument("--format", choices=("parquet", "npy"), help="default: parquet when OUT ends in .parquet")
    p.add_argument(
        "--row-group", type=int, default=65536, metavar="N", help="clips per Parquet row group (default 65536)"
    )
    add_json(p)


def cmd_export(args: argparse.Namespace) -> int:
    """One row per clip: video, start, end (null: open end), label, split and embedding, a fixed-size float32 list: the
    pooled vector (--pool, default mean; read through the store's pooled cache) or, with --frames, the clip's per-frame
    vectors plus their timestamps. Parquet is written in row groups (bounded memory) and opens with pandas.read_parquet,
    pyarrow and datasets.load_dataset('parquet', data_files=...). --format npy writes a folder: one .npy per video and
    index.json. Written to a temporary name and renamed: never a half-written output; an existing output is refused."""
    check_order(args, {"store": "store"}, "vidprobe export STORE -o OUT")
    from ..probe.pooling import get_pool
    from ..store.export import export_store

    fmt = args.format or ("parquet" if Path(args.output).suffix.lower() == ".parquet" else None)
    if fmt is None:
        raise ConfigError(
            f"-o {args.output}: name a .parquet file, or pass --format npy to write a folder of .npy files"
        )
    pool = None if args.frames else get_pool(args.pool or "mean")
    out = export_store(
        args.store, args.output, pool=pool, frames=args.frames, format=fmt, row_group=args.row_group, progress=True
    )
    if args.json:
        print_json(out)
    else:
        what = "per-frame embeddings" if out["frames"] else f"{out['pool']}-pooled vectors"
        print(f"exported {out['clips']} clips ({what}) to {out['path']} ({fmt})")
    return EXIT_OK
