"""Prediction rows on disk: ``preds.csv`` or ``preds.jsonl``, one row per video (``--per-clip``: per clip window).

Each video's rows are appended in one write and flushed as the video finishes, so a killed run loses at most
the video in flight, and a re-run with the same file skips every row it holds (failures included). A row's
key is (path, start, end): a video's (the manifest row's window), or with ``--per-clip`` a clip's (its
window; a failure: its video's), so several windows of one file (manifest rows, windowed sampling) are each
written exactly once, as extraction stores each clip once. On reopening, a torn last line (the kill came
mid-write) and an incomplete last video of a per-clip file are cut off; anything else that is not this
writer's rows is refused, never rewritten. Rows (docs/heads.md):
``{"path", ["clip",] "start", "end", "windows", "top": [{"label", "prob"}], "warnings", "error"}``, as JSON
objects (only the keys that apply) or CSV columns (``label_1, prob_1, ...``; empty where not applicable).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ConfigError
from .report import finite

__all__ = ["OUTPUT_SUFFIXES", "PredictionFile", "check_output", "columns"]

OUTPUT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl"}
Key = tuple[str, float | None, float | None]  # (path, start, end): a row's identity in a file (module doc)
Window = tuple[float, float]


def check_output(path: str | Path) -> str:
    """The format ``path``'s suffix names (``csv`` or ``jsonl``); ConfigError otherwise."""
    fmt = OUTPUT_SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise ConfigError(f"-o {path}: predictions are written as .csv or .jsonl; name the file e.g. preds.csv")
    if Path(path).is_dir():
        raise ConfigError(f"-o {path}: is a folder; name the predictions file, e.g. {Path(path) / 'preds.csv'}")
    return fmt


def columns(k: int, per_clip: bool) -> list[str]:
    """The CSV header: the video (and the clip's index), the window, its count, k (label, prob) pairs, why not."""
    labels = [f"{name}_{i}" for i in range(1, k + 1) for name in ("label", "prob")]
    return ["path", *(["clip"] if per_clip else []), "start", "end", "windows", *labels, "error", "warnings"]


def _csv_line(row: dict[str, Any], header: list[str]) -> str:
    flat: dict[str, Any] = {"warnings": " | ".join(row.get("warnings", []))}
    flat.update({k: row[k] for k in ("path", "clip", "start", "end", "windows", "error") if row.get(k) is not None})
    for i, t in enumerate(row.get("top", []), start=1):
        flat[f"label_{i}"], flat[f"prob_{i}"] = t["label"], repr(float(t["prob"]))
    for k in ("start", "end"):
        if k in flat:
            flat[k] = repr(float(flat[k]))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([_one_line(flat.get(c, "")) for c in header])
    return out.getvalue()


def _one_line(value: Any) -> str:
    return str(value).replace("\r", " ").replace("\n", " ")


def _number(text: str) -> float | None:
    return float(text) if text.strip() else None


class PredictionFile:
    """An output file open for appending (created with its header if new); ``holds(key)``: already written.
    ``k`` label/probability pairs per row; ``per_clip``: one row per clip window."""

    def __init__(self, path: str | Path, *, k: int, per_clip: bool) -> None:
        self.path, self.format, self.per_clip = Path(path), check_output(path), per_clip
        self.header = columns(k, per_clip)
        self.done: set[Key] = set()
        self.clips: dict[str, set[Window]] = {}  # per clip: each path's clip windows held
        self._fh: BinaryIO | None = None
        if self.path.exists():
            self._resume()
        try:
            self._fh = open(self.path, "ab")  # noqa: SIM115 (held open for appending until close)
        except OSError as exc:
            raise ConfigError(f"-o {self.path}: cannot write it ({exc.strerror or exc})") from None
        if self._fh.tell() == 0 and self.format == "csv":
            self._append(",".join(self.header) + "\n")

    def holds(self, key: Key) -> bool:
        """Whether the file has this video's rows already (a per-clip file: the clip of this window, which is
        the video's one clip under a single-clip sampling, or the video's failure)."""
        return key in self.done

    def windows(self, path: str, start: float | None, end: float | None) -> frozenset[Window]:
        """The clip windows a per-clip file holds for ``path`` within [start, end] (None: open): what a
        windowed sampling of that video leaves out (as extraction's plan leaves out the stored ones)."""
        lo = -float("inf") if start is None else start - 1e-6
        hi = float("inf") if end is None else end + 1e-6
        return frozenset(w for w in self.clips.get(path, ()) if w[0] >= lo and w[1] <= hi)

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """One video's rows, in one write, flushed. Per clip: a clip the file holds already (a window that
        overlapping manifest rows of one file share) is left out, and the rest numbered ``clip`` 0.. of
        ``windows``, so each clip is in the file once and each write is one whole group of rows."""
        rows = list(rows)
        if self.per_clip:
            rows = self._new_clips(rows)
        if not rows:
            return
        if self.format == "csv":
            text = "".join(_csv_line(r, self.header) for r in rows)
        else:
            text = "".join(json.dumps(finite(r), allow_nan=False) + "\n" for r in rows)
        self._append(text)

    def _new_clips(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        fresh = [r for r in rows if _key(r) not in self.done]
        if len(fresh) < len(rows):
            fresh = [r if "clip" not in r else {**r, "clip": i, "windows": len(fresh)} for i, r in enumerate(fresh)]
        for r in fresh:
            self._hold(_key(r), "clip" in r)
        return fresh

    def _hold(self, key: Key, clip: bool) -> None:
        self.done.add(key)
        if clip and key[1] is not None and key[2] is not None:
            self.clips.setdefault(key[0], set()).add((key[1], key[2]))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> PredictionFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _append(self, text: str) -> None:
        assert self._fh is not None
        self._fh.write(text.encode("utf-8"))
        self._fh.flush()

    # -- resuming ---------------------------------------------------------------------------------
    def _resume(self) -> None:
        """Read what the file holds; cut a torn tail (a kill mid-write) and a per-clip video left incomplete."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"-o {self.path}: cannot read it to resume ({exc.strerror or exc})") from None
        keep = data.rfind(b"\n") + 1  # bytes up to the last whole line
        rows: list[tuple[Key, int | None]] = []  # (key, clip index) per row
        offset, first, at, windows = 0, 0, 0, None  # the last video's rows: rows[first:], from byte at, of windows
        for number, line in enumerate(data[:keep].split(b"\n")[:-1], start=1):
            parsed = self._parse(line, number)
            if parsed is not None:  # not the CSV header
                key, clip, count = parsed
                if not rows or not self.per_clip or not clip or key[0] != rows[-1][0][0]:  # a video's first row
                    first, at, windows = len(rows), offset, count
                rows.append((key, clip))
            offset += len(line) + 1
        if self.per_clip and windows is not None and len(rows) - first < windows:
            del rows[first:]  # killed between this video's rows: it is predicted again
            keep = at
        for key, clip in rows:
            self._hold(key, clip is not None)
        if keep < len(data):
            os.truncate(self.path, keep)

    def _parse(self, line: bytes, number: int) -> tuple[Key, int | None, int | None] | None:
        """(the row's key, its clip index, its windows) or None for the header; ConfigError if not ours."""
        where = f"-o {self.path}: line {number}"
        try:
            text = line.decode("utf-8")
            if self.format == "jsonl":
                row = json.loads(text)
                if (
                    not isinstance(row, dict)
                    or "path" not in row
                    or ("clip" in row) != (self.per_clip and "error" not in row)
                ):
                    raise ValueError("not a prediction row of this kind")
                start, end, windows, clip = row.get("start"), row.get("end"), row.get("windows"), row.get("clip")
            else:
                cells = next(csv.reader([text]))
                if number == 1:
                    if cells != self.header:
                        raise ValueError(f"its columns are {','.join(cells)}, this run writes {','.join(self.header)}")
                    return None
                if len(cells) != len(self.header):
                    raise ValueError(f"{len(cells)} columns, the header has {len(self.header)}")
                row = dict(zip(self.header, cells))
                start, end = _number(row["start"]), _number(row["end"])
                windows = int(row["windows"]) if row["windows"] else None
                clip = int(row["clip"]) if row.get("clip") else None
        except (ValueError, UnicodeDecodeError, StopIteration) as exc:
            raise ConfigError(
                f"{where} is not a prediction row this run can resume ({exc}); predict with the same --top-k and "
                "--per-clip as the run that wrote it, or choose another -o"
            ) from None
        if clip is not None and not isinstance(clip, int):
            raise ConfigError(f"{where}: its clip is {clip!r}, not an index; choose another -o")
        return (str(row["path"]), start, end), clip, windows


def _key(row: dict[str, Any]) -> Key:
    """A row's key, as ``_parse`` reads it back."""
    return str(row["path"]), row.get("start"), row.get("end")
