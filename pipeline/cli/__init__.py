"""``vidprobe`` command line: thin wiring of the stages; every error becomes one line and an exit code.

One module per group of commands; each command's arguments (``add_NAME``) stand beside its handler
(``cmd_NAME``), and the flags several commands share are defined once in ``common``.

Exit codes: 0 success; 1 runtime error (unreadable store, head, model; an output that cannot be written,
refused before any work); 2 bad usage or settings;
3 extraction finished but some clips failed (they are recorded in the store; see ``vidprobe info``);
75 the store is busy (another job holds its writer lock; retry later); 130 interrupted by Ctrl-C, 143 by
SIGTERM (what Slurm sends at a time limit; finished clips are kept; re-run the same command to resume).
``vidprobe verify`` exits 1 when it finds a problem.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import VidprobeError
from . import bench, extract, heads, stores
from .common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED

__all__ = ["build_parser", "main", "run"]

# In the order `vidprobe --help` lists them.
COMMANDS = (
    extract.add_extract,
    heads.add_train,
    heads.add_evaluate,
    heads.add_predict,
    stores.add_info,
    stores.add_verify,
    stores.add_compact,
    stores.add_export,
    bench.add_benchmark,
    bench.add_demo,
)
# Commands whose process ends without the interpreter's teardown once their output is out: tearing down
# torch's modules is a good share of a one-clip `predict` (docs/performance.md), and by then predict holds
# no open file and its decoder pool is closed.
QUICK_EXIT_COMMANDS = frozenset({"predict"})


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="vidprobe",
        description="Video classification the cheap way: a frozen image encoder embeds sampled frames once "
        "(cached in an HDF5 feature store), then pooling + a logistic-regression or MLP head trains in seconds on CPU.",
        epilog="Typical flow: vidprobe extract videos/ -o features/mine; vidprobe train features/mine -o "
        "heads/mine.npz; vidprobe predict heads/mine.npz new.mp4.  Exit codes: 0 ok, 1 error (or verify found a "
        "problem), 2 bad usage/settings, 3 some clips (or benchmark fits) failed, 75 store busy, 130 interrupted, "
        "143 terminated (SIGTERM).",
    )
    p.add_argument("--version", action="version", version=f"vidprobe {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so every path that keeps finished
    work on Ctrl-C (flush the open shard, run record "stopped", release the lock) does so on SIGTERM too."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM must not interrupt the cleanup
    raise Terminated()


def _one_line_warnings(command: str) -> Any:
    """Library warnings (e.g. a damaged cache being rebuilt) as one line each, like the CLI's other messages;
    returns the previous handler."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"vidprobe {command}: warning: {message}", file=sys.stderr)

    previous, warnings.showwarning = warnings.showwarning, show
    return previous


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand anywhere after `extract SOURCE`, even between options.
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x or args.command != "extract"]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    import warnings

    shown = _one_line_warnings(args.command)
    main_thread = threading.current_thread() is threading.main_thread()  # signals are the main thread's
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return args.func(args)
    except VidprobeError as exc:
        print(f"vidprobe {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # what no check before the work could foresee (a full disk, a folder removed meanwhile)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"vidprobe {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except Terminated:
        print(
            f"vidprobe {args.command}: terminated (SIGTERM); finished work is kept, re-run to resume", file=sys.stderr
        )
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"vidprobe {args.command}: interrupted; finished work is kept, re-run to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run() -> None:
    """The ``vidprobe`` console script and ``python -m pipeline``: ``main`` on ``sys.argv``, then exit."""
    code = main()
    if sys.argv[1:2] and sys.argv[1] in QUICK_EXIT_COMMANDS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code or 0))
    sys.exit(code)
