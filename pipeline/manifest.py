"""What to extract: a list of ``VideoItem`` read from a folder, a CSV/JSONL manifest or a glob.

Every path is resolved against a root and may not escape it (a manifest is data from somewhere else;
``../../etc/passwd`` or an absolute path elsewhere is refused). Rows that cannot be used are returned
as ``Problem`` records instead of aborting, so one bad line never costs the rest of a job.
"""
from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import ManifestError

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .wmv .flv .ts .mts .m2ts .3gp .ogv .gif".split()
)
SPLITS = ("train", "val", "test", "")


@dataclass(frozen=True)
class VideoItem:
    """One clip to extract: a video (relative to ``root``), its label, split and optional time window."""

    path: str  # POSIX path relative to the manifest root: the clip's identity in the store
    root: str  # absolute folder the path is relative to
    label: str = ""
    split: str = ""
    start: float | None = None  # seconds; None = from the beginning
    end: float | None = None  # seconds; None = to the end

    @property
    def abspath(self) -> Path:
        return Path(self.root) / self.path

    @property
    def key(self) -> tuple[str, float, float]:
        """Identity used for resume and de-duplication (start/end -1 mean open)."""
        return (self.path, -1.0 if self.start is None else float(self.start), -1.0 if self.end is None else float(self.end))


@dataclass(frozen=True)
class Problem:
    """A manifest entry that could not become a ``VideoItem`` (recorded as a failure, stage ``manifest``)."""

    path: str
    error: str


@dataclass
class Manifest:
    root: Path
    items: list[VideoItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted({it.label for it in self.items if it.label})


def safe_relpath(root: Path, entry: str) -> str:
    """``entry`` (relative or absolute) as a POSIX path inside ``root``; ManifestError if it escapes."""
    if not entry.strip():
        raise ManifestError("empty path")
    root = root.resolve()
    candidate = Path(entry)
    full = candidate if candidate.is_absolute() else root / candidate
    # Normalise without following links, then check containment on both the lexical and resolved form.
    lexical = Path(os.path.normpath(full))
    try:
        rel = lexical.relative_to(root)
    except ValueError:
        raise ManifestError(f"{entry}: path escapes the manifest root {root}") from None
    resolved = lexical.resolve()
    if resolved.exists():
        try:
            resolved.relative_to(root)
        except ValueError:
            raise ManifestError(f"{entry}: path resolves (through a link) outside the manifest root {root}") from None
    return PurePosixPath(*rel.parts).as_posix()


def _float_or_none(value: object, what: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ManifestError(f"{what}={value!r} is not a number of seconds") from None
    if number < 0:
        raise ManifestError(f"{what}={value!r} is negative")
    return number


def _item_from_row(root: Path, row: dict, where: str) -> VideoItem:
    path = str(row.get("path") or "").strip()
    if not path:
        raise ManifestError(f"{where}: missing 'path'")
    rel = safe_relpath(root, path)
    split = str(row.get("split") or "").strip().lower()
    if split not in SPLITS:
        raise ManifestError(f"{where}: split={split!r}; allowed: train, val, test or empty")
    start = _float_or_none(row.get("start"), f"{where}: start")
    end = _float_or_none(row.get("end"), f"{where}: end")
    if start is not None and end is not None and end <= start:
        raise ManifestError(f"{where}: end ({end}) must be after start ({start})")
    label = row.get("label")
    return VideoItem(rel, str(root), "" if label is None else str(label).strip(), split, start, end)


def _rows_to_manifest(root: Path, rows: list[tuple[str, dict]]) -> Manifest:
    manifest = Manifest(root)
    for where, row in rows:
        try:
            manifest.items.append(_item_from_row(root, row, where))
        except ManifestError as exc:
            manifest.problems.append(Problem(str(row.get("path") or where), str(exc)))
    return manifest


def read_csv(path: Path, root: Path | None = None) -> Manifest:
    """CSV with a header containing at least ``path``; optional ``label, split, start, end``."""
    root = (root or path.parent).resolve()
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "path" not in [f.strip() for f in reader.fieldnames]:
                raise ManifestError(f"{path}: CSV manifest needs a header row with a 'path' column (path,label[,split][,start,end])")
            rows = [(f"{path}:{i}", {(k or "").strip(): v for k, v in row.items()}) for i, row in enumerate(reader, start=2)]
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path}: not a readable CSV file ({exc})") from None
    return _rows_to_manifest(root, rows)


def read_jsonl(path: Path, root: Path | None = None) -> Manifest:
    """One JSON object per line with the same keys as the CSV form."""
    root = (root or path.parent).resolve()
    rows: list[tuple[str, dict]] = []
    problems: list[Problem] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc})") from None
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            problems.append(Problem(f"{path}:{i}", f"{path}:{i}: not a JSON object ({exc})"))
            continue
        rows.append((f"{path}:{i}", row))
    manifest = _rows_to_manifest(root, rows)
    manifest.problems[:0] = problems
    return manifest


def _is_video(p: Path) -> bool:
    return p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")


def read_folder(root: Path) -> Manifest:
    """``root/<label>/<video>`` (folder per class); videos directly in ``root`` are unlabeled."""
    root = root.resolve()
    manifest = Manifest(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        label = rel_dir.parts[0] if rel_dir.parts else ""
        for name in sorted(filenames):
            p = here / name
            if _is_video(p):
                try:
                    manifest.items.append(VideoItem(safe_relpath(root, str(p)), str(root), label))
                except ManifestError as exc:
                    manifest.problems.append(Problem(str(p), str(exc)))
    return manifest


def read_glob(pattern: str) -> Manifest:
    """An unlabeled set of files matching a glob (``videos/**/*.mp4``); root = the pattern's fixed prefix."""
    prefix_parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        prefix_parts.append(part)
    root = Path(*prefix_parts).resolve() if prefix_parts else Path.cwd().resolve()
    manifest = Manifest(root)
    for match in sorted(glob.glob(pattern, recursive=True)):
        p = Path(match)
        if p.is_file():
            try:
                manifest.items.append(VideoItem(safe_relpath(root, str(p.absolute())), str(root)))
            except ManifestError as exc:
                manifest.problems.append(Problem(str(p), str(exc)))
    return manifest


def load_manifest(source: str | Path, root: str | Path | None = None) -> Manifest:
    """Dispatch on what ``source`` is: a folder, a ``.csv``/``.jsonl`` file, a single video, or a glob."""
    text = str(source)
    p = Path(text)
    if p.is_dir():
        return read_folder(p)
    if p.is_file():
        suffix = p.suffix.lower()
        r = Path(root) if root else None
        if suffix in (".csv", ".tsv"):
            return read_csv(p, r)
        if suffix in (".jsonl", ".ndjson"):
            return read_jsonl(p, r)
        if _is_video(p):
            base = (r or p.parent).resolve()
            return Manifest(base, [VideoItem(safe_relpath(base, str(p.absolute())), str(base))])
        raise ManifestError(f"{p}: not a folder, .csv/.jsonl manifest or video file")
    if glob.has_magic(text):
        manifest = read_glob(text)
        if not manifest.items and not manifest.problems:
            raise ManifestError(f"{text}: the pattern matches no files")
        return manifest
    raise ManifestError(f"{text}: no such file or folder")
