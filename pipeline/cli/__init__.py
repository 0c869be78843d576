"""``vidprobe`` command line: thin wiring of the stages; every error becomes one line and an exit code.

One module per group of commands; each command's arguments (``add_NAME``) stand beside its handler
(``cmd_NAME``), and the flags several commands share are defined once in ``common``.

Exit codes: 0 success; 1 runtime error (unreadable store, head, model; an output that cannot be written,
refused before any work); 2 bad usage or settings;
3 extraction finished but some clips failed (they are recorded in the store; see ``vidprobe info``);
75 the store is busy (another job holds its writer lock; retry later); 130 interrupted by Ctrl-C, 143 by
SIGTERM (what Slurm sends at a time limit; finished clips are kept; re-run the same command to resume);
141 stdout was closed before all of the output was written (``vidprobe info --json | head -c 10``): the
command ends quietly, with the code of a process that SIGPIPE ended, as ``yes | head`` does.
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
from .common import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED

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
# torch's modules is a good share of a one-clip `predict` or a small `extract` (docs/performance.md), and
# by then they hold no open file, their decoder pool is closed and their store locks are released. Not
# `extract --engine ray`: Ray's own exit handlers must run.
QUICK_EXIT_COMMANDS = frozenset({"predict", "extract"})
_quick_exit = False  # set by ``main`` for ``run``: the command that ran may skip the teardown


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="vidprobe",
        description="Video classification the cheap way: a frozen image encoder embeds sampled frames once "
        "(cached in an HDF5 feature store), then pooling + a logistic-regression or MLP head trains in seconds on CPU.",
        epilog="Typical flow: vidprobe extract videos/ -o features/mine; vidprobe train features/mine -o "
        "heads/mine.npz; vidprobe predict heads/mine.npz new.mp4.  Exit codes: 0 ok, 1 error (or verify found a "
        "problem), 2 bad usage/settings, 3 some clips (or benchmark fits) failed, 75 store busy, 130 interrupted, "
        "141 stdout closed (e.g. `| head`), 143 terminated (SIGTERM).",
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
    global _quick_exit
    _quick_exit = args.command in QUICK_EXIT_COMMANDS and getattr(args, "engine", "local") == "local"
    import warnings

    shown = _one_line_warnings(args.command)
    main_thread = threading.current_thread() is threading.main_thread()  # signals are the main thread's
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return args.func(args)
    except VidprobeError as exc:
        print(f"vidprobe {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # a closed stdout (`| head`): ``run`` ends quietly with EXIT_BROKEN_PIPE
        raise
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
    try:
        code = main()
        sys.stdout.flush()  # a closed stdout shows here at the latest, not in the interpreter's teardown
    except BrokenPipeError:
        _stdout_closed()
        code = EXIT_BROKEN_PIPE
    if _quick_exit:
        sys.stderr.flush()
        os._exit(int(code or 0))
    sys.exit(code)


def _stdout_closed() -> None:
    """The reader of stdout went away (``| head``): what is still buffered goes to /dev/null, so neither
    this process nor the interpreter's last flush prints a BrokenPipeError traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
