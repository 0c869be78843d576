"""What every command shares: exit codes, the flags several commands take (defined once here), and output helpers."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.manifest import DATASET_SPLITS
from ..errors import ConfigError

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
        help="allow a .joblib (pickle) head, types outside skops' trusted list, or a sidecar without the head's "
        "sha256: only for files you trust",
    )


def add_dataset_split(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--dataset-split", type=int, default=1, choices=DATASET_SPLITS, help=help)


HEAD_SUFFIXES = (".npz", ".skops", ".joblib")
_KINDS = {"store": "a feature store", "head": "a head file"}


def path_kind(path: str | Path) -> str | None:
    """``"store"``, ``"head"`` or None: what a named path is, from its name and its neighbours only (a store folder
    holds store.json, a shard file ends in .h5; a head file has its JSON sidecar beside it), so a swapped pair of
    arguments is answered at once, before any file is opened."""
    p = Path(path)
    if (p / "store.json").is_file() or (p.suffix == ".h5" and p.is_file()):
        return "store"
    if p.suffix.lower() in HEAD_SUFFIXES and p.is_file() and p.with_suffix(".json").is_file():
        return "head"
    return None


def check_order(args: argparse.Namespace, roles: dict[str, str], usage: str, swapped: str | None = None) -> None:
    """Refuse a head file where a store belongs, or a store where a head belongs, with the command meant:
    ``roles`` maps each path argument to what it must be, ``usage`` is the command's form (``vidprobe
    evaluate STORE HEAD``) and ``swapped`` the fixed command line, formatted with the arguments' quoted values
    (for when the two paths were given in each other's places)."""
    found = {name: path_kind(getattr(args, name)) for name in roles}
    wrong = [name for name, role in roles.items() if found[name] not in (None, role)]
    if not wrong:
        return
    shown = {name: shlex.quote(str(getattr(args, name))) for name in roles}
    if swapped and len(wrong) == len(roles) == 2:
        (a, b) = wrong
        raise ConfigError(
            f"{getattr(args, a)} is {_KINDS[str(found[a])]} and {getattr(args, b)} {_KINDS[str(found[b])]}: "
            f"did you mean `{swapped.format(**shown)}`?"
        )
    name = wrong[0]
    raise ConfigError(
        f"{getattr(args, name)} is {_KINDS[str(found[name])]}, not {_KINDS[roles[name]]}: the command is `{usage}`"
    )


def print_json(doc: Any) -> None:
    """``doc`` as strict JSON: NaN and infinities become null (``report.finite``)."""
    from ..probe.report import finite

    json.dump(finite(doc), sys.stdout, indent=2, default=str, allow_nan=False)
    sys.stdout.write("\n")


def failed_videos(by_cause: dict[str, int]) -> str:
    """``3 videos (decode 2, manifest 1)``: failed videos with one number per cause, as the extract summary and
    ``info`` both say it (``store.index.failure_counts``)."""
    n = sum(by_cause.values())
    causes = ", ".join(f"{cause} {k}" for cause, k in sorted(by_cause.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{n} video{'' if n == 1 else 's'}" + (f" ({causes})" if causes else "")
