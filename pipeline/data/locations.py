"""Where a manifest's rows point: a local folder or a folder URL, and the rule that keeps a row inside it.

A manifest is data from somewhere else, so its rows are resolved against a root and may not leave it:
``safe_relpath`` for a folder (lexically and through links), ``safe_url`` for a folder URL (percent-escapes
decoded first, as a server would; a URL row only on the root's server and under it). The other helpers
treat a path and a URL alike (``Where``): joining, the parent folder, the suffix, reading a manifest's or
split file's text (through fsspec for a URL, ``data.remote``).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path, PurePosixPath
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

from ..errors import DecodeError, ManifestError
from .remote import can_list, canonical, is_url, list_under, read_bytes, redact

__all__ = [
    "Where",
    "ROOT_HINT",
    "URL_ROOT_HINT",
    "safe_relpath",
    "safe_url",
    "join_to",
    "parent_of",
    "suffix_of",
    "as_root",
    "read_text",
    "split_folder",
    "is_folder",
]

Where = Path | str  # a local path, or a URL (``data.remote``)

ROOT_HINT = "to read videos outside it, pass --root DIR, a folder holding them all (relative rows are read from DIR)"
URL_ROOT_HINT = "to read videos outside it, pass --root URL, a folder holding them all (rows are read from URL)"


def safe_relpath(root: Path, entry: str) -> str:
    """``entry`` (relative or absolute) as a POSIX path inside ``root``; ManifestError if it escapes."""
    if not entry.strip():
        raise ManifestError("empty path")
    if "\0" in entry:
        raise ManifestError(f"{entry!r}: a path cannot contain a NUL byte")
    root = root.resolve()
    candidate = Path(entry)
    full = candidate if candidate.is_absolute() else root / candidate
    # Normalise without following links, then check containment on both the lexical and resolved form.
    lexical = Path(os.path.normpath(full))
    try:
        rel = lexical.relative_to(root)
    except ValueError:
        raise ManifestError(f"{entry}: path escapes the manifest root {root}; {ROOT_HINT}") from None
    try:
        resolved = lexical.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ManifestError(f"{entry}: cannot resolve the path ({getattr(exc, 'strerror', None) or exc})") from None
    if resolved.exists():
        try:
            resolved.relative_to(root)
        except ValueError:
            raise ManifestError(
                f"{entry}: path resolves (through a link) outside the manifest root {root}; {ROOT_HINT}"
            ) from None
    return PurePosixPath(*rel.parts).as_posix()


def safe_url(root: str, entry: str, *, any_url: bool = False) -> str:
    """``entry`` (relative to the folder URL ``root``, or absolute on its server) as a URL inside ``root``;
    ManifestError if it escapes, as ``safe_relpath`` (percent-escapes decoded first: a server would). A URL
    entry must be on ``root``'s server (bucket) and inside it too, unless ``any_url`` (a row of a local
    manifest: the user wrote it) -- a manifest fetched from a URL must not make vidprobe fetch, with the
    user's credentials, whatever it names. A row is a file name: over HTTP its path is percent-encoded
    (``#``, ``?``, spaces are characters of the name). The result keeps ``root``'s credentials
    (``user:pass@``), not its query."""
    if not entry.strip():
        raise ManifestError("empty path")
    if "\0" in entry:
        raise ManifestError(f"{entry!r}: a path cannot contain a NUL byte")
    parts = urlsplit(root)
    http = parts.scheme.lower() in ("http", "https")
    if is_url(entry):
        return entry if any_url else _url_row(parts, entry)
    folder = unquote(parts.path) if http else parts.path  # the names themselves, encoded once below
    full, ok = _inside(folder, entry)
    if not (ok and _inside(unquote(folder), unquote(entry))[1]):
        raise ManifestError(f"{entry}: path escapes the manifest root {redact(root)}; {URL_ROOT_HINT}")
    return urlunsplit((parts.scheme, parts.netloc, quote(full, safe="/") if http else full, "", ""))


def _inside(folder: str, path: str) -> tuple[str, bool]:
    """(``path`` resolved against ``folder``, lexically, whether it stays inside it); a folder at the top of a
    bucket or host is ``/`` and every path is inside it (no ``//`` joined in)."""
    base = posixpath.normpath("/" + folder.strip("/"))
    full = "/" + posixpath.normpath(posixpath.join(base, path)).lstrip("/")
    return full, full == base or full.startswith(base.rstrip("/") + "/")


def _host(parts: SplitResult) -> str:
    return parts.netloc.rpartition("@")[2].lower()


def _url_row(root: SplitResult, entry: str) -> str:
    """A URL row of a manifest at a URL: kept when it is an object under ``root`` (same scheme, same host or
    bucket, its path inside), else ManifestError naming the row and the rule."""
    row = urlsplit(canonical(entry))
    same = row.scheme.lower() == root.scheme.lower() and _host(row) == _host(root)
    if not (same and _inside(unquote(root.path), unquote(row.path))[1]):
        where = urlunsplit((root.scheme, _host(root), root.path, "", ""))
        raise ManifestError(
            f"{redact(entry)}: a manifest at a URL may only name URLs under its root {where}; "
            "to read videos elsewhere, list such rows in a local manifest"
        )
    return entry


def join_to(folder: Where, name: str) -> Where:
    """``folder/name``, for a folder URL as for a path."""
    return f"{folder.rstrip('/')}/{name}" if isinstance(folder, str) else folder / name


def parent_of(where: Where) -> Where:
    """The folder holding ``where`` (a URL's without its query: a signature is for its own object)."""
    if isinstance(where, str):
        parts = urlsplit(where)
        return urlunsplit((parts.scheme, parts.netloc, posixpath.dirname(parts.path.rstrip("/")), "", ""))
    return where.parent


def suffix_of(where: Where) -> str:
    return PurePosixPath(urlsplit(where).path if isinstance(where, str) else where.name).suffix.lower()


def as_root(root: str | Path | None) -> Where | None:
    """``--root`` as given: a folder URL kept as text, a folder resolved."""
    if root is None or str(root) == "":
        return None
    return canonical(str(root)) if is_url(str(root)) else Path(root).resolve()


def read_text(where: Where, what: str) -> str:
    """The text of a manifest or split file, local or at a URL; ManifestError naming it and the cause."""
    try:
        data = read_bytes(str(where)) if isinstance(where, str) else where.read_bytes()
        return data.decode("utf-8-sig")
    except DecodeError as exc:
        cause = str(exc).removeprefix(f"{redact(str(where))}: ")
        raise ManifestError(f"{redact(str(where))}: cannot read {what} ({cause})") from None
    except OSError as exc:
        raise ManifestError(f"{where}: cannot read {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{redact(str(where))}: cannot read {what} ({exc})") from None


def split_folder(split_dir: str | Path) -> Where:
    return canonical(str(split_dir)).rstrip("/") if is_url(str(split_dir)) else Path(split_dir).resolve()


def is_folder(where: Where) -> bool:
    """Whether ``where`` holds anything (a folder URL: an object under it; cannot list: False)."""
    if isinstance(where, Path):
        return where.is_dir()
    try:
        return can_list(where) and bool(list_under(f"{where}/*"))
    except DecodeError:
        return False
