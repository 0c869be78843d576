"""``vidprobe benchmark`` and ``demo``: poolings x heads over stores, and the offline demo that runs that grid."""

from __future__ import annotations

import argparse
from typing import Any

from .common import EXIT_OK, EXIT_PARTIAL, add_device, add_json, add_quiet, add_repeats, command, print_json


def add_benchmark(sub: Any) -> None:
    p = command(sub, cmd_benchmark, "run encoders x poolings x heads (and few-shot curves) over cached stores")
    p.add_argument("config", help="benchmark YAML file, e.g. configs/demo-bench.yaml")
    p.add_argument(
        "-o", "--output", metavar="DIR", help="results folder (default: the config's output, else bench-out/NAME)"
    )
    add_device(p, "device for the logreg solver and zero-shot text towers (default: each head's setting, auto)")
    add_repeats(
        p,
        "refit every full-data row on the split seeds seed .. seed+K-1 and report mean ± std (default: the "
        "config's repeats, else 1; with a manifest's splits only the head seed changes)",
        default=None,
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="run again into a results folder that holds a finished run (without it, that is refused; an "
        "interrupted run is resumed: its finished fits are kept)",
    )
    add_json(p, "the summary")
    add_quiet(p, "lines")


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Fit every head on every pooling of every store named in CONFIG (YAML; see configs/demo-bench.yaml), plus few-shot
    curves (K clips per class, repeated seeds, mean ± std). Writes results.csv (one row per fit, with store, encoder,
    weights, head settings, chosen hyperparameter and seeds), results.md, details.jsonl and plots."""
    from ..encoders.base import check_device
    from ..probe.benchmark import run_benchmark
    from ..probe.heads.fitting import quiet_fits

    if args.device is not None:
        check_device(args.device, "--device")
    with quiet_fits(args.quiet or args.json):  # no fit progress bars either
        summary = run_benchmark(
            args.config,
            args.output,
            say=(lambda _: None) if args.quiet or args.json else print,
            device=args.device,
            repeats=args.repeats,
            overwrite=args.overwrite,
        )
    if args.json:
        print_json(summary)
    return EXIT_PARTIAL if summary["errors"] else EXIT_OK


def add_demo(sub: Any) -> None:
    p = command(sub, cmd_demo, "build a small video set from real photos, extract, train and report (offline)")
    p.add_argument("-o", "--output", default="demo-out", metavar="DIR", help="output folder (default demo-out)")
    p.add_argument(
        "--per-class", type=int, default=None, help="videos per class for both tasks (default: 12 for what, 60 for how)"
    )
    p.add_argument("--seed", type=int, default=0)
    add_quiet(p, "bars")


def cmd_demo(args: argparse.Namespace) -> int:
    """Render labeled videos from photographs shipped with scikit-image (two tasks: which photo, which camera motion),
    extract with the offline encoder, train logreg and MLP heads for several poolings, print an accuracy table and write
    plots."""
    from ..demo.run import run_demo
    from ..store.layout import check_writable

    check_writable(args.output, "write the demo", folder=True)
    rows = run_demo(args.output, per_class=args.per_class, seed=args.seed, quiet=args.quiet)
    return EXIT_PARTIAL if any(str(r.get("status")).startswith("error") for r in rows) else EXIT_OK
