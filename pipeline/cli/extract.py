"""``vidprobe extract``: embed sampled frames of videos into a feature store."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..data.manifest import FORMATS
from ..errors import ConfigError
from .common import (
    DEVICES,
    EXIT_OK,
    EXIT_PARTIAL,
    add_dataset_split,
    add_device,
    add_json,
    add_quiet,
    command,
    failed_videos,
    print_json,
)


def add_extract(sub: Any) -> None:
    p = command(sub, cmd_extract, "embed sampled frames of videos into a feature store (resumable)")
    p.add_argument(
        "source",
        help="a folder (root/<label>/<video>, a video being a file or a folder of frames; symlinks followed), "
        "WebDataset shards ('shards/{00000..00099}.tar'), a .csv/.jsonl manifest "
        "(path,label[,split][,start,end]), a video, a quoted glob, or official splits: UCF101's ucfTrainTestlist/ "
        "folder, HMDB51's split-file folder, a Kinetics CSV (label,youtube_id,time_start,time_end,split); each "
        "local or at an http(s)://, s3:// or gs:// URL",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="setting overrides, e.g. sampling.num_frames=16 extract.batch_size=64",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="STORE",
        help="feature store folder (created if new), e.g. features/ucf101-effnet",
    )
    p.add_argument(
        "--encoder",
        metavar="SPEC",
        action="append",
        help="effnet-lite0 (offline default) | openclip:MODEL[@TAG|@CKPT][#pre] | timm:NAME[@CKPT]. Repeat it to "
        "run several encoders over one decode, one store each under STORE/<name>/ (e.g. STORE/effnet-lite0); "
        "openclip:M and openclip:M#pre together share one forward pass",
    )
    p.add_argument("--config", metavar="FILE", help="YAML settings file (see configs/default.yaml)")
    p.add_argument(
        "--root",
        metavar="DIR",
        help="folder (or folder URL) that manifest paths are relative to and must stay inside (default: the "
        "manifest's folder); for UCF101/HMDB51 the folder holding the class folders",
    )
    p.add_argument(
        "--format",
        default="auto",
        choices=FORMATS,
        help="how to read SOURCE (default auto: a folder with classInd.txt is UCF101, with *_test_split1.txt HMDB51, a "
        "CSV with youtube_id Kinetics)",
    )
    add_dataset_split(p, "UCF101/HMDB51 official split to read (default 1)")
    p.add_argument(
        "--label-from",
        metavar="MEMBER",
        default="auto",
        help="WebDataset shards: the member holding a sample's label: cls | txt | json:KEY | none (default auto: "
        ".cls, else the 'label' key of .json)",
    )
    p.add_argument("--retry-failed", action="store_true", help="only retry clips recorded as failed in the store")
    _add_scale_out(p)
    add_json(p, "the run summary")
    add_quiet(p, "bar")


def _add_scale_out(p: argparse.ArgumentParser) -> None:
    """Where it runs: the device, the job shard, the engine."""
    add_device(
        p,
        f"{DEVICES} (same as extract.device=DEV); one process per GPU: "
        "--device cuda:K --shard-id K --num-shards NUM_GPUS",
        metavar="DEV",
    )
    p.add_argument(
        "--shard-id",
        type=int,
        metavar="I",
        help="extract only job shard I of --num-shards N (clips assigned by a stable hash of their key); shards may "
        "run at the same time, on any machines, into one store. Default: from RANK/WORLD_SIZE, then "
        "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, then SLURM_PROCID/SLURM_NTASKS, else the whole manifest",
    )
    p.add_argument("--num-shards", type=int, metavar="N", help="number of job shards (with --shard-id)")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process plus decoder workers (default); ray: a Ray Data pipeline (CPU decode tasks -> "
        "encoder actors, one per GPU) on a Ray cluster; needs `pip install vidprobe[ray]`",
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join (auto, HOST:PORT or ray://HOST:10001); default: start a local one",
    )
    p.add_argument(
        "--ray-encoders",
        type=int,
        metavar="K",
        help="encoder actors per model (default: one per GPU in the cluster, or 1 without GPUs)",
    )


def cmd_extract(args: argparse.Namespace) -> int:
    """Decode sampled frames of every video in SOURCE, embed them with a frozen encoder and append them to the feature
    store STORE. Clips already in the store (or already recorded as failed) are skipped, so re-running resumes. With
    several --encoder options each clip is decoded once for all of them and each encoder writes its own store,
    STORE/<name>/."""
    from ..config import load_config
    from ..data.manifest import load_manifest
    from ..extract.entry import extract
    from ..extract.sharding import resolve_shard

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"extract.device={args.device}")
    cfg = load_config(args.config, overrides)
    if args.encoder:  # the command line wins over the config file and key=value overrides
        cfg.encoder = args.encoder[0] if len(args.encoder) == 1 else tuple(args.encoder)
        cfg.validate()
    if args.engine != "ray" and (args.address or args.ray_encoders):
        raise ConfigError("--address and --ray-encoders are for --engine ray")
    shard = resolve_shard(args.shard_id, args.num_shards)
    if shard is not None:
        print(f"vidprobe extract: job shard {shard} (from {shard.source})", file=sys.stderr)
    manifest = load_manifest(
        args.source, root=args.root, format=args.format, split=args.dataset_split, label_from=args.label_from
    )
    progress = not args.quiet and not args.json
    ray = {"address": args.address, "num_encoders": args.ray_encoders} if args.engine == "ray" else {}
    summaries = extract(
        manifest,
        args.output,
        cfg,
        engine=args.engine,
        shard=shard,
        progress=progress,
        retry_failed=args.retry_failed,
        **ray,
    )
    if args.json:  # one encoder: its summary; several: a list of them, one per store
        print_json(summaries[0].to_dict() if len(summaries) == 1 else [s.to_dict() for s in summaries])
    else:
        # per-clip lines once: the stores of one run share a decode, so mostly the same failures
        for path, message in dict.fromkeys(f for s in summaries for f in s.failures):
            print(f"failed: {message}" if path in message else f"failed: {path}: {message}", file=sys.stderr)
        for path, message in dict.fromkeys(w for s in summaries for w in s.warnings):
            print(f"warning: {message}" if path in message else f"warning: {path}: {message}", file=sys.stderr)
        for summary in summaries:
            _print_summary(summary)
    return EXIT_PARTIAL if any(s.failed for s in summaries) else EXIT_OK


def _print_summary(summary: Any) -> None:
    """One line per store: what this run did to it."""
    rate = summary.frames / summary.seconds if summary.seconds else 0.0
    left_out, many = summary.ignored, len(summary.ignored) > 1
    names = ", ".join(left_out[:3]) + (", …" if len(left_out) > 3 else "")
    ignored = (
        f"{len(left_out)} file{'s' if many else ''} ignored "
        f"(not {'videos' if many else 'a video'} by extension: {names}); "
        if left_out
        else ""
    )
    print(
        f"{'shard ' + summary.shard + ': ' if summary.shard else ''}"
        f"{summary.done} extracted, {summary.skipped} skipped (already stored), "
        f"{'failed: ' + failed_videos(summary.failed_by_cause) if summary.failed else '0 failed'}; "
        f"{ignored}"
        f"{summary.frames} frames in {summary.seconds:.1f} s ({rate:.1f} frames/s) -> {summary.store}"
    )
    if summary.skipped_failed:
        print(
            f"{summary.skipped_failed} of the skipped clips failed in an earlier run; "
            "`--retry-failed` tries them again",
            file=sys.stderr,
        )
    if summary.changed:
        first = ", ".join(summary.changed[:3]) + (", …" if len(summary.changed) > 3 else "")
        print(
            f"{len(summary.changed)} video file(s) changed since they were extracted (size or content): extracted "
            f"again, the old features left out ({first})",
            file=sys.stderr,
        )
