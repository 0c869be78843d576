"""What to extract: a list of ``VideoItem`` read from a folder, a CSV/JSONL manifest, a glob, or the
official split files of UCF101, HMDB51 and Kinetics -- each local or at a URL (``data.remote``).

A manifest's rows are resolved against a root and may not escape it (``data.locations``: a manifest is
data from somewhere else; ``../../etc/passwd``, an absolute path elsewhere or a link out of the root is
refused, and the message names ``--root``). What the user named on the command line -- a folder, a glob, a video -- is
theirs: its links, to files or to class folders, are followed wherever they point (a link back to a
folder above is not walked twice). Rows that cannot be used are returned as ``Problem`` records instead
of aborting, so one bad line never costs the rest of a job.

A manifest or split folder at a URL is read through fsspec, and its relative rows resolve against its
URL's folder (or a ``--root`` URL) under the same rule: a row that leaves that folder is refused
(``locations.safe_url``), as is a URL row that is not under it (a local manifest's URL rows stand: the user wrote
them), and each video is a URL keyed by its redacted form. A local manifest may name videos under a
``--root`` URL too.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ..errors import DecodeError, ManifestError, check_choice
from .frames import IMAGE_EXTENSIONS, is_frame_folder
from .keys import Key, clip_key
from .locations import (
    Where,
    as_root,
    is_folder,
    join_to,
    parent_of,
    read_text,
    safe_relpath,
    safe_url,
    split_folder,
    suffix_of,
)
from .remote import can_list, canonical, exists, is_url, list_under, redact
from .webdataset import is_shard_list, list_samples

VIDEO_EXTENSIONS = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".wmv",
        ".flv",
        ".ts",
        ".mts",
        ".m2ts",
        ".3gp",
        ".ogv",
        ".gif",
    ]
)
SPLITS = ("train", "val", "test", "")
FORMATS = ("auto", "folder", "csv", "jsonl", "ucf101", "hmdb51", "kinetics", "webdataset")
DATASET_SPLITS = (1, 2, 3)  # UCF101 and HMDB51 each define three train/test splits
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


@dataclass(frozen=True)
class VideoItem:
    """One clip to extract: a video (relative to ``root``), its label, split and optional time window."""

    path: str  # POSIX path relative to the manifest root: the clip's identity in the store
    root: str  # absolute folder the path is relative to
    label: str = ""
    split: str = ""
    start: float | None = None  # seconds; None = from the beginning
    end: float | None = None  # seconds; None = to the end
    follow_links: bool = False  # a source the user chose (folder, glob, video): links lead anywhere
    url: str = ""  # a remote video: the URL to fetch, secrets included (``path`` is it redacted); never written

    @property
    def abspath(self) -> Path:
        return Path(self.root) / self.path

    @property
    def location(self) -> str:
        """What the decoder opens: the URL, or the absolute path."""
        return self.url or str(self.abspath)

    @property
    def shown(self) -> str:
        """How messages name the video: the redacted URL, or the absolute path."""
        return self.path if self.url else str(self.abspath)

    @property
    def confine(self) -> str | None:
        """The folder the file must still resolve inside when it is opened (a manifest row: its root);
        None where links are followed (a folder, glob or video the user named) and for a URL."""
        return None if self.follow_links or self.url else self.root

    @property
    def key(self) -> Key:
        """Identity used for resume, de-duplication and job sharding (see ``keys.clip_key``)."""
        return clip_key(self.path, self.start, self.end)


@dataclass(frozen=True)
class Problem:
    """A manifest entry that could not become a ``VideoItem`` (recorded as a failure, stage ``manifest``)."""

    path: str
    error: str


@dataclass
class Manifest:
    root: Where  # the folder rows resolve against: a path, or a URL (a manifest or dataset at a URL)
    items: list[VideoItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files of a source folder left out: not videos by extension

    @property
    def labels(self) -> list[str]:
        return sorted({it.label for it in self.items if it.label})


def _video_at(root: Where, entry: str, label: str = "", split: str = "") -> VideoItem:
    """The item of a manifest row's or a split file's ``entry`` under ``root`` (a folder, or a folder URL:
    the video is then a URL keyed redacted); ManifestError if it escapes ``root``."""
    if isinstance(root, str):
        url = safe_url(root, entry)
        return VideoItem(redact(url), "", label, split, url=url)
    return VideoItem(safe_relpath(root, entry), str(root), label, split)


def _float_or_none(value: object, what: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ManifestError(f"{what}={value!r} is not a number of seconds") from None
    if not math.isfinite(number):
        raise ManifestError(f"{what}={value!r} is not a finite number of seconds")
    if number < 0:
        raise ManifestError(f"{what}={value!r} is negative")
    return number


def _item_from_row(root: Where, row: dict, where: str, local: bool) -> VideoItem:
    """The item of a manifest row; ``local``: the manifest is a local file (its URL rows stand as written)."""
    path = str(row.get("path") or "").strip()
    if not path:
        raise ManifestError(f"{where}: missing 'path'")
    if isinstance(root, str) or (is_url(path) and not local):  # a URL manifest's URL row under a local root: refused
        url = canonical(safe_url(str(root), path, any_url=local))
        rel, root = redact(url), ""
    else:
        url = canonical(path) if is_url(path) else ""
        rel = redact(url) if url else safe_relpath(root, path)
    split = str(row.get("split") or "").strip().lower()
    if split not in SPLITS:
        raise ManifestError(f"{where}: split={split!r}; allowed: train, val, test or empty")
    start = _float_or_none(row.get("start"), f"{where}: start")
    end = _float_or_none(row.get("end"), f"{where}: end")
    if start is not None and end is not None and end <= start:
        raise ManifestError(f"{where}: end ({end}) must be after start ({start})")
    label = row.get("label")
    return VideoItem(rel, str(root), "" if label is None else str(label).strip(), split, start, end, url=url)


def _row_path(root: Where, row: dict, where: str) -> str:
    """What a bad row's failure is filed under: the path it names, as a clip of it is stored (so storing the
    video once the row is fixed closes the failure); else the row itself (``file:line``)."""
    path = str(row.get("path") or "").strip()
    if is_url(path):
        return redact(canonical(path))
    try:
        return redact(safe_url(root, path)) if isinstance(root, str) else safe_relpath(root, path)
    except ManifestError:
        return path if path and "\0" not in path else where


def _rows_to_manifest(root: Where, rows: list[tuple[str, dict]], local: bool) -> Manifest:
    """Items of the rows; a bad row, or a repeat of a clip with another label (a conflict: the first row
    is kept), becomes a ``Problem``. A conflict's problem is filed under its row (``file:line``), not the
    clip's path, so it never marks the kept clip as failed. ``local``: the manifest is a local file."""
    manifest = Manifest(root)
    first: dict[Key, tuple[str, str]] = {}  # clip key -> (where, label) of its first row
    for where, row in rows:
        try:
            item = _item_from_row(root, row, where, local)
        except ManifestError as exc:
            manifest.problems.append(Problem(_row_path(root, row, where), str(exc)))
            continue
        seen = first.setdefault(item.key, (where, item.label))
        if seen[1] != item.label:
            message = (
                f"{where}: {item.path} is listed again with label {item.label!r} ({seen[0]} says {seen[1]!r}); "
                "conflicting labels: the first row is kept, fix the manifest"
            )
            manifest.problems.append(Problem(where, message))
            continue
        manifest.items.append(item)
    return manifest


def _table(path: Where) -> tuple[list[str], list[tuple[str, dict]]]:
    """A CSV (``.tsv``: tab-separated) file's column names and its rows (``file:line``, its cells by
    stripped column name); ManifestError if it cannot be read."""
    text = read_text(path, "manifest")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix_of(path) == ".tsv" else ",")
        fields = [(f or "").strip() for f in reader.fieldnames or []]
        shown = redact(str(path))
        rows = [(f"{shown}:{i}", {(k or "").strip(): v for k, v in r.items()}) for i, r in enumerate(reader, start=2)]
    except csv.Error as exc:
        raise ManifestError(f"{redact(str(path))}: not a readable CSV file ({exc})") from None
    return fields, rows


def _manifest_root(path: Where, root: str | Path | None) -> Where:
    """Where a manifest's relative rows are read from: ``root``, else the manifest's folder (or folder URL)."""
    given = as_root(root)
    if given is not None:
        return given
    return parent_of(path) if isinstance(path, str) else path.parent.resolve()


def read_csv(path: Where, root: str | Path | None = None) -> Manifest:
    """CSV with a header containing at least ``path``; optional ``label, split, start, end``.
    A ``.tsv`` file is the same with tab-separated columns. ``path``: a file, or a URL."""
    fields, rows = _table(path)
    if "youtube_id" in fields and "path" not in fields:
        return read_kinetics(path, root, table=(fields, rows))
    if "path" not in fields:
        raise ManifestError(
            f"{redact(str(path))}: CSV manifest needs a header row with a 'path' column "
            "(path,label[,split][,start,end])"
        )
    return _rows_to_manifest(_manifest_root(path, root), rows, not isinstance(path, str))


def read_jsonl(path: Where, root: str | Path | None = None) -> Manifest:
    """One JSON object per line with the same keys as the CSV form. ``path``: a file, or a URL."""
    rows: list[tuple[str, dict]] = []
    problems: list[Problem] = []
    shown = redact(str(path))
    for i, line in enumerate(read_text(path, "manifest").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            problems.append(Problem(f"{shown}:{i}", f"{shown}:{i}: not a JSON object ({exc})"))
            continue
        except RecursionError:
            problems.append(Problem(f"{shown}:{i}", f"{shown}:{i}: JSON nested too deeply to be a manifest row"))
            continue
        rows.append((f"{shown}:{i}", row))
    manifest = _rows_to_manifest(_manifest_root(path, root), rows, not isinstance(path, str))
    manifest.problems[:0] = problems
    return manifest


def _is_video(p: Path) -> bool:
    return p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")


def _walk(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """(folder, its file names) under ``root``, both sorted, following links to folders; hidden folders and
    a link back to a folder above (a loop: walked already) are left out."""

    def ident(path: str | Path) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    above = {str(root): {ident(p) for p in (root, *root.parents)}}  # per folder: the real folders above it
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        chain = above.pop(dirpath)
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            full = os.path.join(dirpath, d)
            try:
                here = ident(full)
            except OSError:  # gone since listed
                continue
            if here not in chain:
                above[full] = chain | {here}
                keep.append(d)
        dirnames[:] = keep
        yield Path(dirpath), sorted(filenames)


def _chosen(root: Path, p: Path, label: str = "") -> VideoItem:
    """The item of a video the user named (under a folder, a glob or by itself): its path as laid out under
    ``root`` (a link keeps its own name), its links followed to a regular file; ManifestError if they lead
    nowhere (a dangling link, a loop) or ``p`` is not under ``root``."""
    full = Path(os.path.normpath(p.absolute()))
    try:
        rel = PurePosixPath(*full.relative_to(root).parts).as_posix()
    except ValueError:
        raise ManifestError(f"{p}: not under {root}; pass a --root DIR that holds it") from None
    if p.is_symlink():
        try:
            st = os.stat(p)
        except (OSError, RuntimeError) as exc:  # ENOENT: dangling; ELOOP: a loop of links
            why = getattr(exc, "strerror", None) or exc
            raise ManifestError(f"{p}: cannot follow the link to {os.readlink(p)} ({why})") from None
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"{p}: the link leads to {os.path.realpath(p)}, which is not a regular file")
    return VideoItem(rel, str(root), label, follow_links=True)


def read_folder(root: Path) -> Manifest:
    """``root/<label>/<video>`` (folder per class); videos directly in ``root`` are unlabeled. A leaf folder
    of images below a class folder (``root/<label>/<video>/<frames>.jpg``) is one video: a frame folder
    (``data.frames``). Links to videos
    and to class folders are followed wherever they point (``_chosen``). Other files (audio, text, ...) are
    listed in ``Manifest.ignored`` so the user sees what was left out."""
    root = root.resolve()
    manifest = Manifest(root)
    for here, filenames in _walk(root):
        rel_dir = here.relative_to(root)
        label = rel_dir.parts[0] if rel_dir.parts else ""
        frames = len(rel_dir.parts) >= 2 and is_frame_folder(here, filenames)
        if frames:
            folder = PurePosixPath(*rel_dir.parts).as_posix()
            manifest.items.append(VideoItem(folder, str(root), label, follow_links=True))
        for name in filenames:
            p = here / name
            if frames and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                continue
            if _is_video(p):
                try:
                    manifest.items.append(_chosen(root, p, label))
                except ManifestError as exc:
                    manifest.problems.append(Problem(PurePosixPath(*p.relative_to(root).parts).as_posix(), str(exc)))
            elif not name.startswith("."):  # hidden files (.DS_Store, ._x.mp4) are left out without a word
                manifest.ignored.append(PurePosixPath(*p.relative_to(root).parts).as_posix())
    return manifest


def read_webdataset(spec: str, label_from: str = "auto") -> Manifest:
    """The video samples of WebDataset shards (``data.webdataset``): one item per sample, keyed
    ``<shard>/<sample key>`` under the shards' common folder (remote shards: ``<shard URL>/<sample key>``)."""
    listing = list_samples(spec, label_from)
    root = str(listing.root)
    manifest = Manifest(listing.root, ignored=listing.ignored)
    manifest.items = [
        VideoItem(redact(path), "", label, follow_links=True, url=path)
        if is_url(path)
        else VideoItem(path, root, label, follow_links=True)
        for path, label in listing.samples
    ]
    manifest.problems = [Problem(path, error) for path, error in listing.problems]
    return manifest


def read_glob(pattern: str) -> Manifest:
    """An unlabeled set of files matching a glob (``videos/**/*.mp4``); root = the pattern's fixed prefix."""
    prefix_parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        prefix_parts.append(part)
    root = Path(os.path.normpath(Path(*prefix_parts).absolute() if prefix_parts else Path.cwd()))
    manifest = Manifest(root)
    for match in sorted(glob.glob(pattern, recursive=True)):
        p = Path(match)
        if p.is_file() or (p.is_symlink() and _is_video(p)):
            try:
                manifest.items.append(_chosen(root, p))
            except ManifestError as exc:
                manifest.problems.append(Problem(str(p), str(exc)))
    return manifest


def read_urls(text: str) -> Manifest:
    """A video at a URL, or those a URL glob matches (``s3://bucket/videos/*.mp4``): unlabeled, each keyed by
    its URL redacted of secrets (``data.remote``)."""
    urls = _listed(text, "the pattern's objects") if glob.has_magic(text.partition("?")[0]) else [text]
    if not urls:
        raise ManifestError(f"{redact(text)}: the pattern matches no objects")
    return Manifest(Path.cwd(), [VideoItem(redact(u), "", follow_links=True, url=u) for u in urls])


# -- official dataset splits ---------------------------------------------------------------------


def _lines(path: Where) -> list[tuple[int, str]]:
    """Non-empty stripped lines with their numbers; ManifestError naming the file (or URL) if unreadable."""
    text = read_text(path, "split file")
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _check_split(split: int) -> None:
    if split not in DATASET_SPLITS:
        raise ManifestError(f"split={split!r}: UCF101 and HMDB51 define splits 1, 2 and 3")


def _listed(url: str, what: str, why: str = "", instead: str = "") -> list[str]:
    """``list_under(url)``; ManifestError where the listing fails (``what`` was listed) or, given ``why`` it
    had to be listed, where the protocol cannot list (with what to do ``instead``)."""
    if why and not can_list(url):
        raise ManifestError(
            f"{redact(url)}: {why} by listing {what}, which {url.partition('://')[0]}:// cannot; {instead}"
        )
    try:
        return list_under(url)
    except DecodeError as exc:
        raise ManifestError(f"cannot list {what}: {exc}") from None


_PROBED = 3  # listed videos asked for at a root URL that cannot be listed (HTTP), to tell a wrong root


def _present(manifest: Manifest) -> list[bool]:
    """Whether each listed video is there: a file under a folder; an object under a root URL (one listing),
    or, where the protocol cannot list, True for all but a probe of the first few (all missing: False)."""
    root = manifest.root
    if not isinstance(root, str):
        return [it.abspath.is_file() for it in manifest.items]
    if can_list(root):
        there = set(_listed(root, "the videos' root"))
        return [it.path in there for it in manifest.items]
    if any(exists(it.url) for it in manifest.items[:_PROBED]):
        return [True] * len(manifest.items)  # the rest are found (or fail, with the cause) when decoded
    return [False] * len(manifest.items)


def _finish_dataset(manifest: Manifest, listed_in: str, check_files: bool) -> Manifest:
    """Listed videos missing on disk become problems; none present at all means the root is wrong."""
    if not check_files:
        return manifest
    present = _present(manifest)
    if manifest.items and not any(present):
        example, root = manifest.items[0], redact(str(manifest.root))
        probed = "" if can_list(str(root)) else f" (the first {min(_PROBED, len(manifest.items))} asked for)"
        raise ManifestError(
            f"none of the {len(manifest.items)} videos listed in {listed_in} is under {root}{probed} "
            f"(e.g. {example.path}); pass --root FOLDER, the folder that holds the class folders"
        )
    manifest.problems += [
        Problem(it.path, f"{it.shown}: listed in {listed_in} but not found")
        for it, there in zip(manifest.items, present)
        if not there
    ]
    manifest.items = [it for it, there in zip(manifest.items, present) if there]
    return manifest


def read_ucf101(
    split_dir: str | Path, root: str | Path | None = None, split: int = 1, check_files: bool = True
) -> Manifest:
    """UCF101 ``ucfTrainTestlist/``: ``classInd.txt`` ("1 ApplyEyeMakeup"), ``trainlist0N.txt``
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1") and ``testlist0N.txt`` (path only).
    ``root`` holds the class folders; default ``split_dir/../UCF-101`` if present, else ``split_dir/..``.
    Either may be a URL (the split files read through fsspec; videos under a root URL are URLs).
    Train/test come from the lists; ``val`` is carved from train later, keeping UCF101's groups whole.
    """
    _check_split(split)
    folder = split_folder(split_dir)
    base = as_root(root)
    if base is None:
        above = parent_of(folder)
        base = join_to(above, "UCF-101") if is_folder(join_to(above, "UCF-101")) else above
    class_file = join_to(folder, "classInd.txt")
    classes: dict[int, str] = {}
    for i, line in _lines(class_file):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ManifestError(f"{redact(str(class_file))}:{i}: expected 'INDEX ClassName', got {line!r}")
        classes[int(parts[0])] = parts[1]
    by_name = {name.lower(): name for name in classes.values()}  # folder names differ in case in places
    manifest = Manifest(base)
    for split_name, name in (("train", f"trainlist0{split}.txt"), ("test", f"testlist0{split}.txt")):
        list_file = join_to(folder, name)
        for i, line in _lines(list_file):
            where = f"{redact(str(list_file))}:{i}"
            parts = line.split()
            path = parts[0] if parts else ""
            sub = PurePosixPath(path.replace("\\", "/")).parts[0] if "/" in path or "\\" in path else ""
            try:
                if len(parts) > 1:
                    if not parts[1].isdigit() or int(parts[1]) not in classes:
                        raise ManifestError(f"{where}: class index {parts[1]!r} is not in classInd.txt")
                    label = classes[int(parts[1])]
                elif sub.lower() in by_name:
                    label = by_name[sub.lower()]
                else:
                    raise ManifestError(f"{where}: class folder {sub!r} of {path!r} is not in classInd.txt")
                manifest.items.append(_video_at(base, path, label, split_name))
            except ManifestError as exc:
                manifest.problems.append(Problem(path or where, str(exc) if where in str(exc) else f"{where}: {exc}"))
    return _finish_dataset(manifest, f"{redact(str(folder))} split {split}", check_files)


def _hmdb_files(folder: Where, split: int) -> list[Where]:
    """HMDB51's split files of ``split`` in ``folder`` (a folder URL: listed, where the protocol can)."""
    pattern = f"*_test_split{split}.txt"
    if isinstance(folder, Path):
        files: list[Where] = list(sorted(folder.glob(pattern)))
    else:
        how = f"copy the split folder here and pass --root {redact(folder)}/.."
        files = list(_listed(f"{folder}/{pattern}", "the folder", f"HMDB51's split files ({pattern}) are found", how))
    if not files:
        raise ManifestError(f"{redact(str(folder))}: no HMDB51 split files ({pattern})")
    return files


def read_hmdb51(
    split_dir: str | Path, root: str | Path | None = None, split: int = 1, check_files: bool = True
) -> Manifest:
    """HMDB51 ``testTrainMulti_7030_splits/``: one ``<action>_test_split<N>.txt`` per action, lines
    "<video>.avi <code>" with code 1 = train, 2 = test, 0 = not used in this split (left out).
    ``root`` holds the action folders (``<root>/<action>/<video>.avi``); default ``split_dir/..``. Either
    may be a URL (the split folder's URL must list: ``s3://``, ``gs://``)."""
    _check_split(split)
    folder = split_folder(split_dir)
    base = as_root(root) or parent_of(folder)
    manifest = Manifest(base)
    codes = {"1": "train", "2": "test", "0": None}
    for f in _hmdb_files(folder, split):
        action = PurePosixPath(str(f)).name[: -len(f"_test_split{split}.txt")]
        for i, line in _lines(f):
            parts = line.split()
            where = f"{redact(str(f))}:{i}"
            if len(parts) != 2 or parts[1] not in codes:
                manifest.problems.append(Problem(where, f"{where}: expected '<video>.avi <0|1|2>', got {line!r}"))
                continue
            split_name = codes[parts[1]]
            if split_name is None:
                continue
            try:
                manifest.items.append(_video_at(base, f"{action}/{parts[0]}", action, split_name))
            except ManifestError as exc:
                manifest.problems.append(Problem(parts[0], f"{where}: {exc}"))
    return _finish_dataset(manifest, f"{redact(str(folder))} split {split}", check_files)


def _video_index(root: Where) -> dict[str, list[str]]:
    """Video files under ``root`` by file stem (paths relative to it), for locating Kinetics clips; a root
    URL is listed (where its protocol can: Kinetics names videos by id, so they must be found)."""
    if isinstance(root, str):
        found = _listed(root, "--root", "Kinetics rows are found", "give a CSV manifest with a path column instead")
        prefix = redact(root).rstrip("/") + "/"
        paths = [u[len(prefix) :] for u in found if u.startswith(prefix)]
        index: dict[str, list[str]] = {}
        for rel in paths:
            p = PurePosixPath(rel)
            if p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."):
                index.setdefault(p.stem, []).append(rel)
        return index
    index = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            f = Path(dirpath) / name
            if _is_video(f):
                index.setdefault(f.stem, []).append(PurePosixPath(*f.relative_to(root).parts).as_posix())
    return index


def read_kinetics(
    path: Where, root: str | Path | None = None, *, table: tuple[list[str], list[tuple[str, dict]]] | None = None
) -> Manifest:
    """Kinetics CSV ``label,youtube_id,time_start,time_end,split`` (extra columns ignored), each row found
    under ``root`` (default: the CSV's folder) as docs/extraction.md says. Rows with no file are problems
    (Kinetics always has missing videos); ``split`` "validate" means ``val``. The CSV and the root may be
    URLs (a root URL must list: ``s3://``, ``gs://``). ``table``: the CSV already read (``read_csv``)."""
    base = _manifest_root(path, root)
    fields, raw = table or _table(path)
    missing = [c for c in KINETICS_COLUMNS if c not in fields and c != "split"]
    if missing:
        raise ManifestError(
            f"{redact(str(path))}: Kinetics CSV lacks column(s) {', '.join(missing)} "
            f"(expected {','.join(KINETICS_COLUMNS)})"
        )
    rows = [(where, {k: (v or "").strip() for k, v in row.items()}) for where, row in raw]
    index = _video_index(base)
    manifest = Manifest(base)
    split_names = {"train": "train", "val": "val", "validate": "val", "validation": "val", "test": "test", "": ""}
    for where, row in rows:
        yid = row.get("youtube_id", "")
        try:
            if not yid:
                raise ManifestError(f"{where}: empty youtube_id")
            start = _float_or_none(row.get("time_start"), f"{where}: time_start")
            end = _float_or_none(row.get("time_end"), f"{where}: time_end")
            if start is None or end is None or end <= start:
                raise ManifestError(
                    f"{where}: time_start/time_end must be numbers with end > "
                    f"start, got {row.get('time_start')!r}, {row.get('time_end')!r}"
                )
            split = row.get("split", "").lower()
            if split not in split_names:
                raise ManifestError(f"{where}: split={split!r}; allowed: train, val (validate), test")
            trimmed = f"{yid}_{int(start):06d}_{int(end):06d}"
            window: tuple[float | None, float | None]  # None, None: the file is already trimmed to the clip
            if trimmed in index:
                rel, window = index[trimmed][0], (None, None)
            elif yid in index:
                rel, window = index[yid][0], (start, end)
            else:
                raise ManifestError(
                    f"{where}: no video for youtube_id {yid} under {redact(str(base))} "
                    f"(looked for {trimmed}.* and {yid}.*)"
                )
            item = _video_at(base, rel, row.get("label", ""), split_names[split])
            manifest.items.append(replace(item, start=window[0], end=window[1]))
        except ManifestError as exc:
            manifest.problems.append(Problem(yid or where, str(exc)))
    return manifest


def _detect(p: Path) -> str:
    if p.is_dir():
        if (p / "classInd.txt").is_file():
            return "ucf101"
        if any(p.glob("*_test_split1.txt")):
            return "hmdb51"
        return "folder"
    return {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(p.suffix.lower(), "")


def _detect_url(url: str) -> str:
    """What a URL names: a manifest by its suffix, a video by its own, else a UCF101 or HMDB51 split folder
    where it holds their files ("" : a video)."""
    suffix = suffix_of(url)
    if suffix in (".csv", ".tsv", ".jsonl", ".ndjson"):
        return {".csv": "csv", ".tsv": "csv"}.get(suffix, "jsonl")
    if suffix in VIDEO_EXTENSIONS or urlsplit(url).query:  # a query: an object (a presigned video), not a folder
        return ""
    folder = url.rstrip("/")
    if exists(f"{folder}/classInd.txt"):
        return "ucf101"
    try:
        if can_list(folder) and list_under(f"{folder}/*_test_split1.txt"):
            return "hmdb51"
    except DecodeError:
        pass
    return ""


def _load_url(url: str, root: str | Path | None, format: str, split: int, check_files: bool) -> Manifest:
    """``load_manifest`` of a URL: a manifest, a split folder, a video, or a URL glob."""
    if glob.has_magic(url.partition("?")[0]) and format in ("auto", "folder"):
        return read_urls(url)
    kind = _detect_url(url) if format == "auto" else format
    if kind in ("ucf101", "hmdb51"):
        return (read_ucf101 if kind == "ucf101" else read_hmdb51)(url, root, split, check_files)
    if kind == "kinetics":
        return read_kinetics(url, root)
    if kind == "csv":
        return read_csv(url, root)
    if kind == "jsonl":
        return read_jsonl(url, root)
    if kind == "folder":
        raise ManifestError(
            f"{redact(url)}: a folder URL is not read as class folders; give a CSV/JSONL manifest or a quoted glob"
        )
    return read_urls(url)


def _check_format(p: Path, format: str) -> None:
    """An explicit folder/csv/jsonl ``format`` must fit what ``p`` is; a file whose suffix says nothing is read so."""
    if p.is_dir():
        found, fits = "a folder", format == "folder"
    else:
        found = f"a {p.suffix.lower()} file" if p.suffix else "a file"
        fits = format != "folder" and _detect(p) in ("", format) and not _is_video(p)
    if not fits:
        raise ManifestError(f"{p}: --format {format} does not match {found}; pass the format it is, or --format auto")


def load_manifest(
    source: str | Path,
    root: str | Path | None = None,
    *,
    format: str = "auto",
    split: int = 1,
    check_files: bool = True,
    label_from: str = "auto",
) -> Manifest:
    """Dispatch on what ``source`` is: a folder, a ``.csv``/``.jsonl`` file, a single video, a glob, or
    WebDataset ``.tar`` shards (a brace list ``shards/{00000..00009}.tar``; ``label_from``: which member
    holds the label, see ``data.webdataset``).
    Official splits: a folder holding ``classInd.txt`` is UCF101's, one holding ``*_test_split1.txt``
    HMDB51's, a CSV with a ``youtube_id`` column Kinetics' (or say so with ``format``); ``split`` picks
    UCF101/HMDB51 split 1, 2 or 3; ``root`` is then the folder holding the videos. ``check_files=False``
    keeps UCF101/HMDB51 entries whose video is gone (re-splitting a store whose videos were deleted).
    """
    check_choice(format, FORMATS, "format", ManifestError)
    text = str(source)
    if format == "webdataset" or (format == "auto" and is_shard_list(text)):
        return read_webdataset(text, label_from)
    if is_url(text):
        return _load_url(canonical(text), root, format, split, check_files)
    p = Path(text)
    r = str(root) if root and is_url(str(root)) else (Path(root) if root else None)
    kind = _detect(p) if format == "auto" and p.exists() else format
    if kind in ("ucf101", "hmdb51"):
        if not p.is_dir():
            raise ManifestError(f"{p}: {kind} needs the folder of its split files")
        return (read_ucf101 if kind == "ucf101" else read_hmdb51)(p, r, split, check_files)
    if kind == "kinetics":
        if not p.is_file():
            raise ManifestError(f"{p}: kinetics needs its CSV file (label,youtube_id,time_start,time_end,split)")
        return read_kinetics(p, r)
    if format != "auto" and p.exists():
        _check_format(p, format)
    if p.is_dir():
        if is_frame_folder(p, os.listdir(p)):  # one frame folder named by itself: one unlabeled video
            base = Path(os.path.normpath(p.absolute())).parent
            return Manifest(base, [VideoItem(p.name, str(base), follow_links=True)])
        return read_folder(p)
    if p.is_file():
        if kind == "csv":
            return read_csv(p, r)
        if kind == "jsonl":
            return read_jsonl(p, r)
        if _is_video(p):
            base = Path(os.path.normpath(p.absolute())).parent
            return Manifest(base, [VideoItem(p.name, str(base), follow_links=True)])
        raise ManifestError(f"{p}: not a folder, .csv/.jsonl manifest or video file")
    if glob.has_magic(text):
        manifest = read_glob(text)
        if not manifest.items and not manifest.problems:
            raise ManifestError(f"{text}: the pattern matches no files")
        return manifest
    raise ManifestError(f"{text}: no such file or folder")
