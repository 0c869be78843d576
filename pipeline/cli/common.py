"""What every command shares: exit codes, the flags several commands take (defined once here), and output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ..data.manifest import DATASET_SPLITS

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130  # 75: StoreBusyError.exit_code
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout's reader went away (`| head`)
DEVICES = "auto | cpu | cuda | cuda:K"


def command(sub: Any, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
    """The parser of ``vidprobe NAME``, run by its handler ``cmd_NAME``: ``help`` is its line in ``vidprobe --help``,
    the handler's docstring its own ``--help`` description (argparse rewraps it)."""
    p = sub.add_parser(handler.__name__.removeprefix("cmd_"), help=help, description=handler.__doc__)
    p.set_defaults(func=handler)
    return p


def pick(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The named options, as keyword arguments for the library call they are passed to."""
    return {name: getattr(args, name) for name in names}


def add_json(p: argparse.ArgumentParser, what: str = "the result", help: str | None = None) -> None:
    """``--json``: the command's result as one JSON document on stdout (``print_json``)."""
    p.add_argument("--json", action="store_true", help=help or f"print {what} as one JSON document")


def add_quiet(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=f"no progress {what}")


def add_repeats(p: argparse.ArgumentParser, help: str, default: int | None = 1) -> None:
    """``--repeats K``: fits over the split seeds seed .. seed+K-1 (``probe/repeats.py``)."""
    p.add_argument("--repeats", type=int, default=default, metavar="K", help=help)


def add_device(p: argparse.ArgumentParser, help: str = DEVICES, **kwargs: Any) -> None:
    p.add_argument("--device", help=help, **kwargs)


def add_store(p: argparse.ArgumentParser, help: str | None = "feature store folder (or one shard file)") -> None:
    p.add_argument("store", help=help)


def add_head_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("head", help="head file (.npz, .skops or .joblib) written by `vidprobe train`")


def add_trust(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust",
        action="store_true",
        help="allow a .joblib (pickle) head, or types outside skops' trusted list: only for files you trust",
    )


def add_dataset_split(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--dataset-split", type=int, default=1, choices=DATASET_SPLITS, help=help)


def print_json(doc: Any) -> None:
    """``doc`` as strict JSON: NaN and infinities become null (``report.finite``)."""
    from ..probe.report import finite

    json.dump(finite(doc), sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")
